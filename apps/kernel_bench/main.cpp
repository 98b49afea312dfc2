// kernel_bench: the handwritten fused kernels of issue 6 timed and verified
// against their baselines on one GPU, in one run:
//   peak       cuBLAS bf16 GEMM 8192^3: the measured peak every TFLOP/s is a fraction of;
//   masked     soft masked conv (out_scale and in_scale, mask gradients on) forward, dgrad, wgrad on
//              ResNet-50 layers (CIFAR stem, 64x64 input, batch 256) vs cuDNN conv + a separate mask
//              multiply, and vs cuDNN conv alone (goal: >= 0.9x cuDNN alone on the 3x3 layers);
//   hard       hard conv at 15/35/55% of the FLOPs (sqrt(f) of the input and output channels, multiples
//              of 8; prefix and index list) vs the dense masked conv time x the kept-FLOPs fraction
//              (goal: <= 1.3x);
//   dual       the dual soft/hard forward vs the two separate launches (goal: <= 0.8x their time);
//   attention  fused attention forward, backward, forward+backward at ~16k tokens per batch, s 256-4096,
//              head dim 64 and 128 (the PyTorch SDPA baseline comes from benchmarks/torch_attention.py
//              and is joined by benchmarks/gpu_results.py).
// Timing: CUDA events on the compute stream around each call, warm-up, median of --reps, the L2 cache
// flushed (a 256 MB read) before every repetition, a GPU-side spin first so that host launch gaps never
// fall inside the events. Inputs are random bf16 from cuda::device_alloc. Every benchmarked output is
// first checked (outputs poisoned with NaN beforehand): against exact fp64 references at sampled points
// (corners included) and, where a library computes the same thing, against it over the whole tensor; a
// row passes when its error is within max(--tol, 2x the library's own error against the same
// reference) and nothing is left non-finite. A wrong kernel cannot post a good time: its row says FAIL
// and the exit code is 1.
//
//   kernel_bench [--sections peak,masked,hard,dual,attention] [--json PATH] [--reps 20] [--warmup 3] ...
//   kernel_bench --list     the plan with each item's FLOP and byte floors (needs no GPU)
// Without a GPU: prints "no GPU: <reason>" and exits 0 (1 with --require-gpu).
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "apps/kernel_bench/bench_kernels.h"
#include "kernels/bf16.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/blas.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/conv.h"
#include "kernels/cuda/masked_conv.h"
#include "kernels/cuda/runtime.h"

namespace {

using namespace s2h;
using json = nlohmann::ordered_json;
using cuda::AttentionShape;
using cuda::MaskedConvArgs;
using cuda::MaskedConvShape;
using kbench::ConvPass;

// Nominal H100 SXM numbers, for --list and the floors until a peak is measured.
constexpr double kNominalPeakTflops = 989.0;     // dense bf16 tensor cores
constexpr double kNominalBandwidthGBs = 3350.0;  // HBM3
constexpr uint64_t kSpinNs = 3'000'000;           // 3 ms ahead of the host before each timed series

struct Options {
  std::vector<std::string> sections{"peak", "masked", "hard", "dual", "attention"};
  std::string json_path;
  bool require_gpu = false, list = false;
  int device = 0, warmup = 3, reps = 20, flush_mb = 256;
  int64_t batch = 256, image = 64;
  std::vector<std::string> shapes{"all"};
  std::vector<double> fractions{0.15, 0.35, 0.55};
  int64_t tokens = 16384, model_dim = 768;
  std::vector<int64_t> seqs{256, 512, 1024, 2048, 4096};
  std::vector<int64_t> head_dims{64, 128};
  bool head_scale = false, no_scale_grads = false;
  std::string weight_dtype = "bf16";
  int64_t samples = 4096, wgrad_samples = 256;
  double tol = 2e-2, peak_tflops = 0, bandwidth_gbs = kNominalBandwidthGBs;
  int gemm_size = 8192;
  uint32_t seed = 1;
};

bool has(const std::vector<std::string>& v, const std::string& s) { return std::find(v.begin(), v.end(), s) != v.end(); }

// ------------------------------------------------------------------ the workloads
// The ResNet-50 layers of the CIFAR-stem configuration (3x3/1 stem, no max-pool: a 64x64 input stays
// 64x64 through layer1); stride 2 sits on the 3x3 conv (v1.5) and on the 1x1 downsample.
struct ConvLayer {
  std::string name;
  int64_t c, o, k, stride, h;  // input channels, output channels, kernel, stride, input height = width
};

std::vector<ConvLayer> resnet50_layers(int64_t image) {
  const int64_t s1 = image, s2 = image / 2, s3 = image / 4;
  return {
      {"l1.3x3", 64, 64, 3, 1, s1},       {"l2.3x3", 128, 128, 3, 1, s2},    {"l3.3x3", 256, 256, 3, 1, s3},
      {"l4.3x3", 512, 512, 3, 1, image / 8}, {"l2.3x3s2", 128, 128, 3, 2, s1}, {"l3.3x3s2", 256, 256, 3, 2, s2},
      {"l4.3x3s2", 512, 512, 3, 2, s3},   {"l1.1x1in", 64, 64, 1, 1, s1},    {"l1.1x1out", 64, 256, 1, 1, s1},
      {"l1.1x1red", 256, 64, 1, 1, s1},   {"l3.1x1red", 1024, 256, 1, 1, s3}, {"l2.down", 256, 512, 1, 2, s1},
  };
}

std::vector<ConvLayer> selected_layers(const Options& o) {
  std::vector<ConvLayer> out;
  for (const ConvLayer& l : resnet50_layers(o.image)) {
    const bool pick = has(o.shapes, "all") || has(o.shapes, l.name) || (l.k == 3 && has(o.shapes, "3x3")) ||
                      (l.k == 1 && has(o.shapes, "1x1"));
    if (pick) out.push_back(l);
  }
  return out;
}

MaskedConvShape conv_shape(const ConvLayer& l, int64_t n, int64_t c, int64_t o) {
  MaskedConvShape s;
  s.n = n;
  s.h = s.w = l.h;
  s.c = c;
  s.o = o;
  s.k = l.k;
  s.stride = l.stride;
  s.pad = l.k / 2;
  s.ho = s.wo = (l.h + 2 * s.pad - l.k) / l.stride + 1;
  s.w_rows = l.o;
  s.w_cols = l.c;
  return s;
}

std::string shape_text(const MaskedConvShape& s) {
  std::string t = fmt::format("n{} {}x{} k{}s{} ", s.n, s.h, s.w, s.k, s.stride);
  if (s.c == s.w_cols && s.o == s.w_rows) return t + fmt::format("{}->{}", s.c, s.o);
  return t + fmt::format("{}/{}->{}/{}", s.c, s.w_cols, s.o, s.w_rows);
}

json shape_json(const MaskedConvShape& s) {
  return {{"n", s.n}, {"h", s.h}, {"w", s.w}, {"c", s.c}, {"o", s.o}, {"k", s.k}, {"stride", s.stride},
          {"pad", s.pad}, {"ho", s.ho}, {"wo", s.wo}, {"w_rows", s.w_rows}, {"w_cols", s.w_cols}};
}

double conv_flops(const MaskedConvShape& s) {
  return 2.0 * static_cast<double>(s.n * s.ho * s.wo) * static_cast<double>(s.o) * static_cast<double>(s.c * s.k * s.k);
}

// The least bytes a pass must move (bf16 activations, weight of `wbytes` per element, each tensor read or
// written once): forward x + W -> y; dgrad dy + W (+ x for the input-mask gradient) -> dx; wgrad x + dy
// (+ W for the output-mask gradient) -> dW. A hard layer reads only its kept weight entries.
double conv_bytes(ConvPass p, const MaskedConvShape& s, size_t wbytes, bool scale_grads) {
  const double x = 2.0 * s.n * s.h * s.w * s.c, y = 2.0 * s.n * s.ho * s.wo * s.o;
  const double w = static_cast<double>(wbytes) * s.o * s.k * s.k * s.c;
  switch (p) {
    case ConvPass::Forward: return x + w + y;
    case ConvPass::Data: return y + w + x + (scale_grads ? x : 0.0);
    case ConvPass::Weight: return x + y + w + (scale_grads ? w : 0.0);
  }
  return 0;
}

const char* pass_name(ConvPass p) { return p == ConvPass::Forward ? "fwd" : p == ConvPass::Data ? "dgrad" : "wgrad"; }

int64_t round8(double v) { return std::max<int64_t>(8, static_cast<int64_t>(std::llround(v / 8.0)) * 8); }

struct HardWidths {
  int64_t c, o;
  double fraction;  // the kept FLOPs: c o / (C O)
};
HardWidths hard_widths(const ConvLayer& l, double f) {
  const double r = std::sqrt(f);
  HardWidths hw{std::min(l.c, round8(l.c * r)), std::min(l.o, round8(l.o * r)), 0};
  hw.fraction = static_cast<double>(hw.c * hw.o) / static_cast<double>(l.c * l.o);
  return hw;
}

struct AttnCase {
  AttentionShape s;
  std::string text;
};
std::vector<AttnCase> attention_cases(const Options& o) {
  std::vector<AttnCase> out;
  for (int64_t d : o.head_dims) {
    for (int64_t s : o.seqs) {
      AttentionShape a;
      a.d = d;
      a.h = o.model_dim / d;
      a.s = s;
      a.b = std::max<int64_t>(1, o.tokens / s);
      a.stride_h = d;
      a.stride_s = a.h * d;
      a.stride_b = s * a.h * d;
      a.softmax_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
      out.push_back({a, fmt::format("b{} s{} h{} d{}", a.b, a.s, a.h, a.d)});
    }
  }
  return out;
}

double attn_fwd_flops(const AttentionShape& a) {
  return 4.0 * static_cast<double>(a.b * a.h) * static_cast<double>(a.s) * static_cast<double>(a.s) * a.d;
}
// forward: q, k, v read, out written (+ lse); backward: q, k, v, out, dout read, dq, dk, dv written (+ lse, delta).
double attn_bytes(const AttentionShape& a, bool backward) {
  const double t = 2.0 * a.b * a.s * a.h * a.d, rows = 4.0 * a.b * a.h * a.s;
  return backward ? 8 * t + 2 * rows : 4 * t + rows;
}

// Floors of an item: FLOPs at the peak, bytes at the bandwidth; the larger one binds.
json floors(double flops, double bytes, double peak_tflops, double bw_gbs) {
  const double f = flops / (peak_tflops * 1e12) * 1e3, b = bytes / (bw_gbs * 1e9) * 1e3;
  return {{"flops", flops}, {"min_bytes", bytes}, {"flop_floor_ms", f}, {"byte_floor_ms", b},
          {"bound", f >= b ? "flops" : "bytes"}};
}

// ------------------------------------------------------------------ device memory and timing
class DevBuf {
 public:
  DevBuf() = default;
  DevBuf(size_t bytes, int device) : device_(device), bytes_(bytes) {
    p_ = cuda::device_alloc(std::max<size_t>(bytes, 16), device);
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf(DevBuf&& o) noexcept { *this = std::move(o); }
  DevBuf& operator=(DevBuf&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(device_, o.device_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~DevBuf() {
    if (p_) cuda::device_free(p_, device_);
  }
  void* get() const { return p_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(p_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* p_ = nullptr;
  int device_ = 0;
  size_t bytes_ = 0;
};

// cuDNN's scratch: one buffer that grows (only during the first, untimed calls of a geometry).
class Workspace {
 public:
  explicit Workspace(int device) : device_(device) {}
  ~Workspace() {
    if (p_) cuda::device_free(p_, device_);
  }
  cuda::WorkspaceFn fn() {
    return [this](size_t n) -> void* {
      if (n > cap_) {
        if (p_) cuda::device_free(p_, device_);
        p_ = nullptr;
        cap_ = 0;
        p_ = cuda::device_alloc(n, device_);
        cap_ = n;
      }
      return p_;
    };
  }

 private:
  int device_;
  void* p_ = nullptr;
  size_t cap_ = 0;
};

class Timer {
 public:
  Timer(int device, const Options& o)
      : stream_(cuda::stream(device)), warmup_(o.warmup), reps_(o.reps), flush_bytes_(static_cast<size_t>(o.flush_mb) << 20) {
    if (flush_bytes_) {
      flush_ = DevBuf(flush_bytes_, device);
      CUDA_CHECK(cudaMemsetAsync(flush_.get(), 0x3c, flush_bytes_, stream_));
    }
    events_.resize(2 * static_cast<size_t>(reps_));
    for (auto& e : events_) CUDA_CHECK(cudaEventCreate(&e));
  }
  ~Timer() {
    for (auto& e : events_) cudaEventDestroy(e);
  }
  // The median over the repetitions of the time between events around fn (ms).
  double median_ms(const std::function<void()>& fn) {
    for (int i = 0; i < warmup_; ++i) fn();
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    kbench::spin_ns(kSpinNs, stream_);
    for (int r = 0; r < reps_; ++r) {
      if (flush_bytes_) kbench::read_through(flush_.get(), flush_bytes_, stream_);
      CUDA_CHECK(cudaEventRecord(events_[2 * r], stream_));
      fn();
      CUDA_CHECK(cudaEventRecord(events_[2 * r + 1], stream_));
    }
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::vector<double> ms;
    for (int r = 0; r < reps_; ++r) {
      float t = 0;
      CUDA_CHECK(cudaEventElapsedTime(&t, events_[2 * r], events_[2 * r + 1]));
      ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    const size_t m = ms.size() / 2;
    return ms.size() % 2 ? ms[m] : 0.5 * (ms[m - 1] + ms[m]);
  }

 private:
  cuda::Stream stream_;
  int warmup_, reps_;
  size_t flush_bytes_;
  DevBuf flush_;
  std::vector<cudaEvent_t> events_;
};

// ------------------------------------------------------------------ verification
struct ErrStat {
  double diff = 0, ref = 0;
  bool nonfinite = false;
  double rel() const {
    if (nonfinite) return std::numeric_limits<double>::infinity();
    return ref > 0 ? diff / ref : diff;
  }
};

// Adds (got, ref) pairs: max |got - ref| and max |ref|; a non-finite candidate value fails.
void accumulate(ErrStat& e, double got, double ref) {
  if (!std::isfinite(got)) {
    e.nonfinite = true;
    return;
  }
  e.diff = std::max(e.diff, std::fabs(got - ref));
  e.ref = std::max(e.ref, std::fabs(ref));
}

json num(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

// The exact reference of one pass of one layer at sampled points, computed once; any output buffer of
// that pass can then be checked against it.
class ConvChecker {
 public:
  ConvChecker(ConvPass pass, const kbench::ConvRef& r, int64_t count, uint64_t seed, int device)
      : pass_(pass), shape_(r.s), device_(device) {
    const MaskedConvShape& s = r.s;
    std::array<int64_t, 4> dims{};
    if (pass == ConvPass::Forward) dims = {s.n, s.ho, s.wo, s.o};
    else if (pass == ConvPass::Data) dims = {s.n, s.h, s.w, s.c};
    else dims = {s.o, s.k, s.k, s.c};
    // The 16 corners first (padding and tile edges live there), then uniform draws.
    std::vector<int64_t> host;
    for (int corner = 0; corner < 16 && static_cast<int64_t>(host.size()) / 4 < count; ++corner)
      for (int d = 0; d < 4; ++d) host.push_back((corner >> d) & 1 ? dims[d] - 1 : 0);
    std::mt19937_64 rng(seed);
    while (static_cast<int64_t>(host.size()) / 4 < count)
      for (int d = 0; d < 4; ++d) host.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(dims[d])));
    count_ = static_cast<int64_t>(host.size()) / 4;
    samples_ = DevBuf(host.size() * sizeof(int64_t), device);
    cuda::copy_to_device(samples_.get(), host.data(), host.size() * sizeof(int64_t), device, false);
    DevBuf ref(count_ * sizeof(double), device);
    got_ = DevBuf(count_ * sizeof(double), device);
    kbench::conv_reference(pass, r, samples_.as<int64_t>(), count_, ref.as<double>(), cuda::stream(device));
    ref_.resize(static_cast<size_t>(count_));
    cuda::copy_to_host(ref_.data(), ref.get(), count_ * sizeof(double), device);
  }
  // `a` gives the indices through which a full weight-shaped dW is read (null for compact / prefix).
  ErrStat check(const void* out, DType dtype, const MaskedConvArgs& a) {
    kbench::conv_gather(pass_, shape_, a, samples_.as<int64_t>(), count_, out, dtype, got_.as<double>(),
                        cuda::stream(device_));
    std::vector<double> got(static_cast<size_t>(count_));
    cuda::copy_to_host(got.data(), got_.get(), count_ * sizeof(double), device_);
    ErrStat e;
    for (size_t i = 0; i < got.size(); ++i) accumulate(e, got[i], ref_[i]);
    return e;
  }
  int64_t count() const { return count_; }

 private:
  ConvPass pass_;
  MaskedConvShape shape_;
  int device_;
  int64_t count_ = 0;
  DevBuf samples_, got_;
  std::vector<double> ref_;
};

// The verdict of one row: `err` against the exact reference, within max(tol, 2x the library's error
// against the same reference); nothing non-finite; every extra error (mask gradients) within tol.
json verdict(const ErrStat& err, const std::optional<ErrStat>& lib, int64_t samples, int64_t nonfinite, double tol,
             const std::optional<kbench::Compare>& vs_lib = std::nullopt, const json& extra = json::object()) {
  // A library that is itself non-finite (or infinitely wrong) at the samples sets no bound: then tol alone.
  const double tol_eff = lib && std::isfinite(lib->rel()) ? std::max(tol, 2 * lib->rel()) : tol;
  bool ok = nonfinite == 0 && err.rel() <= tol_eff;
  json v = {{"err", num(err.rel())}, {"err_lib", lib ? num(lib->rel()) : json(nullptr)}, {"tolerance", tol_eff},
            {"samples", samples}, {"nonfinite", nonfinite}};
  if (vs_lib) v["vs_lib_full"] = num(vs_lib->rel());
  for (const auto& [k, e] : extra.items()) {
    v[k] = e;
    if (!e.is_number() || e.get<double>() > tol) ok = false;
  }
  v["ok"] = ok;
  return v;
}

void poison(const DevBuf& b, cuda::Stream st) { CUDA_CHECK(cudaMemsetAsync(b.get(), 0xff, b.bytes(), st)); }  // NaN in f32 and bf16

int64_t nonfinite_of(const void* p, DType dt, int64_t n, int device) {
  return kbench::compare(p, dt, nullptr, DType::F32, n, device).nonfinite;
}

// max |got - ref| / max |ref| of two host vectors.
double rel_err(const std::vector<double>& got, const std::vector<double>& ref) {
  ErrStat e;
  for (size_t i = 0; i < got.size(); ++i) accumulate(e, got[i], ref[i]);
  return e.rel();
}

// ------------------------------------------------------------------ rows and the report
struct Report {
  json doc;
  std::string path;
  int verify_failures = 0, errors = 0, goals_met = 0, goals_missed = 0;
  double peak_tflops = kNominalPeakTflops;
  bool peak_measured = false;

  void write(bool complete) {
    doc["complete"] = complete;
    doc["summary"] = {{"rows", doc["rows"].size()}, {"verify_failures", verify_failures}, {"errors", errors},
                      {"goals_met", goals_met}, {"goals_missed", goals_missed}};
    if (path.empty()) return;
    // Written beside the target, then renamed over it: a run killed by its timeout mid-write must leave
    // the previous complete file, not a truncated one that the results script cannot read at all.
    const std::string tmp = path + ".tmp";
    {
      std::ofstream f(tmp);
      if (!f) {
        std::fprintf(stderr, "kernel_bench: cannot write %s\n", tmp.c_str());
        return;
      }
      f << doc.dump(2) << "\n";
      if (!f.flush()) {
        std::fprintf(stderr, "kernel_bench: cannot write %s\n", tmp.c_str());
        return;
      }
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
      std::fprintf(stderr, "kernel_bench: cannot rename %s to %s\n", tmp.c_str(), path.c_str());
  }
};

std::string fmt_ms(const json& v) { return v.is_number() ? fmt::format("{:.4f}", v.get<double>()) : "-"; }

void print_header() {
  fmt::print("{:<18} {:<7} {:<34} {:>9} {:>7} {:>6} {:>6}  {:<28} {:>9} {:>6} {:<6}  {:>8} {}\n", "kernel", "pass",
             "shape", "ms", "TFLOP/s", "%peak", "%floor", "baseline", "base ms", "ratio", "goal", "max err", "verify");
}

void print_row(const json& r) {
  const bool has_ms = r.contains("ms") && r["ms"].is_number();
  std::string verify = "-", err = "-";
  if (r.contains("verify")) {
    verify = r["verify"]["ok"].get<bool>() ? "ok" : "FAIL";
    err = r["verify"]["err"].is_number() ? fmt::format("{:.2e}", r["verify"]["err"].get<double>()) : "inf";
  }
  if (r.contains("error")) verify = "ERROR";
  std::string first = fmt::format("{:<18} {:<7} {:<34} {:>9} {:>7} {:>6} {:>6}", r.value("kernel", ""),
                                  r.value("pass", ""), r.value("shape", ""), has_ms ? fmt_ms(r["ms"]) : "-",
                                  has_ms ? fmt::format("{:.1f}", r["tflops"].get<double>()) : "-",
                                  has_ms ? fmt::format("{:.1f}", r["pct_peak"].get<double>()) : "-",
                                  has_ms && r.contains("pct_floor") ? fmt::format("{:.0f}", r["pct_floor"].get<double>())
                                                                    : "-");
  const json bl = r.value("baselines", json::array());
  if (bl.empty()) {
    fmt::print("{}  {:<28} {:>9} {:>6} {:<6}  {:>8} {}\n", first, "", "", "", "", err, verify);
  } else {
    for (size_t i = 0; i < bl.size(); ++i) {
      const json& b = bl[i];
      std::string ratio = b["ratio"].is_number() ? fmt::format("{:.2f}", b["ratio"].get<double>()) : "-";
      if (b.contains("meets_goal") && b["meets_goal"].is_boolean()) ratio += b["meets_goal"].get<bool>() ? " " : "!";
      fmt::print("{}  {:<28} {:>9} {:>6} {:<6}  {:>8} {}\n", i == 0 ? first : std::string(first.size(), ' '),
                 b.value("name", ""), fmt_ms(b["ms"]), ratio, b.value("goal", ""), i == 0 ? err : "",
                 i == 0 ? verify : "");
    }
  }
  if (r.contains("error")) fmt::print("    error: {}\n", r["error"].get<std::string>());
  std::fflush(stdout);
}

// A baseline entry: ratio = baseline_ms / ms ("speed", above 1 when ours is faster) or ms / baseline_ms
// ("time", below 1 when ours is faster); goal like ">= 0.9" or "<= 1.3" on that ratio (may be empty).
json baseline(const std::string& name, double base_ms, double ms, bool speed, const std::string& goal) {
  const double ratio = speed ? base_ms / ms : ms / base_ms;
  json b = {{"name", name}, {"ms", num(base_ms)}, {"ratio", num(ratio)},
            {"ratio_def", speed ? "baseline_ms / ms" : "ms / baseline_ms"}, {"goal", goal}};
  if (!goal.empty()) {
    const double g = std::stod(goal.substr(3));
    b["meets_goal"] = goal.rfind(">=", 0) == 0 ? ratio >= g : ratio <= g;
  }
  return b;
}

struct Ctx {
  const Options& o;
  int device;
  cuda::Stream st;
  DType wdt;
  Timer& timer;
  Workspace& ws;
  Report& rep;

  // Finishes a row (throughput, peak and floor fractions, goals) and records and prints it.
  void add(json row) {
    if (row.contains("ms") && row["ms"].is_number()) {
      const double ms = row["ms"].get<double>();
      const double tflops = row["flops"].get<double>() / (ms * 1e-3) / 1e12;
      row["tflops"] = tflops;
      row["pct_peak"] = 100.0 * tflops / rep.peak_tflops;
      const double floor_ms = std::max(row["flop_floor_ms"].get<double>(), row["byte_floor_ms"].get<double>());
      row["pct_floor"] = 100.0 * floor_ms / ms;
    }
    if (row.contains("error")) ++rep.errors;
    if (row.contains("verify") && !row["verify"]["ok"].get<bool>()) ++rep.verify_failures;
    for (const json& b : row.value("baselines", json::array()))
      if (b.contains("meets_goal")) ++(b["meets_goal"].get<bool>() ? rep.goals_met : rep.goals_missed);
    print_row(row);
    rep.doc["rows"].push_back(std::move(row));
    rep.write(false);  // every row survives a later crash or timeout
  }
  json row(const std::string& section, const std::string& kernel, const std::string& pass, const std::string& name,
           const std::string& shape, double flops, double bytes) const {
    json r = {{"section", section}, {"kernel", kernel}, {"pass", pass}, {"shape_name", name}, {"shape", shape}};
    r.update(floors(flops, bytes, rep.peak_tflops, o.bandwidth_gbs));
    return r;
  }
  uint32_t seed(uint32_t salt) const { return o.seed * 7919u + salt; }
};

json conv_row(const Ctx& c, const std::string& section, const std::string& kernel, ConvPass p, const ConvLayer& l,
              const MaskedConvShape& s, bool scale_grads) {
  json r = c.row(section, kernel, pass_name(p), l.name, shape_text(s), conv_flops(s),
                 conv_bytes(p, s, dtype_size(c.wdt), scale_grads));
  r["conv"] = shape_json(s);
  return r;
}

cuda::ConvGeometry geometry(const MaskedConvShape& s) {
  cuda::ConvGeometry g;
  g.n = s.n;
  g.h = s.h;
  g.w = s.w;
  g.c = s.c;
  g.o = s.o;
  g.kh = g.kw = s.k;
  g.ho = s.ho;
  g.wo = s.wo;
  g.sh = g.sw = s.stride;
  g.ph = g.pw = s.pad;
  return g;
}

// Runs fn and records an exception as the row's error (a sticky CUDA error then fails the later rows too).
template <class Fn>
void guarded(json& row, Fn&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    row["error"] = e.what();
  }
}

// ------------------------------------------------------------------ peak
void run_peak(Ctx& c) {
  const int64_t n = c.o.gemm_size;
  json row = c.row("peak", "cublas_gemm_bf16", "gemm", fmt::format("{0}^3", n), fmt::format("m=n=k={}", n),
                   2.0 * n * n * n, 3.0 * 2 * n * n);
  guarded(row, [&] {
    DevBuf a(static_cast<size_t>(n * n) * 2, c.device), b(static_cast<size_t>(n * n) * 2, c.device),
        out(static_cast<size_t>(n * n) * 2, c.device);
    kbench::fill_uniform(a.get(), DType::BF16, n * n, -1, 1, c.seed(1), c.st);
    kbench::fill_uniform(b.get(), DType::BF16, n * n, -1, 1, c.seed(2), c.st);
    const cuda::GemmOperand ga{a.get(), false, n, 0}, gb{b.get(), false, n, 0};
    const double ms = c.timer.median_ms([&] {
      cuda::gemm(1, n, n, n, 1.f, ga, gb, 0.f, out.get(), n, 0, DType::BF16, false, c.device);
    });
    row["ms"] = ms;
    const double tflops = 2.0 * n * n * n / (ms * 1e-3) / 1e12;
    if (c.o.peak_tflops <= 0) {
      c.rep.peak_tflops = tflops;
      c.rep.peak_measured = true;
    }
    row["what"] = "cuBLAS gemm (cublasGemmEx) bf16 x bf16 -> bf16, fp32 accumulate, random inputs";
  });
  c.rep.doc["peak"] = {{"tflops", c.rep.peak_tflops}, {"measured", c.rep.peak_measured},
                       {"gemm_ms", row.contains("ms") ? row["ms"] : json(nullptr)},
                       {"nominal_tflops", kNominalPeakTflops}};
  c.add(std::move(row));
}

// ------------------------------------------------------------------ masked (soft) conv vs cuDNN
void run_masked_layer(Ctx& c, const ConvLayer& l) {
  const MaskedConvShape s = conv_shape(l, c.o.batch, l.c, l.o);
  const bool sg = !c.o.no_scale_grads;
  const int dev = c.device;
  const cuda::Stream st = c.st;
  const int64_t nx = s.n * s.h * s.w * s.c, ny = s.n * s.ho * s.wo * s.o, nw = s.o * s.k * s.k * s.c;
  const int64_t rows_x = s.n * s.h * s.w, rows_y = s.n * s.ho * s.wo;
  const size_t wsz = dtype_size(c.wdt);
  json rf = conv_row(c, "masked", "masked_conv_soft", ConvPass::Forward, l, s, sg);
  json rd = conv_row(c, "masked", "masked_conv_soft", ConvPass::Data, l, s, sg);
  json rw = conv_row(c, "masked", "masked_conv_soft", ConvPass::Weight, l, s, sg);
  try {
    cuda::masked_conv_check(s, c.wdt, "kernel_bench masked");
    DevBuf x(nx * 2, dev), xs(nx * 2, dev), dx(nx * 2, dev), dxl(nx * 2, dev);
    DevBuf y(ny * 2, dev), yl(ny * 2, dev), dy(ny * 2, dev), dys(ny * 2, dev);
    DevBuf wb(nw * 2, dev), wf(c.wdt == DType::F32 ? nw * 4 : 0, dev), dw(nw * wsz, dev), dwl(nw * 2, dev),
        g(nw * 2, dev);
    DevBuf osc(s.o * 4, dev), isc(s.c * 4, dev), dos(s.o * 4, dev), dref(std::max(s.o, s.c) * 8, dev);
    kbench::fill_uniform(x.get(), DType::BF16, nx, -1, 1, c.seed(11), st);
    kbench::fill_uniform(dy.get(), DType::BF16, ny, -1, 1, c.seed(12), st);
    kbench::fill_uniform(wb.get(), DType::BF16, nw, -1, 1, c.seed(13), st);
    kbench::fill_uniform(osc.get(), DType::F32, s.o, 0.1f, 1.f, c.seed(14), st);
    kbench::fill_uniform(isc.get(), DType::F32, s.c, 0.1f, 1.f, c.seed(15), st);
    // An f32 weight holds the same (bf16-exact) values, so both paths and the reference see one weight.
    if (c.wdt == DType::F32) kbench::convert(wb.get(), DType::BF16, wf.get(), DType::F32, nw, st);
    const void* w = c.wdt == DType::F32 ? wf.get() : wb.get();
    const MaskedConvArgs a{nullptr, nullptr, osc.as<float>(), isc.as<float>()};
    const cuda::ConvGeometry geo = geometry(s);
    const cuda::WorkspaceFn wsfn = c.ws.fn();
    const kbench::ConvRef ref{s, a, x.get(), dy.get(), w, c.wdt};

    // ---- forward: y = out_scale (.) conv(in_scale (.) x, W); library: scale x, cuDNN, scale y
    guarded(rf, [&] {
      auto lib = [&] {
        kbench::scale_channels(x.get(), isc.as<float>(), xs.get(), rows_x, s.c, st);
        cuda::conv2d_forward(geo, DType::BF16, false, xs.get(), wb.get(), yl.get(), wsfn, dev);
        kbench::scale_channels(yl.get(), osc.as<float>(), yl.get(), rows_y, s.o, st);
      };
      auto ours = [&] { cuda::masked_conv_forward(s, a, x.get(), w, c.wdt, y.get(), st); };
      poison(y, st);
      ours();
      lib();
      ConvChecker chk(ConvPass::Forward, ref, c.o.samples, c.seed(16), dev);
      const ErrStat e = chk.check(y.get(), DType::BF16, a), el = chk.check(yl.get(), DType::BF16, a);
      const kbench::Compare full = kbench::compare(y.get(), DType::BF16, yl.get(), DType::BF16, ny, dev);
      rf["verify"] = verdict(e, el, chk.count(), full.nonfinite, c.o.tol, full);
      const double t = c.timer.median_ms(ours);
      const double tc = c.timer.median_ms([&] { cuda::conv2d_forward(geo, DType::BF16, false, x.get(), wb.get(), yl.get(), wsfn, dev); });
      const double tb = c.timer.median_ms(lib);
      rf["ms"] = t;
      rf["baselines"] = {baseline("cuDNN conv + mask multiply", tb, t, true, ""),
                         baseline("cuDNN conv alone", tc, t, true, l.k == 3 ? ">= 0.9" : "")};
    });
    c.add(std::move(rf));

    // ---- dgrad: dx = in_scale (.) convT(out_scale (.) dy, W), + the input-mask gradient partials
    guarded(rd, [&] {
      const int64_t blocks = cuda::masked_conv_dgrad_partial_blocks(s);
      DevBuf part(std::max<int64_t>(blocks, 1) * s.c * 4, dev);
      auto ours = [&] {
        cuda::masked_conv_backward_data(s, a, x.get(), dy.get(), w, c.wdt, dx.get(), sg ? part.as<float>() : nullptr,
                                        st);
      };
      poison(dx, st);
      ours();
      // library, unscaled dx first: the input-mask gradient reference is sum over pixels of x * that.
      kbench::scale_channels(dy.get(), osc.as<float>(), dys.get(), rows_y, s.o, st);
      cuda::conv2d_backward_data(geo, DType::BF16, false, wb.get(), dys.get(), dxl.get(), wsfn, dev);
      kbench::column_dot(x.get(), dxl.get(), rows_x, s.c, dref.as<double>(), st);
      kbench::scale_channels(dxl.get(), isc.as<float>(), dxl.get(), rows_x, s.c, st);
      ConvChecker chk(ConvPass::Data, ref, c.o.samples, c.seed(17), dev);
      const ErrStat e = chk.check(dx.get(), DType::BF16, a), el = chk.check(dxl.get(), DType::BF16, a);
      const kbench::Compare full = kbench::compare(dx.get(), DType::BF16, dxl.get(), DType::BF16, nx, dev);
      json extra = json::object();
      if (sg) {
        std::vector<float> p(static_cast<size_t>(blocks * s.c));
        cuda::copy_to_host(p.data(), part.get(), p.size() * 4, dev);
        std::vector<double> got(static_cast<size_t>(s.c), 0.0), want(static_cast<size_t>(s.c));
        for (int64_t b = 0; b < blocks; ++b)
          for (int64_t j = 0; j < s.c; ++j) got[j] += p[static_cast<size_t>(b * s.c + j)];
        cuda::copy_to_host(want.data(), dref.get(), want.size() * 8, dev);
        extra["err_din_scale"] = num(rel_err(got, want));
      }
      rd["verify"] = verdict(e, el, chk.count(), full.nonfinite, c.o.tol, full, extra);
      const double t = c.timer.median_ms(ours);
      const double tc = c.timer.median_ms([&] {
        cuda::conv2d_backward_data(geo, DType::BF16, false, wb.get(), dy.get(), dxl.get(), wsfn, dev);
      });
      const double tb = c.timer.median_ms([&] {
        kbench::scale_channels(dy.get(), osc.as<float>(), dys.get(), rows_y, s.o, st);
        cuda::conv2d_backward_data(geo, DType::BF16, false, wb.get(), dys.get(), dxl.get(), wsfn, dev);
        kbench::scale_channels(dxl.get(), isc.as<float>(), dxl.get(), rows_x, s.c, st);
      });
      rd["ms"] = t;
      rd["baselines"] = {baseline("cuDNN dgrad + mask multiplies", tb, t, true, ""),
                         baseline("cuDNN dgrad alone", tc, t, true, l.k == 3 ? ">= 0.9" : "")};
    });
    c.add(std::move(rd));

    // ---- wgrad: dW = (out_scale (.) dy)^T im2col(in_scale (.) x), + the output-mask gradient
    guarded(rw, [&] {
      const size_t wsb = cuda::masked_conv_wgrad_workspace_bytes(s);
      DevBuf wsbuf(wsb, dev);
      auto ours = [&] {
        cuda::masked_conv_backward_weight(s, a, x.get(), dy.get(), w, c.wdt, dw.get(), sg ? dos.as<float>() : nullptr,
                                          wsbuf.get(), wsb, st);
      };
      poison(dw, st);
      ours();
      kbench::scale_channels(x.get(), isc.as<float>(), xs.get(), rows_x, s.c, st);
      kbench::scale_channels(dy.get(), osc.as<float>(), dys.get(), rows_y, s.o, st);
      cuda::conv2d_backward_filter(geo, DType::BF16, false, xs.get(), dys.get(), dwl.get(), wsfn, dev);
      ConvChecker chk(ConvPass::Weight, ref, c.o.wgrad_samples, c.seed(18), dev);
      const ErrStat e = chk.check(dw.get(), c.wdt, a), el = chk.check(dwl.get(), DType::BF16, a);
      const kbench::Compare full = kbench::compare(dw.get(), c.wdt, dwl.get(), DType::BF16, nw, dev);
      json extra = json::object();
      if (sg) {
        // G = dy^T im2col(in_scale (.) x) without out_scale; dout_scale[o] = sum W * G over row o.
        cuda::conv2d_backward_filter(geo, DType::BF16, false, xs.get(), dy.get(), g.get(), wsfn, dev);
        kbench::row_dot(w, c.wdt, g.get(), s.o, s.k * s.k * s.c, dref.as<double>(), st);
        std::vector<float> got(static_cast<size_t>(s.o));
        std::vector<double> want(static_cast<size_t>(s.o));
        cuda::copy_to_host(got.data(), dos.get(), got.size() * 4, dev);
        cuda::copy_to_host(want.data(), dref.get(), want.size() * 8, dev);
        extra["err_dout_scale"] = num(rel_err(std::vector<double>(got.begin(), got.end()), want));
      }
      rw["verify"] = verdict(e, el, chk.count(), full.nonfinite, c.o.tol, full, extra);
      const double t = c.timer.median_ms(ours);
      const double tc = c.timer.median_ms([&] {
        cuda::conv2d_backward_filter(geo, DType::BF16, false, x.get(), dy.get(), dwl.get(), wsfn, dev);
      });
      const double tb = c.timer.median_ms([&] {
        kbench::scale_channels(x.get(), isc.as<float>(), xs.get(), rows_x, s.c, st);
        kbench::scale_channels(dy.get(), osc.as<float>(), dys.get(), rows_y, s.o, st);
        cuda::conv2d_backward_filter(geo, DType::BF16, false, xs.get(), dys.get(), dwl.get(), wsfn, dev);
      });
      rw["ms"] = t;
      rw["baselines"] = {baseline("cuDNN wgrad + mask multiplies", tb, t, true, ""),
                         baseline("cuDNN wgrad alone", tc, t, true, l.k == 3 ? ">= 0.9" : "")};
    });
    c.add(std::move(rw));
  } catch (const std::exception& e) {  // the shape check or an allocation: every row of the layer
    for (json* r : {&rf, &rd, &rw}) {
      if (r->is_null()) continue;  // already added
      (*r)["error"] = e.what();
      c.add(std::move(*r));
    }
  }
}

// ------------------------------------------------------------------ hard conv vs dense x kept fraction
// Random distinct indices in [0, n), in random order (importance order is not index order).
std::vector<int64_t> random_subset(int64_t n, int64_t k, uint64_t seed) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(v.begin(), v.end(), rng);
  v.resize(static_cast<size_t>(k));
  return v;
}

void run_hard_layer(Ctx& c, const ConvLayer& l) {
  const int dev = c.device;
  const cuda::Stream st = c.st;
  const MaskedConvShape full = conv_shape(l, c.o.batch, l.c, l.o);
  const int64_t nx = full.n * full.h * full.w * full.c, ny = full.n * full.ho * full.wo * full.o,
                nw = full.o * full.k * full.k * full.c;
  const size_t wsz = dtype_size(c.wdt);
  std::vector<json> pending;
  try {
    DevBuf x(nx * 2, dev), dx(nx * 2, dev), y(ny * 2, dev), dy(ny * 2, dev), wb(nw * 2, dev),
        wf(c.wdt == DType::F32 ? nw * 4 : 0, dev), dw(nw * wsz, dev);
    DevBuf ws(cuda::masked_conv_wgrad_workspace_bytes(full), dev);
    kbench::fill_uniform(x.get(), DType::BF16, nx, -1, 1, c.seed(21), st);
    kbench::fill_uniform(dy.get(), DType::BF16, ny, -1, 1, c.seed(22), st);
    kbench::fill_uniform(wb.get(), DType::BF16, nw, -1, 1, c.seed(23), st);
    if (c.wdt == DType::F32) kbench::convert(wb.get(), DType::BF16, wf.get(), DType::F32, nw, st);
    const void* w = c.wdt == DType::F32 ? wf.get() : wb.get();

    // One pass of one (possibly narrow) layer: verify, then time. Returns the median ms (NaN on error).
    auto measure = [&](json& row, ConvPass p, const MaskedConvShape& s, const MaskedConvArgs& a) -> double {
      double t = std::numeric_limits<double>::quiet_NaN();
      guarded(row, [&] {
        cuda::masked_conv_check(s, c.wdt, "kernel_bench hard");
        const int64_t xn = s.n * s.h * s.w * s.c, yn = s.n * s.ho * s.wo * s.o;
        size_t wsb = 0;
        std::function<void()> run;
        const void* out = nullptr;
        DType out_dt = DType::BF16;
        int64_t out_n = 0;
        if (p == ConvPass::Forward) {
          run = [&] { cuda::masked_conv_forward(s, a, x.get(), w, c.wdt, y.get(), st); };
          CUDA_CHECK(cudaMemsetAsync(y.get(), 0xff, yn * 2, st));
          out = y.get();
          out_n = yn;
        } else if (p == ConvPass::Data) {
          run = [&] { cuda::masked_conv_backward_data(s, a, x.get(), dy.get(), w, c.wdt, dx.get(), nullptr, st); };
          CUDA_CHECK(cudaMemsetAsync(dx.get(), 0xff, xn * 2, st));
          out = dx.get();
          out_n = xn;
        } else {
          wsb = cuda::masked_conv_wgrad_workspace_bytes(s);
          if (wsb > ws.bytes()) ws = DevBuf(wsb, dev);
          run = [&] {
            cuda::masked_conv_backward_weight(s, a, x.get(), dy.get(), w, c.wdt, dw.get(), nullptr, ws.get(), wsb, st);
          };
          // Only the used rows / columns are written: the rest must stay the zeros put there first.
          CUDA_CHECK(cudaMemsetAsync(dw.get(), 0, nw * wsz, st));
          out = dw.get();
          out_dt = c.wdt;
          out_n = nw;
        }
        run();
        const kbench::ConvRef ref{s, a, x.get(), dy.get(), w, c.wdt};
        ConvChecker chk(p, ref, p == ConvPass::Weight ? c.o.wgrad_samples : c.o.samples, c.seed(24), dev);
        const ErrStat e = chk.check(out, out_dt, a);
        row["verify"] = verdict(e, std::nullopt, chk.count(), nonfinite_of(out, out_dt, out_n, dev), c.o.tol);
        t = c.timer.median_ms(run);
        row["ms"] = t;
      });
      return t;
    };

    const ConvPass passes[3] = {ConvPass::Forward, ConvPass::Data, ConvPass::Weight};
    double dense[3];
    for (int pi = 0; pi < 3; ++pi) {
      json r = conv_row(c, "hard", "masked_conv_dense", passes[pi], l, full, false);
      dense[pi] = measure(r, passes[pi], full, MaskedConvArgs{});
      c.add(std::move(r));
    }
    for (double f : c.o.fractions) {
      const HardWidths hw = hard_widths(l, f);
      const MaskedConvShape s = conv_shape(l, c.o.batch, hw.c, hw.o);
      const std::vector<int64_t> oi = random_subset(l.o, hw.o, c.seed(25)), ci = random_subset(l.c, hw.c, c.seed(26));
      DevBuf oid(oi.size() * 8, dev), cid(ci.size() * 8, dev);
      cuda::copy_to_device(oid.get(), oi.data(), oi.size() * 8, dev, false);
      cuda::copy_to_device(cid.get(), ci.data(), ci.size() * 8, dev, false);
      for (int form = 0; form < 2; ++form) {
        const MaskedConvArgs a = form == 0 ? MaskedConvArgs{} : MaskedConvArgs{oid.as<int64_t>(), cid.as<int64_t>()};
        for (int pi = 0; pi < 3; ++pi) {
          json r = conv_row(c, "hard", form == 0 ? "hard_conv_prefix" : "hard_conv_index", passes[pi], l, s, false);
          r["target_fraction"] = f;
          r["kept_fraction"] = hw.fraction;
          const double t = measure(r, passes[pi], s, a);
          if (std::isfinite(t) && std::isfinite(dense[pi]))
            r["baselines"] = {baseline(fmt::format("dense x {:.3f}", hw.fraction), dense[pi] * hw.fraction, t, false,
                                       "<= 1.3")};
          c.add(std::move(r));
        }
      }
    }
  } catch (const std::exception& e) {
    json r = c.row("hard", "hard_conv", "-", l.name, shape_text(full), 0, 0);
    r["error"] = e.what();
    c.add(std::move(r));
  }
}

// ------------------------------------------------------------------ dual vs two launches
void run_dual_layer(Ctx& c, const ConvLayer& l) {
  const int dev = c.device;
  const cuda::Stream st = c.st;
  const MaskedConvShape s = conv_shape(l, c.o.batch, l.c, l.o);
  const int64_t nx = s.n * s.h * s.w * s.c, ny = s.n * s.ho * s.wo * s.o, nw = s.o * s.k * s.k * s.c;
  try {
    DevBuf xs(nx * 2, dev), xh(nx * 2, dev), ys(ny * 2, dev), yh(ny * 2, dev), ys2(ny * 2, dev), yh2(ny * 2, dev);
    DevBuf wb(nw * 2, dev), wf(c.wdt == DType::F32 ? nw * 4 : 0, dev), osc(s.o * 4, dev), isc(s.c * 4, dev);
    kbench::fill_uniform(xs.get(), DType::BF16, nx, -1, 1, c.seed(31), st);
    kbench::fill_uniform(xh.get(), DType::BF16, nx, -1, 1, c.seed(32), st);
    kbench::fill_uniform(wb.get(), DType::BF16, nw, -1, 1, c.seed(33), st);
    kbench::fill_uniform(osc.get(), DType::F32, s.o, 0.1f, 1.f, c.seed(34), st);
    kbench::fill_uniform(isc.get(), DType::F32, s.c, 0.1f, 1.f, c.seed(35), st);
    if (c.wdt == DType::F32) kbench::convert(wb.get(), DType::BF16, wf.get(), DType::F32, nw, st);
    const void* w = c.wdt == DType::F32 ? wf.get() : wb.get();
    const MaskedConvArgs as{nullptr, nullptr, osc.as<float>(), isc.as<float>()};
    for (double f : c.o.fractions) {
      const HardWidths hw = hard_widths(l, f);
      const MaskedConvShape h = conv_shape(l, c.o.batch, hw.c, hw.o);
      const int64_t nyh = h.n * h.ho * h.wo * h.o;
      json r = c.row("dual", "dual_conv", "fwd", l.name, shape_text(s) + fmt::format(" +{}->{}", h.c, h.o),
                     conv_flops(s) + conv_flops(h),
                     conv_bytes(ConvPass::Forward, s, dtype_size(c.wdt), false) +
                         conv_bytes(ConvPass::Forward, h, 0, false));
      r["conv"] = shape_json(s);
      r["hard"] = shape_json(h);
      r["target_fraction"] = f;
      r["kept_fraction"] = hw.fraction;
      guarded(r, [&] {
        auto dual = [&] {
          cuda::masked_conv_dual_forward(s, h, osc.as<float>(), isc.as<float>(), xs.get(), xh.get(), w, c.wdt,
                                         ys.get(), yh.get(), st);
        };
        auto separate = [&] {
          cuda::masked_conv_forward(s, as, xs.get(), w, c.wdt, ys2.get(), st);
          cuda::masked_conv_forward(h, MaskedConvArgs{}, xh.get(), w, c.wdt, yh2.get(), st);
        };
        poison(ys, st);
        poison(yh, st);
        dual();
        separate();
        ConvChecker cs(ConvPass::Forward, {s, as, xs.get(), nullptr, w, c.wdt}, c.o.samples, c.seed(36), dev);
        ConvChecker ch(ConvPass::Forward, {h, MaskedConvArgs{}, xh.get(), nullptr, w, c.wdt}, c.o.samples, c.seed(37),
                       dev);
        const ErrStat es = cs.check(ys.get(), DType::BF16, as), eh = ch.check(yh.get(), DType::BF16, {});
        const int64_t bad = nonfinite_of(ys.get(), DType::BF16, ny, dev) + nonfinite_of(yh.get(), DType::BF16, nyh, dev);
        ErrStat worst = es.rel() >= eh.rel() ? es : eh;
        json extra = {{"err_soft", num(es.rel())}, {"err_hard", num(eh.rel())}};
        json v = verdict(worst, std::nullopt, cs.count() + ch.count(), bad, c.o.tol, std::nullopt, extra);
        // Against the two separate launches (informational: both are checked against the reference above).
        v["vs_separate_soft"] = num(kbench::compare(ys.get(), DType::BF16, ys2.get(), DType::BF16, ny, dev).rel());
        v["vs_separate_hard"] = num(kbench::compare(yh.get(), DType::BF16, yh2.get(), DType::BF16, nyh, dev).rel());
        r["verify"] = v;
        const double t = c.timer.median_ms(dual), tb = c.timer.median_ms(separate);
        r["ms"] = t;
        r["baselines"] = {baseline("soft fwd + hard fwd (2 launches)", tb, t, false, "<= 0.8")};
      });
      c.add(std::move(r));
    }
  } catch (const std::exception& e) {
    json r = c.row("dual", "dual_conv", "fwd", l.name, shape_text(s), 0, 0);
    r["error"] = e.what();
    c.add(std::move(r));
  }
}

// ------------------------------------------------------------------ attention
std::vector<float> bf16_to_host(const DevBuf& b, int64_t n, int dev) {
  std::vector<bf16> raw(static_cast<size_t>(n));
  cuda::copy_to_host(raw.data(), b.get(), static_cast<size_t>(n) * 2, dev);
  return std::vector<float>(raw.begin(), raw.end());
}

void run_attention_case(Ctx& c, const AttnCase& ac) {
  const int dev = c.device;
  const cuda::Stream st = c.st;
  const AttentionShape& a = ac.s;
  const int64_t n = a.b * a.s * a.h * a.d, rows = a.b * a.h * a.s;
  const std::string kernel = fmt::format("attention_hd{}", a.d);
  const double ff = attn_fwd_flops(a);
  json rf = c.row("attention", kernel, "fwd", fmt::format("s{}", a.s), ac.text, ff, attn_bytes(a, false));
  json rb = c.row("attention", kernel, "bwd", fmt::format("s{}", a.s), ac.text, 2.5 * ff, attn_bytes(a, true));
  json rfb = c.row("attention", kernel, "fwd+bwd", fmt::format("s{}", a.s), ac.text, 3.5 * ff,
                   attn_bytes(a, false) + attn_bytes(a, true));
  for (json* r : {&rf, &rb, &rfb})
    (*r)["attn"] = {{"b", a.b}, {"s", a.s}, {"h", a.h}, {"d", a.d}, {"head_scale", c.o.head_scale}};
  try {
    cuda::attention_check(a, "kernel_bench attention");
    DevBuf q(n * 2, dev), k(n * 2, dev), v(n * 2, dev), out(n * 2, dev), outu(n * 2, dev), dout(n * 2, dev),
        dq(n * 2, dev), dk(n * 2, dev), dv(n * 2, dev), lse(rows * 4, dev), delta(rows * 4, dev),
        dhs(rows * 4, dev), hs(a.h * 4, dev);
    // q, k in [-2, 2): logits of standard deviation ~1.3 after the 1/sqrt(d) scale (a peaked softmax).
    kbench::fill_uniform(q.get(), DType::BF16, n, -2, 2, c.seed(41), st);
    kbench::fill_uniform(k.get(), DType::BF16, n, -2, 2, c.seed(42), st);
    kbench::fill_uniform(v.get(), DType::BF16, n, -1, 1, c.seed(43), st);
    kbench::fill_uniform(dout.get(), DType::BF16, n, -1, 1, c.seed(44), st);
    kbench::fill_uniform(hs.get(), DType::F32, a.h, 0.1f, 1.f, c.seed(45), st);
    const bool hsc = c.o.head_scale;
    cuda::AttentionMasks m;
    if (hsc) m.head_scale = hs.as<float>();
    void* saved = hsc ? outu.get() : out.get();  // the output before the head scale (the same without one)
    auto fwd = [&] { cuda::attention_forward(a, m, q.get(), k.get(), v.get(), out.get(), hsc ? outu.get() : nullptr,
                                             lse.as<float>(), st); };
    auto bwd = [&] { cuda::attention_backward(a, m, q.get(), k.get(), v.get(), saved, dout.get(), lse.as<float>(),
                                              dq.get(), dk.get(), dv.get(), delta.as<float>(),
                                              hsc ? dhs.as<float>() : nullptr, st); };
    bool verified = false;
    guarded(rf, [&] {
      for (const DevBuf* b : {&out, &outu, &dq, &dk, &dv, &lse}) poison(*b, st);
      fwd();
      bwd();
      // Exact references for two whole heads: the first and the last (b, h).
      kbench::AttnRef ref;
      ref.s = a;
      ref.q = q.get();
      ref.k = k.get();
      ref.v = v.get();
      ref.dout = dout.get();
      ref.head_scale = hsc ? hs.as<float>() : nullptr;
      ref.np = 2;
      ref.pb[0] = 0;
      ref.ph[0] = 0;
      ref.pb[1] = a.b - 1;
      ref.ph[1] = a.h - 1;
      const int64_t pn = 2 * a.s * a.d;
      DevBuf ro(pn * 4, dev), rl(2 * a.s * 4, dev), rdl(2 * a.s * 4, dev), rdq(pn * 4, dev), rdk(pn * 4, dev),
          rdv(pn * 4, dev);
      kbench::attention_reference(ref, ro.as<float>(), rl.as<float>(), rdl.as<float>(), rdq.as<float>(),
                                  rdk.as<float>(), rdv.as<float>(), st);
      auto host_f32 = [&](const DevBuf& b, int64_t cnt) {
        std::vector<float> h(static_cast<size_t>(cnt));
        cuda::copy_to_host(h.data(), b.get(), static_cast<size_t>(cnt) * 4, dev);
        return h;
      };
      const std::vector<float> ho = host_f32(ro, pn), hl = host_f32(rl, 2 * a.s), hdq = host_f32(rdq, pn),
                               hdk = host_f32(rdk, pn), hdv = host_f32(rdv, pn), hsv = host_f32(hs, a.h),
                               glse = host_f32(lse, rows);
      const std::vector<float> go = bf16_to_host(out, n, dev), gq = bf16_to_host(dq, n, dev),
                               gk = bf16_to_host(dk, n, dev), gv = bf16_to_host(dv, n, dev);
      const std::vector<float> gu = hsc ? bf16_to_host(outu, n, dev) : std::vector<float>{};
      ErrStat eo, eu, eq, ek, ev;
      double lse_err = 0;
      for (int pr = 0; pr < 2; ++pr) {
        const int64_t bb = ref.pb[pr], hh = ref.ph[pr];
        const double scale = hsc ? hsv[static_cast<size_t>(hh)] : 1.0;
        for (int64_t i = 0; i < a.s; ++i) {
          const size_t li = static_cast<size_t>(pr * a.s + i);
          lse_err = std::max(lse_err, std::fabs(static_cast<double>(glse[static_cast<size_t>((bb * a.h + hh) * a.s + i)]) - hl[li]));
          for (int64_t t = 0; t < a.d; ++t) {
            const size_t gi = static_cast<size_t>(((bb * a.s + i) * a.h + hh) * a.d + t), ri = li * a.d + t;
            accumulate(eo, go[gi], scale * ho[ri]);
            if (hsc) accumulate(eu, gu[gi], ho[ri]);
            accumulate(eq, gq[gi], hdq[ri]);
            accumulate(ek, gk[gi], hdk[ri]);
            accumulate(ev, gv[gi], hdv[ri]);
          }
        }
      }
      const int64_t bad_f = nonfinite_of(out.get(), DType::BF16, n, dev);
      const int64_t bad_b = nonfinite_of(dq.get(), DType::BF16, n, dev) + nonfinite_of(dk.get(), DType::BF16, n, dev) +
                            nonfinite_of(dv.get(), DType::BF16, n, dev);
      json xf = json::object();
      if (hsc) xf["err_out_unscaled"] = num(eu.rel());
      rf["verify"] = verdict(eo, std::nullopt, 2 * a.s * a.d, bad_f, c.o.tol, std::nullopt, xf);
      rf["verify"]["lse_max_abs_err"] = num(lse_err);  // informational: lse is the kernels' own business
      ErrStat eb = eq;
      for (const ErrStat* e : {&ek, &ev})
        if (e->rel() > eb.rel()) eb = *e;
      rb["verify"] = verdict(eb, std::nullopt, 3 * 2 * a.s * a.d, bad_b, c.o.tol, std::nullopt,
                             {{"err_dq", num(eq.rel())}, {"err_dk", num(ek.rel())}, {"err_dv", num(ev.rel())}});
      rfb["verify"] = rf["verify"]["ok"].get<bool>() ? rb["verify"] : rf["verify"];
      verified = true;
    });
    if (verified) {
      guarded(rf, [&] { rf["ms"] = c.timer.median_ms(fwd); });
      guarded(rb, [&] { rb["ms"] = c.timer.median_ms(bwd); });
      guarded(rfb, [&] {
        rfb["ms"] = c.timer.median_ms([&] {
          fwd();
          bwd();
        });
      });
    } else {
      rb["error"] = rfb["error"] = "not run: the verification failed with an error (see the fwd row)";
    }
  } catch (const std::exception& e) {
    for (json* r : {&rf, &rb, &rfb}) (*r)["error"] = e.what();
  }
  c.add(std::move(rf));
  c.add(std::move(rb));
  c.add(std::move(rfb));
}

// ------------------------------------------------------------------ --list
void print_plan(const Options& o) {
  const double peak = o.peak_tflops > 0 ? o.peak_tflops : kNominalPeakTflops;
  const size_t wsz = o.weight_dtype == "f32" ? 4 : 2;
  const bool sg = !o.no_scale_grads;
  fmt::print("kernel_bench plan: floors at {:.0f} TFLOP/s and {:.0f} GB/s{}\n", peak, o.bandwidth_gbs,
             o.peak_tflops > 0 ? "" : " (nominal H100 SXM dense bf16 / HBM3)");
  fmt::print("{:<10} {:<18} {:<7} {:<34} {:>10} {:>9} {:>10} {:>10} {}\n", "section", "kernel", "pass", "shape",
             "GFLOP", "MB", "flop ms", "byte ms", "bound");
  auto line = [&](const std::string& sec, const std::string& k, const std::string& p, const std::string& shape,
                  double flops, double bytes) {
    const json f = floors(flops, bytes, peak, o.bandwidth_gbs);
    fmt::print("{:<10} {:<18} {:<7} {:<34} {:>10.2f} {:>9.1f} {:>10.4f} {:>10.4f} {}\n", sec, k, p, shape, flops / 1e9,
               bytes / 1e6, f["flop_floor_ms"].get<double>(), f["byte_floor_ms"].get<double>(),
               f["bound"].get<std::string>());
  };
  const ConvPass passes[3] = {ConvPass::Forward, ConvPass::Data, ConvPass::Weight};
  const std::vector<ConvLayer> layers = selected_layers(o);
  if (has(o.sections, "peak"))
    line("peak", "cublas_gemm_bf16", "gemm", fmt::format("m=n=k={}", o.gemm_size),
         2.0 * o.gemm_size * o.gemm_size * o.gemm_size, 6.0 * o.gemm_size * o.gemm_size);
  if (has(o.sections, "masked"))
    for (const ConvLayer& l : layers) {
      const MaskedConvShape s = conv_shape(l, o.batch, l.c, l.o);
      for (ConvPass p : passes)
        line("masked", "masked_conv_soft", pass_name(p), shape_text(s), conv_flops(s), conv_bytes(p, s, wsz, sg));
    }
  if (has(o.sections, "hard"))
    for (const ConvLayer& l : layers)
      for (double f : o.fractions) {
        const HardWidths hw = hard_widths(l, f);
        const MaskedConvShape h = conv_shape(l, o.batch, hw.c, hw.o);
        for (ConvPass p : passes)
          line("hard", fmt::format("hard_conv {:.0f}%", 100 * f), pass_name(p), shape_text(h), conv_flops(h),
               conv_bytes(p, h, wsz, false));
      }
  if (has(o.sections, "dual"))
    for (const ConvLayer& l : layers)
      for (double f : o.fractions) {
        const MaskedConvShape s = conv_shape(l, o.batch, l.c, l.o);
        const HardWidths hw = hard_widths(l, f);
        const MaskedConvShape h = conv_shape(l, o.batch, hw.c, hw.o);
        line("dual", fmt::format("dual_conv {:.0f}%", 100 * f), "fwd", shape_text(s) + fmt::format(" +{}->{}", h.c, h.o),
             conv_flops(s) + conv_flops(h),
             conv_bytes(ConvPass::Forward, s, wsz, false) + conv_bytes(ConvPass::Forward, h, 0, false));
      }
  if (has(o.sections, "attention"))
    for (const AttnCase& ac : attention_cases(o)) {
      const double ff = attn_fwd_flops(ac.s);
      line("attention", fmt::format("attention_hd{}", ac.s.d), "fwd", ac.text, ff, attn_bytes(ac.s, false));
      line("attention", fmt::format("attention_hd{}", ac.s.d), "bwd", ac.text, 2.5 * ff, attn_bytes(ac.s, true));
    }
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

int run(const Options& o, const std::string& command) {
  if (o.list) {
    print_plan(o);
    return 0;
  }
  std::string why;
  const int count = cuda::device_count(&why);
  if (count == 0) {
    std::printf("no GPU: %s\n", why.c_str());
    return o.require_gpu ? 1 : 0;
  }
  if (o.device >= count) {
    std::fprintf(stderr, "kernel_bench: --device %d: this machine has %d GPU%s\n", o.device, count, count == 1 ? "" : "s");
    return 1;
  }
  cuda::set_device(o.device);
  const cuda::Stream st = cuda::stream(o.device);
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, o.device));

  Report rep;
  rep.path = o.json_path;
  if (o.peak_tflops > 0) rep.peak_tflops = o.peak_tflops;
  rep.doc = {{"tool", "kernel_bench"},
             {"command", command},
             {"device", prop.name},
             {"sms", prop.multiProcessorCount},
             {"l2_bytes", prop.l2CacheSize},
             {"date", utc_now()},
             {"precision", "bf16"},
             {"config",
              {{"sections", o.sections}, {"batch", o.batch}, {"image_size", o.image}, {"shapes", o.shapes},
               {"fractions", o.fractions}, {"tokens", o.tokens}, {"model_dim", o.model_dim}, {"seqs", o.seqs},
               {"head_dims", o.head_dims}, {"head_scale", o.head_scale}, {"scale_grads", !o.no_scale_grads},
               {"weight_dtype", o.weight_dtype}, {"warmup", o.warmup}, {"reps", o.reps}, {"flush_mb", o.flush_mb},
               {"samples", o.samples}, {"wgrad_samples", o.wgrad_samples}, {"tol", o.tol}, {"seed", o.seed},
               {"bandwidth_gbs", o.bandwidth_gbs}}},
             {"peak", {{"tflops", rep.peak_tflops}, {"measured", false}, {"nominal_tflops", kNominalPeakTflops}}},
             {"rows", json::array()}};
  fmt::print("kernel_bench on {} ({} SMs, {} MB L2), {}\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20,
             rep.doc["date"].get<std::string>());
  rep.write(false);

  Timer timer(o.device, o);
  Workspace ws(o.device);
  Ctx c{o, o.device, st, o.weight_dtype == "f32" ? DType::F32 : DType::BF16, timer, ws, rep};
  print_header();
  auto section = [&](const char* name, const std::function<void()>& body) {
    if (!has(o.sections, name)) return;
    body();
    rep.write(false);  // what was measured so far survives a later crash or timeout
  };
  section("peak", [&] { run_peak(c); });
  const std::vector<ConvLayer> layers = selected_layers(o);
  section("masked", [&] { for (const ConvLayer& l : layers) run_masked_layer(c, l); });
  section("hard", [&] { for (const ConvLayer& l : layers) run_hard_layer(c, l); });
  section("dual", [&] { for (const ConvLayer& l : layers) run_dual_layer(c, l); });
  section("attention", [&] { for (const AttnCase& ac : attention_cases(o)) run_attention_case(c, ac); });
  rep.write(true);

  fmt::print("\n== summary: {} rows, peak {:.1f} TFLOP/s ({}), {} verification failure{}, {} error{}, goals met {} / {}\n",
             rep.doc["rows"].size(), rep.peak_tflops, rep.peak_measured ? "measured" : "not measured",
             rep.verify_failures, rep.verify_failures == 1 ? "" : "s", rep.errors, rep.errors == 1 ? "" : "s",
             rep.goals_met, rep.goals_met + rep.goals_missed);
  print_header();
  for (const json& r : rep.doc["rows"]) print_row(r);
  if (!o.json_path.empty()) fmt::print("rows written to {}\n", o.json_path);
  return rep.verify_failures == 0 && rep.errors == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"kernel_bench: times and verifies the handwritten fused CUDA kernels (masked / hard / dual conv, "
               "fused attention) against cuDNN / cuBLAS baselines on one GPU. Without a GPU it prints "
               "\"no GPU: <reason>\" and exits 0 (1 with --require-gpu)."};
  app.add_option("--sections", o.sections, "what to run, comma-separated: peak (cuBLAS bf16 GEMM, the peak), masked "
                 "(soft masked conv vs cuDNN), hard (hard conv vs dense x kept fraction), dual (dual vs 2 launches), "
                 "attention")
      ->delimiter(',')
      ->check(CLI::IsMember({"peak", "masked", "hard", "dual", "attention"}))
      ->capture_default_str();
  app.add_option("--json", o.json_path, "write every row (and the config, device, peak) to this JSON file");
  app.add_flag("--require-gpu", o.require_gpu, "exit 1 instead of 0 when no GPU can be used");
  app.add_flag("--list", o.list, "print the plan (every item's FLOPs, minimum bytes and both floors) and exit; needs no GPU");
  app.add_option("--device", o.device, "CUDA device index")->check(CLI::NonNegativeNumber)->capture_default_str();
  app.add_option("--warmup", o.warmup, "untimed calls before each timed series")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--reps", o.reps, "timed repetitions (the median is reported)")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  app.add_option("--flush-mb", o.flush_mb, "MiB read between repetitions to flush the L2 cache (0: no flush)")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
  app.add_option("--batch", o.batch, "convolution batch")->check(CLI::Range(int64_t{1}, int64_t{4096}))->capture_default_str();
  app.add_option("--image-size", o.image, "ResNet-50 input size (layer1 runs at this size; a multiple of 8)")
      ->check(CLI::Range(int64_t{8}, int64_t{1024}))
      ->capture_default_str();
  app.add_option("--shapes", o.shapes, "convolution layers: all, 3x3, 1x1, or names (l1.3x3, l2.3x3, l3.3x3, l4.3x3, "
                 "l2.3x3s2, l3.3x3s2, l4.3x3s2, l1.1x1in, l1.1x1out, l1.1x1red, l3.1x1red, l2.down)")
      ->delimiter(',')
      ->check(CLI::IsMember({"all", "3x3", "1x1", "l1.3x3", "l2.3x3", "l3.3x3", "l4.3x3", "l2.3x3s2", "l3.3x3s2",
                             "l4.3x3s2", "l1.1x1in", "l1.1x1out", "l1.1x1red", "l3.1x1red", "l2.down"}))
      ->capture_default_str();
  app.add_option("--fractions", o.fractions, "kept-FLOPs targets of the hard and dual layers (sqrt of each kept on "
                 "both sides, rounded to multiples of 8)")
      ->delimiter(',')
      ->check(CLI::Range(0.01, 1.0))
      ->capture_default_str();
  app.add_option("--weight-dtype", o.weight_dtype, "weight dtype passed to the masked-conv kernels (cuDNN always gets bf16)")
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
  app.add_flag("--no-scale-grads", o.no_scale_grads, "soft conv backward without the mask gradients (on by default, as "
               "in S2HPruner training; the cuDNN baselines never compute them)");
  app.add_option("--tokens", o.tokens, "attention batch x sequence (b = tokens / s)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24))
      ->capture_default_str();
  app.add_option("--seqs", o.seqs, "attention sequence lengths")
      ->delimiter(',')
      ->check(CLI::Range(int64_t{1}, int64_t{65536}))
      ->capture_default_str();
  app.add_option("--head-dims", o.head_dims, "attention head dims (64, 128)")
      ->delimiter(',')
      ->check(CLI::IsMember({int64_t{64}, int64_t{128}}))
      ->capture_default_str();
  app.add_option("--model-dim", o.model_dim, "attention h x d (h = model-dim / d)")
      ->check(CLI::Range(int64_t{64}, int64_t{65536}))
      ->capture_default_str();
  app.add_flag("--head-scale", o.head_scale, "attention with a soft per-head scale (and its gradient)");
  app.add_option("--samples", o.samples, "sampled points checked per forward / dgrad output")
      ->check(CLI::Range(int64_t{16}, int64_t{1} << 20))
      ->capture_default_str();
  app.add_option("--wgrad-samples", o.wgrad_samples, "sampled points checked per weight gradient")
      ->check(CLI::Range(int64_t{16}, int64_t{1} << 16))
      ->capture_default_str();
  app.add_option("--tol", o.tol, "max |out - ref| / max |ref| allowed (or 2x the library's own error, if larger)")
      ->check(CLI::Range(1e-6, 1.0))
      ->capture_default_str();
  app.add_option("--peak-tflops", o.peak_tflops, "use this peak instead of measuring it (0: measure; --list: nominal 989)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--bandwidth-gbs", o.bandwidth_gbs, "memory bandwidth for the byte floors (nominal H100 SXM HBM3)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--gemm-size", o.gemm_size, "m = n = k of the peak GEMM")->check(CLI::Range(256, 32768))->capture_default_str();
  app.add_option("--seed", o.seed, "random inputs' seed")->capture_default_str();
  try {
    app.parse(argc, argv);
    if (o.image % 8 != 0) throw CLI::ValidationError("--image-size", "must be a multiple of 8 (layer4 runs at size / 8)");
    for (int64_t d : o.head_dims)
      if (o.model_dim % d != 0)
        throw CLI::ValidationError("--model-dim", fmt::format("{} is not a multiple of head dim {}", o.model_dim, d));
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "kernel_bench: error: %s (see kernel_bench --help)\n", e.what());
    return e.get_exit_code() != 0 ? e.get_exit_code() : 2;
  }
  std::string command = "kernel_bench";
  for (int i = 1; i < argc; ++i) command += std::string(" ") + argv[i];
  try {
    return run(o, command);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kernel_bench: error: %s\n", e.what());
    return 1;
  }
}
