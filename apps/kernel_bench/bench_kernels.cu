// kernel_bench's own device code (see bench_kernels.h): random fills, the
// timing helpers, the baselines' mask multiply, and the references. The
// references are plain loops with fp64 sums, one warp or block per checked
// value: slow, but obviously right, and they only ever see a few thousand
// sampled points (or two whole attention heads).
#include "apps/kernel_bench/bench_kernels.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "kernels/cuda/common.cuh"

namespace s2h::kbench {

using cuda::from_f;
using cuda::grid_for;
using cuda::launch;
using cuda::to_f;
using cuda::warp_sum;
using bf16_t = __nv_bfloat16;

namespace {

constexpr int kBlock = 256;

__device__ __forceinline__ float hash_unit(uint64_t i, uint32_t seed) {
  uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ static_cast<uint32_t>(i >> 32) * 40503u;
  h ^= seed * 0x9e3779b9u + 0x7f4a7c15u;
  h ^= h >> 16;
  h *= 0x7feb352du;
  h ^= h >> 15;
  h *= 0x846ca68bu;
  h ^= h >> 16;
  return static_cast<float>(h >> 8) * (1.0f / 16777216.0f);  // [0, 1)
}

template <class T>
__global__ void fill_kernel(T* p, int64_t n, float lo, float span, uint32_t seed) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    p[i] = from_f<T>(lo + span * hash_unit(static_cast<uint64_t>(i), seed));
}

template <class S, class D>
__global__ void convert_kernel(const S* src, D* dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = from_f<D>(to_f(src[i]));
}

__global__ void read_kernel(const uint4* p, int64_t n, unsigned int* sink) {
  unsigned int acc = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint4 v = p[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u && sink) *sink = acc;  // (almost) never: it only keeps the loads alive
}

__global__ void spin_kernel(uint64_t ns) {
  uint64_t t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}

// 8 bf16 per thread: rows * c is a multiple of 8 and c % 8 == 0, so the 8
// elements of a vector share one row and their channels are j0 .. j0 + 7.
__global__ void scale_channels_vec8(const uint4* x, const float* scale, uint4* y, int64_t nvec, int64_t c) {
  for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < nvec;
       v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint4 in = x[v];
    const int64_t j0 = (v * 8) % c;
    bf16_t* e = reinterpret_cast<bf16_t*>(&in);
#pragma unroll
    for (int t = 0; t < 8; ++t) e[t] = __float2bfloat16_rn(__bfloat162float(e[t]) * scale[j0 + t]);
    y[v] = in;
  }
}

__global__ void scale_channels_scalar(const bf16_t* x, const float* scale, bf16_t* y, int64_t n, int64_t c) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16_rn(__bfloat162float(x[i]) * scale[i % c]);
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// max |a - b| (both finite), max |b|, non-finite counts; atomics on the bit
// patterns of non-negative floats, which order like the floats.
template <class A, class B>
__global__ void compare_kernel(const A* a, const B* b, int64_t n, unsigned int* maxbits, unsigned long long* counts) {
  float md = 0.f, mr = 0.f;
  unsigned long long na = 0, nb = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float x = to_f(a[i]);
    const bool fx = isfinite(x);
    if (!fx) ++na;
    if (b != nullptr) {
      const float y = to_f(b[i]);
      const bool fy = isfinite(y);
      if (!fy) ++nb;
      if (fy) mr = fmaxf(mr, fabsf(y));
      if (fx && fy) md = fmaxf(md, fabsf(x - y));
    }
  }
  md = warp_max(md);
  mr = warp_max(mr);
  na = warp_sum(na);
  nb = warp_sum(nb);
  if ((threadIdx.x & 31) == 0) {
    atomicMax(&maxbits[0], __float_as_uint(md));
    atomicMax(&maxbits[1], __float_as_uint(mr));
    if (na) atomicAdd(&counts[0], na);
    if (nb) atomicAdd(&counts[1], nb);
  }
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every
// thread gets the total; `sh` holds 32 doubles.
__device__ double block_sum(double v, double* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = threadIdx.x < nwarps ? sh[threadIdx.x] : 0.0;
  if (warp == 0) v = warp_sum(v);
  if (threadIdx.x == 0) sh[0] = v;
  __syncthreads();
  const double total = sh[0];
  __syncthreads();  // sh may be reused at once
  return total;
}

__device__ double block_max(double v, double* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, off));
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = threadIdx.x < nwarps ? sh[threadIdx.x] : -INFINITY;
  if (warp == 0) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, off));
  }
  if (threadIdx.x == 0) sh[0] = v;
  __syncthreads();
  const double m = sh[0];
  __syncthreads();
  return m;
}

// ------------------------------------------------------------------ convolution references
struct ConvDev {
  int64_t n, h, w, c, o, k, stride, pad, ho, wo, w_cols;
  const int64_t* out_index;
  const int64_t* in_index;
  const float* out_scale;
  const float* in_scale;
  const bf16_t* x;
  const bf16_t* dy;
  const void* wt;
  int w_f32;
};

ConvDev conv_dev(const ConvRef& r) {
  const MaskedConvShape& s = r.s;
  return ConvDev{s.n, s.h, s.w, s.c, s.o, s.k, s.stride, s.pad, s.ho, s.wo, s.w_cols,
                 r.a.out_index, r.a.in_index, r.a.out_scale, r.a.in_scale,
                 static_cast<const bf16_t*>(r.x), static_cast<const bf16_t*>(r.dy), r.weight,
                 r.weight_dtype == DType::F32 ? 1 : 0};
}

__device__ __forceinline__ int64_t row_of(const ConvDev& r, int64_t oi) { return r.out_index ? r.out_index[oi] : oi; }
__device__ __forceinline__ int64_t col_of(const ConvDev& r, int64_t ci) { return r.in_index ? r.in_index[ci] : ci; }
__device__ __forceinline__ double weight_at(const ConvDev& r, int64_t row, int64_t kh, int64_t kw, int64_t col) {
  const int64_t off = ((row * r.k + kh) * r.k + kw) * r.w_cols + col;
  return r.w_f32 ? static_cast<double>(static_cast<const float*>(r.wt)[off])
                 : static_cast<double>(__bfloat162float(static_cast<const bf16_t*>(r.wt)[off]));
}

// One warp per sample of y: sum over (kh, kw, ci).
__global__ void conv_ref_forward(ConvDev r, const int64_t* samples, int64_t count, double* ref) {
  const int64_t sample = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (sample >= count) return;  // the whole warp leaves together
  const int64_t* sp = samples + sample * 4;
  const int64_t nn = sp[0], oh = sp[1], ow = sp[2], oi = sp[3];
  const int64_t row = row_of(r, oi);
  double acc = 0;
  const int64_t terms = r.k * r.k * r.c;
  for (int64_t t = lane; t < terms; t += 32) {
    const int64_t ci = t % r.c, khw = t / r.c, kh = khw / r.k, kw = khw % r.k;
    const int64_t ih = oh * r.stride - r.pad + kh, iw = ow * r.stride - r.pad + kw;
    if (ih < 0 || ih >= r.h || iw < 0 || iw >= r.w) continue;
    double xv = __bfloat162float(r.x[((nn * r.h + ih) * r.w + iw) * r.c + ci]);
    if (r.in_scale) xv *= r.in_scale[ci];
    acc += xv * weight_at(r, row, kh, kw, col_of(r, ci));
  }
  acc = warp_sum(acc);
  if (lane == 0) ref[sample] = r.out_scale ? acc * r.out_scale[oi] : acc;
}

// One warp per sample of dx: the output positions whose window covers (ih, iw).
__global__ void conv_ref_data(ConvDev r, const int64_t* samples, int64_t count, double* ref) {
  const int64_t sample = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (sample >= count) return;
  const int64_t* sp = samples + sample * 4;
  const int64_t nn = sp[0], ih = sp[1], iw = sp[2], ci = sp[3];
  const int64_t col = col_of(r, ci);
  double acc = 0;
  const int64_t terms = r.k * r.k * r.o;
  for (int64_t t = lane; t < terms; t += 32) {
    const int64_t oi = t % r.o, khw = t / r.o, kh = khw / r.k, kw = khw % r.k;
    const int64_t hn = ih + r.pad - kh, wn = iw + r.pad - kw;  // = oh * stride, ow * stride
    if (hn < 0 || wn < 0 || hn % r.stride != 0 || wn % r.stride != 0) continue;
    const int64_t oh = hn / r.stride, ow = wn / r.stride;
    if (oh >= r.ho || ow >= r.wo) continue;
    double g = __bfloat162float(r.dy[((nn * r.ho + oh) * r.wo + ow) * r.o + oi]);
    if (r.out_scale) g *= r.out_scale[oi];
    acc += g * weight_at(r, row_of(r, oi), kh, kw, col);
  }
  acc = warp_sum(acc);
  if (lane == 0) ref[sample] = r.in_scale ? acc * r.in_scale[ci] : acc;
}

// One block per sample of dW: the sum over every output pixel.
__global__ void conv_ref_weight(ConvDev r, const int64_t* samples, double* ref) {
  S2H_SHARED(double, sh, [32]);
  const int64_t* sp = samples + blockIdx.x * 4;
  const int64_t oi = sp[0], kh = sp[1], kw = sp[2], ci = sp[3];
  const int64_t pixels = r.n * r.ho * r.wo;
  double acc = 0;
  for (int64_t p = threadIdx.x; p < pixels; p += blockDim.x) {
    const int64_t ow = p % r.wo, t = p / r.wo, oh = t % r.ho, nn = t / r.ho;
    const int64_t ih = oh * r.stride - r.pad + kh, iw = ow * r.stride - r.pad + kw;
    if (ih < 0 || ih >= r.h || iw < 0 || iw >= r.w) continue;
    acc += static_cast<double>(__bfloat162float(r.dy[p * r.o + oi])) *
           __bfloat162float(r.x[((nn * r.h + ih) * r.w + iw) * r.c + ci]);
  }
  acc = block_sum(acc, sh);
  if (threadIdx.x == 0) {
    if (r.in_scale) acc *= r.in_scale[ci];
    if (r.out_scale) acc *= r.out_scale[oi];
    ref[blockIdx.x] = acc;
  }
}

template <class T>
__global__ void conv_gather_kernel(ConvDev r, int pass, const int64_t* samples, int64_t count, const T* out,
                                   double* got) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t* sp = samples + i * 4;
    int64_t off;
    if (pass == 0) off = ((sp[0] * r.ho + sp[1]) * r.wo + sp[2]) * r.o + sp[3];
    else if (pass == 1) off = ((sp[0] * r.h + sp[1]) * r.w + sp[2]) * r.c + sp[3];
    else off = ((row_of(r, sp[0]) * r.k + sp[1]) * r.k + sp[2]) * r.w_cols + col_of(r, sp[3]);
    got[i] = to_f(out[off]);
  }
}

// ------------------------------------------------------------------ mask-gradient references
// block (32, 8): 32 channels by 8 row lanes; rows split over gridDim.y.
__global__ void column_dot_kernel(const bf16_t* a, const bf16_t* b, int64_t rows, int64_t c, double* out) {
  S2H_SHARED(double, part, [8][32]);
  const int64_t j = blockIdx.x * 32 + threadIdx.x;
  double acc = 0;
  if (j < c) {
    for (int64_t r = blockIdx.y * 8 + threadIdx.y; r < rows; r += static_cast<int64_t>(gridDim.y) * 8)
      acc += static_cast<double>(__bfloat162float(a[r * c + j])) * __bfloat162float(b[r * c + j]);
  }
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && j < c) {
    double s = 0;
    for (int t = 0; t < 8; ++t) s += part[t][threadIdx.x];
    atomicAdd(&out[j], s);
  }
}

template <class A>
__global__ void row_dot_kernel(const A* a, const bf16_t* b, int64_t len, double* out) {
  S2H_SHARED(double, sh, [32]);
  const int64_t row = blockIdx.x;
  double acc = 0;
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x)
    acc += static_cast<double>(to_f(a[row * len + j])) * __bfloat162float(b[row * len + j]);
  acc = block_sum(acc, sh);
  if (threadIdx.x == 0) out[row] = acc;
}

// ------------------------------------------------------------------ attention references
struct AttnDev {
  int64_t b, s, h, d, sb, ss, sh;
  double scale;
  const bf16_t *q, *k, *v, *dout;
  const float* hs;
  int64_t pb[4], ph[4];
};

__device__ __forceinline__ const bf16_t* qkv_row(const AttnDev& r, const bf16_t* base, int64_t bb, int64_t i,
                                                 int64_t hh) {
  return base + bb * r.sb + i * r.ss + hh * r.sh;
}
__device__ __forceinline__ const bf16_t* dout_row(const AttnDev& r, int64_t bb, int64_t i, int64_t hh) {
  return r.dout + ((bb * r.s + i) * r.h + hh) * r.d;
}
__device__ __forceinline__ double dot_sh(const float* a, const bf16_t* b, int64_t d) {
  double acc = 0;
  for (int64_t t = 0; t < d; ++t) acc += static_cast<double>(a[t]) * __bfloat162float(b[t]);
  return acc;
}

// One block per query row i of a pair: logits -> lse, then o = P v.
// Dynamic shared memory: s floats.
__global__ void attn_ref_forward(AttnDev r, float* o_ref, float* lse_ref) {
  extern __shared__ float p[];
  __shared__ double red[32];
  __shared__ float qs[128];
  const int pair = blockIdx.y;
  const int64_t i = blockIdx.x, bb = r.pb[pair], hh = r.ph[pair];
  const bf16_t* qi = qkv_row(r, r.q, bb, i, hh);
  for (int64_t t = threadIdx.x; t < r.d; t += blockDim.x) qs[t] = __bfloat162float(qi[t]);
  __syncthreads();
  double mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < r.s; j += blockDim.x) {
    const double l = r.scale * dot_sh(qs, qkv_row(r, r.k, bb, j, hh), r.d);
    p[j] = static_cast<float>(l);
    mx = fmax(mx, l);
  }
  mx = block_max(mx, red);
  double sum = 0;
  for (int64_t j = threadIdx.x; j < r.s; j += blockDim.x) sum += exp(static_cast<double>(p[j]) - mx);
  sum = block_sum(sum, red);
  const double lse = mx + log(sum);
  for (int64_t j = threadIdx.x; j < r.s; j += blockDim.x) p[j] = static_cast<float>(exp(static_cast<double>(p[j]) - lse));
  __syncthreads();
  for (int64_t t = threadIdx.x; t < r.d; t += blockDim.x) {
    double acc = 0;
    for (int64_t j = 0; j < r.s; ++j) acc += static_cast<double>(p[j]) * __bfloat162float(qkv_row(r, r.v, bb, j, hh)[t]);
    o_ref[(pair * r.s + i) * r.d + t] = static_cast<float>(acc);
  }
  if (threadIdx.x == 0) lse_ref[pair * r.s + i] = static_cast<float>(lse);
}

// One block per query row: delta_i = dO_i . o_i, dS_ij = P_ij (dO_i . v_j - delta_i),
// dq_i = scale * sum_j dS_ij k_j, with dO = head_scale * dout. Shared: s floats.
__global__ void attn_ref_backward_q(AttnDev r, const float* o_ref, const float* lse_ref, float* delta_ref,
                                   float* dq_ref) {
  extern __shared__ float ds[];
  __shared__ double red[32];
  __shared__ float qs[128], dos[128];
  const int pair = blockIdx.y;
  const int64_t i = blockIdx.x, bb = r.pb[pair], hh = r.ph[pair];
  const float hsc = r.hs ? r.hs[hh] : 1.f;
  const bf16_t* qi = qkv_row(r, r.q, bb, i, hh);
  const bf16_t* gi = dout_row(r, bb, i, hh);
  double dl = 0;
  for (int64_t t = threadIdx.x; t < r.d; t += blockDim.x) {
    qs[t] = __bfloat162float(qi[t]);
    dos[t] = hsc * __bfloat162float(gi[t]);
    dl += static_cast<double>(dos[t]) * o_ref[(pair * r.s + i) * r.d + t];
  }
  const double delta = block_sum(dl, red);  // also orders the shared writes above
  const double lse = lse_ref[pair * r.s + i];
  for (int64_t j = threadIdx.x; j < r.s; j += blockDim.x) {
    const double pij = exp(r.scale * dot_sh(qs, qkv_row(r, r.k, bb, j, hh), r.d) - lse);
    const double dp = dot_sh(dos, qkv_row(r, r.v, bb, j, hh), r.d);
    ds[j] = static_cast<float>(pij * (dp - delta));
  }
  __syncthreads();
  for (int64_t t = threadIdx.x; t < r.d; t += blockDim.x) {
    double acc = 0;
    for (int64_t j = 0; j < r.s; ++j) acc += static_cast<double>(ds[j]) * __bfloat162float(qkv_row(r, r.k, bb, j, hh)[t]);
    dq_ref[(pair * r.s + i) * r.d + t] = static_cast<float>(r.scale * acc);
  }
  if (threadIdx.x == 0) delta_ref[pair * r.s + i] = static_cast<float>(delta);
}

// One block per key row j: dv_j = sum_i P_ij dO_i, dk_j = scale * sum_i dS_ij q_i.
// Shared: 2 s floats (P and dS).
__global__ void attn_ref_backward_kv(AttnDev r, const float* lse_ref, const float* delta_ref, float* dk_ref,
                                    float* dv_ref) {
  extern __shared__ float pd[];
  float* pcol = pd;
  float* dscol = pd + r.s;
  __shared__ float ks[128], vs[128];
  const int pair = blockIdx.y;
  const int64_t j = blockIdx.x, bb = r.pb[pair], hh = r.ph[pair];
  const float hsc = r.hs ? r.hs[hh] : 1.f;
  for (int64_t t = threadIdx.x; t < r.d; t += blockDim.x) {
    ks[t] = __bfloat162float(qkv_row(r, r.k, bb, j, hh)[t]);
    vs[t] = __bfloat162float(qkv_row(r, r.v, bb, j, hh)[t]);
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < r.s; i += blockDim.x) {
    const double pij = exp(r.scale * dot_sh(ks, qkv_row(r, r.q, bb, i, hh), r.d) - lse_ref[pair * r.s + i]);
    const double dp = hsc * dot_sh(vs, dout_row(r, bb, i, hh), r.d);
    pcol[i] = static_cast<float>(pij);
    dscol[i] = static_cast<float>(pij * (dp - delta_ref[pair * r.s + i]));
  }
  __syncthreads();
  for (int64_t t = threadIdx.x; t < r.d; t += blockDim.x) {
    double av = 0, ak = 0;
    for (int64_t i = 0; i < r.s; ++i) {
      av += static_cast<double>(pcol[i]) * hsc * __bfloat162float(dout_row(r, bb, i, hh)[t]);
      ak += static_cast<double>(dscol[i]) * __bfloat162float(qkv_row(r, r.q, bb, i, hh)[t]);
    }
    dv_ref[(pair * r.s + j) * r.d + t] = static_cast<float>(av);
    dk_ref[(pair * r.s + j) * r.d + t] = static_cast<float>(r.scale * ak);
  }
}

void require_f32_or_bf16(DType t, const char* what) {
  if (t != DType::F32 && t != DType::BF16)
    throw cuda::CudaError(std::string("kernel_bench: ") + what + ": expected an f32 or bf16 buffer");
}

}  // namespace

void fill_uniform(void* p, DType dtype, int64_t n, float lo, float hi, uint32_t seed, Stream stream) {
  if (n <= 0) return;
  cuda::dispatch_gpu_float(dtype, "fill_uniform", [&]<typename T>() {
    launch("kbench::fill_kernel", fill_kernel<T>, grid_for(n, kBlock), kBlock, 0, stream, static_cast<T*>(p), n, lo,
           hi - lo, seed);
  });
}

void convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n, Stream stream) {
  if (n <= 0) return;
  cuda::dispatch_gpu_float(src_dtype, "convert", [&]<typename S>() {
    cuda::dispatch_gpu_float(dst_dtype, "convert", [&]<typename D>() {
      launch("kbench::convert_kernel", convert_kernel<S, D>, grid_for(n, kBlock), kBlock, 0, stream,
             static_cast<const S*>(src), static_cast<D*>(dst), n);
    });
  });
}

void read_through(const void* p, size_t bytes, Stream stream) {
  const int64_t n = static_cast<int64_t>(bytes / 16);
  if (n <= 0) return;
  launch("kbench::read_kernel", read_kernel, grid_for(n, kBlock), kBlock, 0, stream, static_cast<const uint4*>(p), n,
         nullptr);
}

void spin_ns(uint64_t ns, Stream stream) { launch("kbench::spin_kernel", spin_kernel, 1, 1, 0, stream, ns); }

void scale_channels(const void* x, const float* scale, void* y, int64_t rows, int64_t c, Stream stream) {
  const int64_t n = rows * c;
  if (n <= 0) return;
  const bool aligned = (reinterpret_cast<uintptr_t>(x) % 16 == 0) && (reinterpret_cast<uintptr_t>(y) % 16 == 0);
  if (c % 8 == 0 && aligned) {
    const int64_t nvec = n / 8;
    launch("kbench::scale_channels", scale_channels_vec8, grid_for(nvec, kBlock), kBlock, 0, stream,
           static_cast<const uint4*>(x), scale, static_cast<uint4*>(y), nvec, c);
  } else {
    launch("kbench::scale_channels", scale_channels_scalar, grid_for(n, kBlock), kBlock, 0, stream,
           static_cast<const bf16_t*>(x), scale, static_cast<bf16_t*>(y), n, c);
  }
}

Compare compare(const void* a, DType a_dtype, const void* b, DType b_dtype, int64_t n, int device) {
  require_f32_or_bf16(a_dtype, "compare");
  if (b) require_f32_or_bf16(b_dtype, "compare");
  Compare out;
  if (n <= 0) return out;
  const Stream stream = cuda::stream(device);
  // [0..1]: max bits, [2..3] (as two u64): counts; 24 bytes.
  void* scratch = cuda::device_alloc(24, device);
  CUDA_CHECK(cudaMemsetAsync(scratch, 0, 24, stream));
  auto* maxbits = static_cast<unsigned int*>(scratch);
  auto* counts = reinterpret_cast<unsigned long long*>(static_cast<char*>(scratch) + 8);
  const unsigned grid = std::min(grid_for(n, kBlock), 8192u);
  cuda::dispatch_gpu_float(a_dtype, "compare", [&]<typename A>() {
    cuda::dispatch_gpu_float(b ? b_dtype : DType::F32, "compare", [&]<typename B>() {
      launch("kbench::compare_kernel", compare_kernel<A, B>, grid, kBlock, 0, stream, static_cast<const A*>(a),
             static_cast<const B*>(b), n, maxbits, counts);
    });
  });
  unsigned char host[24];
  cuda::copy_to_host(host, scratch, 24, device);
  cuda::device_free(scratch, device);
  unsigned int mb[2];
  unsigned long long cnt[2];
  std::memcpy(mb, host, 8);
  std::memcpy(cnt, host + 8, 16);
  float md, mr;
  std::memcpy(&md, &mb[0], 4);
  std::memcpy(&mr, &mb[1], 4);
  out.max_abs_diff = md;
  out.max_abs_ref = mr;
  out.nonfinite = static_cast<int64_t>(cnt[0]);
  out.nonfinite_ref = static_cast<int64_t>(cnt[1]);
  return out;
}

void conv_reference(ConvPass pass, const ConvRef& r, const int64_t* samples, int64_t count, double* ref,
                    Stream stream) {
  if (count <= 0) return;
  require_f32_or_bf16(r.weight_dtype, "conv_reference weight");
  const ConvDev d = conv_dev(r);
  if (pass == ConvPass::Weight) {
    launch("kbench::conv_reference", conv_ref_weight, static_cast<unsigned>(count), kBlock, 0, stream, d, samples, ref);
  } else {
    const int64_t threads = count * 32;
    const unsigned grid = static_cast<unsigned>((threads + kBlock - 1) / kBlock);
    if (pass == ConvPass::Forward)
      launch("kbench::conv_reference", conv_ref_forward, grid, kBlock, 0, stream, d, samples, count, ref);
    else
      launch("kbench::conv_reference", conv_ref_data, grid, kBlock, 0, stream, d, samples, count, ref);
  }
}

void conv_gather(ConvPass pass, const MaskedConvShape& s, const MaskedConvArgs& a, const int64_t* samples,
                 int64_t count, const void* out, DType out_dtype, double* got, Stream stream) {
  if (count <= 0) return;
  ConvRef r;
  r.s = s;
  r.a = a;
  const ConvDev d = conv_dev(r);
  const int p = pass == ConvPass::Forward ? 0 : pass == ConvPass::Data ? 1 : 2;
  cuda::dispatch_gpu_float(out_dtype, "conv_gather", [&]<typename T>() {
    launch("kbench::conv_gather", conv_gather_kernel<T>, grid_for(count, kBlock), kBlock, 0, stream, d, p, samples,
           count, static_cast<const T*>(out), got);
  });
}

void column_dot(const void* a, const void* b, int64_t rows, int64_t c, double* out, Stream stream) {
  if (c <= 0) return;
  CUDA_CHECK(cudaMemsetAsync(out, 0, static_cast<size_t>(c) * sizeof(double), stream));
  if (rows <= 0) return;
  const dim3 block(32, 8);
  const unsigned gy = static_cast<unsigned>(std::min<int64_t>((rows + 8 * 64 - 1) / (8 * 64), 1024));
  const dim3 grid(static_cast<unsigned>((c + 31) / 32), gy);
  launch("kbench::column_dot", column_dot_kernel, grid, block, 0, stream, static_cast<const bf16_t*>(a),
         static_cast<const bf16_t*>(b), rows, c, out);
}

void row_dot(const void* a, DType a_dtype, const void* b, int64_t rows, int64_t len, double* out, Stream stream) {
  if (rows <= 0) return;
  cuda::dispatch_gpu_float(a_dtype, "row_dot", [&]<typename A>() {
    launch("kbench::row_dot", row_dot_kernel<A>, static_cast<unsigned>(rows), kBlock, 0, stream,
           static_cast<const A*>(a), static_cast<const bf16_t*>(b), len, out);
  });
}

void attention_reference(const AttnRef& r, float* o, float* lse, float* delta, float* dq, float* dk, float* dv,
                         Stream stream) {
  const cuda::AttentionShape& s = r.s;
  if (r.np <= 0 || r.np > 4 || s.d <= 0 || s.d > 128 || s.s <= 0)
    throw cuda::CudaError("kernel_bench: attention_reference: expected 1..4 heads, d in 1..128, s > 0");
  AttnDev d{s.b, s.s, s.h, s.d, s.stride_b, s.stride_s, s.stride_h, static_cast<double>(s.softmax_scale),
            static_cast<const bf16_t*>(r.q), static_cast<const bf16_t*>(r.k), static_cast<const bf16_t*>(r.v),
            static_cast<const bf16_t*>(r.dout), r.head_scale, {}, {}};
  for (int i = 0; i < 4; ++i) {
    d.pb[i] = r.pb[i];
    d.ph[i] = r.ph[i];
  }
  const size_t smem1 = static_cast<size_t>(s.s) * sizeof(float), smem2 = 2 * smem1;
  // Above the default 48 KiB of dynamic shared memory the kernels must opt in.
  if (smem2 > 48 * 1024) {
    CUDA_CHECK(cudaFuncSetAttribute(attn_ref_backward_kv, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem2)));
    CUDA_CHECK(cudaFuncSetAttribute(attn_ref_forward, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem1)));
    CUDA_CHECK(cudaFuncSetAttribute(attn_ref_backward_q, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem1)));
  }
  const dim3 grid(static_cast<unsigned>(s.s), static_cast<unsigned>(r.np));
  launch("kbench::attn_ref_forward", attn_ref_forward, grid, 128, smem1, stream, d, o, lse);
  if (!r.dout) return;
  launch("kbench::attn_ref_backward_q", attn_ref_backward_q, grid, 128, smem1, stream, d, o, lse, delta, dq);
  launch("kbench::attn_ref_backward_kv", attn_ref_backward_kv, grid, 128, smem2, stream, d, lse, delta, dk, dv);
}

}  // namespace s2h::kbench
