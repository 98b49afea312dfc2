#include <type_traits>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/copy.h"

namespace s2h::cuda {

namespace {

template <class D, class S>
__device__ __forceinline__ D convert(S v) {
  if constexpr (std::is_same_v<D, S>) {
    return v;
  } else if constexpr (std::is_same_v<D, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(v));
  } else if constexpr (std::is_same_v<S, __nv_bfloat16>) {
    return static_cast<D>(__bfloat162float(v));
  } else {
    return static_cast<D>(v);
  }
}

template <class D, class S>
__global__ void strided_copy_kernel(D* dst, const S* src, Strided dl, Strided sl, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t so = strided_offset(i, sl.shape, sl.stride, sl.ndim);
    const int64_t d0 = strided_offset(i, dl.shape, dl.stride, dl.ndim);
    dst[d0] = convert<D>(src[so]);
  }
}

template <class D, class S>
__global__ void contiguous_convert_kernel(D* dst, const S* src, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = convert<D>(src[i]);
}

template <class T>
__global__ void fill_kernel(T* dst, Strided l, T value, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[strided_offset(i, l.shape, l.stride, l.ndim)] = value;
}

template <class T>
__global__ void axpy_kernel(T* y, const T* x, float alpha, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = from_f<T>(to_f(y[i]) + alpha * to_f(x[i]));
}

template <class T>
__global__ void scale_kernel(T* x, float alpha, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = from_f<T>(alpha * to_f(x[i]));
}

__global__ void add_i64_kernel(int64_t* counter, int64_t delta) { *counter += delta; }

template <class Fn>
void dispatch_any(DType t, Fn&& fn) {
  switch (t) {
    case DType::F32: fn.template operator()<float>(); return;
    case DType::F64: fn.template operator()<double>(); return;
    case DType::BF16: fn.template operator()<__nv_bfloat16>(); return;
    case DType::I64: fn.template operator()<int64_t>(); return;
    case DType::U8: fn.template operator()<uint8_t>(); return;
  }
  throw CudaError("unknown dtype");
}

Strided layout(const int64_t* shape, const int64_t* strides, int ndim, const char* op) {
  if (ndim > kMaxDims) throw CudaError(std::string(op) + ": more than 8 axes are not supported on CUDA");
  Strided l;
  l.ndim = ndim;
  for (int d = 0; d < ndim; ++d) {
    l.shape[d] = shape[d];
    l.stride[d] = strides[d];
  }
  return l;
}

bool contiguous(const int64_t* shape, const int64_t* strides, int ndim) {
  int64_t expected = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    if (shape[d] == 1) continue;
    if (strides[d] != expected) return false;
    expected *= shape[d];
  }
  return true;
}

}  // namespace

void strided_copy(void* dst, DType dst_dtype, const int64_t* dst_strides, const void* src, DType src_dtype,
                  const int64_t* src_strides, const int64_t* shape, int ndim, Stream stream) {
  int64_t n = 1;
  for (int d = 0; d < ndim; ++d) n *= shape[d];
  if (n == 0) return;
  const bool flat = contiguous(shape, dst_strides, ndim) && contiguous(shape, src_strides, ndim);
  if (flat && dst_dtype == src_dtype) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(n) * dtype_size(dst_dtype), cudaMemcpyDeviceToDevice,
                               stream));
    return;
  }
  Strided dl, sl;  // only the strided kernel needs them (and only it is limited to 8 axes)
  if (!flat) {
    dl = layout(shape, dst_strides, ndim, "copy");
    sl = layout(shape, src_strides, ndim, "copy");
  }
  dispatch_any(dst_dtype, [&]<typename D>() {
    dispatch_any(src_dtype, [&]<typename S>() {
      if (flat) {
        launch("strided_copy", contiguous_convert_kernel<D, S>, grid_for(n), 256, 0, stream, static_cast<D*>(dst),
               static_cast<const S*>(src), n);
      } else {
        launch("strided_copy", strided_copy_kernel<D, S>, grid_for(n), 256, 0, stream, static_cast<D*>(dst),
               static_cast<const S*>(src), dl, sl, n);
      }
    });
  });
}

void fill(void* dst, DType dtype, const int64_t* strides, const int64_t* shape, int ndim, double value,
          Stream stream) {
  int64_t n = 1;
  for (int d = 0; d < ndim; ++d) n *= shape[d];
  if (n == 0) return;
  const Strided l = layout(shape, strides, ndim, "fill");
  dispatch_any(dtype, [&]<typename T>() {
    T v;
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      v = __float2bfloat16_rn(static_cast<float>(value));
    } else {
      v = static_cast<T>(value);
    }
    launch("fill", fill_kernel<T>, grid_for(n), 256, 0, stream, static_cast<T*>(dst), l, v, n);
  });
}

void axpy(void* y, const void* x, DType dtype, int64_t n, double alpha, Stream stream) {
  if (n == 0) return;
  dispatch_gpu_float(dtype, "add_", [&]<typename T>() {
    launch("axpy", axpy_kernel<T>, grid_for(n), 256, 0, stream, static_cast<T*>(y), static_cast<const T*>(x),
           static_cast<float>(alpha), n);
  });
}

void scale(void* x, DType dtype, int64_t n, double alpha, Stream stream) {
  if (n == 0) return;
  dispatch_gpu_float(dtype, "mul_", [&]<typename T>() {
    launch("scale", scale_kernel<T>, grid_for(n), 256, 0, stream, static_cast<T*>(x), static_cast<float>(alpha), n);
  });
}

void add_i64(int64_t* counter, int64_t delta, Stream stream) {
  launch("add_i64", add_i64_kernel, 1, 1, 0, stream, counter, delta);
}

}  // namespace s2h::cuda
