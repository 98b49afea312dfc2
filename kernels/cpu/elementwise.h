// Elementwise loops: maps over contiguous data and broadcasting binary ops.
// The op itself is a functor supplied by the caller (engine/ops).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cpu/parallel.h"

namespace s2h::cpu {

constexpr int64_t kElementwiseGrain = 16384;

// y[i] = f(x[i])
template <class T, class F>
void map1(const T* x, T* y, int64_t n, F f) {
  parallel_for(n, kElementwiseGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] = f(x[i]);
  });
}

// y[i] = f(a[i], b[i])
template <class T, class F>
void map2(const T* a, const T* b, T* y, int64_t n, F f) {
  parallel_for(n, kElementwiseGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) y[i] = f(a[i], b[i]);
  });
}

// y[i] = f(a[i], b[i], c[i])
template <class T, class F>
void map3(const T* a, const T* b, const T* c, T* y, int64_t n, F f) {
  parallel_for(n, kElementwiseGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) y[i] = f(a[i], b[i], c[i]);
  });
}

// out = f(a, b) over `shape` (out contiguous); a and b are read with their
// own strides, which are 0 along broadcast axes.
template <class T, class F>
void broadcast2(const T* a, const int64_t* a_strides, const T* b, const int64_t* b_strides, T* out,
                const int64_t* shape, int ndim, F f) {
  // Coalesce adjacent axes that are contiguous for both inputs.
  std::vector<int64_t> sh, sa, sb;
  for (int d = 0; d < ndim; ++d) {
    if (shape[d] == 1) continue;
    if (!sh.empty() && sa.back() == a_strides[d] * shape[d] && sb.back() == b_strides[d] * shape[d]) {
      sh.back() *= shape[d];
      sa.back() = a_strides[d];
      sb.back() = b_strides[d];
    } else {
      sh.push_back(shape[d]);
      sa.push_back(a_strides[d]);
      sb.push_back(b_strides[d]);
    }
  }
  if (sh.empty()) {
    out[0] = f(a[0], b[0]);
    return;
  }
  const int nd = static_cast<int>(sh.size());
  const int64_t inner = sh[nd - 1], ia = sa[nd - 1], ib = sb[nd - 1];
  int64_t outer = 1;
  for (int d = 0; d < nd - 1; ++d) outer *= sh[d];
  parallel_for(outer, std::max<int64_t>(1, kElementwiseGrain / inner), [&](int64_t ob, int64_t oe) {
    for (int64_t o = ob; o < oe; ++o) {
      int64_t rem = o, oa = 0, obb = 0;
      for (int d = nd - 2; d >= 0; --d) {
        int64_t i = rem % sh[d];
        rem /= sh[d];
        oa += i * sa[d];
        obb += i * sb[d];
      }
      const T* pa = a + oa;
      const T* pb = b + obb;
      T* po = out + o * inner;
      if (ia == 1 && ib == 1) {
        for (int64_t j = 0; j < inner; ++j) po[j] = f(pa[j], pb[j]);
      } else if (ia == 1 && ib == 0) {
        const T vb = pb[0];
        for (int64_t j = 0; j < inner; ++j) po[j] = f(pa[j], vb);
      } else if (ia == 0 && ib == 1) {
        const T va = pa[0];
        for (int64_t j = 0; j < inner; ++j) po[j] = f(va, pb[j]);
      } else {
        for (int64_t j = 0; j < inner; ++j) po[j] = f(pa[j * ia], pb[j * ib]);
      }
    }
  });
}

}  // namespace s2h::cpu
