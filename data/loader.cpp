#include <algorithm>
#include <numeric>

#include "data/dataset.h"
#include "engine/ops.h"
#include "engine/random.h"

namespace s2h::data {

Loader::Loader(const Dataset& dataset, int64_t batch_size, bool shuffle, uint64_t seed, bool drop_last)
    : dataset_(dataset), batch_size_(batch_size), shuffle_(shuffle), drop_last_(drop_last), seed_(seed) {
  S2H_CHECK(batch_size > 0, "batch size must be positive, got {}", batch_size);
  S2H_CHECK(dataset.size() > 0, "dataset {} is empty", dataset.name);
  set_epoch(0);
}

void Loader::set_epoch(int64_t epoch) {
  order_.resize(static_cast<size_t>(dataset_.size()));
  std::iota(order_.begin(), order_.end(), 0);
  if (!shuffle_) return;
  Generator gen(seed_ * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(epoch) + 1);
  for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[gen.below(i)]);  // Fisher-Yates
}

int64_t Loader::num_batches() const {
  const int64_t n = dataset_.size();
  return drop_last_ ? n / batch_size_ : (n + batch_size_ - 1) / batch_size_;
}

Batch Loader::batch(int64_t index) const {
  S2H_CHECK(index >= 0 && index < num_batches(), "batch {} is out of range ({} batches)", index, num_batches());
  const int64_t b = index * batch_size_, e = std::min<int64_t>(dataset_.size(), b + batch_size_);
  Tensor idx = Tensor::from_vector(std::vector<int64_t>(order_.begin() + b, order_.begin() + e), {e - b});
  return {index_select(dataset_.images, 0, idx), index_select(dataset_.labels, 0, idx)};
}

}  // namespace s2h::data
