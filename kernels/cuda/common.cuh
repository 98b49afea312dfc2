// Device-side helpers shared by the CUDA kernels: float/bf16 loads and
// stores (all arithmetic is in fp32) and the host-side type dispatch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "kernels/cuda/check.h"
#include "kernels/dtype.h"

namespace s2h::cuda {

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f(double v) { return static_cast<float>(v); }

template <class T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Calls fn.template operator()<T>() with T = float or __nv_bfloat16 for the
// two dtypes the CUDA backend computes in; others throw naming the op.
template <class Fn>
void dispatch_gpu_float(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::F32: fn.template operator()<float>(); return;
    case DType::BF16: fn.template operator()<__nv_bfloat16>(); return;
    default: break;
  }
  throw CudaError(std::string(op) + ": dtype not supported on CUDA (expected f32 or bf16)");
}

// Sum over the 32 lanes of a warp (every lane gets the total); all lanes must call.
template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Up to this many axes in the strided kernels' index arithmetic.
constexpr int kMaxDims = 8;
struct Strided {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t stride[kMaxDims] = {};
};

// The element offset of linear index i (row-major over shape) under strides.
__device__ __forceinline__ int64_t strided_offset(int64_t i, const int64_t* shape, const int64_t* stride, int ndim) {
  int64_t off = 0;
  for (int d = ndim - 1; d >= 0; --d) {
    const int64_t s = shape[d];
    off += (i % s) * stride[d];
    i /= s;
  }
  return off;
}

}  // namespace s2h::cuda
