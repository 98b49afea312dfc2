// Batch norm (channels last, statistics over rows) and layer norm (over the last axis).
#pragma once

#include <cstdint>

namespace s2h::cpu {

// x: [rows, C]. mean[c], var[c] = biased batch statistics (two-pass, double accumulation).
template <class T>
void channel_mean_var(const T* x, int64_t rows, int64_t c, double* mean, double* var);

// y = x * scale[c] + shift[c]
template <class T>
void channel_affine(const T* x, int64_t rows, int64_t c, const T* scale, const T* shift, T* y);

// Training-mode batch-norm backward. xhat = (x - mean) * invstd.
// dx = invstd * (g - mean_r(g) - xhat * mean_r(g * xhat)), g = dy * weight (weight null: 1).
// dweight = sum_r dy * xhat; dbias = sum_r dy. Any output may be null.
template <class T>
void batch_norm_backward(const T* x, const T* dy, int64_t rows, int64_t c, const double* mean,
                         const double* invstd, const T* weight, T* dx, T* dweight, T* dbias);

// Layer norm of each row of x: [rows, C]. mean/rstd: [rows] (saved for backward).
template <class T>
void layer_norm_forward(const T* x, int64_t rows, int64_t c, const T* weight, const T* bias, double eps, T* y,
                        T* mean, T* rstd);
template <class T>
void layer_norm_backward(const T* x, const T* dy, int64_t rows, int64_t c, const T* mean, const T* rstd,
                         const T* weight, T* dx, T* dweight, T* dbias);

}  // namespace s2h::cpu
