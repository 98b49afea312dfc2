// Sum reductions over the middle axis of a contiguous [outer, mid, inner] block.
#pragma once

#include <cstdint>

namespace s2h::cpu {

// out[o, i] = sum_m x[o, m, i] (accumulated in double). out has outer*inner elements.
template <class T>
void sum_middle(const T* x, int64_t outer, int64_t mid, int64_t inner, T* out);

// out[i] = argmax_m x[o, m, i] over the middle axis (first maximum wins).
template <class T>
void argmax_middle(const T* x, int64_t outer, int64_t mid, int64_t inner, int64_t* out);

}  // namespace s2h::cpu
