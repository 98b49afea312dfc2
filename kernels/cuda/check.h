// Error checks for the CUDA sources (includes the CUDA runtime header, or the
// emulator's in an S2H_EMU build; only .cu files and CUDA-only .cpp files
// include this).
#pragma once

#ifdef S2H_EMU
#include "kernels/cuda/emu/emu.h"
#else
#include <cuda_runtime.h>
#endif

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
