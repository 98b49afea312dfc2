// The CUDA execution model on the CPU: what a kernel file (.cu) needs from the
// CUDA headers, for the host compiler. A build with S2H_EMU defined compiles
// the kernels' own source with g++/clang and runs every launch here, thread by
// thread:
// - the threads of a block are cooperative fibers with their own stacks; the
//   blocks of a grid run one after another; threadIdx / blockIdx / blockDim /
//   gridDim are per fiber;
// - __syncthreads (and _or/_and/_count) is a barrier; a thread that exits, or
//   waits at another barrier, while others wait is an error naming the kernel;
// - warp collectives (__shfl*_sync, __ballot_sync, __any/__all_sync,
//   __syncwarp, and the tensor-core loads and products of mma.cuh / wmma.h)
//   wait until every lane of their mask has arrived at the same call;
// - shared memory (S2H_SHARED / S2H_DYNAMIC_SHARED, see common.cuh) is
//   allocated per block, filled with poison (0xff bytes: NaN in f32 and bf16)
//   at each block start and fenced by guard pages (an access past a variable's
//   end is reported with the variable's name); under AddressSanitizer the
//   fences are ASan-poisoned instead;
// - the fibers between two barriers run in a selectable order (forward,
//   reverse, seeded shuffle: S2H_EMU_ORDER=forward|reverse|shuffle[:seed]), so
//   that a missing barrier gives a wrong answer under some order;
// - launches are checked against an H100's limits (block and grid dimensions,
//   48 KB static shared memory, 227 KB dynamic only after
//   cudaFuncSetAttribute, 32764 bytes of parameters) and run synchronously.
// Errors throw EmuError (a CudaError) from the launch.
//
// This header replaces <cuda_runtime.h>, <cuda_bf16.h> and <mma.h> in an
// S2H_EMU build (kernels/cuda/common.cuh chooses); it must never meet them.
#pragma once

#if defined(__CUDACC__)
#error "kernels/cuda/emu/emu.h is for the host compiler (S2H_EMU builds); nvcc builds use the CUDA headers"
#endif

#include <atomic>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "kernels/cuda/runtime.h"

// S2H_EMU_ASAN: this translation unit is built with AddressSanitizer.
#if defined(__SANITIZE_ADDRESS__)
#define S2H_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define S2H_EMU_ASAN 1
#endif
#endif

// ------------------------------------------------------------------ keywords
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) alignas(n)
// `__shared__` is deliberately not defined: kernels declare shared memory
// with S2H_SHARED / S2H_DYNAMIC_SHARED (common.cuh), which the emulator
// allocates per block.

// ------------------------------------------------------------------ vector types
struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) int2 {
  int x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
constexpr int warpSize = 32;

// ------------------------------------------------------------------ bf16 (cuda_bf16.h's subset)
struct __nv_bfloat16_raw {
  unsigned short x;
};

namespace s2h::emu {
// Round to nearest even, as __float2bfloat16_rn; a NaN becomes the canonical 0x7fff.
inline unsigned short bf16_bits(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
  return static_cast<unsigned short>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_float(unsigned short b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }
}  // namespace s2h::emu

struct __nv_bfloat16 {
  unsigned short __x;
  __nv_bfloat16() = default;
  constexpr __nv_bfloat16(const __nv_bfloat16_raw& r) : __x(r.x) {}
  __nv_bfloat16(float f) : __x(s2h::emu::bf16_bits(f)) {}
  __nv_bfloat16(double f) : __x(s2h::emu::bf16_bits(static_cast<float>(f))) {}
  constexpr operator __nv_bfloat16_raw() const { return {__x}; }
  operator float() const { return s2h::emu::bf16_float(__x); }
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16_raw{s2h::emu::bf16_bits(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 v) { return s2h::emu::bf16_float(v.__x); }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return {__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}
inline __nv_bfloat162 __float22bfloat162_rn(float2 v) { return __floats2bfloat162_rn(v.x, v.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 v) { return {__bfloat162float(v.x), __bfloat162float(v.y)}; }

// ------------------------------------------------------------------ math and bit intrinsics
inline float __fdividef(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __frcp_rn(float x) { return 1.f / x; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float __saturatef(float x) { return x != x ? 0.f : (x < 0.f ? 0.f : (x > 1.f ? 1.f : x)); }
inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
inline float __int_as_float(int i) { return std::bit_cast<float>(i); }
inline int __float_as_int(float f) { return std::bit_cast<int>(f); }
inline int __popc(unsigned v) { return std::popcount(v); }
inline int __popcll(unsigned long long v) { return std::popcount(v); }
inline int __clz(unsigned v) { return std::countl_zero(v); }
inline int __ffs(unsigned v) { return v == 0 ? 0 : std::countr_zero(v) + 1; }
// CUDA's integer min/max overloads, for any mix of arithmetic types.
template <class A, class B, class = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
template <class A, class B, class = std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>>>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}
template <class T>
inline T __ldg(const T* p) {
  return *p;
}

// ------------------------------------------------------------------ the emulator's interface
namespace s2h::emu {

// An error found while emulating a launch: what, where (kernel, block, thread) and why.
class EmuError : public cuda::CudaError {
 public:
  using cuda::CudaError::CudaError;
};

// The order in which the runnable fibers of a block run between two barriers.
enum class Order { Forward, Reverse, Shuffle };
struct Schedule {
  Order order = Order::Forward;
  uint64_t seed = 0;  // of Shuffle; each barrier phase draws a new permutation
};
// The process-wide schedule: S2H_EMU_ORDER (forward, reverse, shuffle or
// shuffle:SEED) at first use, or set_schedule. "forward" when unset.
Schedule schedule();
void set_schedule(const Schedule& s);
std::string schedule_name(const Schedule& s);

// What the emulator has run in this process (for the tests' reports).
struct Stats {
  uint64_t launches = 0, blocks = 0, threads = 0, barriers = 0, warp_ops = 0, switches = 0;
};
Stats stats();

namespace detail {

// The running fiber's coordinates (thread-local: a block's fibers share one OS thread).
extern thread_local uint3 t_thread_idx, t_block_idx;
extern thread_local dim3 t_block_dim, t_grid_dim;

struct Site {  // where a synchronising call was made
  const char* file = "";
  unsigned line = 0;
  static Site of(const std::source_location& l) { return {l.file_name(), l.line()}; }
  bool operator==(const Site& o) const { return line == o.line && std::strcmp(file, o.file) == 0; }
};

// A warp collective: every lane of `mask` posts `in` / `out` (its own data)
// at the same call (`kind`, `site`); when the last one arrives, `run` gets
// the 32 lanes' posts (null for lanes outside the mask) and does the work.
struct WarpCall {
  const char* kind = "";
  unsigned mask = 0;
  Site site;
  const void* in = nullptr;
  void* out = nullptr;
  void (*run)(const WarpCall* const (&lanes)[32], const void* ctx) = nullptr;
  const void* ctx = nullptr;  // passed to run (the last lane to arrive passes its own)
};
void warp_call(const WarpCall& call);
[[noreturn]] void fail(const std::string& what);

void barrier(Site site, int pred, int* result, int mode);  // mode: 0 plain, 1 or, 2 and, 3 count
void* shared_var(const void* key, size_t bytes, size_t align, const char* name);
void* dynamic_shared(size_t align, const char* name);
// True when [p, p + bytes) lies inside one shared-memory variable of the running block.
bool is_shared(const void* p, size_t bytes);

struct LaunchSpec {
  const char* name;
  const void* kernel;  // identifies the kernel for cudaFuncSetAttribute
  dim3 grid, block;
  size_t dynamic_smem = 0, param_bytes = 0;
  void (*entry)(const void* ctx) = nullptr;  // runs the kernel body once, in the calling fiber
  const void* ctx = nullptr;
};
void run_grid(const LaunchSpec& spec);
int set_max_dynamic_smem(const void* kernel, int bytes);

// A shuffle: lane l receives `var` of lane source(l, arg_l, width_l) (each lane's own arg and width).
template <class T>
T shuffle(const char* kind, unsigned mask, T var, int arg, int width, Site site, int (*source)(int, int, int)) {
  static_assert(std::is_trivially_copyable_v<T>, "shuffled values must be trivially copyable");
  struct Post {
    T value;
    int arg, width;
    int (*source)(int, int, int);
  } post{var, arg, width, source};
  T out{};
  WarpCall c;
  c.kind = kind;
  c.mask = mask;
  c.site = site;
  c.in = &post;
  c.out = &out;
  c.run = [](const WarpCall* const(&lanes)[32], const void*) {
    T got[32];
    for (int l = 0; l < 32; ++l) {
      if (!lanes[l]) continue;
      const Post& p = *static_cast<const Post*>(lanes[l]->in);
      if (p.width < 1 || p.width > 32 || (p.width & (p.width - 1)) != 0)
        fail(std::string(lanes[l]->kind) + ": width " + std::to_string(p.width) + " is not a power of 2 up to 32");
      const int s = p.source(l, p.arg, p.width);
      if (s < 0 || s > 31 || !lanes[s])
        fail(std::string(lanes[l]->kind) + ": lane " + std::to_string(l) + " reads lane " + std::to_string(s) +
             ", which is not in the mask");
      got[l] = static_cast<const Post*>(lanes[s]->in)->value;
    }
    for (int l = 0; l < 32; ++l)
      if (lanes[l]) *static_cast<T*>(lanes[l]->out) = got[l];
  };
  warp_call(c);
  return out;
}

int vote(const char* kind, unsigned mask, int pred, Site site, int mode);  // mode 0 ballot, 1 any, 2 all

}  // namespace detail

// Launches kernel(args...) over grid x block with `dynamic_smem` bytes of
// dynamic shared memory, converting the arguments to the kernel's parameter
// types as a <<<...>>> launch does; returns when the grid has run.
template <class... P, class... A>
void launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t dynamic_smem, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "launch: wrong number of kernel arguments");
  using Params = std::tuple<std::decay_t<P>...>;
  const Params params(std::forward<A>(args)...);
  struct Ctx {
    void (*kernel)(P...);
    const Params* params;
  } ctx{kernel, &params};
  detail::LaunchSpec spec;
  spec.name = name;
  spec.kernel = reinterpret_cast<const void*>(kernel);
  spec.grid = grid;
  spec.block = block;
  spec.dynamic_smem = dynamic_smem;
  spec.param_bytes = (size_t{0} + ... + sizeof(std::decay_t<P>));
  spec.ctx = &ctx;
  spec.entry = [](const void* c) {
    const Ctx& x = *static_cast<const Ctx*>(c);
    std::apply(x.kernel, *x.params);  // each fiber gets its own copy of the parameters
  };
  detail::run_grid(spec);
}

// A per-block shared-memory variable of type T (an array type for arrays).
template <class T, size_t Align = alignof(T)>
T& shared(const void* key, const char* name) {
  static_assert(std::is_trivially_default_constructible_v<std::remove_all_extents_t<T>>,
                "shared memory holds trivial types only");
  return *static_cast<T*>(detail::shared_var(key, sizeof(T), Align > alignof(T) ? Align : alignof(T), name));
}
template <class T>
T* dynamic_shared(size_t align, const char* name) {
  return static_cast<T*>(detail::dynamic_shared(align > alignof(T) ? align : alignof(T), name));
}

}  // namespace s2h::emu

#define threadIdx (::s2h::emu::detail::t_thread_idx)
#define blockIdx (::s2h::emu::detail::t_block_idx)
#define blockDim (::s2h::emu::detail::t_block_dim)
#define gridDim (::s2h::emu::detail::t_grid_dim)

// ------------------------------------------------------------------ barriers and warp collectives
inline void __syncthreads(std::source_location l = std::source_location::current()) {
  ::s2h::emu::detail::barrier(::s2h::emu::detail::Site::of(l), 0, nullptr, 0);
}
inline int __syncthreads_or(int pred, std::source_location l = std::source_location::current()) {
  int r = 0;
  ::s2h::emu::detail::barrier(::s2h::emu::detail::Site::of(l), pred, &r, 1);
  return r;
}
inline int __syncthreads_and(int pred, std::source_location l = std::source_location::current()) {
  int r = 0;
  ::s2h::emu::detail::barrier(::s2h::emu::detail::Site::of(l), pred, &r, 2);
  return r;
}
inline int __syncthreads_count(int pred, std::source_location l = std::source_location::current()) {
  int r = 0;
  ::s2h::emu::detail::barrier(::s2h::emu::detail::Site::of(l), pred, &r, 3);
  return r;
}
inline void __syncwarp(unsigned mask = 0xffffffffu, std::source_location l = std::source_location::current()) {
  ::s2h::emu::detail::WarpCall c;
  c.kind = "__syncwarp";
  c.mask = mask;
  c.site = ::s2h::emu::detail::Site::of(l);
  c.run = [](const ::s2h::emu::detail::WarpCall* const(&)[32], const void*) {};
  ::s2h::emu::detail::warp_call(c);
}

template <class T>
T __shfl_sync(unsigned mask, T var, int src, int width = warpSize,
              std::source_location l = std::source_location::current()) {
  return ::s2h::emu::detail::shuffle<T>("__shfl_sync", mask, var, src, width, ::s2h::emu::detail::Site::of(l),
                                        [](int lane, int s, int w) { return (lane / w) * w + (s % w); });
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,
                  std::source_location l = std::source_location::current()) {
  return ::s2h::emu::detail::shuffle<T>("__shfl_xor_sync", mask, var, lane_mask, width, ::s2h::emu::detail::Site::of(l),
                                        [](int lane, int m, int w) {
                                          const int s = lane ^ m;
                                          return s / w > lane / w ? lane : s;  // a later segment: its own value
                                        });
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                   std::source_location l = std::source_location::current()) {
  return ::s2h::emu::detail::shuffle<T>("__shfl_down_sync", mask, var, static_cast<int>(delta), width,
                                        ::s2h::emu::detail::Site::of(l), [](int lane, int d, int w) {
                                          const int s = lane + d;
                                          return s / w == lane / w ? s : lane;
                                        });
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                 std::source_location l = std::source_location::current()) {
  return ::s2h::emu::detail::shuffle<T>("__shfl_up_sync", mask, var, static_cast<int>(delta), width,
                                        ::s2h::emu::detail::Site::of(l), [](int lane, int d, int w) {
                                          const int s = lane - d;
                                          return s >= 0 && s / w == lane / w ? s : lane;
                                        });
}
inline unsigned __ballot_sync(unsigned mask, int pred, std::source_location l = std::source_location::current()) {
  return static_cast<unsigned>(
      ::s2h::emu::detail::vote("__ballot_sync", mask, pred, ::s2h::emu::detail::Site::of(l), 0));
}
inline int __any_sync(unsigned mask, int pred, std::source_location l = std::source_location::current()) {
  return ::s2h::emu::detail::vote("__any_sync", mask, pred, ::s2h::emu::detail::Site::of(l), 1);
}
inline int __all_sync(unsigned mask, int pred, std::source_location l = std::source_location::current()) {
  return ::s2h::emu::detail::vote("__all_sync", mask, pred, ::s2h::emu::detail::Site::of(l), 2);
}
[[noreturn]] inline void __trap() { ::s2h::emu::detail::fail("__trap() was called"); }

// ------------------------------------------------------------------ atomics
// The fibers of a block share one OS thread, but blocks may not: real atomics.
template <class T>
inline T atomicAdd(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_add(v);
}
template <class T>
inline T atomicSub(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_sub(v);
}
template <class T>
inline T atomicExch(T* p, T v) {
  return std::atomic_ref<T>(*p).exchange(v);
}
template <class T>
inline T atomicCAS(T* p, T expected, T desired) {
  std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired);
  return expected;
}
namespace s2h::emu::detail {
// Replaces *p by v while `better(v, *p)`; returns the old value.
template <class T, class Better>
inline T atomic_replace_if(T* p, T v, Better better) {
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (better(v, old) && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
}  // namespace s2h::emu::detail
template <class T>
inline T atomicMax(T* p, T v) {
  return ::s2h::emu::detail::atomic_replace_if(p, v, [](T a, T b) { return b < a; });
}
template <class T>
inline T atomicMin(T* p, T v) {
  return ::s2h::emu::detail::atomic_replace_if(p, v, [](T a, T b) { return a < b; });
}

// ------------------------------------------------------------------ tensor cores and async copies
// Emulated from the PTX ISA's definitions; kernels reach them through the
// device functions of kernels/cuda/mma.cuh (inline asm on a GPU).
namespace s2h::emu {
// cp.async of `bytes` (4, 8 or 16) from global to shared memory: the
// destination reads as poison until a cp_async_wait covers the copy.
void cp_async(void* smem, const void* gmem, int bytes, std::source_location l = std::source_location::current());
void cp_async_commit();
// Completes all but the newest `pending` committed groups of this thread.
void cp_async_wait(int pending);
// ldmatrix.sync.aligned.m8n8.x{count}[.trans].shared.b16: `row` is this
// lane's row address (lanes 8i..8i+7 give matrix i's rows); r[i] receives
// this lane's two elements of matrix i.
void ldmatrix(uint32_t* r, int count, bool trans, const void* row,
              std::source_location l = std::source_location::current());
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: d = a b + c with the
// ISA's fragment layouts (a: 4 registers of 2 bf16, b: 2, c and d: 4 floats).
void mma_m16n8k16_bf16(float* d, const uint32_t* a, const uint32_t* b, const float* c,
                       std::source_location l = std::source_location::current());
}  // namespace s2h::emu

// ------------------------------------------------------------------ the runtime API the launchers call
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
enum cudaMemcpyKind : int {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
using cudaStream_t = CUstream_st*;

const char* cudaGetErrorString(cudaError_t e);
// Launch errors throw at the launch, so there is never one to report here.
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t = nullptr) {
  if (n) std::memmove(dst, src, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, n, kind);
}
cudaError_t cudaMalloc(void** p, size_t n);
cudaError_t cudaFree(void* p);
template <class T>
cudaError_t cudaMalloc(T** p, size_t n) {
  return cudaMalloc(reinterpret_cast<void**>(p), n);
}
template <class F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return static_cast<cudaError_t>(
      ::s2h::emu::detail::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), value));
}
