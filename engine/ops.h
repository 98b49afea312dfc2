// The engine's differentiable ops. Each is a free function that checks its
// inputs, computes on the CPU kernels (kernels/cpu), and records its backward
// (autograd.h). Layout conventions: images are NHWC (channels last); conv
// weights are [out][kh][kw][in/groups]; linear weights are [out][in].
#pragma once

#include <array>
#include <vector>

#include "engine/tensor.h"

namespace s2h {

class Generator;

// ------------------------------------------------------------------ elementwise
Tensor add(const Tensor& a, const Tensor& b);  // broadcasting
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add_scalar(const Tensor& a, double b);
Tensor mul_scalar(const Tensor& a, double b);
Tensor rsub_scalar(const Tensor& a, double b);  // b - a
Tensor rdiv_scalar(const Tensor& a, double b);  // b / a
Tensor pow_scalar(const Tensor& a, double exponent);
Tensor neg(const Tensor& a);
Tensor exp(const Tensor& a);
Tensor log(const Tensor& a);
Tensor sqrt(const Tensor& a);
Tensor square(const Tensor& a);
Tensor abs(const Tensor& a);

// ------------------------------------------------------------------ activations
Tensor relu(const Tensor& x);
Tensor relu6(const Tensor& x);
Tensor hardswish(const Tensor& x);
Tensor hardsigmoid(const Tensor& x);
// Exact GELU (erf) by default; approximate=true uses the tanh form.
Tensor gelu(const Tensor& x, bool approximate = false);
Tensor sigmoid(const Tensor& x);
Tensor tanh(const Tensor& x);

// ------------------------------------------------------------------ reductions
Tensor sum(const Tensor& x, const std::vector<int64_t>& axes, bool keepdim = false);
Tensor mean(const Tensor& x, const std::vector<int64_t>& axes, bool keepdim = false);
Tensor sum(const Tensor& x);   // all elements -> scalar
Tensor mean(const Tensor& x);  // all elements -> scalar
// Sums `x` down to `shape` (the inverse of broadcasting `shape` to x's shape).
Tensor sum_to(const Tensor& x, const Shape& shape);
Tensor argmax(const Tensor& x, int64_t axis);  // i64, no gradient

// ------------------------------------------------------------------ shape
Tensor reshape(const Tensor& x, const Shape& shape);
Tensor permute(const Tensor& x, const Shape& order);
Tensor transpose(const Tensor& x, int64_t a, int64_t b);
Tensor slice(const Tensor& x, int64_t axis, int64_t start, int64_t end, int64_t step = 1);
Tensor concat(const std::vector<Tensor>& xs, int64_t axis);
Tensor index_select(const Tensor& x, int64_t axis, const Tensor& index);  // index: i64 1-D
Tensor contiguous(const Tensor& x);
Tensor expand(const Tensor& x, const Shape& shape);  // broadcast to shape (materialised)

// ------------------------------------------------------------------ linear algebra
Tensor matmul(const Tensor& a, const Tensor& b);  // [..,M,K] x [..,K,N] or x [K,N]
Tensor bmm(const Tensor& a, const Tensor& b);     // [B,M,K] x [B,K,N]
// y = x W^T + b over the last axis of x. weight: [out, in]; bias: [out] or undefined.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = {});

// ------------------------------------------------------------------ convolution, pooling
struct Conv2dOptions {
  std::array<int64_t, 2> stride{1, 1};
  std::array<int64_t, 2> padding{0, 0};
  std::array<int64_t, 2> dilation{1, 1};
  int64_t groups = 1;
};
// x: [N,H,W,C]; weight: [O,KH,KW,C/groups]; bias: [O] or undefined -> [N,Ho,Wo,O].
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias = {},
              const Conv2dOptions& opt = {});

struct Pool2dOptions {
  std::array<int64_t, 2> kernel{2, 2};
  std::array<int64_t, 2> stride{2, 2};
  std::array<int64_t, 2> padding{0, 0};
  bool count_include_pad = true;  // average pooling only (PyTorch's default)
};
Tensor max_pool2d(const Tensor& x, const Pool2dOptions& opt);  // NHWC
Tensor avg_pool2d(const Tensor& x, const Pool2dOptions& opt);  // NHWC
Tensor adaptive_avg_pool2d(const Tensor& x, int64_t out_h, int64_t out_w);  // NHWC

// ------------------------------------------------------------------ normalisation
// Batch norm over every axis but the last (channels last: [N,C] or [N,H,W,C]).
// Training: normalises with batch statistics (biased variance) and updates the
// running statistics in place (unbiased variance, PyTorch's convention).
// Evaluation: uses the running statistics. weight/bias may be undefined.
Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                  const Tensor& running_var, bool training, double momentum = 0.1, double eps = 1e-5);
// Layer norm over the last axis; weight/bias: [C] or undefined.
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps = 1e-5);

// ------------------------------------------------------------------ softmax and losses
Tensor softmax(const Tensor& x, int64_t axis = -1);
Tensor log_softmax(const Tensor& x, int64_t axis = -1);
// Mean cross-entropy of logits [N, C] against class indices target [N] (i64),
// with label smoothing eps: target distribution (1-eps) one-hot + eps/C.
Tensor cross_entropy(const Tensor& logits, const Tensor& target, double label_smoothing = 0.0);
// KL(target || exp(input)) summed and divided by the batch size (PyTorch's
// kl_div(input, target, reduction="batchmean")). input: log-probabilities;
// target: probabilities (or log-probabilities when log_target). Gradients flow
// to both.
Tensor kl_div(const Tensor& input, const Tensor& target, bool log_target = false);
// Inverted dropout: zeroes with probability p and scales the rest by 1/(1-p).
Tensor dropout(const Tensor& x, double p, bool training, Generator* gen = nullptr);

// ------------------------------------------------------------------ fused S2HPruner ops
// Single autograd ops for S2HPruner's soft and hard passes. On CUDA under the
// bf16 policy, with fused_kernels() on (engine/precision.h) and a shape the
// kernels handle, each is one handwritten kernel per direction
// (kernels/cuda/masked_conv.h, attention.h); otherwise it computes the same
// thing by composing the ops above, which is the CPU reference and, on CUDA,
// the "library kernels only" path.

// y = out_scale (.) conv2d(in_scale (.) x, W') with W' = weight[out_index][:, :][in_index]
// (groups 1, dilation 1, no bias). x [N,H,W,c]; weight [O,K,K,C] (the FULL
// weight); y [N,Ho,Wo,o]. Hard layers: in_index [c] / out_index [o] (i64, on
// any device) pick the weight's input columns / rows; undefined means the
// prefix (c = x.size(3) <= C columns; o = out_channels rows, default O).
// Index lists must not repeat a channel. Soft layers: in_scale [c] / out_scale
// [o] (f32 or bf16, on any device: they are moved to x's) scale the input and
// output channels; their gradients flow. Any combination is allowed.
struct MaskedConvOptions {
  int64_t stride = 1, padding = 0;
  Tensor in_scale, out_scale;
  Tensor in_index, out_index;
  int64_t out_channels = -1;  // prefix width when out_index is undefined; -1: all rows
};
Tensor masked_conv2d(const Tensor& x, const Tensor& weight, const MaskedConvOptions& opt);

// The soft and the hard conv of one layer in one op (one launch on CUDA):
// soft = masked_conv2d(x_soft, weight, soft_opt) (full widths, soft_opt's
// scales; its index fields must be undefined) and
// hard = masked_conv2d(x_hard, weight, {prefix: x_hard.size(3) columns,
// hard_out rows, no scales}). Both use soft_opt's stride and padding.
std::pair<Tensor, Tensor> dual_conv2d(const Tensor& x_soft, const Tensor& x_hard, const Tensor& weight,
                                      const MaskedConvOptions& soft_opt, int64_t hard_out);

// Multi-head attention without materialised logits on CUDA:
// out[b,i,h,:] = head_scale[h] * head_keep[h] * sum_j softmax_j(softmax_scale * q_i.k_j + pad_j) v_j
// q, k, v: [B, L, H, D] (any strides); pad_j = -1e9 where key_padding[b, j]
// != 0 (u8 [B, L]); head_scale [H] (f32, any device, gradient flows); head_keep [H] (u8,
// 0 = skipped head: zero output, no gradient). Returns [B, L, H, D].
struct AttentionOptions {
  double softmax_scale = 1.0;
  Tensor key_padding, head_scale, head_keep;  // each optional
};
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opt);

}  // namespace s2h
