// The CUDA runtime API of a build without CUDA: no device, every GPU call throws.
#include "kernels/cuda/runtime.h"

namespace s2h::cuda {

namespace {
[[noreturn]] void unavailable() {
  throw CudaError("this build has no CUDA backend (nvcc was not found, or S2H_CUDA=OFF)");
}
}  // namespace

bool compiled() { return false; }
bool emulated() { return false; }
int device_count(std::string* why) {
  if (why) *why = "this build has no CUDA backend";
  return 0;
}
bool available() { return false; }
void require_device(int) { unavailable(); }
std::string device_name(int) { unavailable(); }
void set_device(int) { unavailable(); }
Stream stream(int) { unavailable(); }
void synchronize(int) { unavailable(); }
void* device_alloc(size_t, int) { unavailable(); }
void device_free(void*, int) noexcept {}
void set_release_threshold(int, size_t) { unavailable(); }
PoolStats pool_stats(int) { unavailable(); }
void* pinned_alloc(size_t) { unavailable(); }
void pinned_free(void*) noexcept {}
void copy_to_device(void*, const void*, size_t, int, bool, std::shared_ptr<const void>) { unavailable(); }
void copy_to_host(void*, const void*, size_t, int) { unavailable(); }
void fill_bytes(void*, int, size_t, int) { unavailable(); }
void copy_on_device(void*, const void*, size_t, int) { unavailable(); }

}  // namespace s2h::cuda
