#include "apps/s2h/common.h"

#include <omp.h>

#include <chrono>

#include "data/idx.h"
#include "engine/autograd.h"
#include "engine/ops.h"

namespace s2h::app {

data::Dataset load_dataset(const std::string& name, const std::string& root, const std::string& split) {
  if (name == "fashion-mnist") return data::load_fashion_mnist(root, split);
  S2H_FAIL("unknown dataset '{}' (available: fashion-mnist)", name);
}

models::ModelConfig model_config_for(const data::Dataset& ds) {
  models::ModelConfig cfg;
  cfg.num_classes = ds.num_classes;
  cfg.image_size = ds.images.size(1);
  cfg.in_channels = ds.images.size(3);
  return cfg;
}

EvalResult evaluate(Module& model, const data::Dataset& ds, int64_t batch_size) {
  const auto t0 = std::chrono::steady_clock::now();
  const bool was_training = model.is_training();
  model.eval();
  NoGradGuard guard;
  data::Loader loader(ds, batch_size, false, 0);
  EvalResult r;
  double loss_sum = 0;
  for (int64_t b = 0; b < loader.num_batches(); ++b) {
    data::Batch batch = loader.batch(b);
    Tensor logits = model(batch.inputs);
    const int64_t n = batch.labels.numel();
    loss_sum += cross_entropy(logits, batch.labels).item() * static_cast<double>(n);
    Tensor pred = argmax(logits, 1);
    const int64_t* p = pred.data<int64_t>();
    const int64_t* y = batch.labels.data<int64_t>();
    for (int64_t i = 0; i < n; ++i) r.correct += p[i] == y[i];
    r.total += n;
  }
  model.train(was_training);
  r.loss = loss_sum / static_cast<double>(r.total);
  r.accuracy = static_cast<double>(r.correct) / static_cast<double>(r.total);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

std::map<std::string, std::string> checkpoint_metadata(const std::string& model, const models::ModelConfig& cfg,
                                                       const std::string& dataset) {
  return {{"format", "s2h-model-v1"},
          {"model", model},
          {"num_classes", std::to_string(cfg.num_classes)},
          {"in_channels", std::to_string(cfg.in_channels)},
          {"image_size", std::to_string(cfg.image_size)},
          {"dataset", dataset},
          {"layout", "activations NHWC; conv weights [out][kh][kw][in]"}};
}

int set_threads(int threads) {
  S2H_CHECK(threads >= 0, "--threads must be >= 0, got {}", threads);
  if (threads > 0) omp_set_num_threads(threads);
  return omp_get_max_threads();
}

}  // namespace s2h::app
