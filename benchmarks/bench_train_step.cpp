// One training step of a model on the CPU or a GPU: forward, cross-entropy,
// backward, SGD (momentum 0.9, Nesterov, wd 5e-4). Random inputs (f32 NHWC,
// as the loader delivers them) and labels, fixed for the run. Each step is
// timed from its start to the end of its GPU work (the device is synchronised
// after every step); prints one JSON line with the median, mean and minimum.
//
// FLOPs: the forward FLOPs of convolutions and linear layers (2 x MACs) are
// counted by a ModuleTracer over one untimed forward (Module::flops); a step is
// counted as 3 x forward (forward, input gradient, weight gradient).
//
// With --s2h the step is S2HPruner's (pruning/s2h.h: soft pass, hard pass
// under a NarrowView, both backwards, the mask step), masks initialised
// uniform (u = 0: the hard network keeps about half of each group's channels)
// and a mask learning rate of 0 (fixed hard widths: see below);
// the FLOPs are then the soft network's 3 x forward plus the hard network's
// 3 x forward at the step's hard widths. --kernels library runs the same step
// with the handwritten fused kernels off (the issue-6 baseline).
//
//   bench_train_step [--model cnn-small] [--batch 128] [--steps 20] [--warmup 3] [--threads N]
//                    [--device cpu|cuda] [--precision fp32|tf32|bf16]
//                    [--image-size 28] [--in-channels 1] [--classes 10] [--imagenet-stem]
//                    [--s2h] [--target 0.35] [--kernels fused|library]
//   GPU ResNet-50 workload of benchmarks/gpu_check.sh:
//   bench_train_step --model resnet50 --device cuda --precision bf16 --batch 256 --image-size 64
//                    --in-channels 3 --classes 200 [--s2h --kernels fused|library]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/precision.h"
#include "engine/s2h.h"
#include "kernels/cuda/runtime.h"
#include "models/registry.h"
#include "pruning/flops.h"
#include "pruning/masks.h"
#include "pruning/s2h.h"

int main(int argc, char** argv) {
  std::string model_name = "cnn-small", device_name = "cpu", precision_name = "fp32";
  int batch = 128, steps = 20, warmup = 3, threads = 0;
  int64_t image_size = 28, in_channels = 1, classes = 10;
  bool imagenet_stem = false, s2h_step = false;
  std::string kernels = "fused";
  double target = 0.35;
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
    else if (!std::strcmp(argv[i], "--device")) device_name = next("--device");
    else if (!std::strcmp(argv[i], "--precision")) precision_name = next("--precision");
    else if (!std::strcmp(argv[i], "--image-size")) image_size = std::atoll(next("--image-size"));
    else if (!std::strcmp(argv[i], "--in-channels")) in_channels = std::atoll(next("--in-channels"));
    else if (!std::strcmp(argv[i], "--classes")) classes = std::atoll(next("--classes"));
    else if (!std::strcmp(argv[i], "--imagenet-stem")) imagenet_stem = true;
    else if (!std::strcmp(argv[i], "--s2h")) s2h_step = true;
    else if (!std::strcmp(argv[i], "--target")) target = std::atof(next("--target"));
    else if (!std::strcmp(argv[i], "--kernels")) kernels = next("--kernels");
    else {
      std::fprintf(stderr, "bench_train_step: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  if (batch <= 0 || steps <= 0 || warmup < 0 || threads < 0 || image_size <= 0 || in_channels <= 0 || classes <= 0) {
    std::fprintf(stderr,
                 "bench_train_step: --batch, --steps, --image-size, --in-channels and --classes must be positive\n");
    return 2;
  }
  if (kernels != "fused" && kernels != "library") {
    std::fprintf(stderr, "bench_train_step: --kernels must be fused or library, got %s\n", kernels.c_str());
    return 2;
  }
  if (!(target > 0 && target < 1)) {
    std::fprintf(stderr, "bench_train_step: --target must be in (0, 1)\n");
    return 2;
  }
  if (threads > 0) omp_set_num_threads(threads);
  using namespace s2h;
  try {
    const Device device = Device::parse(device_name);
    set_precision(parse_precision(precision_name));
    if (device.is_cuda()) cuda::require_device(device.index);
    manual_seed(0);
    models::ModelConfig cfg;
    cfg.num_classes = classes;
    cfg.in_channels = in_channels;
    cfg.image_size = image_size;
    cfg.imagenet_stem = imagenet_stem;
    set_fused_kernels(kernels == "fused");
    ModulePtr model = models::make_model(model_name, cfg);
    model->train();
    // S2HPruner's state: traced on the host before the model moves (as s2h prune does).
    std::vector<models::ChannelGroup> groups;
    std::unique_ptr<pruning::FlopsModel> flops_model;
    std::unique_ptr<pruning::WidthMasks> masks;
    std::unique_ptr<pruning::S2HPruner> pruner;
    if (s2h_step) {
      groups = models::channel_groups(*model);
      flops_model = std::make_unique<pruning::FlopsModel>(*model, groups, pruning::example_input(cfg));
      pruning::MaskOptions mo;
      mo.init = "uniform";
      masks = std::make_unique<pruning::WidthMasks>(*model, groups, mo);
    }
    model->to(device);
    if (s2h_step) {
      pruning::S2HOptions so;
      so.target = target;
      // The mask step runs (its gradients are computed) but moves nothing, so
      // the hard widths stay fixed: cuDNN's once-per-shape algorithm search
      // (library path) then stays in the warm-up instead of the timed steps.
      so.mask_lr = 0;
      pruner = std::make_unique<pruning::S2HPruner>(*model, *flops_model, *masks, so);
    }
    SGDOptions so;
    so.lr = 0.01;
    so.momentum = 0.9;
    so.nesterov = true;
    so.weight_decay = 5e-4;
    SGD opt(model->parameters(), so);
    const Tensor x = Tensor::randn({batch, image_size, image_size, in_channels}).to(device);
    std::vector<int64_t> labels(static_cast<size_t>(batch));
    for (int i = 0; i < batch; ++i) labels[static_cast<size_t>(i)] = i % classes;
    const Tensor y = Tensor::from_vector(labels, {batch}).to(device);
    auto sync = [&] {
      if (device.is_cuda()) cuda::synchronize(device.index);
    };

    std::vector<double> ms;
    double last_loss = 0, hard_ratio = 1;
    int64_t forward_flops = 0;
    {  // the forward FLOPs, counted once (untimed)
      ModuleTracer tracer(*model);
      NoGradGuard ng;
      (void)(*model)(x);
      forward_flops = tracer.total_flops();
    }
    // One step: S2HPruner's, or forward + cross-entropy + backward + SGD. The
    // loss is read on the last step only (reading it waits for the device).
    auto run_step = [&](bool last) {
      if (s2h_step) {
        const pruning::StepStats st = pruner->step(x, y, opt, 1.0);
        last_loss = st.loss;
        hard_ratio = pruner->hard_ratio();
        return;
      }
      Tensor loss = cross_entropy((*model)(x), y);
      opt.zero_grad();
      loss.backward();
      opt.step();
      if (last) last_loss = loss.item();
    };
    for (int s = 0; s < warmup + steps; ++s) {
      sync();
      const auto t0 = std::chrono::steady_clock::now();
      run_step(s == warmup + steps - 1);
      sync();
      const double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (s >= warmup) ms.push_back(t);
    }
    std::vector<double> sorted = ms;
    std::sort(sorted.begin(), sorted.end());
    double mean = 0;
    for (double t : ms) mean += t / static_cast<double>(ms.size());
    const double median = sorted[sorted.size() / 2];
    // The S2H step: the soft network's 3 x forward plus the hard network's at its hard widths
    // (hard_ratio() is over the budget's scope, the whole network by default).
    const double step_flops = 3.0 * static_cast<double>(forward_flops) * (s2h_step ? 1.0 + hard_ratio : 1.0);
    const std::string dev_desc = device.is_cuda() ? cuda::device_name(device.index) : "cpu";
    const double peak_mb =
        device.is_cuda() ? static_cast<double>(cuda::pool_stats(device.index).used_high) / 1048576.0 : 0.0;
    std::printf(
        "{\"impl\": \"s2h\", \"model\": \"%s\", \"device\": \"%s\", \"precision\": \"%s\", \"batch\": %d, "
        "\"image_size\": %lld, \"classes\": %lld, \"params\": %lld, \"threads\": %d, \"steps\": %d, "
        "\"median_ms\": %.3f, \"mean_ms\": %.3f, \"min_ms\": %.3f, \"images_per_s\": %.1f, "
        "\"forward_flops\": %lld, \"step_flops\": %lld, \"tflops\": %.2f, \"peak_mem_mb\": %.0f, "
        "\"last_loss\": %.5f, \"step\": \"%s\", \"kernels\": \"%s\", \"hard_flops_ratio\": %.4f}\n",
        model_name.c_str(), dev_desc.c_str(), precision_name.c_str(), batch, static_cast<long long>(image_size),
        static_cast<long long>(classes), static_cast<long long>(model->num_parameters()), omp_get_max_threads(),
        steps, median, mean, sorted.front(), 1000.0 * batch / median, static_cast<long long>(forward_flops),
        static_cast<long long>(step_flops),
        step_flops / (median * 1e-3) / 1e12, peak_mb, last_loss, s2h_step ? "s2h" : "train", kernels.c_str(),
        s2h_step ? hard_ratio : 1.0);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_train_step: %s\n", e.what());
    return 1;
  }
  return 0;
}
