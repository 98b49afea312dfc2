// Sources: datasets whose samples are produced on demand (decoded and
// augmented), one at a time, from any thread. The Loader batches them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "engine/random.h"
#include "engine/tensor.h"

namespace s2h::data {

// The input of one sample: an image as HWC f32 (normalised, NHWC in a batch)
// or a token sequence as i64 ids [L] (pad id 0).
struct SampleSpec {
  DType dtype = DType::F32;
  Shape shape;
};

class Source {
 public:
  virtual ~Source() = default;
  virtual std::string name() const = 0;  // e.g. "cifar10/train"; used in messages
  virtual int64_t size() const = 0;
  virtual int64_t num_classes() const = 0;
  virtual int64_t label(int64_t i) const = 0;
  virtual SampleSpec sample_spec() const = 0;
  // Writes sample i into `out` (shape_numel(sample_spec().shape) values of
  // sample_spec().dtype), augmenting with `rng`. Safe to call from several
  // threads at once. Errors (a corrupt file) throw s2h::Error naming the file.
  virtual void read(int64_t i, void* out, Generator& rng) const = 0;
  // Text sources: the vocabulary size (ids are < vocab_size); 0 for images.
  virtual int64_t vocab_size() const { return 0; }
};
using SourcePtr = std::shared_ptr<const Source>;

}  // namespace s2h::data
