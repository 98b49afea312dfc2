// Handwritten fused attention (FlashAttention-style: the [s, s] logits never
// reach global memory), forward and backward, bf16 in and out, fp32 softmax
// and accumulation, head dim 64 or 128, bidirectional (no causal mask):
//   out[b, i, h, :] = head_scale[h] * sum_j softmax_j(scale * q_i . k_j + pad_j) v_j
// - key padding: pad_j = -1e9 (added in fp32, as the CPU path does) where
//   key_padding[b, j] != 0, else 0;
// - soft heads: `head_scale` [h] (f32) multiplies each head's output, and the
//   backward gives its gradient;
// - hard heads: `head_keep` [h] (u8): a head with 0 is skipped (its output and
//   its input gradients are written as zeros, nothing else is computed).
// q, k, v: [b, s, h, d] views with unit stride on d and the same element
// strides (stride_b, stride_s, stride_h) for all three (e.g. the [b, s, h*d]
// outputs of three Linear layers: strides s*h*d, h*d, d). out, dout, dq, dk,
// dv: contiguous [b, s, h, d]. Raw device pointers, everything on `stream`;
// launchers never allocate. No CUDA header is needed to include this file.
#pragma once

#include <cstdint>

#include "kernels/cuda/runtime.h"

namespace s2h::cuda {

struct AttentionShape {
  int64_t b = 0, s = 0, h = 0, d = 0;             // d: 64 or 128
  int64_t stride_b = 0, stride_s = 0, stride_h = 0;  // of q, k, v (elements)
  float softmax_scale = 1.f;                      // usually 1/sqrt(d)
};

struct AttentionMasks {
  const uint8_t* key_padding = nullptr;  // [b, s], 1 = padded key; null: none
  const float* head_scale = nullptr;     // [h]; null: 1
  const uint8_t* head_keep = nullptr;    // [h], 0 = skipped head; null: all kept
};

// Throws CudaError naming `op` unless the kernels handle the shape.
void attention_check(const AttentionShape& s, const char* op);

// out = head_scale (.) attention(q, k, v); lse [b, h, s] (f32) receives each
// query row's log-sum-exp of the scaled, padded logits (for the backward;
// for a batch element whose keys are ALL padded, the kernels add the 1e9 back
// to every logit, exactly in fp32, and lse is the true value + 1e9: the
// softmax is the same, but m + log(l) no longer rounds back to m);
// `out_unscaled` (optional, [b, s, h, d] bf16) receives the output before the
// head scale (the backward needs it for the head-scale gradient).
void attention_forward(const AttentionShape& s, const AttentionMasks& m, const void* q, const void* k, const void* v,
                       void* out, void* out_unscaled, float* lse, Stream stream);

// dq, dk, dv from dout, with `out_unscaled` and `lse` of the forward.
// `delta` is scratch of b*h*s f32. With head_scale set and `dhead_scale_rows`
// non-null, also dhead_scale_rows[b, h, i] = sum_d dout * out_unscaled (f32
// [b, h, s]; the caller sums over b and i for the head-scale gradient).
// Deterministic (no atomics): dk/dv per key block, dq per query block.
void attention_backward(const AttentionShape& s, const AttentionMasks& m, const void* q, const void* k, const void* v,
                        const void* out_unscaled, const void* dout, const float* lse, void* dq, void* dk, void* dv,
                        float* delta, float* dhead_scale_rows, Stream stream);

}  // namespace s2h::cuda
