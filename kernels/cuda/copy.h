// Copies, conversions and fills on the GPU (the CUDA side of Tensor's
// copy_/to/clone/contiguous/fill_/add_/mul_). Raw device pointers; strides
// in elements; at most 8 axes; everything on `stream`.
#pragma once

#include <cstdint>

#include "kernels/cuda/runtime.h"
#include "kernels/dtype.h"

namespace s2h::cuda {

// dst[i...] = convert(src[i...]) over `shape`, any dtype pair.
void strided_copy(void* dst, DType dst_dtype, const int64_t* dst_strides, const void* src, DType src_dtype,
                  const int64_t* src_strides, const int64_t* shape, int ndim, Stream stream);
// dst[i...] = value over `shape` (strided).
void fill(void* dst, DType dtype, const int64_t* strides, const int64_t* shape, int ndim, double value,
          Stream stream);
// y[i] += alpha * x[i] for n contiguous f32 or bf16 elements (fp32 arithmetic).
void axpy(void* y, const void* x, DType dtype, int64_t n, double alpha, Stream stream);
// x[i] *= alpha for n contiguous f32 or bf16 elements.
void scale(void* x, DType dtype, int64_t n, double alpha, Stream stream);

// *counter += delta for one i64 on the device (BatchNorm's num_batches_tracked).
void add_i64(int64_t* counter, int64_t delta, Stream stream);

}  // namespace s2h::cuda
