// The CUDA toolchain probe: a tiny kernel that proves the CUDA build works,
// and a query that says whether a GPU can be used here.
#pragma once

#include <string>

#include "kernels/cuda/runtime.h"

namespace s2h::cuda {

// y[i] = a * x[i] + y[i] on GPU 0 for n host values (copies in and out).
// Throws s2h-style std::runtime_error on any CUDA failure.
void saxpy(int n, float a, const float* x, float* y);

}  // namespace s2h::cuda
