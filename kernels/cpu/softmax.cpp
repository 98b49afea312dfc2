#include "kernels/cpu/softmax.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/parallel.h"

namespace s2h::cpu {

namespace {
int64_t row_grain(int64_t c) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(c, 1)); }
}  // namespace

template <class T>
void softmax_forward(const T* x, int64_t rows, int64_t c, T* y) {
  parallel_for(rows, row_grain(c), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const T* xr = x + r * c;
      T* yr = y + r * c;
      const T mx = *std::max_element(xr, xr + c);
      double s = 0;
      for (int64_t j = 0; j < c; ++j) {
        yr[j] = std::exp(xr[j] - mx);
        s += yr[j];
      }
      const T inv = static_cast<T>(1.0 / s);
      for (int64_t j = 0; j < c; ++j) yr[j] *= inv;
    }
  });
}

template <class T>
void log_softmax_forward(const T* x, int64_t rows, int64_t c, T* y) {
  parallel_for(rows, row_grain(c), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const T* xr = x + r * c;
      T* yr = y + r * c;
      const T mx = *std::max_element(xr, xr + c);
      double s = 0;
      for (int64_t j = 0; j < c; ++j) s += std::exp(static_cast<double>(xr[j] - mx));
      const T lse = mx + static_cast<T>(std::log(s));
      for (int64_t j = 0; j < c; ++j) yr[j] = xr[j] - lse;
    }
  });
}

template <class T>
void softmax_backward(const T* y, const T* dy, int64_t rows, int64_t c, T* dx) {
  parallel_for(rows, row_grain(c), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const T* yr = y + r * c;
      const T* gr = dy + r * c;
      double s = 0;
      for (int64_t j = 0; j < c; ++j) s += static_cast<double>(gr[j]) * yr[j];
      const T st = static_cast<T>(s);
      for (int64_t j = 0; j < c; ++j) dx[r * c + j] = yr[j] * (gr[j] - st);
    }
  });
}

template <class T>
void log_softmax_backward(const T* y, const T* dy, int64_t rows, int64_t c, T* dx) {
  parallel_for(rows, row_grain(c), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const T* yr = y + r * c;
      const T* gr = dy + r * c;
      double s = 0;
      for (int64_t j = 0; j < c; ++j) s += gr[j];
      const T st = static_cast<T>(s);
      for (int64_t j = 0; j < c; ++j) dx[r * c + j] = gr[j] - std::exp(yr[j]) * st;
    }
  });
}

#define S2H_INSTANTIATE_SOFTMAX(T)                                                 \
  template void softmax_forward<T>(const T*, int64_t, int64_t, T*);               \
  template void log_softmax_forward<T>(const T*, int64_t, int64_t, T*);           \
  template void softmax_backward<T>(const T*, const T*, int64_t, int64_t, T*);    \
  template void log_softmax_backward<T>(const T*, const T*, int64_t, int64_t, T*);
S2H_INSTANTIATE_SOFTMAX(float)
S2H_INSTANTIATE_SOFTMAX(double)

}  // namespace s2h::cpu
