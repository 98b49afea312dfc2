// 2-D convolution through cuDNN's convolution API (cuDNN 9, libcudnn_cnn):
// NHWC descriptors, one plan per geometry / dtype / math, algorithms chosen by
// cudnnFind*AlgorithmEx on first use and cached.
#include "kernels/cuda/conv.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "kernels/cuda/handles.h"

namespace s2h::cuda {

namespace {

enum Direction { kForward = 0, kBackwardData = 1, kBackwardFilter = 2 };
const char* const kDirectionName[3] = {"forward", "backward data", "backward filter"};

std::string geometry_text(const ConvGeometry& g, DType dtype, bool tf32) {
  return fmt::format("conv2d x [{},{},{},{}] w [{},{},{},{}] -> [{},{},{},{}] stride {}x{} padding {}x{} dilation {}x{} "
                     "groups {} {}",
                     g.n, g.h, g.w, g.c, g.o, g.kh, g.kw, g.groups > 0 ? g.c / g.groups : 0, g.n, g.ho, g.wo, g.o,
                     g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, g.groups,
                     dtype == DType::BF16 ? "bf16" : (tf32 ? "f32 (tf32)" : "f32"));
}

// The workspace cuDNN may use when it benchmarks algorithms (and so the most
// a chosen algorithm uses): S2H_CUDNN_WORKSPACE_MB, default 1 GiB.
size_t find_workspace_limit() {
  static const size_t limit = [] {
    size_t mb = 1024;
    if (const char* s = std::getenv("S2H_CUDNN_WORKSPACE_MB")) mb = std::strtoull(s, nullptr, 10);
    return mb << 20;
  }();
  return limit;
}

// Descriptors and chosen algorithms of one geometry; one convolution
// descriptor per direction, because each direction's algorithm may come with
// its own math type.
struct Plan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  std::array<cudnnConvolutionDescriptor_t, 3> conv{};
  std::array<bool, 3> found{};
  std::array<int, 3> algo{};
  std::array<size_t, 3> workspace{};

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {  // host-side objects only: safe at any time
    if (x) cudnnDestroyTensorDescriptor(x);
    if (y) cudnnDestroyTensorDescriptor(y);
    if (w) cudnnDestroyFilterDescriptor(w);
    for (auto c : conv)
      if (c) cudnnDestroyConvolutionDescriptor(c);
  }
};

using Key = std::array<int64_t, 17>;

std::mutex g_mutex;
// Never destroyed (plans may be in use until the process ends).
std::map<Key, std::unique_ptr<Plan>>& plans() {
  static auto* m = new std::map<Key, std::unique_ptr<Plan>>();
  return *m;
}

int as_int(int64_t v, const ConvGeometry& g, DType dtype, bool tf32) {
  if (v < 0 || v > INT_MAX)
    throw CudaError(fmt::format("{}: size {} does not fit cuDNN's int", geometry_text(g, dtype, tf32), v));
  return static_cast<int>(v);
}

cudnnMathType_t requested_math(DType dtype, bool tf32) {
  if (dtype == DType::BF16) return CUDNN_TENSOR_OP_MATH;
  return tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
}

// Returns the plan of the geometry (creating its descriptors); g_mutex held.
Plan& plan_for(const ConvGeometry& g, DType dtype, bool tf32, int device) {
  if (dtype != DType::F32 && dtype != DType::BF16)
    throw CudaError(fmt::format("{}: dtype not supported on CUDA (expected f32 or bf16)", geometry_text(g, dtype, tf32)));
  if (dtype == DType::BF16) tf32 = false;  // not a separate plan
  const Key key{device, static_cast<int64_t>(dtype), tf32 ? 1 : 0, g.n, g.h, g.w, g.c, g.o, g.kh, g.kw,
                g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, g.groups};
  auto& map = plans();
  auto it = map.find(key);
  if (it != map.end()) return *it->second;

  if (g.groups < 1 || g.c % g.groups != 0 || g.o % g.groups != 0)
    throw CudaError(fmt::format("{}: channels not divisible by groups", geometry_text(g, dtype, tf32)));
  auto p = std::make_unique<Plan>();
  const cudnnDataType_t type = dtype == DType::BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
  auto I = [&](int64_t v) { return as_int(v, g, dtype, tf32); };
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->x));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NHWC, type, I(g.n), I(g.c), I(g.h), I(g.w)));
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->y));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NHWC, type, I(g.n), I(g.o), I(g.ho), I(g.wo)));
  // NHWC filter format = memory order K R S C = [O][KH][KW][C/groups].
  CUDNN_CHECK(cudnnCreateFilterDescriptor(&p->w));
  CUDNN_CHECK(cudnnSetFilter4dDescriptor(p->w, type, CUDNN_TENSOR_NHWC, I(g.o), I(g.c / g.groups), I(g.kh), I(g.kw)));
  for (auto& c : p->conv) {
    CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&c));
    // Cross-correlation (no kernel flip), as PyTorch and the CPU path.
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(c, I(g.ph), I(g.pw), I(g.sh), I(g.sw), I(g.dh), I(g.dw),
                                                CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CUDNN_CHECK(cudnnSetConvolutionGroupCount(c, I(g.groups)));
    CUDNN_CHECK(cudnnSetConvolutionMathType(c, requested_math(dtype, tf32)));
  }
  int on = 0, oc = 0, oh = 0, ow = 0;
  CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(p->conv[0], p->x, p->w, &on, &oc, &oh, &ow));
  if (on != g.n || oc != g.o || oh != g.ho || ow != g.wo)
    throw CudaError(fmt::format("{}: cuDNN computes an output of [{},{},{},{}]", geometry_text(g, dtype, tf32), on, oh,
                                ow, oc));
  Plan& ref = *p;
  map.emplace(key, std::move(p));
  return ref;
}

// Workspace for benchmarking: the largest any algorithm asks for, up to the
// limit; less (down to none) when that much memory cannot be had.
void* find_workspace(const WorkspaceFn& workspace, size_t& nbytes) {
  nbytes = std::min(nbytes, find_workspace_limit());
  if (nbytes == 0) return nullptr;
  try {
    return workspace(nbytes);
  } catch (const std::exception&) {
    nbytes = 0;  // the algorithms without workspace remain
    return nullptr;
  }
}

// Picks the fastest successful result that fits the workspace and sets its
// math type on the direction's descriptor. Strict fp32 must stay on FMA
// kernels: it prefers results benchmarked with CUDNN_FMA_MATH and forces that
// math type on any other (cuDNN may report another one than requested).
template <class Perf, class SizeFn>
void choose(Plan& p, Direction dir, const Perf* perf, int returned, size_t ws_limit, DType dtype, bool tf32,
            SizeFn workspace_size, const ConvGeometry& g) {
  const bool strict = dtype == DType::F32 && !tf32;
  for (int pass = strict ? 0 : 1; pass < 2; ++pass) {
    for (int i = 0; i < returned; ++i) {
      if (perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].memory > ws_limit) continue;
      if (pass == 0 && perf[i].mathType != CUDNN_FMA_MATH) continue;
      const cudnnMathType_t math = strict ? CUDNN_FMA_MATH : perf[i].mathType;
      CUDNN_CHECK(cudnnSetConvolutionMathType(p.conv[dir], math));
      size_t need = 0;
      if (workspace_size(static_cast<int>(perf[i].algo), &need) != CUDNN_STATUS_SUCCESS) {
        CUDNN_CHECK(cudnnSetConvolutionMathType(p.conv[dir], requested_math(dtype, tf32)));
        continue;  // not runnable with this math type after all
      }
      p.algo[dir] = static_cast<int>(perf[i].algo);
      p.workspace[dir] = std::max(need, perf[i].memory);
      p.found[dir] = true;
      return;
    }
  }
  throw CudaError(fmt::format("{}: cuDNN found no {} algorithm ({} tried, workspace limit {} MiB)",
                              geometry_text(g, dtype, tf32), kDirectionName[dir], returned, ws_limit >> 20));
}

void* run_workspace(const WorkspaceFn& workspace, size_t nbytes) { return nbytes ? workspace(nbytes) : nullptr; }

void check_run(cudnnStatus_t st, const char* call, const ConvGeometry& g, DType dtype, bool tf32, int algo) {
  if (st != CUDNN_STATUS_SUCCESS)
    throw_error(fmt::format("{} (algorithm {}) for {}", call, algo, geometry_text(g, dtype, tf32)),
                "cuDNN " + cudnn_status_text(st), __FILE__, __LINE__);
}

}  // namespace

void conv2d_forward(const ConvGeometry& g, DType dtype, bool allow_tf32, const void* x, const void* w, void* y,
                    const WorkspaceFn& workspace, int device) {
  if (g.n == 0 || g.o == 0 || g.ho == 0 || g.wo == 0) return;
  const bool tf32 = dtype == DType::F32 && allow_tf32;
  cudnnHandle_t h = cudnn_handle(device);
  std::lock_guard<std::mutex> lock(g_mutex);
  Plan& p = plan_for(g, dtype, tf32, device);
  const cudnnConvolutionDescriptor_t conv = p.conv[kForward];
  if (!p.found[kForward]) {
    size_t ws = 0;
    int count = 0;
    CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(h, &count));
    for (int a = 0; a < count; ++a) {
      size_t s = 0;
      if (cudnnGetConvolutionForwardWorkspaceSize(h, p.x, p.w, conv, p.y, static_cast<cudnnConvolutionFwdAlgo_t>(a),
                                                  &s) == CUDNN_STATUS_SUCCESS)
        ws = std::max(ws, s);
    }
    void* ws_ptr = find_workspace(workspace, ws);
    std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(static_cast<size_t>(std::max(count, 1)));
    int returned = 0;
    CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(h, p.x, x, p.w, w, conv, p.y, y, count, &returned, perf.data(),
                                                       ws_ptr, ws));
    choose(p, kForward, perf.data(), returned, ws, dtype, tf32, [&](int algo, size_t* s) {
      return cudnnGetConvolutionForwardWorkspaceSize(h, p.x, p.w, conv, p.y, static_cast<cudnnConvolutionFwdAlgo_t>(algo), s);
    }, g);
  }
  const float alpha = 1.f, beta = 0.f;
  void* ws_ptr = run_workspace(workspace, p.workspace[kForward]);
  check_run(cudnnConvolutionForward(h, &alpha, p.x, x, p.w, w, conv,
                                    static_cast<cudnnConvolutionFwdAlgo_t>(p.algo[kForward]), ws_ptr,
                                    p.workspace[kForward], &beta, p.y, y),
            "cudnnConvolutionForward", g, dtype, tf32, p.algo[kForward]);
}

void conv2d_backward_data(const ConvGeometry& g, DType dtype, bool allow_tf32, const void* w, const void* dy,
                          void* dx, const WorkspaceFn& workspace, int device) {
  if (g.n == 0 || g.c == 0 || g.h == 0 || g.w == 0) return;
  if (g.o == 0 || g.ho == 0 || g.wo == 0) {  // no output: the input had no influence
    fill_bytes(dx, 0, static_cast<size_t>(g.n * g.h * g.w * g.c) * dtype_size(dtype), device);
    return;
  }
  const bool tf32 = dtype == DType::F32 && allow_tf32;
  cudnnHandle_t h = cudnn_handle(device);
  std::lock_guard<std::mutex> lock(g_mutex);
  Plan& p = plan_for(g, dtype, tf32, device);
  const cudnnConvolutionDescriptor_t conv = p.conv[kBackwardData];
  if (!p.found[kBackwardData]) {
    size_t ws = 0;
    int count = 0;
    CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(h, &count));
    for (int a = 0; a < count; ++a) {
      size_t s = 0;
      if (cudnnGetConvolutionBackwardDataWorkspaceSize(h, p.w, p.y, conv, p.x,
                                                       static_cast<cudnnConvolutionBwdDataAlgo_t>(a), &s) ==
          CUDNN_STATUS_SUCCESS)
        ws = std::max(ws, s);
    }
    void* ws_ptr = find_workspace(workspace, ws);
    std::vector<cudnnConvolutionBwdDataAlgoPerf_t> perf(static_cast<size_t>(std::max(count, 1)));
    int returned = 0;
    CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(h, p.w, w, p.y, dy, conv, p.x, dx, count, &returned,
                                                            perf.data(), ws_ptr, ws));
    choose(p, kBackwardData, perf.data(), returned, ws, dtype, tf32, [&](int algo, size_t* s) {
      return cudnnGetConvolutionBackwardDataWorkspaceSize(h, p.w, p.y, conv, p.x,
                                                          static_cast<cudnnConvolutionBwdDataAlgo_t>(algo), s);
    }, g);
  }
  const float alpha = 1.f, beta = 0.f;
  void* ws_ptr = run_workspace(workspace, p.workspace[kBackwardData]);
  check_run(cudnnConvolutionBackwardData(h, &alpha, p.w, w, p.y, dy, conv,
                                         static_cast<cudnnConvolutionBwdDataAlgo_t>(p.algo[kBackwardData]), ws_ptr,
                                         p.workspace[kBackwardData], &beta, p.x, dx),
            "cudnnConvolutionBackwardData", g, dtype, tf32, p.algo[kBackwardData]);
}

void conv2d_backward_filter(const ConvGeometry& g, DType dtype, bool allow_tf32, const void* x, const void* dy,
                            void* dw, const WorkspaceFn& workspace, int device) {
  const int64_t wn = g.groups > 0 ? g.o * g.kh * g.kw * (g.c / g.groups) : 0;
  if (wn == 0) return;
  if (g.n == 0 || g.ho == 0 || g.wo == 0) {  // no output: zero gradient
    fill_bytes(dw, 0, static_cast<size_t>(wn) * dtype_size(dtype), device);
    return;
  }
  const bool tf32 = dtype == DType::F32 && allow_tf32;
  cudnnHandle_t h = cudnn_handle(device);
  std::lock_guard<std::mutex> lock(g_mutex);
  Plan& p = plan_for(g, dtype, tf32, device);
  const cudnnConvolutionDescriptor_t conv = p.conv[kBackwardFilter];
  if (!p.found[kBackwardFilter]) {
    size_t ws = 0;
    int count = 0;
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(h, &count));
    for (int a = 0; a < count; ++a) {
      size_t s = 0;
      if (cudnnGetConvolutionBackwardFilterWorkspaceSize(h, p.x, p.y, conv, p.w,
                                                         static_cast<cudnnConvolutionBwdFilterAlgo_t>(a), &s) ==
          CUDNN_STATUS_SUCCESS)
        ws = std::max(ws, s);
    }
    void* ws_ptr = find_workspace(workspace, ws);
    std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> perf(static_cast<size_t>(std::max(count, 1)));
    int returned = 0;
    CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(h, p.x, x, p.y, dy, conv, p.w, dw, count, &returned,
                                                              perf.data(), ws_ptr, ws));
    choose(p, kBackwardFilter, perf.data(), returned, ws, dtype, tf32, [&](int algo, size_t* s) {
      return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, p.x, p.y, conv, p.w,
                                                            static_cast<cudnnConvolutionBwdFilterAlgo_t>(algo), s);
    }, g);
  }
  const float alpha = 1.f, beta = 0.f;
  void* ws_ptr = run_workspace(workspace, p.workspace[kBackwardFilter]);
  check_run(cudnnConvolutionBackwardFilter(h, &alpha, p.x, x, p.y, dy, conv,
                                           static_cast<cudnnConvolutionBwdFilterAlgo_t>(p.algo[kBackwardFilter]),
                                           ws_ptr, p.workspace[kBackwardFilter], &beta, p.w, dw),
            "cudnnConvolutionBackwardFilter", g, dtype, tf32, p.algo[kBackwardFilter]);
}

void conv2d_clear_cache() {
  std::lock_guard<std::mutex> lock(g_mutex);
  plans().clear();
}

}  // namespace s2h::cuda
