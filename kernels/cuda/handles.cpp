// Per-device cuBLAS / cuDNN handles bound to the device's compute stream.
#include "kernels/cuda/handles.h"

#include <mutex>

namespace s2h::cuda {

namespace {

// As runtime.cpp: device indices beyond this are refused by cuda::stream().
constexpr int kMaxDevices = 16;

std::mutex g_mutex;
cublasHandle_t g_cublas[kMaxDevices] = {};
cudnnHandle_t g_cudnn[kMaxDevices] = {};

}  // namespace

cublasHandle_t cublas_handle(int device) {
  Stream s = stream(device);  // checks the index, makes the device current
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_cublas[device]) {
    cublasHandle_t h = nullptr;
    CUBLAS_CHECK(cublasCreate(&h));
    CUBLAS_CHECK(cublasSetStream(h, s));
    // The compute type of each call decides about TF32 (CUBLAS_COMPUTE_32F
    // versus CUBLAS_COMPUTE_32F_FAST_TF32), not the handle's math mode.
    CUBLAS_CHECK(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));
    g_cublas[device] = h;
  }
  return g_cublas[device];
}

cudnnHandle_t cudnn_handle(int device) {
  Stream s = stream(device);
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_cudnn[device]) {
    cudnnHandle_t h = nullptr;
    CUDNN_CHECK(cudnnCreate(&h));
    CUDNN_CHECK(cudnnSetStream(h, s));
    g_cudnn[device] = h;
  }
  return g_cudnn[device];
}

std::string cublas_status_text(cublasStatus_t status) {
  return std::string(cublasGetStatusName(status)) + ": " + cublasGetStatusString(status);
}

std::string cudnn_status_text(cudnnStatus_t status) { return cudnnGetErrorString(status); }

}  // namespace s2h::cuda
