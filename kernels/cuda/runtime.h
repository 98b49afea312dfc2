// The CUDA runtime as the engine sees it: devices, one compute stream per
// device, the stream-ordered memory pool (cudaMallocAsync), pinned host
// buffers and copies. No CUDA header is needed to include this file; in a
// build without CUDA every call that needs a GPU throws.
#pragma once

#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>

struct CUstream_st;

namespace s2h::cuda {

using Stream = CUstream_st*;  // the same type as cudaStream_t

// A CUDA runtime, cuBLAS or cuDNN failure: what was called, the library's
// message, and where.
class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// True if the CUDA backend was compiled into this build.
bool compiled();
// True if its device is the emulator (kernels/cuda/emu): the kernels run on
// the CPU, one thread at a time, and the device's memory is host memory.
bool emulated();
// Number of usable GPUs; 0 (with the reason in *why) when none can be used,
// e.g. "CUDA driver version is insufficient for CUDA runtime version".
int device_count(std::string* why = nullptr);
// device_count() > 0, asked once per process.
bool available();
// Throws CudaError naming the device and the reason unless `device` can be used.
void require_device(int device);
// "NVIDIA H100 80GB HBM3"
std::string device_name(int device);

// Makes `device` current on this thread (cheap when it already is).
void set_device(int device);
// The device's compute stream (non-blocking, created on first use). Every
// kernel, library call, allocation and copy of the engine goes on it.
Stream stream(int device);
// Waits until everything queued on the device's stream has finished.
void synchronize(int device);

// Stream-ordered allocation from the device's default memory pool. The pool
// keeps freed memory for reuse up to the release threshold (default: keep
// all; S2H_CUDA_POOL_RELEASE_MB in the environment, or set_release_threshold).
void* device_alloc(size_t nbytes, int device);
void device_free(void* p, int device) noexcept;
void set_release_threshold(int device, size_t bytes);
struct PoolStats {
  size_t reserved = 0, reserved_high = 0;  // bytes the pool holds from the driver
  size_t used = 0, used_high = 0;          // bytes handed out to tensors
};
PoolStats pool_stats(int device);

// Page-locked host memory (for the data loader's batches): copies from it to
// the device are truly asynchronous.
void* pinned_alloc(size_t nbytes);
void pinned_free(void* p) noexcept;

// Host -> device on the device's stream. From pageable memory the call
// returns once the source has been read; from pinned memory it returns at
// once and `keep_alive` (the source's owner) is held until the copy is done.
void copy_to_device(void* dst, const void* src, size_t nbytes, int device, bool src_pinned,
                    std::shared_ptr<const void> keep_alive = {});
// Device -> host; waits for the copy (and all work before it on the stream).
void copy_to_host(void* dst, const void* src, size_t nbytes, int device);
// memset on the device's stream.
void fill_bytes(void* dst, int byte, size_t nbytes, int device);
// Device -> device on the same device's stream.
void copy_on_device(void* dst, const void* src, size_t nbytes, int device);

}  // namespace s2h::cuda
