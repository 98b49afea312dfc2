// Gather and scatter-add along one axis on the GPU (the CUDA side of
// index_select and its backward). x is viewed as a contiguous [outer, n, inner]
// block and the index as k i64 values in [0, n), on the device. Raw device
// pointers; everything on `stream`.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/runtime.h"
#include "kernels/dtype.h"

namespace s2h::cuda {

// out[o, j, i] = x[o, index[j], i] for elements of elem_size bytes (1, 2, 4 or
// 8: any dtype). A kernel cannot throw: an index outside [0, n) fills its
// output slice with 0xff bytes instead (NaN in f32 and bf16, -1 in integers),
// the same pattern as the tests' poisoned allocations. The engine checks
// indices that come from the host before they are copied to the device.
void index_select(const void* x, void* out, size_t elem_size, const int64_t* index, int64_t outer, int64_t n,
                  int64_t k, int64_t inner, Stream stream);
// dst[o, index[j], i] += src[o, j, i] with fp32 atomics (repeated indices
// add up; the order of the additions, hence the last bits, may vary from run
// to run). dst is f32 [outer, n, inner]; src is f32 or bf16 [outer, k, inner].
// Out-of-range indices are skipped.
void index_add(float* dst, const void* src, DType src_dtype, const int64_t* index, int64_t outer, int64_t n,
               int64_t k, int64_t inner, Stream stream);

}  // namespace s2h::cuda
