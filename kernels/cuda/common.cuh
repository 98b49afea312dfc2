// Device-side helpers shared by the CUDA kernels: float/bf16 loads and
// stores (all arithmetic is in fp32), shared-memory declarations, the launch
// helper every launcher uses, and the host-side type dispatch. In an S2H_EMU
// build the same code compiles with the host compiler against the emulator
// (kernels/cuda/emu/emu.h) instead of the CUDA headers.
#pragma once

#ifdef S2H_EMU
#include "kernels/cuda/emu/emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#endif

#include <cstdint>
#include <string>
#include <utility>

#include "kernels/cuda/check.h"
#include "kernels/dtype.h"

// Shared memory of a block, declared in a kernel or device function:
//   S2H_SHARED(float, sh, [256]);                      __shared__ float sh[256];
//   S2H_SHARED(PixelTable, tab);                       __shared__ PixelTable tab;
//   S2H_SHARED_ALIGNED(128, unsigned char, s, [n]);    __shared__ __align__(128) unsigned char s[n];
//   S2H_DYNAMIC_SHARED(16, unsigned char, smem);       extern __shared__ __align__(16) unsigned char smem[];
// The emulator allocates each per block (poisoned, fenced) and names it in its reports.
#ifdef S2H_EMU
#define S2H_SHARED_ALIGNED(align, type, name, ...) \
  static char s2h_shared_key_##name;               \
  auto& name = ::s2h::emu::shared<type __VA_ARGS__, align>(&s2h_shared_key_##name, #name)
#define S2H_DYNAMIC_SHARED(align, type, name) type* name = ::s2h::emu::dynamic_shared<type>(align, #name)
#else
#define S2H_SHARED_ALIGNED(align, type, name, ...) \
  __shared__ __align__(align)                      \
  type name __VA_ARGS__
#define S2H_DYNAMIC_SHARED(align, type, name) \
  extern __shared__ __align__(align)          \
  type name[]
#endif
#define S2H_SHARED(type, name, ...) S2H_SHARED_ALIGNED(alignof(type), type, name, __VA_ARGS__)

namespace s2h::cuda {

// Launches kernel(args...) on `stream` with grid x block threads and
// `dynamic_smem` bytes of dynamic shared memory, and reports a bad launch
// configuration at once as a CudaError naming `name` (execution errors surface
// at the next synchronising call). Under S2H_EMU the launch runs in the
// emulator before this returns, and any error it finds throws here.
template <class... P, class... A>
void launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t dynamic_smem, Stream stream,
            A&&... args) {
#ifdef S2H_EMU
  (void)stream;
  emu::launch(name, kernel, grid, block, dynamic_smem, std::forward<A>(args)...);
#else
  kernel<<<grid, block, dynamic_smem, stream>>>(std::forward<A>(args)...);
  check_cuda(cudaGetLastError(), name, __FILE__, __LINE__);
#endif
}

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
