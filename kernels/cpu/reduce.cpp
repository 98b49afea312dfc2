#include "kernels/cpu/reduce.h"

#include <algorithm>
#include <vector>

#include "kernels/cpu/parallel.h"

namespace s2h::cpu {

template <class T>
void sum_middle(const T* x, int64_t outer, int64_t mid, int64_t inner, T* out) {
  const int64_t nout = outer * inner;
  if (nout == 0) return;
  if (inner == 1) {
    // Row sums: one output per contiguous row of length mid.
    parallel_for(outer, std::max<int64_t>(1, 16384 / std::max<int64_t>(mid, 1)), [&](int64_t b, int64_t e) {
      for (int64_t o = b; o < e; ++o) {
        const T* p = x + o * mid;
        double acc = 0;
        for (int64_t m = 0; m < mid; ++m) acc += p[m];
        out[o] = static_cast<T>(acc);
      }
    });
    return;
  }
  const int threads = num_threads();
  if (outer >= threads || mid < 4 * threads) {
    parallel_for(outer, 1, [&](int64_t b, int64_t e) {
      std::vector<double> acc(static_cast<size_t>(inner));
      for (int64_t o = b; o < e; ++o) {
        std::fill(acc.begin(), acc.end(), 0.0);
        const T* p = x + o * mid * inner;
        for (int64_t m = 0; m < mid; ++m)
          for (int64_t i = 0; i < inner; ++i) acc[i] += p[m * inner + i];
        for (int64_t i = 0; i < inner; ++i) out[o * inner + i] = static_cast<T>(acc[i]);
      }
    });
    return;
  }
  // Few outer blocks, long middle axis (column sums, batch-norm statistics):
  // each thread sums a piece of the middle axis, then the pieces are added.
  std::vector<double> partial(static_cast<size_t>(threads * inner));
  for (int64_t o = 0; o < outer; ++o) {
    std::fill(partial.begin(), partial.end(), 0.0);
    const T* p = x + o * mid * inner;
#pragma omp parallel num_threads(threads)
    {
      int t = omp_get_thread_num(), nt = omp_get_num_threads();
      int64_t chunk = (mid + nt - 1) / nt;
      int64_t b = t * chunk, e = std::min(mid, b + chunk);
      double* acc = partial.data() + static_cast<int64_t>(t) * inner;
      for (int64_t m = b; m < e; ++m)
        for (int64_t i = 0; i < inner; ++i) acc[i] += p[m * inner + i];
    }
    for (int64_t i = 0; i < inner; ++i) {
      double s = 0;
      for (int t = 0; t < threads; ++t) s += partial[static_cast<size_t>(t * inner + i)];
      out[o * inner + i] = static_cast<T>(s);
    }
  }
}

template <class T>
void argmax_middle(const T* x, int64_t outer, int64_t mid, int64_t inner, int64_t* out) {
  parallel_for(outer * inner, 1024, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      int64_t o = k / inner, i = k % inner;
      const T* p = x + o * mid * inner + i;
      int64_t best = 0;
      T bv = p[0];
      for (int64_t m = 1; m < mid; ++m) {
        T v = p[m * inner];
        if (v > bv || (v != v && bv == bv)) {  // NaN propagates as the maximum
          bv = v;
          best = m;
        }
      }
      out[k] = best;
    }
  });
}

template void sum_middle<float>(const float*, int64_t, int64_t, int64_t, float*);
template void sum_middle<double>(const double*, int64_t, int64_t, int64_t, double*);
template void argmax_middle<float>(const float*, int64_t, int64_t, int64_t, int64_t*);
template void argmax_middle<double>(const double*, int64_t, int64_t, int64_t, int64_t*);

}  // namespace s2h::cpu
