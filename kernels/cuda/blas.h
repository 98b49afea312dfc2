// GEMMs on cuBLAS (row-major, strided-batched) and the bias kernels of linear
// and conv2d. Raw device pointers, sizes and strides in elements; everything
// runs on cuda::stream(device). No CUDA header is needed to include this file.
#pragma once

#include <cstdint>

#include "kernels/cuda/runtime.h"
#include "kernels/dtype.h"

namespace s2h::cuda {

// One GEMM operand: a batch of row-major matrices. With trans = false the
// stored matrix is op(X) itself, with trans = true it is op(X)^T (so a
// transposed view needs no copy).
struct GemmOperand {
  const void* data = nullptr;
  bool trans = false;
  int64_t ld = 0;            // elements between consecutive rows of the stored matrix
  int64_t batch_stride = 0;  // elements between consecutive matrices (0 when batch == 1)
};

// C[b] = alpha * op(A[b]) op(B[b]) + beta * C[b] for b < batch, all row-major:
// op(A) is [m, k], op(B) [k, n], C [m, n] with rows ldc apart and matrices
// stride_c apart. A, B and C have `dtype` (f32 or bf16); the arithmetic is
// fp32 (CUBLAS_COMPUTE_32F), or TF32 tensor cores for f32 when allow_tf32.
void gemm(int64_t batch, int64_t m, int64_t n, int64_t k, float alpha, const GemmOperand& a, const GemmOperand& b,
          float beta, void* c, int64_t ldc, int64_t stride_c, DType dtype, bool allow_tf32, int device);

// y[r, j] += bias[j] for a contiguous row-major y [rows, cols] (fp32
// arithmetic; y and bias may differ in dtype, each f32 or bf16).
void bias_add_rows(void* y, DType y_dtype, const void* bias, DType bias_dtype, int64_t rows, int64_t cols,
                   Stream stream);

// The bias gradient db[j] = sum_r g[r, j] of a contiguous g [rows, cols], in
// fp32 and deterministic: partial sums over bias_grad_splits(rows, cols) row
// blocks go to `partial` (f32 scratch of splits * cols elements that the
// caller allocates), then one pass adds them up and stores db in its dtype.
int64_t bias_grad_splits(int64_t rows, int64_t cols);
void bias_grad_rows(const void* g, DType g_dtype, int64_t rows, int64_t cols, void* db, DType db_dtype, float* partial,
                    Stream stream);

}  // namespace s2h::cuda
