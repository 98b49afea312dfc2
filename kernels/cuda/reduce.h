// Sum and argmax reductions on the GPU over the middle axis of a contiguous
// [outer, mid, inner] block. Raw device pointers; fp32 accumulation; no
// allocation (a sum that splits its middle axis across blocks asks for
// scratch space first, which the caller allocates); everything on `stream`.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/runtime.h"
#include "kernels/dtype.h"

namespace s2h::cuda {

// Bytes of device scratch that sum_middle needs for this geometry (0 when it
// reduces in one pass). The scratch must be 16-byte aligned (any allocation is).
size_t sum_middle_scratch_bytes(int64_t outer, int64_t mid, int64_t inner);
// out[o, i] = sum_m x[o, m, i] with fp32 accumulation; x of x_dtype, out of
// out_dtype (each f32 or bf16); mid == 0 writes zeros. `scratch` holds
// sum_middle_scratch_bytes(outer, mid, inner) bytes (may be null when that is 0).
void sum_middle(const void* x, DType x_dtype, void* out, DType out_dtype, int64_t outer, int64_t mid, int64_t inner,
                void* scratch, Stream stream);
// out[o, i] = argmax_m x[o, m, i] (i64): the first maximum wins; NaN counts as
// the maximum (the first NaN wins), like the CPU. mid must be > 0.
void argmax_middle(const void* x, DType dtype, int64_t* out, int64_t outer, int64_t mid, int64_t inner,
                   Stream stream);

}  // namespace s2h::cuda
