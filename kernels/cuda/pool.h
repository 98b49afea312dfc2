// Pooling on NHWC activations on the GPU (f32 or bf16, fp32 arithmetic), with
// the CPU path's semantics (kernels/cpu/pool.h): padding never wins a max, a
// NaN propagates, PyTorch's average divisors. The backward kernels gather
// (one thread per input element sums the outputs whose window covers it), so
// they need no atomics, no zero fill, and are reproducible. Raw device
// pointers, contiguous data, everything on `stream`.
#pragma once

#include <cstdint>

#include "kernels/cpu/pool.h"
#include "kernels/cuda/runtime.h"
#include "kernels/dtype.h"

namespace s2h::cuda {

using PoolGeom = cpu::PoolGeom;  // n, h, w, c, kernel, stride, padding, ho, wo (padding <= kernel / 2)

// argmax[n,ho,wo,c] (int32, device) receives hi * W + wi of the chosen input.
void max_pool2d_forward(const PoolGeom& g, const void* x, void* y, int32_t* argmax, DType dtype, Stream stream);
void max_pool2d_backward(const PoolGeom& g, const void* dy, const int32_t* argmax, void* dx, DType dtype,
                         Stream stream);

void avg_pool2d_forward(const PoolGeom& g, bool count_include_pad, const void* x, void* y, DType dtype,
                        Stream stream);
void avg_pool2d_backward(const PoolGeom& g, bool count_include_pad, const void* dy, void* dx, DType dtype,
                         Stream stream);

// Output cell i covers [floor(i*H/Ho), ceil((i+1)*H/Ho)) (and the same along W).
void adaptive_avg_pool2d_forward(int64_t n, int64_t h, int64_t w, int64_t c, int64_t ho, int64_t wo, const void* x,
                                 void* y, DType dtype, Stream stream);
void adaptive_avg_pool2d_backward(int64_t n, int64_t h, int64_t w, int64_t c, int64_t ho, int64_t wo, const void* dy,
                                  void* dx, DType dtype, Stream stream);

}  // namespace s2h::cuda
