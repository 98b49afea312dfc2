// 2-D convolution on NHWC activations with [O][KH][KW][C/groups] weights.
// General case: im2col + GEMM per group (chunks of images bound the buffer).
// Depthwise (groups == C): direct loops.
#pragma once

#include <cstdint>

namespace s2h::cpu {

struct ConvGeom {
  int64_t n, h, w, c;       // input
  int64_t o, kh, kw;        // output channels, kernel
  int64_t sh, sw, ph, pw, dh, dw;
  int64_t groups;
  int64_t ho, wo;           // output spatial size
  int64_t cg() const { return c / groups; }
  int64_t og() const { return o / groups; }
  bool depthwise() const { return groups == c && groups > 1; }
  bool pointwise() const {
    return kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0 && groups == 1;
  }
};

// y[n,ho,wo,o] = bias[o] + sum x * w. bias may be null.
template <class T>
void conv2d_forward(const ConvGeom& g, const T* x, const T* w, const T* bias, T* y);

// Gradients; any of dx, dw, db may be null (not wanted). dx, dw, db are
// overwritten (not accumulated).
template <class T>
void conv2d_backward(const ConvGeom& g, const T* x, const T* w, const T* dy, T* dx, T* dw, T* db);

}  // namespace s2h::cpu
