// Static OpenMP partitioning of a 1-D index range.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace s2h::cpu {

inline int num_threads() { return omp_get_max_threads(); }

// Calls fn(begin, end) on contiguous pieces of [0, n), one per thread. Runs
// inline when n <= grain, with one thread, or inside another parallel region.
template <class Fn>
void parallel_for(int64_t n, int64_t grain, Fn&& fn) {
  if (n <= 0) return;
  if (n <= grain || omp_get_max_threads() == 1 || omp_in_parallel()) {
    fn(int64_t{0}, n);
    return;
  }
  int64_t max_pieces = std::max<int64_t>(1, n / std::max<int64_t>(grain, 1));
  int threads = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), max_pieces));
#pragma omp parallel num_threads(threads)
  {
    int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t chunk = (n + nt - 1) / nt;
    int64_t b = t * chunk, e = std::min(n, b + chunk);
    if (b < e) fn(b, e);
  }
}

}  // namespace s2h::cpu
