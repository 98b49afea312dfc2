// Batch norm and layer norm kernels (see norm.h).
//
// Per-channel reductions over the rows of a [rows, C] block are two-level:
// blocks of 32 x 8 threads take 32 adjacent channels (coalesced loads) and one
// chunk of rows, reduce it in fixed order and write one partial per chunk and
// channel to the caller's scratch; a finish kernel (one thread per channel)
// combines the chunks in fp64 in chunk order. No atomics, so results are
// bitwise reproducible. Batch-norm statistics: per-thread shifted sums turned
// into (count, mean, M2) and merged with Chan's formulas (one read of x, no
// cancellation when |mean| >> std).
#include <algorithm>
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/norm.h"

namespace s2h::cuda {

namespace {

constexpr int kTileC = 32;  // channels per block (threadIdx.x)
constexpr int kTileR = 8;   // row lanes per block (threadIdx.y)

__device__ __forceinline__ int64_t lmin(int64_t a, int64_t b) { return a < b ? a : b; }

// How the rows are split into chunks for the column reductions: about a
// thousand blocks in all, at least 64 rows per chunk, no empty chunk.
struct ChunkPlan {
  int64_t chunks, rows_per_chunk;
};
ChunkPlan chunk_plan(int64_t rows, int64_t c) {
  const int64_t ctiles = std::max<int64_t>(1, (c + kTileC - 1) / kTileC);
  int64_t chunks = std::max<int64_t>(1, 1024 / ctiles);
  chunks = std::min(chunks, std::max<int64_t>(1, (rows + 63) / 64));
  const int64_t rpc = std::max<int64_t>(1, (rows + chunks - 1) / chunks);
  chunks = std::max<int64_t>(1, (rows + rpc - 1) / rpc);
  return {chunks, rpc};
}

dim3 column_grid(int64_t c, int64_t chunks) {
  return dim3(static_cast<unsigned>((c + kTileC - 1) / kTileC), static_cast<unsigned>(chunks));
}

// Grid for the per-channel elementwise kernels (x over channel tiles, y over rows).
dim3 elementwise_grid(int64_t rows, int64_t c) {
  const int64_t ctiles = (c + kTileC - 1) / kTileC;
  int64_t gy = std::max<int64_t>(1, 4096 / ctiles);
  gy = std::min<int64_t>(gy, std::max<int64_t>(1, (rows + kTileR - 1) / kTileR));
  gy = std::min<int64_t>(gy, 65535);
  return dim3(static_cast<unsigned>(ctiles), static_cast<unsigned>(gy));
}

const dim3 kTileBlock(kTileC, kTileR);

// Chan et al.'s merge of (count, mean, M2) with another partial.
__device__ __forceinline__ void chan_merge(float& n, float& mean, float& m2, float nb, float mb, float m2b) {
  if (nb == 0.f) return;
  const float nn = n + nb, d = mb - mean, f = nb / nn;
  mean += d * f;
  m2 += m2b + d * d * n * f;
  n = nn;
}

// ------------------------------------------------------------------ batch norm
// Partial (mean, M2) per chunk of rows and channel. Each thread sums its
// values shifted by its own first value (so the sum of squares does not
// cancel when |mean| >> std; the shifted-data algorithm, Chan, Golub &
// LeVeque), turns that into (n, mean, M2) and the 8 row lanes merge.
template <class T>
__global__ void __launch_bounds__(kTileC* kTileR)
    bn_stats_kernel(const T* __restrict__ x, int64_t rows, int64_t c, int64_t rpc, float* __restrict__ part_mean,
                    float* __restrict__ part_m2) {
  S2H_SHARED(float, sn, [kTileR][kTileC]);
  S2H_SHARED(float, smean, [kTileR][kTileC]);
  S2H_SHARED(float, sm2, [kTileR][kTileC]);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kTileC + tx;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rpc, r1 = lmin(rows, r0 + rpc);
  float n = 0.f, mean = 0.f, m2 = 0.f;
  if (j < c && r0 + ty < r1) {
    const float shift = to_f(x[(r0 + ty) * c + j]);
    float s1 = 0.f, s2 = 0.f;
    for (int64_t r = r0 + ty; r < r1; r += kTileR) {
      const float d = to_f(x[r * c + j]) - shift;
      s1 += d;
      s2 += d * d;
      n += 1.f;
    }
    mean = shift + s1 / n;
    m2 = fmaxf(s2 - s1 * (s1 / n), 0.f);
  }
  sn[ty][tx] = n;
  smean[ty][tx] = mean;
  sm2[ty][tx] = m2;
  __syncthreads();
  if (ty == 0 && j < c) {
    for (int k = 1; k < kTileR; ++k) chan_merge(n, mean, m2, sn[k][tx], smean[k][tx], sm2[k][tx]);
    part_mean[static_cast<int64_t>(blockIdx.y) * c + j] = mean;
    part_m2[static_cast<int64_t>(blockIdx.y) * c + j] = m2;
  }
}

// Combines the chunks (fp64: mean = sum n_k mean_k / N, M2 = sum M2_k +
// n_k (mean_k - mean)^2): batch statistics, the affine coefficients of the
// output, and the running-statistics update.
template <class P>
__global__ void bn_finish_train_kernel(const float* __restrict__ part_mean, const float* __restrict__ part_m2,
                                       int64_t chunks, int64_t rpc, int64_t rows, int64_t c, const P* weight,
                                       const P* bias, P* running_mean, P* running_var, double momentum, double eps,
                                       float* save_mean, float* save_invstd, float* scale, float* shift) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < c;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    // Chunk k holds min(rows, (k+1) rpc) - k rpc rows: rpc for all but the last.
    const double last_n = static_cast<double>(rows - (chunks - 1) * rpc);
    double sum = 0;
    for (int64_t k = 0; k < chunks; ++k)
      sum += (k + 1 < chunks ? static_cast<double>(rpc) : last_n) * part_mean[k * c + j];
    const double mean = sum / static_cast<double>(rows);
    double m2 = 0;
    for (int64_t k = 0; k < chunks; ++k) {
      const double d = part_mean[k * c + j] - mean;
      m2 += part_m2[k * c + j] + (k + 1 < chunks ? static_cast<double>(rpc) : last_n) * d * d;
    }
    const double var = m2 / static_cast<double>(rows);  // biased: the one that normalises
    const double invstd = 1.0 / sqrt(var + eps);
    save_mean[j] = static_cast<float>(mean);
    save_invstd[j] = static_cast<float>(invstd);
    const double w = weight ? static_cast<double>(to_f(weight[j])) : 1.0;
    const double b = bias ? static_cast<double>(to_f(bias[j])) : 0.0;
    scale[j] = static_cast<float>(w * invstd);
    shift[j] = static_cast<float>(b - mean * w * invstd);
    if (running_mean) {
      const double unbias = static_cast<double>(rows) / static_cast<double>(rows - 1);
      running_mean[j] = from_f<P>(static_cast<float>((1 - momentum) * to_f(running_mean[j]) + momentum * mean));
      running_var[j] = from_f<P>(static_cast<float>((1 - momentum) * to_f(running_var[j]) + momentum * var * unbias));
    }
  }
}

// Evaluation: the running statistics normalise.
template <class P>
__global__ void bn_prep_eval_kernel(int64_t c, const P* weight, const P* bias, const P* running_mean,
                                    const P* running_var, double eps, float* save_mean, float* save_invstd,
                                    float* scale, float* shift) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < c;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double mean = to_f(running_mean[j]);
    const double invstd = 1.0 / sqrt(static_cast<double>(to_f(running_var[j])) + eps);
    const double w = weight ? static_cast<double>(to_f(weight[j])) : 1.0;
    const double b = bias ? static_cast<double>(to_f(bias[j])) : 0.0;
    save_mean[j] = static_cast<float>(mean);
    save_invstd[j] = static_cast<float>(invstd);
    scale[j] = static_cast<float>(w * invstd);
    shift[j] = static_cast<float>(b - mean * w * invstd);
  }
}

// y = x * scale[c] + shift[c]
template <class T>
__global__ void __launch_bounds__(kTileC* kTileR)
    bn_apply_kernel(const T* __restrict__ x, int64_t rows, int64_t c, const float* __restrict__ scale,
                    const float* __restrict__ shift, T* __restrict__ y) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kTileC + threadIdx.x;
  if (j >= c) return;
  const float s = scale[j], b = shift[j];
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * kTileR + threadIdx.y; r < rows;
       r += static_cast<int64_t>(gridDim.y) * kTileR)
    y[r * c + j] = from_f<T>(to_f(x[r * c + j]) * s + b);
}

// Partial sum(dy) and sum(dy * (x - mean)) per chunk of rows and channel.
template <class T>
__global__ void __launch_bounds__(kTileC* kTileR)
    bn_bwd_sums_kernel(const T* __restrict__ x, const T* __restrict__ dy, int64_t rows, int64_t c, int64_t rpc,
                       const float* __restrict__ mean, float* __restrict__ part_dy, float* __restrict__ part_dyx) {
  S2H_SHARED(float, s1, [kTileR][kTileC]);
  S2H_SHARED(float, s2, [kTileR][kTileC]);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kTileC + tx;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rpc, r1 = lmin(rows, r0 + rpc);
  float a = 0.f, b = 0.f;
  if (j < c) {
    const float m = mean[j];
    for (int64_t r = r0 + ty; r < r1; r += kTileR) {
      const float g = to_f(dy[r * c + j]);
      a += g;
      b += g * (to_f(x[r * c + j]) - m);
    }
  }
  s1[ty][tx] = a;
  s2[ty][tx] = b;
  __syncthreads();
  if (ty == 0 && j < c) {
    for (int k = 1; k < kTileR; ++k) {
      a += s1[k][tx];
      b += s2[k][tx];
    }
    part_dy[static_cast<int64_t>(blockIdx.y) * c + j] = a;
    part_dyx[static_cast<int64_t>(blockIdx.y) * c + j] = b;
  }
}

// dbias = sum dy, dweight = sum dy * xhat, and the coefficients of
// dx = k1 * dy + k2 * (x - mean) + k3 (k2 = k3 = 0 in evaluation mode).
template <class P>
__global__ void bn_bwd_finish_kernel(const float* __restrict__ part_dy, const float* __restrict__ part_dyx,
                                     int64_t chunks, int64_t rows, int64_t c, const float* __restrict__ invstd,
                                     const P* weight, bool training, P* dweight, P* dbias, float* k1, float* k2,
                                     float* k3) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < c;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double sdy = 0, sdyx = 0;
    for (int64_t k = 0; k < chunks; ++k) {
      sdy += part_dy[k * c + j];
      sdyx += part_dyx[k * c + j];
    }
    const double is = invstd[j];
    sdyx *= is;  // sum dy * xhat
    if (dbias) dbias[j] = from_f<P>(static_cast<float>(sdy));
    if (dweight) dweight[j] = from_f<P>(static_cast<float>(sdyx));
    const double w = weight ? static_cast<double>(to_f(weight[j])) : 1.0, a = w * is;
    const bool stats = training && rows > 0;
    k1[j] = static_cast<float>(a);
    k2[j] = stats ? static_cast<float>(-a * (sdyx / static_cast<double>(rows)) * is) : 0.f;
    k3[j] = stats ? static_cast<float>(-a * (sdy / static_cast<double>(rows))) : 0.f;
  }
}

template <class T>
__global__ void __launch_bounds__(kTileC* kTileR)
    bn_bwd_dx_kernel(const T* __restrict__ x, const T* __restrict__ dy, int64_t rows, int64_t c,
                     const float* __restrict__ mean, const float* __restrict__ k1, const float* __restrict__ k2,
                     const float* __restrict__ k3, bool training, T* __restrict__ dx) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kTileC + threadIdx.x;
  if (j >= c) return;
  const float m = mean[j], a = k1[j], b = k2[j], e = k3[j];
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * kTileR + threadIdx.y; r < rows;
       r += static_cast<int64_t>(gridDim.y) * kTileR) {
    // In evaluation x does not enter (an inf in x must not turn dx into NaN).
    const float g = to_f(dy[r * c + j]);
    dx[r * c + j] = from_f<T>(training ? a * g + b * (to_f(x[r * c + j]) - m) + e : a * g);
  }
}

// ------------------------------------------------------------------ layer norm
// One warp per row (rows strided over all warps of the grid); fp32 two-pass
// statistics (the row is re-read from cache).
template <class T, class P>
__global__ void __launch_bounds__(256)
    ln_forward_kernel(const T* __restrict__ x, int64_t rows, int64_t c, const P* __restrict__ weight,
                      const P* __restrict__ bias, float eps, T* __restrict__ y, float* __restrict__ mean_out,
                      float* __restrict__ rstd_out) {
  const int lane = threadIdx.x & 31;
  const int64_t first = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5;
  const int64_t nwarps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  const float inv_c = 1.f / static_cast<float>(c);
  for (int64_t r = first; r < rows; r += nwarps) {  // warp-uniform: the shuffles see all 32 lanes
    const T* xr = x + r * c;
    float s = 0.f;
    for (int64_t j = lane; j < c; j += 32) s += to_f(xr[j]);
    const float mu = warp_sum(s) * inv_c;
    float v = 0.f;
    for (int64_t j = lane; j < c; j += 32) {
      const float d = to_f(xr[j]) - mu;
      v += d * d;
    }
    const float rs = 1.f / sqrtf(warp_sum(v) * inv_c + eps);
    if (lane == 0) {
      mean_out[r] = mu;
      rstd_out[r] = rs;
    }
    T* yr = y + r * c;
    for (int64_t j = lane; j < c; j += 32) {
      float h = (to_f(xr[j]) - mu) * rs;
      if (weight) h *= to_f(weight[j]);
      if (bias) h += to_f(bias[j]);
      yr[j] = from_f<T>(h);
    }
  }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * weight; one warp per row.
template <class T, class P>
__global__ void __launch_bounds__(256)
    ln_backward_dx_kernel(const T* __restrict__ x, const T* __restrict__ dy, int64_t rows, int64_t c,
                          const float* __restrict__ mean, const float* __restrict__ rstd,
                          const P* __restrict__ weight, T* __restrict__ dx) {
  const int lane = threadIdx.x & 31;
  const int64_t first = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5;
  const int64_t nwarps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  const float inv_c = 1.f / static_cast<float>(c);
  for (int64_t r = first; r < rows; r += nwarps) {
    const T* xr = x + r * c;
    const T* gr = dy + r * c;
    const float m = mean[r], rs = rstd[r];
    float sg = 0.f, sgx = 0.f;
    for (int64_t j = lane; j < c; j += 32) {
      const float g = weight ? to_f(gr[j]) * to_f(weight[j]) : to_f(gr[j]);
      sg += g;
      sgx += g * (to_f(xr[j]) - m) * rs;
    }
    const float mg = warp_sum(sg) * inv_c, mgx = warp_sum(sgx) * inv_c;
    T* d = dx + r * c;
    for (int64_t j = lane; j < c; j += 32) {
      const float g = weight ? to_f(gr[j]) * to_f(weight[j]) : to_f(gr[j]);
      const float xhat = (to_f(xr[j]) - m) * rs;
      d[j] = from_f<T>(rs * (g - mg - xhat * mgx));
    }
  }
}

// Partial sum(dy * xhat) and sum(dy) per chunk of rows and column.
template <class T>
__global__ void __launch_bounds__(kTileC* kTileR)
    ln_param_sums_kernel(const T* __restrict__ x, const T* __restrict__ dy, int64_t rows, int64_t c, int64_t rpc,
                         const float* __restrict__ mean, const float* __restrict__ rstd, float* __restrict__ part_w,
                         float* __restrict__ part_b) {
  S2H_SHARED(float, s1, [kTileR][kTileC]);
  S2H_SHARED(float, s2, [kTileR][kTileC]);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kTileC + tx;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rpc, r1 = lmin(rows, r0 + rpc);
  float a = 0.f, b = 0.f;
  if (j < c) {
    for (int64_t r = r0 + ty; r < r1; r += kTileR) {
      const float g = to_f(dy[r * c + j]);
      a += g * (to_f(x[r * c + j]) - mean[r]) * rstd[r];
      b += g;
    }
  }
  s1[ty][tx] = a;
  s2[ty][tx] = b;
  __syncthreads();
  if (ty == 0 && j < c) {
    for (int k = 1; k < kTileR; ++k) {
      a += s1[k][tx];
      b += s2[k][tx];
    }
    part_w[static_cast<int64_t>(blockIdx.y) * c + j] = a;
    part_b[static_cast<int64_t>(blockIdx.y) * c + j] = b;
  }
}

// out_a[j] = sum_k part_a[k, j] (fp64, chunk order); same for b. Null outputs are skipped.
template <class P>
__global__ void column_finish_kernel(const float* __restrict__ part_a, const float* __restrict__ part_b,
                                     int64_t chunks, int64_t c, P* out_a, P* out_b) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < c;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double a = 0, b = 0;
    for (int64_t k = 0; k < chunks; ++k) {
      a += part_a[k * c + j];
      b += part_b[k * c + j];
    }
    if (out_a) out_a[j] = from_f<P>(static_cast<float>(a));
    if (out_b) out_b[j] = from_f<P>(static_cast<float>(b));
  }
}

}  // namespace

// ------------------------------------------------------------------ launchers
int64_t batch_norm_scratch_floats(int64_t rows, int64_t c) {
  // Two partials per chunk and channel, then three coefficients per channel.
  return 2 * chunk_plan(rows, c).chunks * c + 3 * c;
}

void batch_norm_forward(const void* x, DType x_dtype, int64_t rows, int64_t c, const void* weight, const void* bias,
                        void* running_mean, void* running_var, DType param_dtype, bool training, double momentum,
                        double eps, void* y, float* save_mean, float* save_invstd, float* scratch, Stream stream) {
  if (c <= 0) return;
  const ChunkPlan plan = chunk_plan(rows, c);
  float* part0 = scratch;
  float* part1 = scratch + plan.chunks * c;
  float* scale = scratch + 2 * plan.chunks * c;
  float* shift = scale + c;
  dispatch_gpu_float(x_dtype, "batch_norm", [&]<typename T>() {
    dispatch_gpu_float(param_dtype, "batch_norm parameters", [&]<typename P>() {
      const P* w = static_cast<const P*>(weight);
      const P* b = static_cast<const P*>(bias);
      if (training) {
        launch("batch_norm statistics", bn_stats_kernel<T>, column_grid(c, plan.chunks), kTileBlock, 0, stream,
               static_cast<const T*>(x), rows, c, plan.rows_per_chunk, part0, part1);
        launch("batch_norm statistics (finish)", bn_finish_train_kernel<P>, grid_for(c), 256, 0, stream, part0, part1,
               plan.chunks, plan.rows_per_chunk, rows, c, w, b, static_cast<P*>(running_mean),
               static_cast<P*>(running_var), momentum, eps, save_mean, save_invstd, scale, shift);
      } else {
        launch("batch_norm (evaluation coefficients)", bn_prep_eval_kernel<P>, grid_for(c), 256, 0, stream, c, w, b,
               static_cast<const P*>(running_mean), static_cast<const P*>(running_var), eps, save_mean, save_invstd,
               scale, shift);
      }
    });
    if (rows > 0) {
      launch("batch_norm", bn_apply_kernel<T>, elementwise_grid(rows, c), kTileBlock, 0, stream,
             static_cast<const T*>(x), rows, c, scale, shift, static_cast<T*>(y));
    }
  });
}

void batch_norm_backward(const void* x, const void* dy, DType x_dtype, int64_t rows, int64_t c, const float* save_mean,
                         const float* save_invstd, const void* weight, DType param_dtype, bool training, void* dx,
                         void* dweight, void* dbias, float* scratch, Stream stream) {
  if (c <= 0) return;
  const ChunkPlan plan = chunk_plan(rows, c);
  float* part0 = scratch;
  float* part1 = scratch + plan.chunks * c;
  float* k1 = scratch + 2 * plan.chunks * c;
  float* k2 = k1 + c;
  float* k3 = k2 + c;
  // The sums are needed for the parameter gradients and, in training, for dx.
  const bool sums = dweight || dbias || (training && dx);
  dispatch_gpu_float(x_dtype, "batch_norm backward", [&]<typename T>() {
    if (sums) {
      launch("batch_norm backward sums", bn_bwd_sums_kernel<T>, column_grid(c, plan.chunks), kTileBlock, 0, stream,
             static_cast<const T*>(x), static_cast<const T*>(dy), rows, c, plan.rows_per_chunk, save_mean, part0,
             part1);
    }
    dispatch_gpu_float(param_dtype, "batch_norm backward parameters", [&]<typename P>() {
      launch("batch_norm backward sums (finish)", bn_bwd_finish_kernel<P>, grid_for(c), 256, 0, stream, part0, part1,
             sums ? plan.chunks : 0, rows, c, save_invstd, static_cast<const P*>(weight), training,
             static_cast<P*>(dweight), static_cast<P*>(dbias), k1, k2, k3);
    });
    if (dx && rows > 0) {
      launch("batch_norm backward", bn_bwd_dx_kernel<T>, elementwise_grid(rows, c), kTileBlock, 0, stream,
             static_cast<const T*>(x), static_cast<const T*>(dy), rows, c, save_mean, k1, k2, k3, training,
             static_cast<T*>(dx));
    }
  });
}

int64_t layer_norm_scratch_floats(int64_t rows, int64_t c) { return 2 * chunk_plan(rows, c).chunks * c; }

void layer_norm_forward(const void* x, DType x_dtype, int64_t rows, int64_t c, const void* weight, const void* bias,
                        DType param_dtype, double eps, void* y, float* mean, float* rstd, Stream stream) {
  if (rows <= 0 || c <= 0) return;
  dispatch_gpu_float(x_dtype, "layer_norm", [&]<typename T>() {
    dispatch_gpu_float(param_dtype, "layer_norm parameters", [&]<typename P>() {
      launch("layer_norm", ln_forward_kernel<T, P>, grid_for(rows * 32), 256, 0, stream, static_cast<const T*>(x), rows,
             c, static_cast<const P*>(weight), static_cast<const P*>(bias), static_cast<float>(eps), static_cast<T*>(y),
             mean, rstd);
    });
  });
}

void layer_norm_backward(const void* x, const void* dy, DType x_dtype, int64_t rows, int64_t c, const float* mean,
                         const float* rstd, const void* weight, DType param_dtype, void* dx, void* dweight,
                         void* dbias, float* scratch, Stream stream) {
  if (c <= 0) return;
  const ChunkPlan plan = chunk_plan(rows, c);
  float* part_w = scratch;
  float* part_b = scratch + plan.chunks * c;
  dispatch_gpu_float(x_dtype, "layer_norm backward", [&]<typename T>() {
    dispatch_gpu_float(param_dtype, "layer_norm backward parameters", [&]<typename P>() {
      if (dx && rows > 0) {
        launch("layer_norm backward", ln_backward_dx_kernel<T, P>, grid_for(rows * 32), 256, 0, stream,
               static_cast<const T*>(x), static_cast<const T*>(dy), rows, c, mean, rstd, static_cast<const P*>(weight),
               static_cast<T*>(dx));
      }
      if (dweight || dbias) {
        launch("layer_norm backward parameter sums", ln_param_sums_kernel<T>, column_grid(c, plan.chunks), kTileBlock,
               0, stream, static_cast<const T*>(x), static_cast<const T*>(dy), rows, c, plan.rows_per_chunk, mean, rstd,
               part_w, part_b);
        launch("layer_norm backward parameter sums (finish)", column_finish_kernel<P>, grid_for(c), 256, 0, stream,
               part_w, part_b, plan.chunks, c, static_cast<P*>(dweight), static_cast<P*>(dbias));
      }
    });
  });
}

}  // namespace s2h::cuda
