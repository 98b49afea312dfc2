// In-memory image-classification datasets and a seeded batch loader.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace s2h::data {

struct Dataset {
  std::string name;
  Tensor images;  // f32 [N, H, W, C] (NHWC), normalised
  Tensor labels;  // i64 [N]
  int64_t num_classes = 0;
  int64_t size() const { return images.defined() ? images.size(0) : 0; }
};

struct Batch {
  Tensor images;  // [B, H, W, C]
  Tensor labels;  // [B]
};

// Batches of a dataset in a seeded order. Epoch e uses the permutation drawn
// from (seed, e), so a run is reproducible and can resume at any epoch.
class Loader {
 public:
  Loader(const Dataset& dataset, int64_t batch_size, bool shuffle, uint64_t seed, bool drop_last = false);
  void set_epoch(int64_t epoch);  // draws this epoch's order
  int64_t num_batches() const;
  Batch batch(int64_t index) const;  // gathers images and labels of batch `index`
  int64_t batch_size() const { return batch_size_; }
  const std::vector<int64_t>& order() const { return order_; }

 private:
  const Dataset& dataset_;
  int64_t batch_size_;
  bool shuffle_, drop_last_;
  uint64_t seed_;
  std::vector<int64_t> order_;
};

}  // namespace s2h::data
