// Row-major GEMM through CBLAS (OpenBLAS).
#pragma once

#include <cstdint>

namespace s2h::cpu {

// C[m,n] = alpha * op(A)[m,k] * op(B)[k,n] + beta * C, row-major with leading
// dimensions lda, ldb, ldc. op(X) = X^T when the trans flag is set.
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// Sets the BLAS thread count (OpenBLAS); returns the previous value or -1.
int blas_set_threads(int threads);

}  // namespace s2h::cpu
