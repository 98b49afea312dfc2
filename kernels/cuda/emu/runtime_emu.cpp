// The CUDA runtime of kernels/cuda/runtime.h on the emulated device: one
// device (cuda:0) whose memory is host memory. Everything is synchronous (a
// kernel has run when its launch returns), so streams are tokens and copies
// are memcpy. Device memory comes from a pool that keeps freed blocks for
// reuse up to the release threshold, like cudaMallocAsync's default pool, so
// that the pool statistics mean what they mean on a GPU; new blocks are filled
// with poison (0xff bytes), so that a kernel that reads memory nobody wrote
// sees NaN.
#include <fmt/format.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>

#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"

#ifdef S2H_EMU_ASAN
#include <sanitizer/asan_interface.h>
#endif

struct CUstream_st {
  int device;
};

namespace s2h::cuda {

namespace {

constexpr int kDevices = 1;
constexpr size_t kCapacity = size_t{80} << 30;  // an H100's memory
constexpr size_t kGrain = 256;                  // allocation granularity (and alignment)

CUstream_st g_streams[kDevices] = {{0}};

// Under AddressSanitizer a block's bytes past the size asked for, and every
// cached block, are poisoned: a kernel that reads past a tensor's end, or a
// freed tensor, is reported even though the pool rounds and reuses blocks.
void fence(void* p, size_t asked, size_t size) {
#ifdef S2H_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(p, asked);
  ASAN_POISON_MEMORY_REGION(static_cast<char*>(p) + asked, size - asked);
#else
  (void)p, (void)asked, (void)size;
#endif
}

struct Pool {
  std::mutex m;
  std::unordered_map<void*, size_t> live;  // block -> rounded size
  std::multimap<size_t, void*> cached;     // freed blocks kept for reuse
  size_t threshold = SIZE_MAX;             // bytes of cached blocks kept (S2H_CUDA_POOL_RELEASE_MB)
  PoolStats st;
  Pool() {
    if (const char* mb = std::getenv("S2H_CUDA_POOL_RELEASE_MB")) threshold = std::strtoull(mb, nullptr, 10) << 20;
  }
  void trim(size_t keep) {  // m held
    size_t cached_bytes = st.reserved - st.used;
    while (cached_bytes > keep && !cached.empty()) {
      auto it = std::prev(cached.end());  // the largest first
      cached_bytes -= it->first;
      st.reserved -= it->first;
      fence(it->second, it->first, it->first);
      std::free(it->second);
      cached.erase(it);
    }
  }
};
Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: tensors may be freed during exit
  return *p;
}

void check_device(int device) {
  if (device < 0 || device >= kDevices)
    throw CudaError(fmt::format("device cuda:{} does not exist (the emulator has {} device)", device, kDevices));
}

}  // namespace

void throw_error(const std::string& call, const std::string& message, const char* file, int line) {
  throw CudaError(fmt::format("CUDA error in {}: {} ({}:{})", call, message, file, line));
}

bool compiled() { return true; }
bool emulated() { return true; }
int device_count(std::string* why) {
  if (why) why->clear();
  return kDevices;
}
bool available() { return true; }
void require_device(int device) { check_device(device); }
std::string device_name(int device) {
  check_device(device);
  return "s2h CUDA emulator (H100 limits, host memory)";
}
void set_device(int device) { check_device(device); }
Stream stream(int device) {
  check_device(device);
  return &g_streams[device];
}
void synchronize(int device) { check_device(device); }

void* device_alloc(size_t nbytes, int device) {
  check_device(device);
  const size_t size = (std::max<size_t>(nbytes, 1) + kGrain - 1) / kGrain * kGrain;
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.m);
  void* ptr = nullptr;
  auto it = p.cached.find(size);
  if (it != p.cached.end()) {
    ptr = it->second;
    p.cached.erase(it);
  } else {
    if (p.st.used + size > kCapacity) p.trim(0);
    if (p.st.reserved + size > kCapacity || (ptr = std::aligned_alloc(kGrain, size)) == nullptr)
      throw CudaError(fmt::format("out of GPU memory on cuda:{}: asked for {:.1f} MiB with {:.1f} MiB in use", device,
                                  nbytes / 1048576.0, p.st.used / 1048576.0));
    p.st.reserved += size;
    p.st.reserved_high = std::max(p.st.reserved_high, p.st.reserved);
  }
  fence(ptr, nbytes, size);
  std::memset(ptr, 0xff, nbytes);
  p.live[ptr] = size;
  p.st.used += size;
  p.st.used_high = std::max(p.st.used_high, p.st.used);
  return ptr;
}

void device_free(void* ptr, int) noexcept {
  if (!ptr) return;
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.m);
  auto it = p.live.find(ptr);
  if (it == p.live.end()) return;  // not ours: never happens
  p.st.used -= it->second;
  fence(ptr, 0, it->second);
  p.cached.emplace(it->second, ptr);
  p.live.erase(it);
  p.trim(p.threshold);
}

void set_release_threshold(int device, size_t bytes) {
  check_device(device);
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.m);
  p.threshold = bytes;
  p.trim(bytes);
}

PoolStats pool_stats(int device) {
  check_device(device);
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.m);
  return p.st;
}

void* pinned_alloc(size_t nbytes) {
  void* p = std::aligned_alloc(kGrain, (std::max<size_t>(nbytes, 1) + kGrain - 1) / kGrain * kGrain);
  if (!p) throw CudaError(fmt::format("out of pinned host memory: asked for {:.1f} MiB", nbytes / 1048576.0));
  return p;
}
void pinned_free(void* p) noexcept { std::free(p); }

void copy_to_device(void* dst, const void* src, size_t nbytes, int device, bool, std::shared_ptr<const void>) {
  check_device(device);
  if (nbytes) std::memcpy(dst, src, nbytes);
}
void copy_to_host(void* dst, const void* src, size_t nbytes, int device) {
  check_device(device);
  if (nbytes) std::memcpy(dst, src, nbytes);
}
void fill_bytes(void* dst, int byte, size_t nbytes, int device) {
  check_device(device);
  if (nbytes) std::memset(dst, byte, nbytes);
}
void copy_on_device(void* dst, const void* src, size_t nbytes, int device) {
  check_device(device);
  if (nbytes) std::memmove(dst, src, nbytes);
}

}  // namespace s2h::cuda
