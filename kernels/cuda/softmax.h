// The GPU kernels of engine/ops_loss.cpp: softmax and log-softmax over the
// last axis of a [rows, C] block, cross-entropy, KL divergence and dropout.
// Raw device pointers, contiguous data, everything on `stream`. Arithmetic is
// fp32; the losses take f32 inputs (the engine casts first) and produce an f32
// scalar on the device, reduced in a fixed order (no atomics: reproducible).
// The backward kernels read the incoming gradient of a loss from device memory
// (`grad`, one f32), so nothing waits for the host.
#pragma once

#include <cstdint>

#include "kernels/cuda/runtime.h"
#include "kernels/dtype.h"

namespace s2h::cuda {

// y = softmax(x) or log_softmax(x) (log = true) per row; f32 or bf16.
void softmax_forward(const void* x, void* y, DType dtype, int64_t rows, int64_t c, bool log, Stream stream);
// softmax: dx = y * (dy - sum(dy * y)); log_softmax: dx = dy - exp(y) * sum(dy).
void softmax_backward(const void* y, const void* dy, void* dx, DType dtype, int64_t rows, int64_t c, bool log,
                      Stream stream);

// Floats of scratch that cross_entropy_forward needs for n rows.
int64_t cross_entropy_scratch_floats(int64_t n);
// Mean over rows of -((1 - s) * logp[t] + s / C * sum_j logp[j]), logp =
// log_softmax(logits), s = label_smoothing. lse[n] receives each row's
// log-sum-exp (for the backward); *loss the mean. A target outside [0, C)
// is never read through: its row's loss is NaN, so the mean is NaN.
void cross_entropy_forward(const float* logits, const int64_t* target, int64_t n, int64_t c, double label_smoothing,
                           float* lse, float* loss, float* scratch, Stream stream);
// dlogits = grad / n * (softmax - s / C - (1 - s) * onehot(t)) (NaN rows for bad targets).
void cross_entropy_backward(const float* logits, const int64_t* target, const float* lse, const float* grad,
                            int64_t n, int64_t c, double label_smoothing, float* dlogits, Stream stream);

// Floats of scratch that kl_div_forward needs for `total` elements.
int64_t kl_div_scratch_floats(int64_t total);
// *loss = sum(p * (log p - q)) / batch (p = exp(target) when log_target), 0 log 0 = 0.
void kl_div_forward(const float* input, const float* target, int64_t total, int64_t batch, bool log_target,
                    float* loss, float* scratch, Stream stream);
// Gradients w.r.t. input and target (either may be null), scaled by grad / batch.
void kl_div_backward(const float* input, const float* target, const float* grad, int64_t total, int64_t batch,
                     bool log_target, float* dinput, float* dtarget, Stream stream);

// y[i] = x[i] * (u(seed, i) < p ? 0 : 1 / (1 - p)) over n contiguous elements,
// u a counter-based uniform in [0, 1) (the splitmix64 hash of seed and i), so
// the backward regenerates the same mask from the seed: call it on dy.
void dropout(const void* x, void* y, DType dtype, int64_t n, double p, uint64_t seed, Stream stream);

}  // namespace s2h::cuda
