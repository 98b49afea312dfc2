// Handwritten masked convolution (implicit GEMM on bf16 tensor cores, fp32
// accumulation), the kernels behind S2HPruner's soft and hard passes:
//   y = out_scale (.) conv(in_scale (.) x, W[out_index][:, :][in_index])
// - soft: full widths, `out_scale` [o] multiplies output channel o in the
//   epilogue and/or `in_scale` [c] multiplies input channel c in the main
//   loop; the backward also produces the gradients of both scales.
// - hard: only kept channels are computed on both sides. x holds the kept
//   input channels only (c of them), y the kept output channels only (o of
//   them). The weight stays the full tensor [wo, kh, kw, wc]; `out_index` [o]
//   and `in_index` [c] (i64, in [0, wo) / [0, wc), no repeats) say which rows
//   and input columns of it the narrow layer uses. A null index means the
//   prefix: rows 0..o-1, columns 0..c-1.
// - dual: one launch computes the soft output (full widths, scales) and the
//   hard output (prefix widths, no scales) from their two inputs, loading
//   each weight tile once for both.
// Layouts: x [n, h, w, c], y [n, ho, wo, o] (NHWC, contiguous, bf16); weight
// [wo, kh, kw, wc] contiguous, f32 or bf16 (converted to bf16 on load; the
// f32 master weight can be passed as is); kh = kw in {1, 3}; stride in {1, 2};
// groups = 1; dilation 1. Raw device pointers, everything on `stream`;
// launchers never allocate (scratch sizes are queried first). No CUDA header is
// needed to include this file.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/runtime.h"
#include "kernels/dtype.h"

namespace s2h::cuda {

struct MaskedConvShape {
  int64_t n = 0, h = 0, w = 0;  // input batch and spatial size
  int64_t c = 0;                // channels of x (the kept ones for hard)
  int64_t o = 0;                // channels of y (the kept ones for hard)
  int64_t k = 1;                // kernel size (kh = kw = k), 1 or 3
  int64_t stride = 1, pad = 0;  // stride 1 or 2, symmetric zero padding
  int64_t ho = 0, wo = 0;       // output spatial size (the caller computes it)
  int64_t w_rows = 0, w_cols = 0;  // the weight tensor's o and c: [w_rows, k, k, w_cols]
};

// Which weight rows / columns a hard layer uses (device i64 arrays, or null
// for the prefix) and the soft scales (device f32 arrays, or null for 1).
struct MaskedConvArgs {
  const int64_t* out_index = nullptr;  // [o] rows of the weight
  const int64_t* in_index = nullptr;   // [c] input columns of the weight
  const float* out_scale = nullptr;    // [o]
  const float* in_scale = nullptr;     // [c]
};

// Throws CudaError naming `op` unless the shape is one the kernels handle
// (k, stride, positive sizes, ho/wo consistent with h/w/pad, o <= w_rows,
// c <= w_cols, weight dtype f32/bf16).
void masked_conv_check(const MaskedConvShape& s, DType weight_dtype, const char* op);

// y = out_scale (.) conv(in_scale (.) x, W[out_index, :, :, in_index])
void masked_conv_forward(const MaskedConvShape& s, const MaskedConvArgs& a, const void* x, const void* weight,
                         DType weight_dtype, void* y, Stream stream);

// dx = in_scale (.) conv_transpose(out_scale (.) dy, W[...]); with in_scale set
// and `din_scale_partial` non-null, also the per-block partial sums of the
// input-scale gradient: din_scale_partial[b][ci] = sum over the pixels of
// block b of x * conv_transpose(out_scale (.) dy, W) (f32, [blocks][c], with
// blocks = masked_conv_dgrad_partial_blocks(s)); the caller sums axis 0.
int64_t masked_conv_dgrad_partial_blocks(const MaskedConvShape& s);
void masked_conv_backward_data(const MaskedConvShape& s, const MaskedConvArgs& a, const void* x, const void* dy,
                               const void* weight, DType weight_dtype, void* dx, float* din_scale_partial,
                               Stream stream);

// The weight gradient, written into the FULL weight-shaped buffer dweight
// [w_rows, k, k, w_cols] of dtype weight_dtype: only the rows/columns the
// layer uses are written (the caller zeroes the buffer first when the layer is
// hard); with out_scale set and `dout_scale` non-null, also
// dout_scale[oi] = sum over (kh, kw, ci) of W * G (f32 [o]), where G is the
// unscaled gradient dy^T im2col(in_scale (.) x). Needs the scratch of
// masked_conv_wgrad_workspace_bytes(s) (split-K partial sums; may be 0).
size_t masked_conv_wgrad_workspace_bytes(const MaskedConvShape& s);
void masked_conv_backward_weight(const MaskedConvShape& s, const MaskedConvArgs& a, const void* x, const void* dy,
                                 const void* weight, DType weight_dtype, void* dweight, float* dout_scale,
                                 void* workspace, size_t workspace_bytes, Stream stream);

// The soft output ys = out_scale (.) conv(in_scale (.) xs, W) of shape `soft`
// and the hard output yh = conv(xh, W[:hard.o, :, :, :hard.c]) of shape `hard`
// (same n, h, w, k, stride, pad, w_rows, w_cols as soft; hard.o <= soft.o,
// hard.c <= soft.c; prefix form, no hard scales) in one launch; each weight
// tile is loaded once and used by both products.
void masked_conv_dual_forward(const MaskedConvShape& soft, const MaskedConvShape& hard, const float* out_scale,
                              const float* in_scale, const void* xs, const void* xh, const void* weight,
                              DType weight_dtype, void* ys, void* yh, Stream stream);

}  // namespace s2h::cuda
