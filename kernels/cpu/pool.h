// Pooling on NHWC activations.
#pragma once

#include <cstdint>

namespace s2h::cpu {

struct PoolGeom {
  int64_t n, h, w, c;
  int64_t kh, kw, sh, sw, ph, pw;
  int64_t ho, wo;
};

// Max pooling; argmax[n,ho,wo,c] receives hi*W+wi of the chosen input. Padding
// never wins (it is -inf); a NaN in the window propagates (PyTorch semantics).
template <class T>
void max_pool2d_forward(const PoolGeom& g, const T* x, T* y, int32_t* argmax);
template <class T>
void max_pool2d_backward(const PoolGeom& g, const T* dy, const int32_t* argmax, T* dx);

// Average pooling with PyTorch's divisor rules (ceil_mode off).
template <class T>
void avg_pool2d_forward(const PoolGeom& g, bool count_include_pad, const T* x, T* y);
template <class T>
void avg_pool2d_backward(const PoolGeom& g, bool count_include_pad, const T* dy, T* dx);

// Adaptive average pooling: output cell i covers [floor(i*H/Ho), ceil((i+1)*H/Ho)).
template <class T>
void adaptive_avg_pool2d_forward(int64_t n, int64_t h, int64_t w, int64_t c, int64_t ho, int64_t wo, const T* x,
                                 T* y);
template <class T>
void adaptive_avg_pool2d_backward(int64_t n, int64_t h, int64_t w, int64_t c, int64_t ho, int64_t wo, const T* dy,
                                  T* dx);

}  // namespace s2h::cpu
