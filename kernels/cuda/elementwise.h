// Elementwise kernels on the GPU: unary maps (math functions, activations,
// ops with a scalar) forward and backward, and broadcasting binary arithmetic.
// Raw device pointers; f32 or bf16 storage, fp32 arithmetic; everything on
// `stream`. The CPU side passes lambdas to its loops; lambdas cannot cross
// into .cu files, so the GPU side names its ops with these enums instead.
#pragma once

#include <cstdint>

#include "kernels/cuda/runtime.h"
#include "kernels/dtype.h"

namespace s2h::cuda {

// y = f(x) (param: the scalar of the *Scalar ops and the exponent of PowScalar;
// ignored by the others).
enum class UnaryOp : int {
  AddScalar,    // x + p
  MulScalar,    // x * p
  RsubScalar,   // p - x
  RdivScalar,   // p / x
  PowScalar,    // x ^ p
  Neg,
  Exp,
  Log,
  Sqrt,
  Square,
  Abs,
  Relu,
  Relu6,
  Hardsigmoid,  // clamp(x + 3, 0, 6) / 6
  Hardswish,    // x * hardsigmoid(x)
  Gelu,         // exact (erf) form
  GeluTanh,     // tanh approximation
  Sigmoid,
  Tanh,
};

enum class BinaryOp : int { Add, Sub, Mul, Div };

// y[i] = f(x[i]) for n contiguous elements of `dtype` (f32 or bf16).
void unary_forward(UnaryOp op, double param, const void* x, void* y, DType dtype, int64_t n, Stream stream);
// gx[i] = f'(x[i], y[i], g[i]) (y = f(x), g = dL/dy): the gradient of the
// same op, n contiguous elements, all four buffers of `dtype`.
void unary_backward(UnaryOp op, double param, const void* x, const void* y, const void* g, void* gx, DType dtype,
                    int64_t n, Stream stream);
// out = a op b over `shape` (out contiguous, ndim axes); a and b are read with
// their own strides in elements (0 along broadcast axes). All three of
// `dtype`. Axes are coalesced first; more than 8 remaining axes throw.
void binary(BinaryOp op, const void* a, const int64_t* a_strides, const void* b, const int64_t* b_strides, void* out,
            DType dtype, const int64_t* shape, int ndim, Stream stream);

}  // namespace s2h::cuda
