#include <algorithm>
#include <cstring>
#include <numeric>

#include "data/dataset.h"
#include "engine/ops.h"
#include "engine/random.h"

namespace s2h::data {

// ------------------------------------------------------------------ TensorSource
TensorSource::TensorSource(Dataset ds) : ds_(std::move(ds)) {
  S2H_CHECK(ds_.images.defined() && ds_.labels.defined() && ds_.images.size(0) == ds_.labels.size(0),
            "dataset {}: images and labels must have the same number of rows", ds_.name);
  ds_.images = ds_.images.contiguous();
  ds_.labels = ds_.labels.contiguous();
  row_bytes_ = ds_.size() > 0 ? ds_.images.numel() / ds_.size() * static_cast<int64_t>(dtype_size(ds_.images.dtype())) : 0;
}

int64_t TensorSource::label(int64_t i) const { return ds_.labels.data<int64_t>()[i]; }

SampleSpec TensorSource::sample_spec() const {
  Shape s(ds_.images.shape().begin() + 1, ds_.images.shape().end());
  return {ds_.images.dtype(), s};
}

void TensorSource::read(int64_t i, void* out, Generator& rng) const {
  (void)rng;
  S2H_CHECK(i >= 0 && i < ds_.size(), "{}: sample {} is out of range ({} samples)", ds_.name, i, ds_.size());
  std::memcpy(out, static_cast<const char*>(ds_.images.raw_data()) + i * row_bytes_, static_cast<size_t>(row_bytes_));
}

// ------------------------------------------------------------------ subset
namespace {
class SubsetSource : public Source {
 public:
  SubsetSource(SourcePtr base, int64_t n) : base_(std::move(base)), n_(n) {}
  std::string name() const override { return fmt::format("{} (subset of {})", base_->name(), n_); }
  int64_t size() const override { return n_; }
  int64_t num_classes() const override { return base_->num_classes(); }
  int64_t label(int64_t i) const override { return base_->label(map(i)); }
  SampleSpec sample_spec() const override { return base_->sample_spec(); }
  void read(int64_t i, void* out, Generator& rng) const override { base_->read(map(i), out, rng); }
  int64_t vocab_size() const override { return base_->vocab_size(); }

 private:
  int64_t map(int64_t i) const { return i * base_->size() / n_; }
  SourcePtr base_;
  int64_t n_;
};
}  // namespace

SourcePtr subset(SourcePtr source, int64_t n) {
  S2H_CHECK(n >= 0, "subset: size must be >= 0, got {}", n);
  if (n == 0 || n >= source->size()) return source;
  return std::make_shared<SubsetSource>(std::move(source), n);
}

// ------------------------------------------------------------------ Loader
namespace {
uint64_t mix(uint64_t x) {  // splitmix64 finaliser
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
}  // namespace

Loader::Loader(SourcePtr source, const LoaderOptions& options) : source_(std::move(source)), opt_(options) {
  S2H_CHECK(source_ != nullptr, "Loader: no source");
  S2H_CHECK(opt_.batch_size > 0, "batch size must be positive, got {}", opt_.batch_size);
  S2H_CHECK(source_->size() > 0, "dataset {} is empty", source_->name());
  S2H_CHECK(opt_.world_size >= 1 && opt_.rank >= 0 && opt_.rank < opt_.world_size,
            "Loader: rank {} is not in [0, world size {})", opt_.rank, opt_.world_size);
  S2H_CHECK(source_->size() >= opt_.world_size, "dataset {} has {} samples, fewer than {} ranks", source_->name(),
            source_->size(), opt_.world_size);
  S2H_CHECK(opt_.workers >= 0 && opt_.prefetch >= 1, "Loader: workers {} must be >= 0 and prefetch {} >= 1",
            opt_.workers, opt_.prefetch);
  set_epoch(0);
}

Loader::Loader(const Dataset& dataset, int64_t batch_size, bool shuffle, uint64_t seed, bool drop_last)
    : Loader(
          [&] {
            S2H_CHECK(batch_size > 0, "batch size must be positive, got {}", batch_size);
            S2H_CHECK(dataset.size() > 0, "dataset {} is empty", dataset.name);
            return std::make_shared<TensorSource>(dataset);
          }(),
          LoaderOptions{batch_size, shuffle, drop_last, seed, 0, 1, 0, 1}) {}

Loader::~Loader() { stop(); }

void Loader::set_epoch(int64_t epoch) {
  stop();
  epoch_ = epoch;
  std::vector<int64_t> all(static_cast<size_t>(source_->size()));
  std::iota(all.begin(), all.end(), 0);
  if (opt_.shuffle) {
    Generator gen(opt_.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(epoch) + 1);
    for (size_t i = all.size(); i > 1; --i) std::swap(all[i - 1], all[gen.below(i)]);  // Fisher-Yates
  }
  if (opt_.world_size == 1) {
    order_ = std::move(all);
    return;
  }
  const size_t per_rank = all.size() / static_cast<size_t>(opt_.world_size);
  order_.clear();
  for (size_t j = 0; j < per_rank; ++j) order_.push_back(all[j * static_cast<size_t>(opt_.world_size) + static_cast<size_t>(opt_.rank)]);
}

int64_t Loader::num_batches() const {
  const auto n = static_cast<int64_t>(order_.size());
  return opt_.drop_last ? n / opt_.batch_size : (n + opt_.batch_size - 1) / opt_.batch_size;
}

Batch Loader::batch(int64_t index) const {
  S2H_CHECK(index >= 0 && index < num_batches(), "batch {} is out of range ({} batches)", index, num_batches());
  const int64_t b = index * opt_.batch_size;
  const int64_t e = std::min<int64_t>(static_cast<int64_t>(order_.size()), b + opt_.batch_size);
  const SampleSpec spec = source_->sample_spec();
  Shape shape{e - b};
  shape.insert(shape.end(), spec.shape.begin(), spec.shape.end());
  Batch out;
  out.index = index;
  out.inputs = Tensor::empty(shape, spec.dtype, Device::cpu(), opt_.pin_memory);
  out.labels = Tensor::empty({e - b}, DType::I64, Device::cpu(), opt_.pin_memory);
  const int64_t sample_bytes = shape_numel(spec.shape) * static_cast<int64_t>(dtype_size(spec.dtype));
  char* dst = static_cast<char*>(out.inputs.raw_data());
  int64_t* labels = out.labels.data<int64_t>();
  for (int64_t j = b; j < e; ++j) {
    const int64_t i = order_[static_cast<size_t>(j)];
    // Position in the global epoch order, so augmentation does not depend on the rank split.
    const uint64_t global = static_cast<uint64_t>(j) * static_cast<uint64_t>(opt_.world_size) + static_cast<uint64_t>(opt_.rank);
    Generator rng(mix(mix(opt_.seed ^ 0x5DEECE66Dull) + static_cast<uint64_t>(epoch_)) ^ mix(global));
    source_->read(i, dst + (j - b) * sample_bytes, rng);
    labels[j - b] = source_->label(i);
  }
  return out;
}

void Loader::start(int64_t first_batch) {
  stop();
  S2H_CHECK(first_batch >= 0 && first_batch <= num_batches(), "Loader::start: batch {} is out of range ({} batches)",
            first_batch, num_batches());
  first_ = claimed_ = consumed_ = first_batch;
  ready_.assign(static_cast<size_t>(opt_.prefetch), std::nullopt);
  error_ = nullptr;
  stopping_ = false;
  running_ = true;
  for (int t = 0; t < opt_.workers; ++t) threads_.emplace_back([this] { worker_loop(); });
}

void Loader::worker_loop() {
  const auto slots = static_cast<int64_t>(ready_.size());
  for (;;) {
    int64_t b;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || error_ || claimed_ >= num_batches() || claimed_ < consumed_ + slots; });
      if (stopping_ || error_ || claimed_ >= num_batches()) return;
      b = claimed_++;
    }
    try {
      Batch out = batch(b);
      std::lock_guard lock(mu_);
      ready_[static_cast<size_t>(b % slots)] = std::move(out);
    } catch (...) {
      std::lock_guard lock(mu_);
      if (!error_) error_ = std::current_exception();
    }
    cv_.notify_all();
  }
}

std::optional<Batch> Loader::next() {
  S2H_CHECK(running_, "Loader::next: call start() first");
  if (consumed_ >= num_batches()) return std::nullopt;
  if (opt_.workers == 0) return batch(consumed_++);
  const auto slots = static_cast<int64_t>(ready_.size());
  std::unique_lock lock(mu_);
  auto& slot = ready_[static_cast<size_t>(consumed_ % slots)];
  cv_.wait(lock, [&] { return error_ || (slot.has_value() && slot->index == consumed_); });
  if (error_) {
    std::exception_ptr e = error_;
    lock.unlock();
    stop();
    std::rethrow_exception(e);
  }
  Batch out = std::move(*slot);
  slot.reset();
  ++consumed_;
  lock.unlock();
  cv_.notify_all();
  return out;
}

void Loader::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
  running_ = false;
}

}  // namespace s2h::data
