// Row-major GEMMs through cuBLAS (the bias kernels of linear / conv2d are in bias.cu).
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

}  // namespace s2h::cuda
