// 2-D convolution on cuDNN: NHWC activations, weights [O][KH][KW][C/groups]
// (cuDNN's NHWC filter layout), stride, padding, dilation, groups. Raw device
// pointers, contiguous tensors; everything on cuda::stream(device). No CUDA
// header is needed to include this file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

#include "kernels/cuda/runtime.h"
#include "kernels/dtype.h"

namespace s2h::cuda {

struct ConvGeometry {
  int64_t n = 0, h = 0, w = 0, c = 0;  // input [n, h, w, c]
  int64_t o = 0, kh = 0, kw = 0;       // weight [o, kh, kw, c / groups]
  int64_t ho = 0, wo = 0;              // output [n, ho, wo, o]
  int64_t sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;
  int64_t groups = 1;
};

// Device scratch for cuDNN: returns at least nbytes (nbytes may be 0) that
// stay valid until the launcher returns; it may be called more than once. The
// engine op allocates each request as a device tensor (launchers never
// allocate). It may throw CudaError when memory runs out.
using WorkspaceFn = std::function<void*(size_t nbytes)>;

// The math of a convolution: dtype f32 or bf16 (inputs, weights and outputs
// alike), fp32 accumulation. For f32, allow_tf32 lets cuDNN use TF32 tensor
// cores; without it only FMA kernels run. bf16 always uses tensor cores.
//
// The first call of a geometry (per device, dtype and math) benchmarks the
// algorithms with cudnnFind*AlgorithmEx (slow, and it overwrites the output
// buffer, which the call then computes anyway); later calls reuse the choice.

// y = conv(x, w)
void conv2d_forward(const ConvGeometry& g, DType dtype, bool allow_tf32, const void* x, const void* w, void* y,
                    const WorkspaceFn& workspace, int device);
// dx = the gradient w.r.t. the input, from w and dy
void conv2d_backward_data(const ConvGeometry& g, DType dtype, bool allow_tf32, const void* w, const void* dy,
                          void* dx, const WorkspaceFn& workspace, int device);
// dw = the gradient w.r.t. the weights, from x and dy
void conv2d_backward_filter(const ConvGeometry& g, DType dtype, bool allow_tf32, const void* x, const void* dy,
                            void* dw, const WorkspaceFn& workspace, int device);

// Drops the cached algorithm choices (e.g. after the policy changed).
void conv2d_clear_cache();

}  // namespace s2h::cuda
