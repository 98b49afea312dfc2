// Pooling kernels on NHWC activations (see pool.h). One thread per output
// element in the forward, one per input element in the backward (gather);
// the channel is the fastest index, so neighbouring threads touch
// neighbouring addresses.
#include <initializer_list>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/pool.h"

namespace s2h::cuda {

namespace {

constexpr int kBlock = 256;

// The geometry in the kernels' index type I: int32_t when every index fits
// (the common case; 64-bit divisions are slow subroutine calls), else int64_t.
template <class I>
struct Geom {
  I n, h, w, c, kh, kw, sh, sw, ph, pw, ho, wo;
};
template <class I>
Geom<I> geom_as(const PoolGeom& g) {
  return {static_cast<I>(g.n),  static_cast<I>(g.h),  static_cast<I>(g.w),  static_cast<I>(g.c),
          static_cast<I>(g.kh), static_cast<I>(g.kw), static_cast<I>(g.sh), static_cast<I>(g.sw),
          static_cast<I>(g.ph), static_cast<I>(g.pw), static_cast<I>(g.ho), static_cast<I>(g.wo)};
}

// Calls fn.template operator()<I>() with I = int32_t when all of `sizes` (the
// element counts and products the kernels form) are below 2^30: the
// grid-stride index may pass the total by one grid (< 2^29 threads) without
// overflowing.
template <class Fn>
void dispatch_index(std::initializer_list<int64_t> sizes, Fn&& fn) {
  bool small = true;
  for (int64_t s : sizes) small = small && s < (int64_t{1} << 30);
  if (small) {
    fn.template operator()<int32_t>();
  } else {
    fn.template operator()<int64_t>();
  }
}

template <class I>
__device__ __forceinline__ I imin(I a, I b) {
  return a < b ? a : b;
}
template <class I>
__device__ __forceinline__ I imax(I a, I b) {
  return a > b ? a : b;
}

// i = ((n * A + a) * B + b) * C + c  ->  (n, a, b, c)
template <class I>
struct Nabc {
  I n, a, b, c;
};
template <class I>
__device__ __forceinline__ Nabc<I> split(I i, I A, I B, I C) {
  Nabc<I> r;
  r.c = i % C;
  i /= C;
  r.b = i % B;
  i /= B;
  r.a = i % A;
  r.n = i / A;
  return r;
}

// The outputs o in [lo, hi] whose window [o*s - p, o*s - p + k) contains input i
// (an input index is inside [0, size), so clipping the window changes nothing).
template <class I>
__device__ __forceinline__ void covering(I i, I k, I s, I p, I out, I& lo, I& hi) {
  const I a = i + p - k;  // o*s > a
  lo = a < 0 ? I(0) : a / s + 1;
  hi = imin<I>((i + p) / s, out - 1);  // o*s <= i + p
}

// The input window of an average-pool output and its divisor (PyTorch's rule,
// as avg_window in kernels/cpu/pool.cpp).
template <class I>
struct AvgWindow {
  I h0, h1, w0, w1, count;
};
template <class I>
__device__ __forceinline__ AvgWindow<I> avg_window(const Geom<I>& g, bool count_include_pad, I oh, I ow) {
  I h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
  I h1 = imin<I>(h0 + g.kh, g.h + g.ph), w1 = imin<I>(w0 + g.kw, g.w + g.pw);
  const I pool_size = (h1 - h0) * (w1 - w0);
  h0 = imax<I>(h0, 0);
  w0 = imax<I>(w0, 0);
  h1 = imin<I>(h1, g.h);
  w1 = imin<I>(w1, g.w);
  const I count = count_include_pad ? pool_size : (h1 - h0) * (w1 - w0);
  return {h0, h1, w0, w1, count};
}

// Adaptive pooling: output cell i covers [start, end) of the input.
template <class I>
__device__ __forceinline__ I adaptive_start(I i, I out, I in) {
  return (i * in) / out;
}
template <class I>
__device__ __forceinline__ I adaptive_end(I i, I out, I in) {
  return ((i + 1) * in + out - 1) / out;
}

#define S2H_GRID_STRIDE(I, i, total)                                                                   \
  for (I i = static_cast<I>(blockIdx.x * blockDim.x + threadIdx.x); i < (total);      \
       i += static_cast<I>(gridDim.x * blockDim.x))

// ------------------------------------------------------------------ max
template <class T, class I>
__global__ void __launch_bounds__(kBlock)
    max_pool_forward_kernel(Geom<I> g, const T* __restrict__ x, T* __restrict__ y, int32_t* __restrict__ argmax) {
  const I total = g.n * g.ho * g.wo * g.c;
  S2H_GRID_STRIDE(I, i, total) {
    const Nabc<I> o = split<I>(i, g.ho, g.wo, g.c);  // (n, oh, ow, c)
    const I h0 = imax<I>(0, o.a * g.sh - g.ph), h1 = imin<I>(g.h, o.a * g.sh - g.ph + g.kh);
    const I w0 = imax<I>(0, o.b * g.sw - g.pw), w1 = imin<I>(g.w, o.b * g.sw - g.pw + g.kw);
    const T* xn = x + o.n * g.h * g.w * g.c + o.c;
    // The window is never empty (padding <= kernel / 2). Start from its first
    // element; a larger value or a NaN replaces the current one (same order as the CPU).
    float best = to_f(xn[(h0 * g.w + w0) * g.c]);
    I pos = h0 * g.w + w0;
    for (I hi = h0; hi < h1; ++hi)
      for (I wi = (hi == h0 ? w0 + 1 : w0); wi < w1; ++wi) {
        const float v = to_f(xn[(hi * g.w + wi) * g.c]);
        if (v > best || v != v) {
          best = v;
          pos = hi * g.w + wi;
        }
      }
    y[i] = from_f<T>(best);
    argmax[i] = static_cast<int32_t>(pos);
  }
}

template <class T, class I>
__global__ void __launch_bounds__(kBlock)
    max_pool_backward_kernel(Geom<I> g, const T* __restrict__ dy, const int32_t* __restrict__ argmax,
                             T* __restrict__ dx) {
  const I total = g.n * g.h * g.w * g.c;
  S2H_GRID_STRIDE(I, i, total) {
    const Nabc<I> p = split<I>(i, g.h, g.w, g.c);  // (n, hi, wi, c)
    I oh0, oh1, ow0, ow1;
    covering<I>(p.a, g.kh, g.sh, g.ph, g.ho, oh0, oh1);
    covering<I>(p.b, g.kw, g.sw, g.pw, g.wo, ow0, ow1);
    const int32_t pos = static_cast<int32_t>(p.a * g.w + p.b);
    float acc = 0.f;
    for (I oh = oh0; oh <= oh1; ++oh)
      for (I ow = ow0; ow <= ow1; ++ow) {
        const I o = ((p.n * g.ho + oh) * g.wo + ow) * g.c + p.c;
        if (argmax[o] == pos) acc += to_f(dy[o]);
      }
    dx[i] = from_f<T>(acc);
  }
}

// ------------------------------------------------------------------ average
template <class T, class I>
__global__ void __launch_bounds__(kBlock)
    avg_pool_forward_kernel(Geom<I> g, bool count_include_pad, const T* __restrict__ x, T* __restrict__ y) {
  const I total = g.n * g.ho * g.wo * g.c;
  S2H_GRID_STRIDE(I, i, total) {
    const Nabc<I> o = split<I>(i, g.ho, g.wo, g.c);
    const AvgWindow<I> win = avg_window<I>(g, count_include_pad, o.a, o.b);
    const T* xn = x + o.n * g.h * g.w * g.c + o.c;
    float acc = 0.f;
    for (I hi = win.h0; hi < win.h1; ++hi)
      for (I wi = win.w0; wi < win.w1; ++wi) acc += to_f(xn[(hi * g.w + wi) * g.c]);
    y[i] = from_f<T>(acc * (win.count > 0 ? 1.f / static_cast<float>(win.count) : 0.f));
  }
}

template <class T, class I>
__global__ void __launch_bounds__(kBlock)
    avg_pool_backward_kernel(Geom<I> g, bool count_include_pad, const T* __restrict__ dy, T* __restrict__ dx) {
  const I total = g.n * g.h * g.w * g.c;
  S2H_GRID_STRIDE(I, i, total) {
    const Nabc<I> p = split<I>(i, g.h, g.w, g.c);
    I oh0, oh1, ow0, ow1;
    covering<I>(p.a, g.kh, g.sh, g.ph, g.ho, oh0, oh1);
    covering<I>(p.b, g.kw, g.sw, g.pw, g.wo, ow0, ow1);
    float acc = 0.f;
    for (I oh = oh0; oh <= oh1; ++oh)
      for (I ow = ow0; ow <= ow1; ++ow) {
        // __fdividef (within 2 ulp): the IEEE division's slow-path call in this
        // unrolled loop made ptxas spill in the bf16 variant.
        const I count = avg_window<I>(g, count_include_pad, oh, ow).count;
        const float inv = count > 0 ? __fdividef(1.f, static_cast<float>(count)) : 0.f;
        acc += to_f(dy[((p.n * g.ho + oh) * g.wo + ow) * g.c + p.c]) * inv;
      }
    dx[i] = from_f<T>(acc);
  }
}

// ------------------------------------------------------------------ adaptive average
template <class T, class I>
__global__ void __launch_bounds__(kBlock)
    adaptive_avg_forward_kernel(I n, I h, I w, I c, I ho, I wo, const T* __restrict__ x, T* __restrict__ y) {
  const I total = n * ho * wo * c;
  S2H_GRID_STRIDE(I, i, total) {
    const Nabc<I> o = split<I>(i, ho, wo, c);
    const I h0 = adaptive_start<I>(o.a, ho, h), h1 = adaptive_end<I>(o.a, ho, h);
    const I w0 = adaptive_start<I>(o.b, wo, w), w1 = adaptive_end<I>(o.b, wo, w);
    const T* xn = x + o.n * h * w * c + o.c;
    float acc = 0.f;
    for (I hi = h0; hi < h1; ++hi)
      for (I wi = w0; wi < w1; ++wi) acc += to_f(xn[(hi * w + wi) * c]);
    y[i] = from_f<T>(acc / static_cast<float>((h1 - h0) * (w1 - w0)));
  }
}

template <class T, class I>
__global__ void __launch_bounds__(kBlock)
    adaptive_avg_backward_kernel(I n, I h, I w, I c, I ho, I wo, const T* __restrict__ dy, T* __restrict__ dx) {
  const I total = n * h * w * c;
  S2H_GRID_STRIDE(I, i, total) {
    const Nabc<I> p = split<I>(i, h, w, c);
    // Outputs covering input row hi: start(oh) <= hi < end(oh), i.e.
    // floor(hi*Ho/H) <= oh <= ceil((hi+1)*Ho/H) - 1 (same along W).
    const I oh0 = (p.a * ho) / h, oh1 = imin<I>(ho - 1, ((p.a + 1) * ho + h - 1) / h - 1);
    const I ow0 = (p.b * wo) / w, ow1 = imin<I>(wo - 1, ((p.b + 1) * wo + w - 1) / w - 1);
    float acc = 0.f;
    for (I oh = oh0; oh <= oh1; ++oh) {
      const I hs = adaptive_end<I>(oh, ho, h) - adaptive_start<I>(oh, ho, h);
      for (I ow = ow0; ow <= ow1; ++ow) {
        const I ws = adaptive_end<I>(ow, wo, w) - adaptive_start<I>(ow, wo, w);
        acc += to_f(dy[((p.n * ho + oh) * wo + ow) * c + p.c]) / static_cast<float>(hs * ws);
      }
    }
    dx[i] = from_f<T>(acc);
  }
}

#undef S2H_GRID_STRIDE

}  // namespace

// ------------------------------------------------------------------ launchers
void max_pool2d_forward(const PoolGeom& g, const void* x, void* y, int32_t* argmax, DType dtype, Stream stream) {
  const int64_t total = g.n * g.ho * g.wo * g.c;
  if (total == 0) return;
  dispatch_gpu_float(dtype, "max_pool2d", [&]<typename T>() {
    dispatch_index({total, g.n * g.h * g.w * g.c}, [&]<typename I>() {
      launch("max_pool2d", max_pool_forward_kernel<T, I>, grid_for(total, kBlock), kBlock, 0, stream, geom_as<I>(g),
             static_cast<const T*>(x), static_cast<T*>(y), argmax);
    });
  });
}

void max_pool2d_backward(const PoolGeom& g, const void* dy, const int32_t* argmax, void* dx, DType dtype,
                         Stream stream) {
  const int64_t total = g.n * g.h * g.w * g.c;
  if (total == 0) return;
  dispatch_gpu_float(dtype, "max_pool2d backward", [&]<typename T>() {
    dispatch_index({total, g.n * g.ho * g.wo * g.c}, [&]<typename I>() {
      launch("max_pool2d backward", max_pool_backward_kernel<T, I>, grid_for(total, kBlock), kBlock, 0, stream,
             geom_as<I>(g), static_cast<const T*>(dy), argmax, static_cast<T*>(dx));
    });
  });
}

void avg_pool2d_forward(const PoolGeom& g, bool count_include_pad, const void* x, void* y, DType dtype,
                        Stream stream) {
  const int64_t total = g.n * g.ho * g.wo * g.c;
  if (total == 0) return;
  dispatch_gpu_float(dtype, "avg_pool2d", [&]<typename T>() {
    dispatch_index({total, g.n * g.h * g.w * g.c}, [&]<typename I>() {
      launch("avg_pool2d", avg_pool_forward_kernel<T, I>, grid_for(total, kBlock), kBlock, 0, stream, geom_as<I>(g),
             count_include_pad, static_cast<const T*>(x), static_cast<T*>(y));
    });
  });
}

void avg_pool2d_backward(const PoolGeom& g, bool count_include_pad, const void* dy, void* dx, DType dtype,
                         Stream stream) {
  const int64_t total = g.n * g.h * g.w * g.c;
  if (total == 0) return;
  dispatch_gpu_float(dtype, "avg_pool2d backward", [&]<typename T>() {
    dispatch_index({total, g.n * g.ho * g.wo * g.c}, [&]<typename I>() {
      launch("avg_pool2d backward", avg_pool_backward_kernel<T, I>, grid_for(total, kBlock), kBlock, 0, stream,
             geom_as<I>(g), count_include_pad, static_cast<const T*>(dy), static_cast<T*>(dx));
    });
  });
}

void adaptive_avg_pool2d_forward(int64_t n, int64_t h, int64_t w, int64_t c, int64_t ho, int64_t wo, const void* x,
                                 void* y, DType dtype, Stream stream) {
  const int64_t total = n * ho * wo * c;
  if (total == 0 || h <= 0 || w <= 0) return;
  dispatch_gpu_float(dtype, "adaptive_avg_pool2d", [&]<typename T>() {
    // (i + 1) * in and (hi + 1) * out are formed too.
    dispatch_index({total, n * h * w * c, (ho + 1) * h, (wo + 1) * w, (h + 1) * ho, (w + 1) * wo}, [&]<typename I>() {
      launch("adaptive_avg_pool2d", adaptive_avg_forward_kernel<T, I>, grid_for(total, kBlock), kBlock, 0, stream,
             static_cast<I>(n), static_cast<I>(h), static_cast<I>(w), static_cast<I>(c), static_cast<I>(ho),
             static_cast<I>(wo), static_cast<const T*>(x), static_cast<T*>(y));
    });
  });
}

void adaptive_avg_pool2d_backward(int64_t n, int64_t h, int64_t w, int64_t c, int64_t ho, int64_t wo, const void* dy,
                                  void* dx, DType dtype, Stream stream) {
  const int64_t total = n * h * w * c;
  if (total == 0 || ho <= 0 || wo <= 0) return;
  dispatch_gpu_float(dtype, "adaptive_avg_pool2d backward", [&]<typename T>() {
    dispatch_index({total, n * ho * wo * c, (ho + 1) * h, (wo + 1) * w, (h + 1) * ho, (w + 1) * wo}, [&]<typename I>() {
      launch("adaptive_avg_pool2d backward", adaptive_avg_backward_kernel<T, I>, grid_for(total, kBlock), kBlock, 0,
             stream, static_cast<I>(n), static_cast<I>(h), static_cast<I>(w), static_cast<I>(c), static_cast<I>(ho),
             static_cast<I>(wo), static_cast<const T*>(dy), static_cast<T*>(dx));
    });
  });
}

}  // namespace s2h::cuda
