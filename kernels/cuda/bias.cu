// The bias kernels of linear / conv2d (declared in blas.h): y += bias per row,
// and the deterministic two-pass bias gradient.
#include <algorithm>
#include <string>

#include "kernels/cuda/blas.h"
#include "kernels/cuda/common.cuh"

namespace s2h::cuda {

namespace {

template <class Y, class B>
__global__ void bias_add_kernel(Y* y, const B* bias, int64_t cols, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = from_f<Y>(to_f(y[i]) + to_f(bias[i % cols]));
}

// Block (32, 8) sums a 32-column tile over the rows of split blockIdx.y:
// the 32 threads of a warp read 32 consecutive columns of one row.
constexpr int kBiasTileCols = 32, kBiasTileRows = 8;

template <class G>
__global__ void bias_grad_partial_kernel(const G* g, int64_t rows, int64_t cols, int64_t rows_per_split,
                                         float* partial) {
  S2H_SHARED(float, acc, [kBiasTileRows][kBiasTileCols + 1]);
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kBiasTileCols + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_split;
  const int64_t r1 = min(rows, r0 + rows_per_split);
  float s = 0.f;
  if (col < cols)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kBiasTileRows) s += to_f(g[r * cols + col]);
  acc[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    float t = 0.f;
    for (int k = 0; k < kBiasTileRows; ++k) t += acc[k][threadIdx.x];
    partial[static_cast<int64_t>(blockIdx.y) * cols + col] = t;
  }
}

template <class D>
__global__ void bias_grad_final_kernel(const float* partial, int64_t splits, int64_t cols, D* db) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < cols;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int64_t k = 0; k < splits; ++k) s += partial[k * cols + j];
    db[j] = from_f<D>(s);
  }
}

}  // namespace

void bias_add_rows(void* y, DType y_dtype, const void* bias, DType bias_dtype, int64_t rows, int64_t cols,
                   Stream stream) {
  const int64_t n = rows * cols;
  if (n == 0) return;
  dispatch_gpu_float(y_dtype, "bias add (output)", [&]<typename Y>() {
    dispatch_gpu_float(bias_dtype, "bias add (bias)", [&]<typename B>() {
      launch("bias_add_kernel", bias_add_kernel<Y, B>, grid_for(n), 256, 0, stream, static_cast<Y*>(y),
             static_cast<const B*>(bias), cols, n);
    });
  });
}

int64_t bias_grad_splits(int64_t rows, int64_t cols) {
  // Enough row blocks to fill the GPU (about 2048 blocks in all), each at
  // least 256 rows long so that the partial sums stay few.
  const int64_t tiles = std::max<int64_t>(1, (cols + kBiasTileCols - 1) / kBiasTileCols);
  const int64_t by_rows = (rows + 255) / 256, by_blocks = std::max<int64_t>(1, 2048 / tiles);
  return std::max<int64_t>(1, std::min(by_rows, by_blocks));
}

void bias_grad_rows(const void* g, DType g_dtype, int64_t rows, int64_t cols, void* db, DType db_dtype, float* partial,
                    Stream stream) {
  if (cols == 0) return;
  const int64_t splits = bias_grad_splits(rows, cols);
  const int64_t rows_per_split = (rows + splits - 1) / splits;
  const int64_t tiles = (cols + kBiasTileCols - 1) / kBiasTileCols;
  if (tiles > 0x7fffffffLL) throw CudaError("bias gradient: " + std::to_string(cols) + " columns are too many");
  // With rows == 0 every partial is 0 and db comes out 0.
  dispatch_gpu_float(g_dtype, "bias gradient", [&]<typename G>() {
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(splits));
    const dim3 block(kBiasTileCols, kBiasTileRows);
    launch("bias_grad_partial_kernel", bias_grad_partial_kernel<G>, grid, block, 0, stream, static_cast<const G*>(g),
           rows, cols, rows_per_split, partial);
  });
  dispatch_gpu_float(db_dtype, "bias gradient (output)", [&]<typename D>() {
    launch("bias_grad_final_kernel", bias_grad_final_kernel<D>, grid_for(cols), 256, 0, stream, partial, splits, cols,
           static_cast<D*>(db));
  });
}

}  // namespace s2h::cuda
