// kernel_bench's own device code: random inputs, the L2-flush / spin helpers
// of the timing loop, the per-channel "mask multiply" of the library
// baselines, and the references that every benchmarked output is checked
// against: exact (fp64-accumulated) convolution and attention values at
// sampled points, full-tensor comparisons, and the dot products behind the
// mask-gradient references. None of this is timed except scale_channels (the
// baselines' separate mask multiply). Raw device pointers, everything on
// `stream`; the functions that return numbers synchronise. No CUDA header is
// needed to include this file.
#pragma once

#include <cstdint>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/masked_conv.h"
#include "kernels/cuda/runtime.h"
#include "kernels/dtype.h"

namespace s2h::kbench {

using cuda::MaskedConvArgs;
using cuda::MaskedConvShape;
using cuda::Stream;

// p[i] = lo + (hi - lo) * u(i, seed), u uniform in [0, 1) from a hash of the
// index (never zeros: tensor cores run faster on zeros); dtype f32 or bf16.
void fill_uniform(void* p, DType dtype, int64_t n, float lo, float hi, uint32_t seed, Stream stream);
// dst[i] = src[i] between f32 and bf16 (either direction, or a plain copy).
void convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n, Stream stream);
// Reads `bytes` (a multiple of 16) of p, so that the L2 cache afterwards
// holds only clean lines of p: the flush between timed repetitions (a write
// flush would leave dirty lines whose write-back lands in the next timing).
void read_through(const void* p, size_t bytes, Stream stream);
// Keeps the GPU busy for `ns` nanoseconds, so that the host can queue the
// timed repetitions behind it (no launch gaps inside the measured events).
void spin_ns(uint64_t ns, Stream stream);
// y[r, j] = x[r, j] * scale[j] for bf16 [rows, c] (y may be x): the separate
// mask multiply of the library baselines (16-byte vector accesses when c % 8 == 0).
void scale_channels(const void* x, const float* scale, void* y, int64_t rows, int64_t c, Stream stream);

// Whole-tensor comparison of a (the candidate) with b (the reference), both f32
// or bf16: max |a - b| over the elements where both are finite, max |b|, and the
// non-finite counts. b may be null (then only a's non-finite count).
struct Compare {
  double max_abs_diff = 0, max_abs_ref = 0;
  int64_t nonfinite = 0, nonfinite_ref = 0;
  double rel() const { return max_abs_ref > 0 ? max_abs_diff / max_abs_ref : max_abs_diff; }
};
Compare compare(const void* a, DType a_dtype, const void* b, DType b_dtype, int64_t n, int device);

// Masked-convolution references at sampled points. `samples` (device i64,
// 4 per sample) holds, per pass, the coordinates of one output element:
//   Forward: (n, oh, ow, o) of y;  Data: (n, ih, iw, c) of dx;  Weight: (o, kh, kw, c) of dW
// with o / c the kept (narrow) channel numbers of a hard layer.
enum class ConvPass { Forward, Data, Weight };
struct ConvRef {
  MaskedConvShape s;
  MaskedConvArgs a;  // indices and scales as the kernel under test gets them
  const void* x = nullptr;   // bf16 [n, h, w, c]
  const void* dy = nullptr;  // bf16 [n, ho, wo, o]
  const void* weight = nullptr;  // [w_rows, k, k, w_cols]
  DType weight_dtype = DType::BF16;
};
// ref[i] = the exact value (fp64 sums of the bf16 / f32 inputs) of sample i of
// y = out_scale (.) conv(in_scale (.) x, W[out_index][..][in_index]), of its
// input gradient (from dy) or of its weight gradient (dW of the used rows and
// columns, out_scale and in_scale included).
void conv_reference(ConvPass pass, const ConvRef& r, const int64_t* samples, int64_t count, double* ref,
                    Stream stream);
// got[i] = the element of `out` (f32 or bf16) at sample i: y [n, ho, wo, o],
// dx [n, h, w, c], or the FULL weight-shaped dW [w_rows, k, k, w_cols] read
// through a's indices (a library dW of a layer without indices is the same).
void conv_gather(ConvPass pass, const MaskedConvShape& s, const MaskedConvArgs& a, const int64_t* samples,
                 int64_t count, const void* out, DType out_dtype, double* got, Stream stream);

// out[j] = sum_r a[r, j] * b[r, j] (bf16 [rows, c] each; fp64 sums): the
// input-mask gradient reference from x and the unscaled input gradient.
void column_dot(const void* a, const void* b, int64_t rows, int64_t c, double* out, Stream stream);
// out[r] = sum_j a[r, j] * b[r, j] (a f32 or bf16, b bf16, [rows, len]): the
// output-mask gradient reference sum W * G.
void row_dot(const void* a, DType a_dtype, const void* b, int64_t rows, int64_t len, double* out, Stream stream);

// Exact attention (fp64 sums) for a few whole heads (b, h) of the bf16 inputs
// of attention_forward / attention_backward (no key padding):
// o [np, s, d] the unscaled output, lse [np, s], and with dout, the
// gradients dq, dk, dv [np, s, d] of out = head_scale[h] * o; delta [np, s]
// is scratch. Pairs (b, h) in pb / ph, np <= 4.
struct AttnRef {
  cuda::AttentionShape s;
  const void *q = nullptr, *k = nullptr, *v = nullptr;  // strided as s says
  const void* dout = nullptr;                            // contiguous [b, s, h, d]
  const float* head_scale = nullptr;
  int np = 0;
  int64_t pb[4] = {}, ph[4] = {};
};
void attention_reference(const AttnRef& r, float* o, float* lse, float* delta, float* dq, float* dk, float* dv,
                         Stream stream);

}  // namespace s2h::kbench
