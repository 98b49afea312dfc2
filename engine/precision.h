// The mixed-precision policy (--precision fp32|tf32|bf16), one switch for the
// whole process. Master weights, optimiser state, losses and normalisation
// statistics stay fp32 under every policy. On CUDA:
//   fp32  GEMMs and convolutions in full fp32 (no tensor-core rounding);
//   tf32  fp32 tensors, GEMMs and convolutions on TF32 tensor cores;
//   bf16  conv2d / linear / matmul / bmm cast their inputs to bf16 (the cast
//         is an autograd op, so weights get fp32 gradients) and return bf16
//         activations with fp32 accumulation; elementwise ops, norms and
//         pooling take bf16 and compute in fp32; losses cast to fp32.
// The CPU backend computes in fp32 (or f64) whatever the policy says.
#pragma once

#include <string_view>

#include "engine/device.h"
#include "engine/dtype.h"

namespace s2h {

enum class Precision { FP32, TF32, BF16 };

Precision precision();
void set_precision(Precision p);
const char* precision_name(Precision p);       // "fp32", "tf32", "bf16"
Precision parse_precision(std::string_view text);  // throws naming the text

// The dtype a GEMM-class op computes in for inputs of dtype `input` on
// `device`: bf16 under the bf16 policy on CUDA, the input's dtype otherwise.
DType gemm_dtype(Device device, DType input);
// True under the tf32 policy (cuBLAS / cuDNN may use TF32 tensor cores).
bool allow_tf32();

// The handwritten fused kernels (masked / hard / dual conv, attention: the
// fused ops of ops.h) on CUDA: on by default; off runs the same ops with
// library kernels only (cuDNN / cuBLAS plus elementwise kernels), e.g. for the
// "library only" baseline of the S2HPruner step (--kernels library).
bool fused_kernels();
void set_fused_kernels(bool on);

// True when the fused kernels apply to tensors on `device`: CUDA, the bf16
// policy and fused_kernels() on (each op then also checks its shape).
bool fused_kernels_on(Device device);

// Sets fused_kernels() for a scope, restores the previous setting after.
class FusedKernelsGuard {
 public:
  explicit FusedKernelsGuard(bool on) : prev_(fused_kernels()) { set_fused_kernels(on); }
  ~FusedKernelsGuard() { set_fused_kernels(prev_); }
  FusedKernelsGuard(const FusedKernelsGuard&) = delete;
  FusedKernelsGuard& operator=(const FusedKernelsGuard&) = delete;

 private:
  bool prev_;
};

// Sets the policy for the scope, restores the previous one after.
class PrecisionGuard {
 public:
  explicit PrecisionGuard(Precision p) : prev_(precision()) { set_precision(p); }
  ~PrecisionGuard() { set_precision(prev_); }
  PrecisionGuard(const PrecisionGuard&) = delete;
  PrecisionGuard& operator=(const PrecisionGuard&) = delete;

 private:
  Precision prev_;
};

}  // namespace s2h
