// Used when the build has no CUDA backend (-DS2H_CUDA=OFF or no nvcc).
#include <stdexcept>

#include "kernels/cuda/probe.h"

namespace s2h::cuda {

void saxpy(int, float, const float*, float*) {
  throw std::runtime_error("saxpy: this build has no CUDA backend");
}

}  // namespace s2h::cuda
