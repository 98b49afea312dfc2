// One training step of a model (default cnn-small, batch 128) on the CPU:
// forward, cross-entropy, backward, SGD (momentum 0.9, Nesterov, wd 5e-4).
// Prints one JSON line with the median and mean time per step.
//
//   bench_train_step [--model cnn-small] [--batch 128] [--steps 20] [--warmup 3] [--threads N]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/s2h.h"
#include "models/registry.h"

int main(int argc, char** argv) {
  std::string model_name = "cnn-small";
  int batch = 128, steps = 20, warmup = 3, threads = 0;
  for (int i = 1; i < argc; ++i) {
    auto next = [&](const char* flag) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_train_step: %s needs a value\n", flag);
        std::exit(2);
      }
      return argv[++i];
    };
    if (!std::strcmp(argv[i], "--model")) model_name = next("--model");
    else if (!std::strcmp(argv[i], "--batch")) batch = std::atoi(next("--batch"));
    else if (!std::strcmp(argv[i], "--steps")) steps = std::atoi(next("--steps"));
    else if (!std::strcmp(argv[i], "--warmup")) warmup = std::atoi(next("--warmup"));
    else if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(next("--threads"));
    else {
      std::fprintf(stderr, "bench_train_step: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  if (batch <= 0 || steps <= 0 || warmup < 0 || threads < 0) {
    std::fprintf(stderr, "bench_train_step: --batch and --steps must be positive\n");
    return 2;
  }
  if (threads > 0) omp_set_num_threads(threads);
  using namespace s2h;
  manual_seed(0);
  models::ModelConfig cfg;  // 28x28x1, 10 classes
  ModulePtr model = models::make_model(model_name, cfg);
  model->train();
  SGDOptions so;
  so.lr = 0.01;
  so.momentum = 0.9;
  so.nesterov = true;
  so.weight_decay = 5e-4;
  SGD opt(model->parameters(), so);
  Tensor x = Tensor::randn({batch, cfg.image_size, cfg.image_size, cfg.in_channels});
  std::vector<int64_t> labels(static_cast<size_t>(batch));
  for (int i = 0; i < batch; ++i) labels[static_cast<size_t>(i)] = i % cfg.num_classes;
  Tensor y = Tensor::from_vector(labels, {batch});

  std::vector<double> ms;
  double last_loss = 0;
  for (int s = 0; s < warmup + steps; ++s) {
    const auto t0 = std::chrono::steady_clock::now();
    Tensor loss = cross_entropy((*model)(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
    last_loss = loss.item();
    const double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (s >= warmup) ms.push_back(t);
  }
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  double mean = 0;
  for (double t : ms) mean += t / static_cast<double>(ms.size());
  std::printf(
      "{\"impl\": \"s2h\", \"model\": \"%s\", \"batch\": %d, \"threads\": %d, \"steps\": %d, \"median_ms\": %.3f, "
      "\"mean_ms\": %.3f, \"min_ms\": %.3f, \"images_per_s\": %.1f, \"last_loss\": %.5f}\n",
      model_name.c_str(), batch, omp_get_max_threads(), steps, sorted[sorted.size() / 2], mean, sorted.front(),
      1000.0 * batch / sorted[sorted.size() / 2], last_loss);
  return 0;
}
