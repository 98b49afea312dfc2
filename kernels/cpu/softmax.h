// Softmax and log-softmax over the last axis of a [rows, C] block.
#pragma once

#include <cstdint>

namespace s2h::cpu {

template <class T>
void softmax_forward(const T* x, int64_t rows, int64_t c, T* y);
template <class T>
void log_softmax_forward(const T* x, int64_t rows, int64_t c, T* y);
// dx = y * (dy - sum(dy * y))
template <class T>
void softmax_backward(const T* y, const T* dy, int64_t rows, int64_t c, T* dx);
// dx = dy - exp(y) * sum(dy), y = log_softmax(x)
template <class T>
void log_softmax_backward(const T* y, const T* dy, int64_t rows, int64_t c, T* dx);

}  // namespace s2h::cpu
