// Elementwise kernels on the GPU (see elementwise.h): one forward and one
// backward kernel template for all unary ops (the op is a template parameter,
// so each instantiation is a straight-line loop), and the broadcasting binary
// kernels. Contiguous buffers aligned to 16 bytes move in 16-byte packs.
#include <cstdint>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/elementwise.h"

namespace s2h::cuda {

namespace {

// ------------------------------------------------------------------ the ops
// The formulas (and their order of operations) follow the CPU lambdas in
// engine/ops_elementwise.cpp, in fp32.

template <UnaryOp OP>
__device__ __forceinline__ float unary_f(float x, float p) {
  if constexpr (OP == UnaryOp::AddScalar) {
    return x + p;
  } else if constexpr (OP == UnaryOp::MulScalar) {
    return x * p;
  } else if constexpr (OP == UnaryOp::RsubScalar) {
    return p - x;
  } else if constexpr (OP == UnaryOp::RdivScalar) {
    return p / x;
  } else if constexpr (OP == UnaryOp::PowScalar) {
    return powf(x, p);
  } else if constexpr (OP == UnaryOp::Neg) {
    return -x;
  } else if constexpr (OP == UnaryOp::Exp) {
    return expf(x);
  } else if constexpr (OP == UnaryOp::Log) {
    return logf(x);
  } else if constexpr (OP == UnaryOp::Sqrt) {
    return sqrtf(x);
  } else if constexpr (OP == UnaryOp::Square) {
    return x * x;
  } else if constexpr (OP == UnaryOp::Abs) {
    return fabsf(x);
  } else if constexpr (OP == UnaryOp::Relu) {
    return x > 0.f ? x : 0.f;
  } else if constexpr (OP == UnaryOp::Relu6) {
    // std::min(std::max(x, 0), 6): a NaN stays NaN, like the CPU.
    const float t = x < 0.f ? 0.f : x;
    return 6.f < t ? 6.f : t;
  } else if constexpr (OP == UnaryOp::Hardsigmoid) {
    const float t0 = x + 3.f;
    const float t = t0 < 0.f ? 0.f : t0;
    return (6.f < t ? 6.f : t) / 6.f;
  } else if constexpr (OP == UnaryOp::Hardswish) {
    const float t0 = x + 3.f;
    const float t = t0 < 0.f ? 0.f : t0;
    return x * (6.f < t ? 6.f : t) / 6.f;
  } else if constexpr (OP == UnaryOp::Gelu) {
    return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));  // x / sqrt(2)
  } else if constexpr (OP == UnaryOp::GeluTanh) {
    const float k = 0.79788456080286536f;  // sqrt(2 / pi)
    return 0.5f * x * (1.f + tanhf(k * (x + 0.044715f * x * x * x)));
  } else if constexpr (OP == UnaryOp::Sigmoid) {
    return 1.f / (1.f + expf(-x));
  } else {
    static_assert(OP == UnaryOp::Tanh);
    return tanhf(x);
  }
}

// dL/dx from x, y = f(x) and g = dL/dy.
template <UnaryOp OP>
__device__ __forceinline__ float unary_grad(float x, float y, float g, float p) {
  if constexpr (OP == UnaryOp::AddScalar) {
    return g;
  } else if constexpr (OP == UnaryOp::MulScalar) {
    return g * p;
  } else if constexpr (OP == UnaryOp::RsubScalar || OP == UnaryOp::Neg) {
    return -g;
  } else if constexpr (OP == UnaryOp::RdivScalar) {
    return -g * y / x;
  } else if constexpr (OP == UnaryOp::PowScalar) {
    return g * p * powf(x, p - 1.f);
  } else if constexpr (OP == UnaryOp::Exp) {
    return g * y;
  } else if constexpr (OP == UnaryOp::Log) {
    return g / x;
  } else if constexpr (OP == UnaryOp::Sqrt) {
    return g / (2.f * y);
  } else if constexpr (OP == UnaryOp::Square) {
    return 2.f * x * g;
  } else if constexpr (OP == UnaryOp::Abs) {
    return x > 0.f ? g : (x < 0.f ? -g : 0.f);
  } else if constexpr (OP == UnaryOp::Relu) {
    return x > 0.f ? g : 0.f;
  } else if constexpr (OP == UnaryOp::Relu6) {
    return (x > 0.f && x < 6.f) ? g : 0.f;
  } else if constexpr (OP == UnaryOp::Hardsigmoid) {
    return (x > -3.f && x < 3.f) ? g / 6.f : 0.f;
  } else if constexpr (OP == UnaryOp::Hardswish) {
    if (x < -3.f) return 0.f;
    if (x <= 3.f) return g * (x / 3.f + 0.5f);
    return g;
  } else if constexpr (OP == UnaryOp::Gelu) {
    const float cdf = 0.5f * (1.f + erff(x * 0.70710678118654752f));
    const float pdf = expf(-0.5f * x * x) * 0.39894228040143268f;  // 1 / sqrt(2 pi)
    return g * (cdf + x * pdf);
  } else if constexpr (OP == UnaryOp::GeluTanh) {
    const float k = 0.79788456080286536f;
    const float t = tanhf(k * (x + 0.044715f * x * x * x));
    return g * (0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * k * (1.f + 3.f * 0.044715f * x * x));
  } else if constexpr (OP == UnaryOp::Sigmoid) {
    return g * y * (1.f - y);
  } else {
    static_assert(OP == UnaryOp::Tanh);
    return g * (1.f - y * y);
  }
}

// Which saved values a gradient reads (the others are not loaded).
constexpr bool grad_uses_x(UnaryOp op) {
  switch (op) {
    case UnaryOp::RdivScalar:
    case UnaryOp::PowScalar:
    case UnaryOp::Log:
    case UnaryOp::Square:
    case UnaryOp::Abs:
    case UnaryOp::Relu:
    case UnaryOp::Relu6:
    case UnaryOp::Hardsigmoid:
    case UnaryOp::Hardswish:
    case UnaryOp::Gelu:
    case UnaryOp::GeluTanh: return true;
    default: return false;
  }
}
constexpr bool grad_uses_y(UnaryOp op) {
  switch (op) {
    case UnaryOp::RdivScalar:
    case UnaryOp::Exp:
    case UnaryOp::Sqrt:
    case UnaryOp::Sigmoid:
    case UnaryOp::Tanh: return true;
    default: return false;
  }
}

template <BinaryOp OP>
__device__ __forceinline__ float binary_f(float a, float b) {
  if constexpr (OP == BinaryOp::Add) {
    return a + b;
  } else if constexpr (OP == BinaryOp::Sub) {
    return a - b;
  } else if constexpr (OP == BinaryOp::Mul) {
    return a * b;
  } else {
    static_assert(OP == BinaryOp::Div);
    return a / b;
  }
}

const char* binary_name(BinaryOp op) {
  switch (op) {
    case BinaryOp::Add: return "add";
    case BinaryOp::Sub: return "sub";
    case BinaryOp::Mul: return "mul";
    case BinaryOp::Div: return "div";
  }
  return "binary";
}

// ------------------------------------------------------------------ packs
// N elements moved as one 16-byte load/store (N = 1: plain scalar access).
template <class T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Elements per 16-byte pack.
template <class T>
constexpr int kPack = 16 / static_cast<int>(sizeof(T));

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

__device__ __forceinline__ int64_t thread_index() {
  return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// ------------------------------------------------------------------ unary kernels
// The first n / N * N elements go in packs of N, the rest (fewer than N) one by one.
template <UnaryOp OP, int N, class T>
__global__ void unary_forward_kernel(const T* x, T* y, int64_t n, float p) {
  const int64_t npack = n / N;
  const auto* xp = reinterpret_cast<const Pack<T, N>*>(x);
  auto* yp = reinterpret_cast<Pack<T, N>*>(y);
  for (int64_t i = thread_index(); i < npack; i += grid_stride()) {
    const Pack<T, N> a = xp[i];
    Pack<T, N> r;
#pragma unroll
    for (int k = 0; k < N; ++k) r.v[k] = from_f<T>(unary_f<OP>(to_f(a.v[k]), p));
    yp[i] = r;
  }
  for (int64_t i = npack * N + thread_index(); i < n; i += grid_stride())
    y[i] = from_f<T>(unary_f<OP>(to_f(x[i]), p));
}

template <UnaryOp OP, int N, class T>
__global__ void unary_backward_kernel(const T* x, const T* y, const T* g, T* gx, int64_t n, float p) {
  constexpr bool ux = grad_uses_x(OP), uy = grad_uses_y(OP);
  const int64_t npack = n / N;
  const auto* xp = reinterpret_cast<const Pack<T, N>*>(x);
  const auto* yp = reinterpret_cast<const Pack<T, N>*>(y);
  const auto* gp = reinterpret_cast<const Pack<T, N>*>(g);
  auto* op = reinterpret_cast<Pack<T, N>*>(gx);
  for (int64_t i = thread_index(); i < npack; i += grid_stride()) {
    const Pack<T, N> gv = gp[i];
    Pack<T, N> xv, yv, r;
    if constexpr (ux) xv = xp[i];
    if constexpr (uy) yv = yp[i];
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const float xf = ux ? to_f(xv.v[k]) : 0.f;
      const float yf = uy ? to_f(yv.v[k]) : 0.f;
      r.v[k] = from_f<T>(unary_grad<OP>(xf, yf, to_f(gv.v[k]), p));
    }
    op[i] = r;
  }
  for (int64_t i = npack * N + thread_index(); i < n; i += grid_stride()) {
    const float xf = ux ? to_f(x[i]) : 0.f;
    const float yf = uy ? to_f(y[i]) : 0.f;
    gx[i] = from_f<T>(unary_grad<OP>(xf, yf, to_f(g[i]), p));
  }
}

// Calls fn.template operator()<OP>() with the enum value as a template argument.
template <class Fn>
void dispatch_unary(UnaryOp op, Fn&& fn) {
  switch (op) {
    case UnaryOp::AddScalar: fn.template operator()<UnaryOp::AddScalar>(); return;
    case UnaryOp::MulScalar: fn.template operator()<UnaryOp::MulScalar>(); return;
    case UnaryOp::RsubScalar: fn.template operator()<UnaryOp::RsubScalar>(); return;
    case UnaryOp::RdivScalar: fn.template operator()<UnaryOp::RdivScalar>(); return;
    case UnaryOp::PowScalar: fn.template operator()<UnaryOp::PowScalar>(); return;
    case UnaryOp::Neg: fn.template operator()<UnaryOp::Neg>(); return;
    case UnaryOp::Exp: fn.template operator()<UnaryOp::Exp>(); return;
    case UnaryOp::Log: fn.template operator()<UnaryOp::Log>(); return;
    case UnaryOp::Sqrt: fn.template operator()<UnaryOp::Sqrt>(); return;
    case UnaryOp::Square: fn.template operator()<UnaryOp::Square>(); return;
    case UnaryOp::Abs: fn.template operator()<UnaryOp::Abs>(); return;
    case UnaryOp::Relu: fn.template operator()<UnaryOp::Relu>(); return;
    case UnaryOp::Relu6: fn.template operator()<UnaryOp::Relu6>(); return;
    case UnaryOp::Hardsigmoid: fn.template operator()<UnaryOp::Hardsigmoid>(); return;
    case UnaryOp::Hardswish: fn.template operator()<UnaryOp::Hardswish>(); return;
    case UnaryOp::Gelu: fn.template operator()<UnaryOp::Gelu>(); return;
    case UnaryOp::GeluTanh: fn.template operator()<UnaryOp::GeluTanh>(); return;
    case UnaryOp::Sigmoid: fn.template operator()<UnaryOp::Sigmoid>(); return;
    case UnaryOp::Tanh: fn.template operator()<UnaryOp::Tanh>(); return;
  }
  throw CudaError("unary op: unknown op " + std::to_string(static_cast<int>(op)));
}

// ------------------------------------------------------------------ binary kernels
// Coalesced broadcast geometry, innermost axis first (so that the kernels'
// unrolled loops index the arrays with constants and keep them in registers).
struct Bcast {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t sa[kMaxDims] = {};
  int64_t sb[kMaxDims] = {};
};

template <BinaryOp OP, int N, class T>
__global__ void binary_flat_kernel(const T* a, const T* b, T* out, int64_t n) {
  const int64_t npack = n / N;
  const auto* ap = reinterpret_cast<const Pack<T, N>*>(a);
  const auto* bp = reinterpret_cast<const Pack<T, N>*>(b);
  auto* op = reinterpret_cast<Pack<T, N>*>(out);
  for (int64_t i = thread_index(); i < npack; i += grid_stride()) {
    const Pack<T, N> av = ap[i], bv = bp[i];
    Pack<T, N> r;
#pragma unroll
    for (int k = 0; k < N; ++k) r.v[k] = from_f<T>(binary_f<OP>(to_f(av.v[k]), to_f(bv.v[k])));
    op[i] = r;
  }
  for (int64_t i = npack * N + thread_index(); i < n; i += grid_stride())
    out[i] = from_f<T>(binary_f<OP>(to_f(a[i]), to_f(b[i])));
}

// I: the index type, uint32_t when n fits (32-bit division is much cheaper
// than 64-bit on the GPU), else int64_t.
template <BinaryOp OP, class T, class I>
__global__ void binary_strided_kernel(const T* a, const T* b, T* out, Bcast l, I n) {
  const I stride = static_cast<I>(gridDim.x) * static_cast<I>(blockDim.x);
  for (I i = static_cast<I>(blockIdx.x) * static_cast<I>(blockDim.x) + static_cast<I>(threadIdx.x); i < n;
       i += stride) {
    I rem = i;
    int64_t oa = 0, ob = 0;
#pragma unroll
    for (int d = 0; d < kMaxDims; ++d) {
      if (d < l.ndim) {
        const I s = static_cast<I>(l.shape[d]);
        const I c = rem % s;
        rem /= s;
        oa += static_cast<int64_t>(c) * l.sa[d];
        ob += static_cast<int64_t>(c) * l.sb[d];
      }
    }
    out[i] = from_f<T>(binary_f<OP>(to_f(a[oa]), to_f(b[ob])));
  }
}

template <class Fn>
void dispatch_binary(BinaryOp op, Fn&& fn) {
  switch (op) {
    case BinaryOp::Add: fn.template operator()<BinaryOp::Add>(); return;
    case BinaryOp::Sub: fn.template operator()<BinaryOp::Sub>(); return;
    case BinaryOp::Mul: fn.template operator()<BinaryOp::Mul>(); return;
    case BinaryOp::Div: fn.template operator()<BinaryOp::Div>(); return;
  }
  throw CudaError("binary op: unknown op " + std::to_string(static_cast<int>(op)));
}

}  // namespace

void unary_forward(UnaryOp op, double param, const void* x, void* y, DType dtype, int64_t n, Stream stream) {
  if (n <= 0) return;
  const float p = static_cast<float>(param);
  dispatch_gpu_float(dtype, "unary op", [&]<typename T>() {
    const bool packed = aligned16(x) && aligned16(y);
    dispatch_unary(op, [&]<UnaryOp OP>() {
      if (packed) {
        constexpr int N = kPack<T>;
        launch("unary_forward", unary_forward_kernel<OP, N, T>, grid_for((n + N - 1) / N), 256, 0, stream,
               static_cast<const T*>(x), static_cast<T*>(y), n, p);
      } else {
        launch("unary_forward", unary_forward_kernel<OP, 1, T>, grid_for(n), 256, 0, stream, static_cast<const T*>(x),
               static_cast<T*>(y), n, p);
      }
    });
  });
}

void unary_backward(UnaryOp op, double param, const void* x, const void* y, const void* g, void* gx, DType dtype,
                    int64_t n, Stream stream) {
  if (n <= 0) return;
  const float p = static_cast<float>(param);
  dispatch_gpu_float(dtype, "unary op backward", [&]<typename T>() {
    const bool packed = aligned16(x) && aligned16(y) && aligned16(g) && aligned16(gx);
    const T* xt = static_cast<const T*>(x);
    const T* yt = static_cast<const T*>(y);
    const T* gt = static_cast<const T*>(g);
    T* gxt = static_cast<T*>(gx);
    dispatch_unary(op, [&]<UnaryOp OP>() {
      if (packed) {
        constexpr int N = kPack<T>;
        launch("unary_backward", unary_backward_kernel<OP, N, T>, grid_for((n + N - 1) / N), 256, 0, stream, xt, yt, gt,
               gxt, n, p);
      } else {
        launch("unary_backward", unary_backward_kernel<OP, 1, T>, grid_for(n), 256, 0, stream, xt, yt, gt, gxt, n, p);
      }
    });
  });
}

void binary(BinaryOp op, const void* a, const int64_t* a_strides, const void* b, const int64_t* b_strides, void* out,
            DType dtype, const int64_t* shape, int ndim, Stream stream) {
  int64_t n = 1;
  for (int d = 0; d < ndim; ++d) n *= shape[d];
  if (n <= 0) return;
  // Coalesce, innermost axis first: drop size-1 axes; an axis merges into
  // the (inner) one before it when both operands step over it as over one
  // longer inner axis (out is contiguous, so it always does).
  Bcast l;
  for (int d = ndim - 1; d >= 0; --d) {
    const int64_t s = shape[d];
    if (s == 1) continue;
    const int k = l.ndim - 1;
    if (k >= 0 && a_strides[d] == l.sa[k] * l.shape[k] && b_strides[d] == l.sb[k] * l.shape[k]) {
      l.shape[k] *= s;
      continue;
    }
    if (l.ndim == kMaxDims)
      throw CudaError(std::string(binary_name(op)) + ": more than " + std::to_string(kMaxDims) +
                      " axes after merging are not supported on CUDA");
    l.shape[l.ndim] = s;
    l.sa[l.ndim] = a_strides[d];
    l.sb[l.ndim] = b_strides[d];
    ++l.ndim;
  }
  if (l.ndim == 0) {  // one element
    l.ndim = 1;
    l.shape[0] = 1;
  }
  dispatch_gpu_float(dtype, binary_name(op), [&]<typename T>() {
    const T* at = static_cast<const T*>(a);
    const T* bt = static_cast<const T*>(b);
    T* ot = static_cast<T*>(out);
    dispatch_binary(op, [&]<BinaryOp OP>() {
      if (l.ndim == 1 && l.sa[0] == 1 && l.sb[0] == 1) {  // both operands contiguous, of out's shape
        if (aligned16(a) && aligned16(b) && aligned16(out)) {
          constexpr int N = kPack<T>;
          launch(binary_name(op), binary_flat_kernel<OP, N, T>, grid_for((n + N - 1) / N), 256, 0, stream, at, bt, ot,
                 n);
        } else {
          launch(binary_name(op), binary_flat_kernel<OP, 1, T>, grid_for(n), 256, 0, stream, at, bt, ot, n);
        }
      } else if (n <= INT32_MAX) {
        launch(binary_name(op), binary_strided_kernel<OP, T, uint32_t>, grid_for(n), 256, 0, stream, at, bt, ot, l,
               static_cast<uint32_t>(n));
      } else {
        launch(binary_name(op), binary_strided_kernel<OP, T, int64_t>, grid_for(n), 256, 0, stream, at, bt, ot, l, n);
      }
    });
  });
}

}  // namespace s2h::cuda
