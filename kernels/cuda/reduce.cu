// Sum and argmax over the middle axis of [outer, mid, inner] on the GPU (see
// reduce.h).
//
// Sums use one of two kernels:
//   rows (inner == 1, mid <= 1024): a warp per row, shuffle reduction;
//   tile (everything else): a 256-thread block of bx x by threads, bx
//     consecutive columns i (so a warp reads contiguous memory) times by rows
//     of the middle axis, reduced through shared memory. inner == 1 gives
//     bx = 1, by = 256: a block per row.
// When the (o, i) tiles alone would not fill the GPU (bias gradients:
// outer = 1, inner = C, mid = N*H*W), the middle axis is split into chunks
// across blocks: a first pass writes fp32 partial sums [outer, splits, inner]
// to the caller's scratch, a second pass sums them. Deterministic: no atomics.
#include <algorithm>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/reduce.h"

namespace s2h::cuda {

namespace {

constexpr int kBlock = 256;
// Rows up to this long go to the warp-per-row kernel (at most 32 loads per lane).
constexpr int64_t kWarpRowMax = 1024;
// Splitting the middle axis: aim for about this many blocks (an H100 has 132
// SMs, each running up to 8 blocks of 256 threads), give every thread at
// least kMinRowsPerThread rows of its chunk, and make at most kMaxSplits chunks.
constexpr int64_t kTargetBlocks = 1024;
constexpr int64_t kMinRowsPerThread = 8;
constexpr int64_t kMaxSplits = 1024;
constexpr int64_t kMaxGridY = 65535;

// ------------------------------------------------------------------ sum kernels
template <class TI, class TO>
__global__ void sum_rows_kernel(const TI* x, TO* out, int64_t rows, int64_t mid) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = blockDim.x / 32;
  // `row` is the same for all lanes of a warp, so the shuffles below see the whole warp.
  for (int64_t row = blockIdx.x * warps + threadIdx.x / 32; row < rows; row += gridDim.x * warps) {
    const TI* p = x + row * mid;
    float acc = 0.f;
    for (int64_t m = lane; m < mid; m += 32) acc += to_f(p[m]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) out[row] = from_f<TO>(acc);
  }
}

// Block (bx, by) with bx * by == kBlock and by a power of two; grid
// (ceil(inner / bx), min(outer, kMaxGridY), splits). Block z sums rows
// [z * chunk, min(mid, (z + 1) * chunk)) of the middle axis and writes
// out[(o * splits + z) * inner + i] (splits == 1: out[o * inner + i]).
template <class TI, class TO>
__global__ void sum_tile_kernel(const TI* x, TO* out, int64_t outer, int64_t mid, int64_t inner, int64_t chunk) {
  S2H_SHARED(float, sh, [kBlock]);
  const int tx = threadIdx.x, ty = threadIdx.y, bx = blockDim.x, by = blockDim.y;
  const int64_t i = blockIdx.x * static_cast<int64_t>(bx) + tx;
  const int64_t m0 = blockIdx.z * chunk;
  const int64_t m1 = m0 + chunk < mid ? m0 + chunk : mid;
  const int64_t splits = gridDim.z;
  // The loop bounds depend on the block only, so every thread reaches the barriers.
  for (int64_t o = blockIdx.y; o < outer; o += gridDim.y) {
    float acc = 0.f;
    if (i < inner) {
      const TI* p = x + o * mid * inner + i;
      for (int64_t m = m0 + ty; m < m1; m += by) acc += to_f(p[m * inner]);
    }
    sh[ty * bx + tx] = acc;
    __syncthreads();
    for (int s = by / 2; s > 0; s >>= 1) {
      if (ty < s) sh[ty * bx + tx] += sh[(ty + s) * bx + tx];
      __syncthreads();
    }
    if (ty == 0 && i < inner) out[(o * splits + blockIdx.z) * inner + i] = from_f<TO>(sh[tx]);
    __syncthreads();  // sh is reused by the next o
  }
}

// How one pass runs.
struct Pass {
  bool rows = false;  // the warp-per-row kernel (else the tile kernel)
  int bx = 1, by = kBlock;
  int64_t splits = 1, chunk = 0;
};

Pass plan_pass(int64_t outer, int64_t mid, int64_t inner, bool allow_split) {
  Pass p;
  if (inner == 1 && mid <= kWarpRowMax) {
    p.rows = true;
    return p;
  }
  int bx = 1;
  while (bx < 32 && bx < inner) bx *= 2;
  p.bx = bx;
  p.by = kBlock / bx;
  p.chunk = mid;
  if (!allow_split) return p;
  const int64_t tiles = (inner + bx - 1) / bx * outer;
  if (tiles >= kTargetBlocks) return p;
  int64_t splits = std::min({(kTargetBlocks + tiles - 1) / tiles, mid / (p.by * kMinRowsPerThread), kMaxSplits});
  if (splits <= 1) return p;
  p.chunk = (mid + splits - 1) / splits;
  p.splits = (mid + p.chunk - 1) / p.chunk;  // no empty chunk
  if (p.splits <= 1) {
    p.splits = 1;
    p.chunk = mid;
  }
  return p;
}

template <class TI, class TO>
void launch_pass(const Pass& p, const TI* x, TO* out, int64_t outer, int64_t mid, int64_t inner, Stream stream) {
  if (p.rows) {
    const int64_t warps = kBlock / 32;
    const int64_t blocks = std::min<int64_t>((outer + warps - 1) / warps, 65535LL * 16);
    launch("sum_middle", sum_rows_kernel<TI, TO>, static_cast<unsigned>(blocks), kBlock, 0, stream, x, out, outer, mid);
  } else {
    const int64_t gx = (inner + p.bx - 1) / p.bx;
    if (gx > 0x7fffffffLL) throw CudaError("sum: inner size " + std::to_string(inner) + " is too large for CUDA");
    const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(std::min(outer, kMaxGridY)),
                    static_cast<unsigned>(p.splits));
    launch("sum_middle", sum_tile_kernel<TI, TO>, grid, dim3(p.bx, p.by), 0, stream, x, out, outer, mid, inner,
           p.chunk);
  }
}

// ------------------------------------------------------------------ argmax kernels
// Whether (v, i) beats the current best (bv, bi): NaN beats numbers (the
// lower index among NaNs), then the larger value, then the lower index. bi < 0: no best yet.
__device__ __forceinline__ bool beats(float v, int64_t i, float bv, int64_t bi) {
  if (bi < 0) return true;
  const bool vn = v != v, bn = bv != bv;
  if (vn || bn) return vn && (!bn || i < bi);
  return v > bv || (v == bv && i < bi);
}

// inner == 1: a warp per row.
template <class T>
__global__ void argmax_rows_kernel(const T* x, int64_t* out, int64_t rows, int64_t mid) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = blockDim.x / 32;
  for (int64_t row = blockIdx.x * warps + threadIdx.x / 32; row < rows; row += gridDim.x * warps) {
    const T* p = x + row * mid;
    float bv = 0.f;
    int64_t bi = -1;
    for (int64_t m = lane; m < mid; m += 32) {
      const float v = to_f(p[m]);
      if (beats(v, m, bv, bi)) {
        bv = v;
        bi = m;
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const float ov = __shfl_down_sync(0xffffffffu, bv, off);
      const long long oi = __shfl_down_sync(0xffffffffu, static_cast<long long>(bi), off);
      if (oi >= 0 && beats(ov, oi, bv, bi)) {
        bv = ov;
        bi = oi;
      }
    }
    if (lane == 0) out[row] = bi;  // lane 0 saw m = 0, so bi >= 0
  }
}

// inner > 1: a thread per output (o, i), reading consecutive i across a warp.
template <class T>
__global__ void argmax_cols_kernel(const T* x, int64_t* out, int64_t outer, int64_t mid, int64_t inner) {
  const int64_t n = outer * inner;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = k / inner, i = k % inner;
    const T* p = x + o * mid * inner + i;
    float bv = to_f(p[0]);
    int64_t best = 0;
    for (int64_t m = 1; m < mid; ++m) {
      const float v = to_f(p[m * inner]);
      if (v > bv || (v != v && bv == bv)) {  // the CPU's rule
        bv = v;
        best = m;
      }
    }
    out[k] = best;
  }
}

}  // namespace

size_t sum_middle_scratch_bytes(int64_t outer, int64_t mid, int64_t inner) {
  if (outer * inner <= 0) return 0;
  const Pass p = plan_pass(outer, mid, inner, true);
  if (p.splits <= 1) return 0;
  return static_cast<size_t>(outer * p.splits * inner) * sizeof(float);
}

void sum_middle(const void* x, DType x_dtype, void* out, DType out_dtype, int64_t outer, int64_t mid, int64_t inner,
                void* scratch, Stream stream) {
  if (outer * inner <= 0) return;
  const Pass p = plan_pass(outer, mid, inner, true);
  if (p.splits > 1 && scratch == nullptr) throw CudaError("sum_middle: scratch space is needed and none was given");
  dispatch_gpu_float(x_dtype, "sum", [&]<typename TI>() {
    dispatch_gpu_float(out_dtype, "sum", [&]<typename TO>() {
      const TI* xt = static_cast<const TI*>(x);
      TO* ot = static_cast<TO*>(out);
      if (p.splits <= 1) {
        launch_pass(p, xt, ot, outer, mid, inner, stream);
        return;
      }
      float* partial = static_cast<float*>(scratch);
      launch_pass(p, xt, partial, outer, mid, inner, stream);  // [outer, splits, inner]
      const Pass second = plan_pass(outer, p.splits, inner, false);
      launch_pass(second, static_cast<const float*>(partial), ot, outer, p.splits, inner, stream);
    });
  });
}

void argmax_middle(const void* x, DType dtype, int64_t* out, int64_t outer, int64_t mid, int64_t inner,
                   Stream stream) {
  if (outer * inner <= 0) return;
  if (mid <= 0) throw CudaError("argmax: the reduced axis is empty");
  dispatch_gpu_float(dtype, "argmax", [&]<typename T>() {
    const T* xt = static_cast<const T*>(x);
    if (inner == 1) {
      const int64_t warps = kBlock / 32;
      const int64_t blocks = std::min<int64_t>((outer + warps - 1) / warps, 65535LL * 16);
      launch("argmax_middle", argmax_rows_kernel<T>, static_cast<unsigned>(blocks), kBlock, 0, stream, xt, out, outer,
             mid);
    } else {
      launch("argmax_middle", argmax_cols_kernel<T>, grid_for(outer * inner), kBlock, 0, stream, xt, out, outer, mid,
             inner);
    }
  });
}

}  // namespace s2h::cuda
