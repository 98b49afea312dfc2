// In-memory datasets and the threaded, seeded batch loader.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "data/source.h"
#include "engine/tensor.h"

namespace s2h::data {

// A dataset held as tensors (already decoded and normalised).
struct Dataset {
  std::string name;
  Tensor images;  // f32 [N, H, W, C] (NHWC), normalised; or i64 [N, L] token ids
  Tensor labels;  // i64 [N]
  int64_t num_classes = 0;
  int64_t size() const { return images.defined() ? images.size(0) : 0; }
};

// A Source over a Dataset's rows (no augmentation).
class TensorSource : public Source {
 public:
  explicit TensorSource(Dataset ds);
  std::string name() const override { return ds_.name; }
  int64_t size() const override { return ds_.size(); }
  int64_t num_classes() const override { return ds_.num_classes; }
  int64_t label(int64_t i) const override;
  SampleSpec sample_spec() const override;
  void read(int64_t i, void* out, Generator& rng) const override;
  const Dataset& dataset() const { return ds_; }

 private:
  Dataset ds_;
  int64_t row_bytes_ = 0;
};

// An evenly spaced subset of n samples of `source` (sample j is source sample
// floor(j * size / n)), or `source` itself when n is 0 or not smaller.
SourcePtr subset(SourcePtr source, int64_t n);

struct Batch {
  Tensor inputs;  // [B, ...sample shape]
  Tensor labels;  // i64 [B]
  int64_t index = 0;
};

struct LoaderOptions {
  int64_t batch_size = 128;
  bool shuffle = true;
  bool drop_last = false;
  uint64_t seed = 0;
  // Data parallelism: every rank draws the same epoch order and takes the
  // positions rank, rank + world_size, ... of it (the order is first cut to a
  // multiple of world_size so every rank has the same number of samples).
  int rank = 0, world_size = 1;
  // Threads that read (decode, augment) batches ahead of the consumer; 0:
  // read in the calling thread. The output never depends on this number.
  int workers = 2;
  int prefetch = 4;  // batches in flight ahead of the consumer
  // Put batches in page-locked host memory (needs the CUDA backend), so that
  // the trainer's copy to the GPU is asynchronous.
  bool pin_memory = false;
};

// Batches of a source in a seeded order. Epoch e uses the permutation drawn
// from (seed, e), and sample j of the epoch is augmented with a generator
// seeded from (seed, e, j): a run is reproducible, can resume at any epoch,
// and gives the same batches with any number of workers.
class Loader {
 public:
  Loader(SourcePtr source, const LoaderOptions& options);
  // The in-memory form used by tests and Fashion-MNIST.
  Loader(const Dataset& dataset, int64_t batch_size, bool shuffle, uint64_t seed, bool drop_last = false);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  void set_epoch(int64_t epoch);  // stops any prefetching and draws this epoch's order
  int64_t epoch() const { return epoch_; }
  int64_t num_batches() const;
  int64_t batch_size() const { return opt_.batch_size; }
  // This rank's sample indices of the current epoch, in batch order.
  const std::vector<int64_t>& order() const { return order_; }
  const Source& source() const { return *source_; }

  // Reads batch `index` of the current epoch in the calling thread.
  Batch batch(int64_t index) const;
  // Iteration with prefetching: start(first) then next() until it returns
  // nothing. An error in a worker is rethrown here.
  void start(int64_t first_batch = 0);
  std::optional<Batch> next();

 private:
  void stop();
  void worker_loop();
  SourcePtr source_;
  LoaderOptions opt_;
  int64_t epoch_ = 0;
  std::vector<int64_t> order_;
  // Prefetching state.
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::thread> threads_;
  std::vector<std::optional<Batch>> ready_;  // by batch index - first_
  std::exception_ptr error_;
  int64_t first_ = 0, claimed_ = 0, consumed_ = 0;
  bool stopping_ = false, running_ = false;
};

}  // namespace s2h::data
