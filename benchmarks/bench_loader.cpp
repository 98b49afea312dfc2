// Decoded-and-augmented images per second through data::Loader (batch 128),
// with the training transforms a run would use: CIFAR-10 JPEG with crop-flip
// at 32x32, Tiny ImageNet with rrc-flip at 64x64. Each data set is loaded
// first (timed separately: reading and checking every file), then read with 1
// and 2 worker threads while the consumer only takes the batches. Prints a
// table and writes JSON (--json).
//
//   bench_loader [--cifar-dir /work/datasets/cifar-10-jpeg] [--tiny-dir /work/datasets/tiny-imagenet-200]
//                [--batches 200] [--warmup 10] [--json PATH]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "data/dataset.h"
#include "data/image_folder.h"
#include "data/transforms.h"
#include "engine/error.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  return "unknown";
}

struct Result {
  std::string dataset, transform;
  int workers = 0;
  int64_t batches = 0;
  double seconds = 0, images_per_s = 0;
};

// Reads `batches` batches of an epoch with `workers` threads. A first pass over
// `warmup` batches warms the caches; the timed pass then starts the loader
// again (empty queue) after them, so prefetched batches are not counted free.
Result measure(const s2h::data::SourcePtr& src, const std::string& transform, int workers, int64_t batches,
               int64_t warmup) {
  s2h::data::LoaderOptions opt;
  opt.batch_size = 128;
  opt.shuffle = true;
  opt.seed = 1;
  opt.workers = workers;
  opt.prefetch = 4;
  s2h::data::Loader loader(src, opt);
  S2H_CHECK(loader.num_batches() >= warmup + batches, "{}: {} batches per epoch, fewer than the {} asked for",
            src->name(), loader.num_batches(), warmup + batches);
  loader.start();
  for (int64_t b = 0; b < warmup; ++b) (void)loader.next();
  const auto t0 = Clock::now();
  loader.start(warmup);
  int64_t images = 0;
  for (int64_t b = 0; b < batches; ++b) images += loader.next()->labels.size(0);
  const double s = seconds_since(t0);
  return {src->name(), transform, workers, batches, s, static_cast<double>(images) / s};
}

}  // namespace

int main(int argc, char** argv) {
  std::string cifar_dir = "/work/datasets/cifar-10-jpeg", tiny_dir = "/work/datasets/tiny-imagenet-200", json_path;
  int64_t batches = 200, warmup = 10;
  for (int i = 1; i < argc; ++i) {
    auto next = [&](const char* flag) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_loader: %s needs a value\n", flag);
        std::exit(2);
      }
      return argv[++i];
    };
    if (!std::strcmp(argv[i], "--cifar-dir"))
      cifar_dir = next("--cifar-dir");
    else if (!std::strcmp(argv[i], "--tiny-dir"))
      tiny_dir = next("--tiny-dir");
    else if (!std::strcmp(argv[i], "--batches"))
      batches = std::atoll(next("--batches"));
    else if (!std::strcmp(argv[i], "--warmup"))
      warmup = std::atoll(next("--warmup"));
    else if (!std::strcmp(argv[i], "--json"))
      json_path = next("--json");
    else {
      std::fprintf(stderr, "bench_loader: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  if (batches <= 0 || warmup < 0) {
    std::fprintf(stderr, "bench_loader: --batches must be positive and --warmup >= 0\n");
    return 2;
  }
  namespace data = s2h::data;
  try {
    struct Case {
      std::string transform;
      data::SourcePtr source;
      double load_s = 0;
    };
    std::vector<Case> cases;
    if (std::filesystem::is_directory(cifar_dir)) {
      const auto t0 = Clock::now();
      auto src = data::load_image_folder(
          cifar_dir + "/train", data::train_transform("crop-flip", 32, data::cifar10_mean(), data::cifar10_std()),
          "cifar10-jpeg/train");
      cases.push_back({"crop-flip 32", src, seconds_since(t0)});
    } else {
      std::fprintf(stderr, "bench_loader: %s not found, skipping CIFAR-10\n", cifar_dir.c_str());
    }
    if (std::filesystem::is_directory(tiny_dir)) {
      const auto t0 = Clock::now();
      auto src = data::load_tiny_imagenet(
          tiny_dir, "train",
          data::train_transform("rrc-flip", 64, data::tiny_imagenet_mean(), data::tiny_imagenet_std()));
      cases.push_back({"rrc-flip 64", src, seconds_since(t0)});
    } else {
      std::fprintf(stderr, "bench_loader: %s not found, skipping Tiny ImageNet\n", tiny_dir.c_str());
    }
    if (cases.empty()) {
      std::fprintf(stderr, "bench_loader: no data set found\n");
      return 1;
    }

    const std::string cpu = cpu_model();
    const unsigned cores = std::thread::hardware_concurrency();
    std::printf("CPU: %s (%u hardware threads); batch 128, %lld timed batches after %lld warm-up\n", cpu.c_str(), cores,
                static_cast<long long>(batches), static_cast<long long>(warmup));
    std::printf("%-22s %-13s %8s %8s %12s\n", "dataset", "transform", "load s", "workers", "images/s");
    nlohmann::json out;
    out["cpu"] = cpu;
    out["hardware_threads"] = cores;
    out["batch_size"] = 128;
    out["batches"] = batches;
    out["warmup_batches"] = warmup;
    out["results"] = nlohmann::json::array();
    for (const Case& c : cases)
      for (int workers : {1, 2}) {
        const Result r = measure(c.source, c.transform, workers, batches, warmup);
        std::printf("%-22s %-13s %8.2f %8d %12.0f\n", r.dataset.c_str(), r.transform.c_str(), c.load_s, r.workers,
                    r.images_per_s);
        std::fflush(stdout);
        out["results"].push_back({{"dataset", r.dataset},
                                  {"transform", r.transform},
                                  {"images", c.source->size()},
                                  {"load_s", c.load_s},
                                  {"workers", r.workers},
                                  {"seconds", r.seconds},
                                  {"images_per_s", r.images_per_s}});
      }
    if (!json_path.empty()) {
      std::ofstream f(json_path);
      f << out.dump(2) << "\n";
      if (!f) {
        std::fprintf(stderr, "bench_loader: cannot write %s\n", json_path.c_str());
        return 1;
      }
    }
  } catch (const s2h::Error& e) {
    std::fprintf(stderr, "bench_loader: %s\n", e.what());
    return 1;
  }
  return 0;
}
