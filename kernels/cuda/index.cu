// Gather and scatter-add along one axis on the GPU (see index.h): a thread per
// element of the [outer, k, inner] side, consecutive threads on consecutive i
// so that both sides are read and written contiguously.
#include <cstdint>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/index.h"

namespace s2h::cuda {

namespace {

// I: the index type, uint32_t when the element count fits (cheaper division).
template <class U, class I>
__global__ void index_select_kernel(const U* x, U* out, const int64_t* index, I n, I k, I inner, I total) {
  const I stride = static_cast<I>(gridDim.x) * static_cast<I>(blockDim.x);
  for (I e = static_cast<I>(blockIdx.x) * static_cast<I>(blockDim.x) + static_cast<I>(threadIdx.x); e < total;
       e += stride) {
    const I i = e % inner, t = e / inner;
    const I j = t % k, o = t / k;
    const int64_t src = index[j];
    if (src >= 0 && src < static_cast<int64_t>(n)) {
      out[e] = x[(static_cast<int64_t>(o) * n + src) * inner + i];
    } else {
      out[e] = static_cast<U>(~U(0));  // the poison pattern: a bad index shows up as NaN / -1
    }
  }
}

template <class T, class I>
__global__ void index_add_kernel(float* dst, const T* src, const int64_t* index, I n, I k, I inner, I total) {
  const I stride = static_cast<I>(gridDim.x) * static_cast<I>(blockDim.x);
  for (I e = static_cast<I>(blockIdx.x) * static_cast<I>(blockDim.x) + static_cast<I>(threadIdx.x); e < total;
       e += stride) {
    const I i = e % inner, t = e / inner;
    const I j = t % k, o = t / k;
    const int64_t d = index[j];
    if (d >= 0 && d < static_cast<int64_t>(n))
      atomicAdd(dst + (static_cast<int64_t>(o) * n + d) * inner + i, to_f(src[e]));
  }
}

template <class U>
void launch_select(const void* x, void* out, const int64_t* index, int64_t n, int64_t k, int64_t inner, int64_t total,
                   Stream stream) {
  const U* xt = static_cast<const U*>(x);
  U* ot = static_cast<U*>(out);
  // 32-bit indexing needs every offset into x and out below 2^31 as well.
  const int64_t biggest = total > (total / k) * n ? total : (total / k) * n;
  if (biggest <= INT32_MAX) {
    launch("index_select", index_select_kernel<U, uint32_t>, grid_for(total), 256, 0, stream, xt, ot, index,
           static_cast<uint32_t>(n), static_cast<uint32_t>(k), static_cast<uint32_t>(inner),
           static_cast<uint32_t>(total));
  } else {
    launch("index_select", index_select_kernel<U, int64_t>, grid_for(total), 256, 0, stream, xt, ot, index, n, k, inner,
           total);
  }
}

}  // namespace

void index_select(const void* x, void* out, size_t elem_size, const int64_t* index, int64_t outer, int64_t n,
                  int64_t k, int64_t inner, Stream stream) {
  const int64_t total = outer * k * inner;
  if (total <= 0) return;
  switch (elem_size) {
    case 1: launch_select<uint8_t>(x, out, index, n, k, inner, total, stream); return;
    case 2: launch_select<uint16_t>(x, out, index, n, k, inner, total, stream); return;
    case 4: launch_select<uint32_t>(x, out, index, n, k, inner, total, stream); return;
    case 8: launch_select<uint64_t>(x, out, index, n, k, inner, total, stream); return;
    default: break;
  }
  throw CudaError("index_select: element size " + std::to_string(elem_size) + " is not supported (1, 2, 4 or 8)");
}

void index_add(float* dst, const void* src, DType src_dtype, const int64_t* index, int64_t outer, int64_t n,
               int64_t k, int64_t inner, Stream stream) {
  const int64_t total = outer * k * inner;
  if (total <= 0) return;
  const int64_t biggest = total > outer * n * inner ? total : outer * n * inner;
  dispatch_gpu_float(src_dtype, "index_select backward", [&]<typename T>() {
    const T* st = static_cast<const T*>(src);
    if (biggest <= INT32_MAX) {
      launch("index_add", index_add_kernel<T, uint32_t>, grid_for(total), 256, 0, stream, dst, st, index,
             static_cast<uint32_t>(n), static_cast<uint32_t>(k), static_cast<uint32_t>(inner),
             static_cast<uint32_t>(total));
    } else {
      launch("index_add", index_add_kernel<T, int64_t>, grid_for(total), 256, 0, stream, dst, st, index, n, k, inner,
             total);
    }
  });
}

}  // namespace s2h::cuda
