// Fused multi-tensor optimiser steps on the GPU: one kernel launch updates
// every parameter of a table (one launch per kMax* entries). Parameters and
// optimiser state are contiguous f32; gradients contiguous f32 or bf16. The
// arithmetic is that of the CPU loops in engine/optim.cpp, in fp32. No CUDA
// header is needed to include this file.
#pragma once

#include <cstdint>

#include "kernels/cuda/runtime.h"

namespace s2h::cuda {

struct SgdParam {
  float* param = nullptr;
  const void* grad = nullptr;
  bool grad_bf16 = false;
  float* momentum = nullptr;  // null without momentum
  bool first = false;         // the momentum buffer is new: buf = d (it is not read)
  int64_t n = 0;
  float lr = 0.f;             // this parameter's group lr
  float weight_decay = 0.f;
};

// d = g + wd*p; with a momentum buffer: buf = first ? d : momentum*buf + damp*d,
// d = nesterov ? d + momentum*buf : buf; p -= lr*d. damp = 1 - dampening.
void sgd_step(const SgdParam* params, int64_t count, float momentum, float damp, bool nesterov, Stream stream);

struct AdamWParam {
  float* param = nullptr;
  const void* grad = nullptr;
  bool grad_bf16 = false;
  float* exp_avg = nullptr;
  float* exp_avg_sq = nullptr;
  int64_t n = 0;
  float decay = 1.f;      // 1 - lr*wd
  float step_size = 0.f;  // lr / (1 - beta1^t)
  float sqrt_bc2 = 1.f;   // sqrt(1 - beta2^t)
};

// p *= decay; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g;
// p -= step_size * m / (sqrt(v)/sqrt_bc2 + eps).
void adamw_step(const AdamWParam* params, int64_t count, float beta1, float beta2, float eps, Stream stream);

}  // namespace s2h::cuda
