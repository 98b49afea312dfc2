#include "kernels/cuda/runtime.h"

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cstdlib>
#include <deque>
#include <map>
#include <unordered_map>
#include <mutex>
#include <vector>

#include "kernels/cuda/check.h"

namespace s2h::cuda {

void throw_error(const std::string& call, const std::string& message, const char* file, int line) {
  throw CudaError(fmt::format("CUDA error in {}: {} ({}:{})", call, message, file, line));
}

bool compiled() { return true; }
bool emulated() { return false; }

int device_count(std::string* why) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why) *why = cudaGetErrorString(e);
    cudaGetLastError();  // clear the error so that later calls are not poisoned
    return 0;
  }
  if (n == 0 && why) *why = "no CUDA device found";
  return n;
}

bool available() {
  static const bool yes = device_count() > 0;
  return yes;
}

void require_device(int device) {
  std::string why;
  const int n = device_count(&why);
  if (n == 0) throw CudaError(fmt::format("device cuda:{} is not available: {}", device, why));
  if (device < 0 || device >= n)
    throw CudaError(fmt::format("device cuda:{} does not exist (this machine has {} GPU{})", device, n, n == 1 ? "" : "s"));
}

std::string device_name(int device) {
  cudaDeviceProp p{};
  CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  return p.name;
}

namespace {

constexpr int kMaxDevices = 16;

// Pinned blocks are cached by (rounded) size: cudaMallocHost is slow and
// cudaFreeHost synchronises the whole device, and the loader asks for
// batches of the same few sizes over and over. Defined before g_pending so
// that they are destroyed after it: at exit, g_pending still holds the
// pinned storages of the last copies, whose destructors call pinned_free.
std::mutex g_pinned_mutex;
std::multimap<size_t, void*> g_pinned_free;     // size -> block, free
std::unordered_map<void*, size_t> g_pinned_size;  // every block handed out or free

size_t pinned_round(size_t n) {
  constexpr size_t kGrain = size_t{1} << 16;
  return n == 0 ? kGrain : (n + kGrain - 1) / kGrain * kGrain;
}

struct DeviceState {
  std::once_flag once;
  cudaStream_t stream = nullptr;
};
DeviceState g_devices[kMaxDevices];
thread_local int t_current = -1;

// Pinned sources of asynchronous copies, kept until their copy has finished.
struct Pending {
  cudaEvent_t done;
  std::shared_ptr<const void> keep_alive;
};
std::mutex g_pending_mutex;
std::deque<Pending> g_pending;

void reap_pending() {
  std::lock_guard<std::mutex> lock(g_pending_mutex);
  while (!g_pending.empty() && cudaEventQuery(g_pending.front().done) == cudaSuccess) {
    cudaEventDestroy(g_pending.front().done);
    g_pending.pop_front();
  }
  cudaGetLastError();  // cudaErrorNotReady is not an error here
}

DeviceState& state(int device) {
  if (device < 0 || device >= kMaxDevices) throw CudaError(fmt::format("device index {} is out of range", device));
  DeviceState& s = g_devices[device];
  std::call_once(s.once, [&] {
    require_device(device);
    CUDA_CHECK(cudaSetDevice(device));
    t_current = device;  // else a later set_device(previous) would wrongly skip its cudaSetDevice
    CUDA_CHECK(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
    cudaMemPool_t pool;
    CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
    uint64_t threshold = UINT64_MAX;  // keep freed blocks for reuse: training allocates the same sizes every step
    if (const char* mb = std::getenv("S2H_CUDA_POOL_RELEASE_MB")) threshold = std::strtoull(mb, nullptr, 10) << 20;
    CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  });
  return s;
}

}  // namespace

void set_device(int device) {
  if (t_current == device) return;
  CUDA_CHECK(cudaSetDevice(device));
  t_current = device;
}

Stream stream(int device) {
  Stream s = state(device).stream;
  set_device(device);
  return s;
}

void synchronize(int device) { CUDA_CHECK(cudaStreamSynchronize(stream(device))); }

void* device_alloc(size_t nbytes, int device) {
  cudaStream_t s = stream(device);
  void* p = nullptr;
  if (nbytes == 0) nbytes = 256;
  cudaError_t e = cudaMallocAsync(&p, nbytes, s);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    // Give cached blocks back to the driver and retry once before failing.
    cudaMemPool_t pool;
    CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
    CUDA_CHECK(cudaStreamSynchronize(s));
    CUDA_CHECK(cudaMemPoolTrimTo(pool, 0));
    e = cudaMallocAsync(&p, nbytes, s);
    if (e != cudaSuccess) {
      cudaGetLastError();
      const PoolStats st = pool_stats(device);
      throw CudaError(fmt::format("out of GPU memory on cuda:{}: asked for {:.1f} MiB with {:.1f} MiB in use", device,
                                  nbytes / 1048576.0, st.used / 1048576.0));
    }
  }
  CUDA_CHECK(e);
  return p;
}

void device_free(void* p, int device) noexcept {
  if (!p) return;
  // Never throws (called from destructors); a failure here means the context is gone.
  if (t_current != device && cudaSetDevice(device) == cudaSuccess) t_current = device;
  if (cudaFreeAsync(p, g_devices[device].stream) != cudaSuccess) cudaGetLastError();
}

void set_release_threshold(int device, size_t bytes) {
  state(device);
  cudaMemPool_t pool;
  CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  uint64_t v = bytes;
  CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &v));
}

PoolStats pool_stats(int device) {
  state(device);
  cudaMemPool_t pool;
  CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  PoolStats st;
  uint64_t v = 0;
  CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &v));
  st.reserved = v;
  CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &v));
  st.reserved_high = v;
  CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &v));
  st.used = v;
  CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &v));
  st.used_high = v;
  return st;
}

void* pinned_alloc(size_t nbytes) {
  const size_t size = pinned_round(nbytes);
  {
    std::lock_guard<std::mutex> lock(g_pinned_mutex);
    auto it = g_pinned_free.find(size);
    if (it != g_pinned_free.end()) {
      void* p = it->second;
      g_pinned_free.erase(it);
      return p;
    }
  }
  void* p = nullptr;
  CUDA_CHECK(cudaMallocHost(&p, size));
  std::lock_guard<std::mutex> lock(g_pinned_mutex);
  g_pinned_size[p] = size;
  return p;
}

void pinned_free(void* p) noexcept {
  if (!p) return;
  std::lock_guard<std::mutex> lock(g_pinned_mutex);
  auto it = g_pinned_size.find(p);
  if (it == g_pinned_size.end()) return;  // not ours; never happens
  g_pinned_free.emplace(it->second, p);
}

void copy_to_device(void* dst, const void* src, size_t nbytes, int device, bool src_pinned,
                    std::shared_ptr<const void> keep_alive) {
  if (nbytes == 0) return;
  cudaStream_t s = stream(device);
  CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, s));
  if (!src_pinned) return;  // pageable: the runtime has staged the source before returning
  reap_pending();
  if (!keep_alive) {  // nobody owns the source beyond this call: wait for the copy
    CUDA_CHECK(cudaStreamSynchronize(s));
    return;
  }
  cudaEvent_t done;
  CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventRecord(done, s));
  std::lock_guard<std::mutex> lock(g_pending_mutex);
  g_pending.push_back({done, std::move(keep_alive)});
}

void copy_to_host(void* dst, const void* src, size_t nbytes, int device) {
  if (nbytes == 0) return;
  cudaStream_t s = stream(device);
  CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, s));
  CUDA_CHECK(cudaStreamSynchronize(s));
}

void fill_bytes(void* dst, int byte, size_t nbytes, int device) {
  if (nbytes) CUDA_CHECK(cudaMemsetAsync(dst, byte, nbytes, stream(device)));
}

void copy_on_device(void* dst, const void* src, size_t nbytes, int device) {
  if (nbytes == 0) return;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, stream(device)));
}

}  // namespace s2h::cuda
