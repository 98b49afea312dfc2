// The CUDA toolchain probe: a tiny kernel that proves the CUDA build works,
// and a query that says whether a GPU can be used here.
#pragma once

#include <string>

namespace s2h::cuda {

// True if the CUDA backend was compiled into this build.
bool compiled();
// Number of usable GPUs; 0 (with the reason in *why) when none can be used,
// e.g. "CUDA driver version is insufficient for CUDA runtime version".
int device_count(std::string* why = nullptr);
// y[i] = a * x[i] + y[i] on GPU 0 for n host values (copies in and out).
// Throws s2h-style std::runtime_error on any CUDA failure.
void saxpy(int n, float a, const float* x, float* y);

}  // namespace s2h::cuda
