// Softmax, log-softmax, cross-entropy, KL divergence and dropout kernels (see softmax.h).
//
// Row kernels come in two shapes, chosen by the row length C: for C <= 1024
// one warp per row (every warp of a 256-thread block takes its own rows), for
// longer rows one 256-thread block per row. Softmax statistics are computed
// online (running max and rescaled sum, Milakov & Gimelshein), so x is read
// once for the statistics and once for the output. Scalar losses are reduced
// per block into the caller's scratch and summed by one finishing block, in
// a fixed order (no atomics).
#include <algorithm>
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/softmax.h"

namespace s2h::cuda {

namespace {

constexpr int kBlock = 256;               // threads per block of every kernel here but the finishers
constexpr int kRowWarps = kBlock / 32;    // warps in the block-per-row shape
constexpr int64_t kWarpRowMax = 1024;     // longest row handled by one warp
constexpr int kFinishThreads = 1024;      // the single block that sums the partials

// Merges two online-softmax partials (max m, sum of exp(x - m)). A partial
// whose sum is 0 holds nothing (or only -inf) and adds 0, so that -inf - -inf
// never makes a NaN; any other partial has a sum >= 1 or NaN. (Testing the
// max instead would drop a NaN sum: NaN never raises m, so a lane that saw
// only NaNs keeps m = -inf.) The result does not depend on the order of the
// operands, so every lane of a butterfly ends with the same bits.
__device__ __forceinline__ void ms_merge(float& m, float& s, float mo, float so) {
  const float mn = fmaxf(m, mo);
  s = (s == 0.f ? 0.f : s * expf(m - mn)) + (so == 0.f ? 0.f : so * expf(mo - mn));
  m = mn;
}

// Adds x to an online-softmax partial. A NaN makes the sum NaN (propagates).
__device__ __forceinline__ void ms_add(float& m, float& s, float v) {
  if (v > m) {
    s *= expf(m - v);  // 0 while m is -inf
    m = v;
  }
  s += v == -INFINITY ? 0.f : expf(v - m);
}

// Which rows this thread works on, and its index within the row's threads.
// kWarps == 1: each warp takes its own rows; otherwise the whole block
// (32 * kWarps threads) takes one row at a time. The row loop is uniform over
// the threads that share a row, so shuffles and __syncthreads are safe.
template <int kWarps>
struct RowGroup {
  static constexpr int kThreads = 32 * kWarps;
  int tid;
  int64_t first, step;
  __device__ RowGroup() {
    if constexpr (kWarps == 1) {
      tid = threadIdx.x & 31;
      first = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5;
      step = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
    } else {
      tid = threadIdx.x;
      first = blockIdx.x;
      step = gridDim.x;
    }
  }
};

// Sum over the threads of a row group; every thread gets the same value.
// sh: kWarps floats of shared memory (the leading barrier lets a caller reuse
// the same array in consecutive calls).
template <int kWarps>
__device__ __forceinline__ float group_sum(float v, float* sh) {
  v = warp_sum(v);
  if constexpr (kWarps == 1) {
    return v;
  } else {
    __syncthreads();  // the previous reader of sh is done
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    float t = 0.f;
    for (int k = 0; k < kWarps; ++k) t += sh[k];
    return t;
  }
}

template <int kWarps>
__device__ __forceinline__ void group_max_sum(float& m, float& s, float* sh_m, float* sh_s) {
  for (int off = 16; off > 0; off >>= 1) {
    const float mo = __shfl_xor_sync(0xffffffffu, m, off), so = __shfl_xor_sync(0xffffffffu, s, off);
    ms_merge(m, s, mo, so);
  }
  if constexpr (kWarps > 1) {
    __syncthreads();
    if ((threadIdx.x & 31) == 0) {
      sh_m[threadIdx.x >> 5] = m;
      sh_s[threadIdx.x >> 5] = s;
    }
    __syncthreads();
    m = sh_m[0];
    s = sh_s[0];
    for (int k = 1; k < kWarps; ++k) ms_merge(m, s, sh_m[k], sh_s[k]);
  }
}

// Blocks for a row kernel of either shape.
unsigned row_grid(int64_t rows, int warps_per_row) {
  if (warps_per_row == 1) return grid_for(rows * 32, kBlock);
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(rows, 1), 65535LL * 16));
}

// ------------------------------------------------------------------ softmax
template <class T, bool kLog, int kWarps>
__global__ void __launch_bounds__(kBlock)
    softmax_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t c) {
  S2H_SHARED(float, sh_m, [kWarps]);
  S2H_SHARED(float, sh_s, [kWarps]);
  const RowGroup<kWarps> grp;
  for (int64_t r = grp.first; r < rows; r += grp.step) {
    const T* xr = x + r * c;
    float m = -INFINITY, s = 0.f;
    for (int64_t j = grp.tid; j < c; j += RowGroup<kWarps>::kThreads) ms_add(m, s, to_f(xr[j]));
    group_max_sum<kWarps>(m, s, sh_m, sh_s);
    T* yr = y + r * c;
    if constexpr (kLog) {
      const float lse = m + logf(s);
      for (int64_t j = grp.tid; j < c; j += RowGroup<kWarps>::kThreads) yr[j] = from_f<T>(to_f(xr[j]) - lse);
    } else {
      const float inv = 1.f / s;
      for (int64_t j = grp.tid; j < c; j += RowGroup<kWarps>::kThreads)
        yr[j] = from_f<T>(expf(to_f(xr[j]) - m) * inv);
    }
  }
}

template <class T, bool kLog, int kWarps>
__global__ void __launch_bounds__(kBlock)
    softmax_backward_kernel(const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx, int64_t rows,
                            int64_t c) {
  S2H_SHARED(float, sh, [kWarps]);
  const RowGroup<kWarps> grp;
  for (int64_t r = grp.first; r < rows; r += grp.step) {
    const T* yr = y + r * c;
    const T* gr = dy + r * c;
    float s = 0.f;
    for (int64_t j = grp.tid; j < c; j += RowGroup<kWarps>::kThreads)
      s += kLog ? to_f(gr[j]) : to_f(gr[j]) * to_f(yr[j]);
    s = group_sum<kWarps>(s, sh);
    T* d = dx + r * c;
#pragma unroll 2  // the default unroll spills 4 bytes in the bf16 log-softmax variant
    for (int64_t j = grp.tid; j < c; j += RowGroup<kWarps>::kThreads) {
      const float g = to_f(gr[j]), v = to_f(yr[j]);
      d[j] = from_f<T>(kLog ? g - expf(v) * s : v * (g - s));
    }
  }
}

// ------------------------------------------------------------------ cross-entropy
template <int kWarps>
__global__ void __launch_bounds__(kBlock)
    cross_entropy_forward_kernel(const float* __restrict__ x, const int64_t* __restrict__ target, int64_t n,
                                 int64_t c, float smoothing, float* __restrict__ lse_out,
                                 float* __restrict__ row_loss) {
  S2H_SHARED(float, sh_m, [kWarps]);
  S2H_SHARED(float, sh_s, [kWarps]);
  S2H_SHARED(float, sh_x, [kWarps]);
  const RowGroup<kWarps> grp;
  for (int64_t r = grp.first; r < n; r += grp.step) {
    const float* xr = x + r * c;
    float m = -INFINITY, s = 0.f, sx = 0.f;
    for (int64_t j = grp.tid; j < c; j += RowGroup<kWarps>::kThreads) {
      const float v = xr[j];
      ms_add(m, s, v);
      sx += v;
    }
    group_max_sum<kWarps>(m, s, sh_m, sh_s);
    sx = group_sum<kWarps>(sx, sh_x);
    if (grp.tid == 0) {
      const float lse = m + logf(s);
      const int64_t t = target[r];
      float loss = NAN;  // a target outside [0, C) poisons the mean instead of reading out of bounds
      if (t >= 0 && t < c) {
        // sum_j logp_j = sum_j x_j - C * lse; only with smoothing (as on the CPU, an inf
        // elsewhere in the row does not leak in through a zero weight).
        const float smooth = smoothing > 0.f ? smoothing / static_cast<float>(c) * (sx - static_cast<float>(c) * lse)
                                             : 0.f;
        loss = -((1.f - smoothing) * (xr[t] - lse) + smooth);
      }
      lse_out[r] = lse;
      row_loss[r] = loss;
    }
  }
}

// out[0] = sum(part[0..count)) / divisor, in one block of kFinishThreads, fp64, fixed order.
__global__ void __launch_bounds__(kFinishThreads)
    sum_finish_kernel(const float* __restrict__ part, int64_t count, double divisor, float* __restrict__ out) {
  S2H_SHARED(double, sh, [kFinishThreads / 32]);
  double acc = 0;
  for (int64_t i = threadIdx.x; i < count; i += kFinishThreads) acc += part[i];
  acc = warp_sum(acc);
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int k = 0; k < kFinishThreads / 32; ++k) t += sh[k];
    out[0] = static_cast<float>(t / divisor);
  }
}

__global__ void __launch_bounds__(kBlock)
    cross_entropy_backward_kernel(const float* __restrict__ x, const int64_t* __restrict__ target,
                                  const float* __restrict__ lse, const float* __restrict__ grad, int64_t n, int64_t c,
                                  float smoothing, float* __restrict__ dx) {
  const float scale = grad[0] / static_cast<float>(n);
  const float smooth = smoothing / static_cast<float>(c), hit = 1.f - smoothing;
  const int64_t total = n * c;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / c, j = i - r * c;
    const int64_t t = target[r];
    float d = NAN;
    if (t >= 0 && t < c) d = scale * (expf(x[i] - lse[r]) - smooth - (j == t ? hit : 0.f));
    dx[i] = d;
  }
}

// ------------------------------------------------------------------ KL divergence
__device__ __forceinline__ float kl_term(float q, float p, bool log_target) {
  if (log_target) return expf(p) * (p - q);
  return p > 0.f ? p * (logf(p) - q) : 0.f;  // 0 * log 0 = 0 (and a NaN p counts 0, as on the CPU)
}

// part[block] = sum of the terms of a grid-stride share of the elements.
__global__ void __launch_bounds__(kBlock)
    kl_div_partial_kernel(const float* __restrict__ q, const float* __restrict__ p, int64_t total, bool log_target,
                          float* __restrict__ part) {
  S2H_SHARED(float, sh, [kBlock / 32]);
  float acc = 0.f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    acc += kl_term(q[i], p[i], log_target);
  acc = warp_sum(acc);
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.f;
    for (int k = 0; k < kBlock / 32; ++k) t += sh[k];
    part[blockIdx.x] = t;
  }
}

__global__ void __launch_bounds__(kBlock)
    kl_div_backward_kernel(const float* __restrict__ q, const float* __restrict__ p, const float* __restrict__ grad,
                           int64_t total, int64_t batch, bool log_target, float* __restrict__ dq,
                           float* __restrict__ dp) {
  const float s = grad[0] / static_cast<float>(batch);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float qv = q[i], pv = p[i];
    if (log_target) {
      const float e = expf(pv);
      if (dq) dq[i] = -s * e;
      if (dp) dp[i] = s * e * (pv - qv + 1.f);
    } else {
      if (dq) dq[i] = -s * pv;
      if (dp) dp[i] = pv > 0.f ? s * (logf(pv) + 1.f - qv) : 0.f;
    }
  }
}

// Blocks of the KL partial sums: fixed by `total` alone, so the sum is reproducible.
int64_t kl_blocks(int64_t total) { return std::min<int64_t>(1024, std::max<int64_t>(1, (total + 4095) / 4096)); }

// ------------------------------------------------------------------ dropout
// The i-th output of SplitMix64 seeded with `seed` (Steele et al.; passes BigCrush).
__device__ __forceinline__ uint64_t splitmix64(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

template <class T>
__global__ void __launch_bounds__(kBlock)
    dropout_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, float p, float keep_scale, uint64_t seed) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float u = static_cast<float>(splitmix64(seed, static_cast<uint64_t>(i)) >> 40) * 0x1p-24f;  // [0, 1)
    y[i] = from_f<T>(to_f(x[i]) * (u < p ? 0.f : keep_scale));
  }
}

}  // namespace

// ------------------------------------------------------------------ launchers
void softmax_forward(const void* x, void* y, DType dtype, int64_t rows, int64_t c, bool log, Stream stream) {
  if (rows <= 0 || c <= 0) return;
  const char* name = log ? "log_softmax" : "softmax";
  dispatch_gpu_float(dtype, name, [&]<typename T>() {
    const T* xp = static_cast<const T*>(x);
    T* yp = static_cast<T*>(y);
    const auto run = [&]<bool kLog>() {
      if (c <= kWarpRowMax) {
        launch(name, softmax_forward_kernel<T, kLog, 1>, row_grid(rows, 1), kBlock, 0, stream, xp, yp, rows, c);
      } else {
        launch(name, softmax_forward_kernel<T, kLog, kRowWarps>, row_grid(rows, kRowWarps), kBlock, 0, stream, xp, yp,
               rows, c);
      }
    };
    if (log) {
      run.template operator()<true>();
    } else {
      run.template operator()<false>();
    }
  });
}

void softmax_backward(const void* y, const void* dy, void* dx, DType dtype, int64_t rows, int64_t c, bool log,
                      Stream stream) {
  if (rows <= 0 || c <= 0) return;
  const char* name = log ? "log_softmax backward" : "softmax backward";
  dispatch_gpu_float(dtype, name, [&]<typename T>() {
    const T* yp = static_cast<const T*>(y);
    const T* gp = static_cast<const T*>(dy);
    T* dp = static_cast<T*>(dx);
    const auto run = [&]<bool kLog>() {
      if (c <= kWarpRowMax) {
        launch(name, softmax_backward_kernel<T, kLog, 1>, row_grid(rows, 1), kBlock, 0, stream, yp, gp, dp, rows, c);
      } else {
        launch(name, softmax_backward_kernel<T, kLog, kRowWarps>, row_grid(rows, kRowWarps), kBlock, 0, stream, yp, gp,
               dp, rows, c);
      }
    };
    if (log) {
      run.template operator()<true>();
    } else {
      run.template operator()<false>();
    }
  });
}

int64_t cross_entropy_scratch_floats(int64_t n) { return std::max<int64_t>(n, 1); }

void cross_entropy_forward(const float* logits, const int64_t* target, int64_t n, int64_t c, double label_smoothing,
                           float* lse, float* loss, float* scratch, Stream stream) {
  if (n <= 0 || c <= 0) return;
  const float s = static_cast<float>(label_smoothing);
  if (c <= kWarpRowMax) {
    launch("cross_entropy", cross_entropy_forward_kernel<1>, row_grid(n, 1), kBlock, 0, stream, logits, target, n, c, s,
           lse, scratch);
  } else {
    launch("cross_entropy", cross_entropy_forward_kernel<kRowWarps>, row_grid(n, kRowWarps), kBlock, 0, stream, logits,
           target, n, c, s, lse, scratch);
  }
  launch("cross_entropy (mean)", sum_finish_kernel, 1, kFinishThreads, 0, stream, scratch, n, static_cast<double>(n),
         loss);
}

void cross_entropy_backward(const float* logits, const int64_t* target, const float* lse, const float* grad,
                            int64_t n, int64_t c, double label_smoothing, float* dlogits, Stream stream) {
  if (n <= 0 || c <= 0) return;
  launch("cross_entropy backward", cross_entropy_backward_kernel, grid_for(n * c, kBlock), kBlock, 0, stream, logits,
         target, lse, grad, n, c, static_cast<float>(label_smoothing), dlogits);
}

int64_t kl_div_scratch_floats(int64_t total) { return kl_blocks(total); }

void kl_div_forward(const float* input, const float* target, int64_t total, int64_t batch, bool log_target,
                    float* loss, float* scratch, Stream stream) {
  const int64_t blocks = kl_blocks(total);
  // Runs even for total == 0 (the partial is 0), so *loss is always written.
  launch("kl_div", kl_div_partial_kernel, static_cast<unsigned>(blocks), kBlock, 0, stream, input, target, total,
         log_target, scratch);
  launch("kl_div (sum)", sum_finish_kernel, 1, kFinishThreads, 0, stream, scratch, blocks, static_cast<double>(batch),
         loss);
}

void kl_div_backward(const float* input, const float* target, const float* grad, int64_t total, int64_t batch,
                     bool log_target, float* dinput, float* dtarget, Stream stream) {
  if (total <= 0 || (!dinput && !dtarget)) return;
  launch("kl_div backward", kl_div_backward_kernel, grid_for(total, kBlock), kBlock, 0, stream, input, target, grad,
         total, batch, log_target, dinput, dtarget);
}

void dropout(const void* x, void* y, DType dtype, int64_t n, double p, uint64_t seed, Stream stream) {
  if (n <= 0) return;
  const float keep_scale = p < 1.0 ? static_cast<float>(1.0 / (1.0 - p)) : 0.f;
  dispatch_gpu_float(dtype, "dropout", [&]<typename T>() {
    launch("dropout", dropout_kernel<T>, grid_for(n, kBlock), kBlock, 0, stream, static_cast<const T*>(x),
           static_cast<T*>(y), n, static_cast<float>(p), keep_scale, seed);
  });
}

}  // namespace s2h::cuda
