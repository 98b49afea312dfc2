// Used when the build has no CUDA backend (-DS2H_CUDA=OFF or no nvcc).
#include <stdexcept>

#include "kernels/cuda/probe.h"

namespace s2h::cuda {

bool compiled() { return false; }

int device_count(std::string* why) {
  if (why) *why = "this build has no CUDA backend (configured with S2H_CUDA=OFF or without nvcc)";
  return 0;
}

void saxpy(int, float, const float*, float*) {
  throw std::runtime_error("saxpy: this build has no CUDA backend");
}

}  // namespace s2h::cuda
