// Batch norm (channels last: statistics per channel over the rows of a
// [rows, C] block) and layer norm (statistics per row over the last axis) on
// the GPU. x / dy / y / dx have dtype `x_dtype`; weight, bias and the running
// statistics have `param_dtype` (each f32 or bf16: bf16 activations with f32
// parameters is the mixed-precision case). Statistics and all reductions are
// fp32 (the final sums over row chunks in fp64); the saved statistics are f32.
// Any weight/bias/running/gradient pointer may be null. Raw device pointers,
// everything on `stream`; the reductions are deterministic (fixed order, no
// atomics). Scratch space comes from the caller (launchers never allocate).
#pragma once

#include <cstdint>

#include "kernels/cuda/runtime.h"
#include "kernels/dtype.h"

namespace s2h::cuda {

// Floats of scratch that batch_norm_forward / batch_norm_backward need for a
// [rows, C] input (per-chunk partial sums plus per-channel coefficients).
int64_t batch_norm_scratch_floats(int64_t rows, int64_t c);

// Forward. training: batch statistics (biased variance for normalising; the
// running statistics, if given, become (1-momentum)*old + momentum*batch with
// the unbiased variance, like the CPU path and PyTorch). Not training: the
// running statistics (required) normalise. Either way save_mean[C] and
// save_invstd[C] (f32) receive the statistics used, for the backward.
void batch_norm_forward(const void* x, DType x_dtype, int64_t rows, int64_t c, const void* weight, const void* bias,
                        void* running_mean, void* running_var, DType param_dtype, bool training, double momentum,
                        double eps, void* y, float* save_mean, float* save_invstd, float* scratch, Stream stream);

// Backward of batch_norm_forward with the same `training`. dweight = sum dy*xhat,
// dbias = sum dy (param_dtype); dx (x_dtype) includes the terms through the
// batch statistics when training, and is dy * weight * invstd otherwise.
void batch_norm_backward(const void* x, const void* dy, DType x_dtype, int64_t rows, int64_t c, const float* save_mean,
                         const float* save_invstd, const void* weight, DType param_dtype, bool training, void* dx,
                         void* dweight, void* dbias, float* scratch, Stream stream);

// Floats of scratch that layer_norm_backward needs (for dweight / dbias).
int64_t layer_norm_scratch_floats(int64_t rows, int64_t c);

// Layer norm of each row of x [rows, C]; mean[rows], rstd[rows] (f32) are saved.
void layer_norm_forward(const void* x, DType x_dtype, int64_t rows, int64_t c, const void* weight, const void* bias,
                        DType param_dtype, double eps, void* y, float* mean, float* rstd, Stream stream);
void layer_norm_backward(const void* x, const void* dy, DType x_dtype, int64_t rows, int64_t c, const float* mean,
                         const float* rstd, const void* weight, DType param_dtype, void* dx, void* dweight,
                         void* dbias, float* scratch, Stream stream);

}  // namespace s2h::cuda
