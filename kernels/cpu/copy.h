// Strided copies with element-type conversion.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/cpu/parallel.h"

namespace s2h::cpu {

template <class D, class S>
inline D convert(S v) {
  if constexpr (std::is_same_v<D, bf16>) {
    return bf16(static_cast<float>(v));
  } else if constexpr (std::is_same_v<S, bf16>) {
    return static_cast<D>(static_cast<float>(v));
  } else {
    return static_cast<D>(v);
  }
}

// dst[i...] = src[i...] for every index of `shape`; strides in elements.
template <class D, class S>
void strided_copy(D* dst, const int64_t* dst_strides, const S* src, const int64_t* src_strides,
                  const int64_t* shape, int ndim) {
  if (ndim == 0) {
    dst[0] = convert<D>(src[0]);
    return;
  }
  int64_t inner = shape[ndim - 1];
  int64_t outer = 1;
  for (int d = 0; d < ndim - 1; ++d) outer *= shape[d];
  if (inner == 0 || outer == 0) return;
  int64_t ds = dst_strides[ndim - 1], ss = src_strides[ndim - 1];
  parallel_for(outer, std::max<int64_t>(1, 32768 / inner), [&](int64_t ob, int64_t oe) {
    std::vector<int64_t> idx(static_cast<size_t>(ndim), 0);
    for (int64_t o = ob; o < oe; ++o) {
      int64_t rem = o, doff = 0, soff = 0;
      for (int d = ndim - 2; d >= 0; --d) {
        int64_t i = rem % shape[d];
        rem /= shape[d];
        doff += i * dst_strides[d];
        soff += i * src_strides[d];
      }
      D* dp = dst + doff;
      const S* sp = src + soff;
      if (ds == 1 && ss == 1) {
        for (int64_t j = 0; j < inner; ++j) dp[j] = convert<D>(sp[j]);
      } else {
        for (int64_t j = 0; j < inner; ++j) dp[j * ds] = convert<D>(sp[j * ss]);
      }
    }
  });
}

}  // namespace s2h::cpu
