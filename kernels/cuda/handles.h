// Per-device cuBLAS and cuDNN handles, each bound to cuda::stream(device), and
// the CUBLAS_CHECK / CUDNN_CHECK error checks. Includes the library headers:
// only CUDA-side sources (blas.cu, conv.cpp) include this file.
#pragma once

#include <cublas_v2.h>
#include <cudnn.h>

#include <string>

#include "kernels/cuda/check.h"

namespace s2h::cuda {

// The device's handles (created on first use, bound to its compute stream;
// the device is made current). Never destroyed: they live until the process
// ends, when tearing them down after the CUDA context could crash.
cublasHandle_t cublas_handle(int device);
cudnnHandle_t cudnn_handle(int device);

// "CUBLAS_STATUS_NOT_SUPPORTED: the functionality requested is not supported"
std::string cublas_status_text(cublasStatus_t status);
// "CUDNN_STATUS_BAD_PARAM: ..." (cuDNN's own string)
std::string cudnn_status_text(cudnnStatus_t status);

inline void check_cublas(cublasStatus_t s, const char* call, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS) throw_error(call, "cuBLAS " + cublas_status_text(s), file, line);
}
inline void check_cudnn(cudnnStatus_t s, const char* call, const char* file, int line) {
  if (s != CUDNN_STATUS_SUCCESS) throw_error(call, "cuDNN " + cudnn_status_text(s), file, line);
}

}  // namespace s2h::cuda

#define CUBLAS_CHECK(expr) ::s2h::cuda::check_cublas((expr), #expr, __FILE__, __LINE__)
#define CUDNN_CHECK(expr) ::s2h::cuda::check_cudnn((expr), #expr, __FILE__, __LINE__)
