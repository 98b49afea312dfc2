#include "kernels/cpu/blas.h"

#include <cblas.h>

#include <climits>
#include <stdexcept>

namespace s2h::cpu {

namespace {
blasint as_blas(int64_t v) {
  if (v < 0 || v > INT_MAX) throw std::length_error("gemm dimension exceeds the BLAS integer range");
  return static_cast<blasint>(v);
}
CBLAS_TRANSPOSE tr(bool t) { return t ? CblasTrans : CblasNoTrans; }
}  // namespace

template <>
void gemm<float>(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                 const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, tr(ta), tr(tb), as_blas(m), as_blas(n), as_blas(k), alpha, a, as_blas(lda), b,
              as_blas(ldb), beta, c, as_blas(ldc));
}

template <>
void gemm<double>(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
                  int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_dgemm(CblasRowMajor, tr(ta), tr(tb), as_blas(m), as_blas(n), as_blas(k), alpha, a, as_blas(lda), b,
              as_blas(ldb), beta, c, as_blas(ldc));
}

int blas_set_threads(int threads) {
  int prev = openblas_get_num_threads();
  openblas_set_num_threads(threads);
  return prev;
}

}  // namespace s2h::cpu
