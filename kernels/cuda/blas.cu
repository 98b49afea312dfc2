// Row-major GEMMs through cuBLAS and the bias kernels of linear / conv2d.
#include <algorithm>
#include <string>

#include "kernels/cuda/blas.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/copy.h"
#include "kernels/cuda/handles.h"

namespace s2h::cuda {

namespace {

const char* type_text(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::BF16: return "bf16";
    case DType::F64: return "f64";
    case DType::I64: return "i64";
    case DType::U8: return "u8";
  }
  return "?";
}

std::string gemm_text(int64_t batch, int64_t m, int64_t n, int64_t k, const GemmOperand& a, const GemmOperand& b,
                      int64_t ldc, DType dtype) {
  return "gemm (batch " + std::to_string(batch) + ", m " + std::to_string(m) + ", n " + std::to_string(n) + ", k " +
         std::to_string(k) + ", A " + (a.trans ? "T" : "N") + " ld " + std::to_string(a.ld) + ", B " +
         (b.trans ? "T" : "N") + " ld " + std::to_string(b.ld) + ", ldc " + std::to_string(ldc) + ", " +
         type_text(dtype) + ")";
}

// ------------------------------------------------------------------ bias kernels
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
  __shared__ float acc[kBiasTileRows][kBiasTileCols + 1];
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

// ------------------------------------------------------------------ gemm
void gemm(int64_t batch, int64_t m, int64_t n, int64_t k, float alpha, const GemmOperand& a, const GemmOperand& b,
          float beta, void* c, int64_t ldc, int64_t stride_c, DType dtype, bool allow_tf32, int device) {
  if (batch < 0 || m < 0 || n < 0 || k < 0)
    throw CudaError(gemm_text(batch, m, n, k, a, b, ldc, dtype) + ": negative size");
  if (batch == 0 || m == 0 || n == 0) return;
  cudaDataType_t type;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  if (dtype == DType::F32) {
    type = CUDA_R_32F;
    if (allow_tf32) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
  } else if (dtype == DType::BF16) {
    type = CUDA_R_16BF;
  } else {
    throw CudaError(gemm_text(batch, m, n, k, a, b, ldc, dtype) + ": dtype not supported (expected f32 or bf16)");
  }
  if (k == 0) {  // C = beta * C without asking cuBLAS about an empty inner dimension
    if (ldc != n || (batch > 1 && stride_c != m * n))
      throw CudaError(gemm_text(batch, m, n, k, a, b, ldc, dtype) + ": k = 0 needs a contiguous C");
    const int64_t count = batch * m * n;
    if (beta == 0.f) {
      fill_bytes(c, 0, static_cast<size_t>(count) * dtype_size(dtype), device);
    } else if (beta != 1.f) {
      scale(c, dtype, count, beta, stream(device));
    }
    return;
  }
  // cuBLAS is column-major: a row-major [r, c] matrix with leading dimension
  // ld is its column-major transpose with the same ld. So row-major
  // C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: B goes first, and
  // an operand stored transposed gets CUBLAS_OP_T. (cuBLAS refuses ld 0,
  // which a caller may pass for a matrix whose rows are never stepped over.)
  const cublasOperation_t op_first = b.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = a.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int64_t lda = std::max<int64_t>(b.ld, 1), ldb = std::max<int64_t>(a.ld, 1),
                ldcc = std::max<int64_t>(ldc, 1);
  cublasHandle_t h = cublas_handle(device);
  const cublasStatus_t st = cublasGemmStridedBatchedEx_64(
      h, op_first, op_second, n, m, k, &alpha, b.data, type, lda, b.batch_stride, a.data, type, ldb, a.batch_stride,
      &beta, c, type, ldcc, stride_c, batch, compute, CUBLAS_GEMM_DEFAULT);
  if (st != CUBLAS_STATUS_SUCCESS)
    throw_error("cublasGemmStridedBatchedEx_64 for " + gemm_text(batch, m, n, k, a, b, ldc, dtype),
                "cuBLAS " + cublas_status_text(st), __FILE__, __LINE__);
}

// ------------------------------------------------------------------ bias
void bias_add_rows(void* y, DType y_dtype, const void* bias, DType bias_dtype, int64_t rows, int64_t cols,
                   Stream stream) {
  const int64_t n = rows * cols;
  if (n == 0) return;
  dispatch_gpu_float(y_dtype, "bias add (output)", [&]<typename Y>() {
    dispatch_gpu_float(bias_dtype, "bias add (bias)", [&]<typename B>() {
      bias_add_kernel<Y, B><<<grid_for(n), 256, 0, stream>>>(static_cast<Y*>(y), static_cast<const B*>(bias), cols,
                                                              n);
      CUDA_CHECK_LAUNCH("bias_add_kernel");
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
    bias_grad_partial_kernel<G><<<grid, block, 0, stream>>>(static_cast<const G*>(g), rows, cols, rows_per_split,
                                                            partial);
    CUDA_CHECK_LAUNCH("bias_grad_partial_kernel");
  });
  dispatch_gpu_float(db_dtype, "bias gradient (output)", [&]<typename D>() {
    bias_grad_final_kernel<D><<<grid_for(cols), 256, 0, stream>>>(partial, splits, cols, static_cast<D*>(db));
    CUDA_CHECK_LAUNCH("bias_grad_final_kernel");
  });
}

}  // namespace s2h::cuda
