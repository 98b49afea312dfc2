// Error checks for the CUDA sources (includes the CUDA runtime header; only
// .cu files and CUDA-only .cpp files include this).
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "kernels/cuda/runtime.h"

namespace s2h::cuda {

[[noreturn]] void throw_error(const std::string& call, const std::string& message, const char* file, int line);

inline void check_cuda(cudaError_t e, const char* call, const char* file, int line) {
  if (e != cudaSuccess) throw_error(call, cudaGetErrorString(e), file, line);
}

// Blocks for a 1-D grid-stride launch over n elements (at least 1, capped so
// that the grid stays small; the kernels loop).
inline unsigned grid_for(long long n, int block = 256) {
  long long g = (n + block - 1) / block;
  if (g < 1) g = 1;
  if (g > 65535LL * 16) g = 65535LL * 16;
  return static_cast<unsigned>(g);
}

}  // namespace s2h::cuda

#define CUDA_CHECK(expr) ::s2h::cuda::check_cuda((expr), #expr, __FILE__, __LINE__)
// After a <<<...>>> launch: reports a bad configuration at once (execution
// errors surface at the next synchronising call).
#define CUDA_CHECK_LAUNCH(name) ::s2h::cuda::check_cuda(cudaGetLastError(), name, __FILE__, __LINE__)
