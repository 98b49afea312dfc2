// Helpers shared by the op implementations (not part of the public API).
#pragma once

#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"

namespace s2h::detail {

// Throws unless t is defined and of a dtype its device computes in (CPU: f32,
// f64; CUDA: f32, bf16).
void check_compute(const Tensor& t, const char* op, const char* what);
// Throws unless a and b live on the same device.
void check_same_device(const Tensor& a, const Tensor& b, const char* op);
// Throws unless a and b have the same dtype.
void check_same_dtype(const Tensor& a, const Tensor& b, const char* op);

// The contiguous data of t without history (for kernels and saved values).
inline Tensor data_of(const Tensor& t) { return t.detach().contiguous(); }

// Strides with which a contiguous tensor of `shape` is read as `out_shape`
// (0 along broadcast axes), one per axis of out_shape.
Shape broadcast_strides(const Shape& shape, const Shape& out_shape);

// Output size of a convolution or pooling window along one axis; throws
// naming the op and axis when the window does not fit.
int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, const char* op, const char* axis);
// check_compute plus "x is NHWC [N,H,W,C]".
void check_nhwc(const Tensor& x, const char* op);

// Which of the inputs want a gradient (captured at forward time).
inline bool wants_grad(const Tensor& t) { return grad_enabled() && t.defined() && t.requires_grad(); }

}  // namespace s2h::detail
