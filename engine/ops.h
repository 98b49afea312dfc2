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

}  // namespace s2h
