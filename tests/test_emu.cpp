// The CUDA emulator's own tests (kernels/cuda/emu): its execution model and
// instructions, each checked on small kernels written here (compiled for the
// emulator like kernels/cuda/*.cu), and four deliberately broken kernels
// that must fail visibly:
//   - a missing __syncthreads: a wrong answer under the reverse order (the
//     forward order hides this one, and the reverse order the one between
//     warps that forward shows; CI runs every suite under both);
//   - a missing cp.async wait: the copy has not landed, the kernel reads poison;
//   - an out-of-range shared-memory read: the emulator names the variable
//     (under AddressSanitizer, ASan reports it and the process dies);
//   - divergent barriers: the emulator names both barriers.
// Buffers are plain host memory: emulated kernels read and write it directly.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma.cuh"

namespace s2h::cuda {
namespace {

using emu::EmuError;
using emu::Order;
using emu::Schedule;

// Runs the test body under one schedule and restores the process's.
class ScheduleGuard {
 public:
  explicit ScheduleGuard(Schedule s) : prev_(emu::schedule()) { emu::set_schedule(s); }
  ~ScheduleGuard() { emu::set_schedule(prev_); }

 private:
  Schedule prev_;
};
const Schedule kForward{Order::Forward, 0}, kReverse{Order::Reverse, 0}, kShuffle{Order::Shuffle, 11};
const Schedule kAllOrders[] = {kForward, kReverse, kShuffle, {Order::Shuffle, 12}};

// The message of the EmuError that fn throws ("" when it throws none).
template <class Fn>
std::string emu_error(Fn&& fn) {
  try {
    fn();
  } catch (const EmuError& e) {
    return e.what();
  }
  return "";
}
// Expects fn to throw an EmuError whose message holds every word.
template <class Fn>
void expect_emu_error(const std::vector<std::string>& words, Fn&& fn) {
  const std::string msg = emu_error(fn);
  ASSERT_FALSE(msg.empty()) << "no emulator error; expected one with: " << words.front();
  for (const std::string& w : words) EXPECT_NE(msg.find(w), std::string::npos) << msg << "\n  lacks: " << w;
}

bool is_poison(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return u == 0xffffffffu;
}

// ------------------------------------------------------------------ coordinates and order
__global__ void coords_kernel(uint32_t* out, uint32_t* order, uint32_t* counter) {
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned n = blockDim.x * blockDim.y * blockDim.z;
  uint32_t* o = out + 4 * (b * n + t);
  o[0] = threadIdx.x | threadIdx.y << 8 | threadIdx.z << 16;
  o[1] = blockIdx.x | blockIdx.y << 8 | blockIdx.z << 16;
  o[2] = blockDim.x | blockDim.y << 8 | blockDim.z << 16;
  o[3] = gridDim.x | gridDim.y << 8 | gridDim.z << 16;
  if (b == 0) order[t] = (*counter)++;  // the position of this thread in block 0's run
}

TEST(Emulator, ThreadAndBlockCoordinates) {
  const dim3 grid(3, 2, 2), block(4, 3, 2);
  const unsigned n = 24, blocks = 12;
  std::vector<uint32_t> out(4 * n * blocks), order(n);
  uint32_t counter = 0;
  launch("coords", coords_kernel, grid, block, 0, nullptr, out.data(), order.data(), &counter);
  for (unsigned bz = 0; bz < 2; ++bz)
    for (unsigned by = 0; by < 2; ++by)
      for (unsigned bx = 0; bx < 3; ++bx)
        for (unsigned tz = 0; tz < 2; ++tz)
          for (unsigned ty = 0; ty < 3; ++ty)
            for (unsigned tx = 0; tx < 4; ++tx) {
              const unsigned b = bx + 3 * (by + 2 * bz), t = tx + 4 * (ty + 3 * tz);
              const uint32_t* o = out.data() + 4 * (b * n + t);
              EXPECT_EQ(o[0], tx | ty << 8 | tz << 16);
              EXPECT_EQ(o[1], bx | by << 8 | bz << 16);
              EXPECT_EQ(o[2], 4u | 3u << 8 | 2u << 16);
              EXPECT_EQ(o[3], 3u | 2u << 8 | 2u << 16);
            }
}

// The order the threads of a block run in, from position numbers.
std::vector<uint32_t> run_order(const Schedule& s, unsigned n) {
  ScheduleGuard g(s);
  std::vector<uint32_t> out(4 * n), order(n);
  uint32_t counter = 0;
  launch("order", coords_kernel, 1, n, 0, nullptr, out.data(), order.data(), &counter);
  return order;
}

TEST(Emulator, FiberOrders) {
  const unsigned n = 64;
  const std::vector<uint32_t> fwd = run_order(kForward, n), rev = run_order(kReverse, n);
  for (unsigned t = 0; t < n; ++t) {
    EXPECT_EQ(fwd[t], t);
    EXPECT_EQ(rev[t], n - 1 - t);
  }
  const std::vector<uint32_t> s1 = run_order({Order::Shuffle, 5}, n), s2 = run_order({Order::Shuffle, 6}, n);
  EXPECT_EQ(s1, run_order({Order::Shuffle, 5}, n)) << "a seed gives one order";
  EXPECT_NE(s1, fwd);
  EXPECT_NE(s1, rev);
  EXPECT_NE(s1, s2);
  std::vector<uint32_t> sorted = s1;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, fwd) << "every thread runs once";
}

TEST(Emulator, ScheduleNames) {
  EXPECT_EQ(emu::schedule_name(kForward), "forward");
  EXPECT_EQ(emu::schedule_name(kReverse), "reverse");
  EXPECT_EQ(emu::schedule_name({Order::Shuffle, 9}), "shuffle:9");
}

// ------------------------------------------------------------------ barriers
// out[t] = in[(t + shift) % n] through shared memory; `sync` = false is the broken kernel.
__global__ void rotate_kernel(const float* in, float* out, int shift, bool sync) {
  S2H_SHARED(float, sh, [128]);
  const int t = threadIdx.x, n = blockDim.x;
  sh[t] = in[blockIdx.x * n + t];
  if (sync) __syncthreads();
  out[blockIdx.x * n + t] = sh[(t + shift) % n];
}

std::vector<float> iota_floats(size_t n, float first = 1.f) {
  std::vector<float> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

int wrong_rotations(const Schedule& s, int shift, bool sync) {
  ScheduleGuard g(s);
  const int n = 128, blocks = 3;
  const std::vector<float> in = iota_floats(static_cast<size_t>(n * blocks));
  std::vector<float> out(in.size(), 0.f);
  launch("rotate", rotate_kernel, blocks, n, 0, nullptr, in.data(), out.data(), shift, sync);
  int wrong = 0;
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < n; ++t)
      wrong += out[static_cast<size_t>(b * n + t)] != in[static_cast<size_t>(b * n + (t + shift) % n)];
  return wrong;
}

TEST(Emulator, BarrierMakesSharedWritesVisible) {
  for (const Schedule& s : kAllOrders)
    for (int shift : {1, 127, 64}) EXPECT_EQ(wrong_rotations(s, shift, true), 0) << emu::schedule_name(s);
}

// Broken kernel 1: the missing __syncthreads. Thread t reads the element of
// thread t - 1 (shift n - 1): in forward order every thread runs after the
// one it reads from, so the bug stays hidden; in reverse order every read
// but one comes before the write and finds poison.
TEST(Emulator, BrokenMissingBarrierGivesWrongAnswers) {
  EXPECT_EQ(wrong_rotations(kForward, 127, false), 3) << "forward: only thread 0 reads ahead of its writer";
  EXPECT_GT(wrong_rotations(kReverse, 127, false), 300) << "reverse: the missing barrier must show";
  EXPECT_GT(wrong_rotations(kForward, 1, false), 300) << "shift +1 shows under forward";
  EXPECT_GT(wrong_rotations(kShuffle, 127, false), 100) << "a shuffle shows it too";
}

// Warp 1 writes what warp 0 reads; `sync` = false is the broken kernel.
__global__ void across_warps_kernel(float* out, bool sync) {
  S2H_SHARED(float, sh, [32]);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (warp == 1) sh[lane] = static_cast<float>(lane);
  if (sync) __syncthreads();
  if (warp == 0) out[lane] = sh[lane];
}

int wrong_across_warps(const Schedule& s, bool sync) {
  ScheduleGuard g(s);
  std::vector<float> out(32, -1.f);
  launch("across_warps", across_warps_kernel, 1, 64, 0, nullptr, out.data(), sync);
  int wrong = 0;
  for (int l = 0; l < 32; ++l) wrong += out[static_cast<size_t>(l)] != static_cast<float>(l);
  return wrong;
}

// The forward order lets each warp run ahead until it waits at a barrier, so a
// read of a later warp's writes shows there; the reverse order runs the later
// warp first and hides it (and shows the earlier-thread reads forward hides).
TEST(Emulator, BrokenMissingBarrierBetweenWarps) {
  for (const Schedule& s : kAllOrders) EXPECT_EQ(wrong_across_warps(s, true), 0) << emu::schedule_name(s);
  EXPECT_EQ(wrong_across_warps(kForward, false), 32);
  EXPECT_EQ(wrong_across_warps(kReverse, false), 0) << "reverse runs warp 1 first";
}

__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 40) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

// Broken kernel 4: divergent barriers.
TEST(Emulator, BrokenDivergentBarriersAreAnError) {
  std::vector<float> out(64);
  for (const Schedule& s : kAllOrders) {
    ScheduleGuard g(s);
    expect_emu_error({"divergent barriers", "divergent_barrier", "test_emu.cpp:"},
                     [&] { launch("divergent_barrier", divergent_barrier_kernel, 1, 64, 0, nullptr, out.data()); });
  }
}

__global__ void early_exit_kernel(float* out) {
  if (threadIdx.x == 5) return;
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

TEST(Emulator, ExitWhileOthersWaitIsAnError) {
  std::vector<float> out(64);
  for (const Schedule& s : kAllOrders) {
    ScheduleGuard g(s);
    const std::string m = emu_error([&] { launch("early_exit", early_exit_kernel, 1, 64, 0, nullptr, out.data()); });
    EXPECT_NE(m.find("early_exit"), std::string::npos) << m;
    EXPECT_TRUE(m.find("exits while") != std::string::npos || m.find("has exited") != std::string::npos) << m;
  }
}

__global__ void sync_reduce_kernel(const int* pred, int* out) {
  const int p = pred[threadIdx.x];
  const int a = __syncthreads_or(p), b = __syncthreads_and(p), c = __syncthreads_count(p);
  out[3 * threadIdx.x] = a;
  out[3 * threadIdx.x + 1] = b;
  out[3 * threadIdx.x + 2] = c;
}

TEST(Emulator, SyncthreadsOrAndCount) {
  for (const std::vector<int>& pred : {std::vector<int>(96, 0), std::vector<int>(96, 7), [] {
                                         std::vector<int> v(96, 0);
                                         v[3] = v[50] = v[95] = 1;
                                         return v;
                                       }()}) {
    std::vector<int> out(3 * 96, -1);
    launch("sync_reduce", sync_reduce_kernel, 1, 96, 0, nullptr, pred.data(), out.data());
    int count = 0, any = 0, all = 1;
    for (int p : pred) {
      count += p != 0;
      any |= p != 0;
      all &= p != 0;
    }
    for (int t = 0; t < 96; ++t) {
      EXPECT_EQ(out[3 * t], any);
      EXPECT_EQ(out[3 * t + 1], all);
      EXPECT_EQ(out[3 * t + 2], count);
    }
  }
}

// ------------------------------------------------------------------ shared memory
__global__ void poison_kernel(float* out, float* first_read) {
  S2H_SHARED(float, sh, [64]);
  const int t = threadIdx.x;
  first_read[blockIdx.x * 64 + t] = sh[t];  // before anyone wrote it
  __syncthreads();
  sh[t] = static_cast<float>(blockIdx.x * 100 + t);
  __syncthreads();
  out[blockIdx.x * 64 + t] = sh[63 - t];
}

TEST(Emulator, SharedMemoryIsPerBlockAndPoisonedAtEachStart) {
  std::vector<float> out(3 * 64), first(3 * 64);
  launch("poison", poison_kernel, 3, 64, 0, nullptr, out.data(), first.data());
  for (int b = 0; b < 3; ++b)
    for (int t = 0; t < 64; ++t) {
      EXPECT_TRUE(is_poison(first[static_cast<size_t>(b * 64 + t)])) << "block " << b << " saw an earlier block's data";
      EXPECT_EQ(out[static_cast<size_t>(b * 64 + t)], static_cast<float>(b * 100 + 63 - t));
    }
}

__global__ void oob_read_kernel(float* out) {
  S2H_SHARED(float, tile, [64]);
  const int t = threadIdx.x;
  tile[t] = 1.f;
  __syncthreads();
  out[t] = tile[t + 1];  // thread 63 reads one past the end
}

// Broken kernel 3: an out-of-range shared-memory read.
TEST(Emulator, BrokenOutOfRangeSharedReadIsCaught) {
  std::vector<float> out(64);
#ifdef S2H_EMU_ASAN
  EXPECT_DEATH(launch("oob_read", oob_read_kernel, 1, 64, 0, nullptr, out.data()), "AddressSanitizer");
#else
  expect_emu_error({"oob_read", "past the end of shared variable `tile`", "256 bytes", "thread (63,0,0)"},
                   [&] { launch("oob_read", oob_read_kernel, 1, 64, 0, nullptr, out.data()); });
#endif
}

__global__ void dynamic_kernel(float* out, int n) {
  S2H_DYNAMIC_SHARED(16, float, dyn);
  S2H_SHARED(float, stat, [32]);
  const int t = threadIdx.x;
  for (int i = t; i < n; i += blockDim.x) dyn[i] = static_cast<float>(i);
  if (t < 32) stat[t] = 2.f;
  __syncthreads();
  float s = 0.f;
  for (int i = 0; i < n; ++i) s += dyn[i];
  out[t] = s + stat[t % 32];
}

TEST(Emulator, DynamicSharedMemoryAndItsLimits) {
  std::vector<float> out(128);
  const int small = 1000;  // 4000 bytes
  launch("dynamic", dynamic_kernel, 1, 128, small * 4, nullptr, out.data(), small);
  EXPECT_EQ(out[5], static_cast<float>(small * (small - 1) / 2) + 2.f);
  // 64 KB needs the opt-in.
  const int big = 16 * 1024;
  expect_emu_error({"dynamic", "cudaFuncSetAttribute", "48 KB"},
                   [&] { launch("dynamic", dynamic_kernel, 1, 128, big * 4, nullptr, out.data(), big); });
  ASSERT_EQ(cudaFuncSetAttribute(dynamic_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024), cudaSuccess);
  launch("dynamic", dynamic_kernel, 1, 128, big * 4, nullptr, out.data(), big);
  float sum = 0.f;  // in the kernel's order
  for (int i = 0; i < big; ++i) sum += static_cast<float>(i);
  EXPECT_EQ(out[0], sum + 2.f);
  // Above the kernel's attribute, and above the H100's 227 KB.
  expect_emu_error({"exceed", "MaxDynamicSharedMemorySize"},
                   [&] { launch("dynamic", dynamic_kernel, 1, 128, 101 * 1024, nullptr, out.data(), 8); });
  EXPECT_EQ(cudaFuncSetAttribute(dynamic_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024),
            cudaErrorInvalidValue);
}

__global__ void big_static_kernel(float* out) {
  S2H_SHARED(float, a, [8 * 1024]);  // 32 KB
  S2H_SHARED(float, b, [5 * 1024]);  // + 20 KB: over 48 KB
  a[threadIdx.x] = 1.f;
  b[threadIdx.x] = 2.f;
  out[threadIdx.x] = a[threadIdx.x] + b[threadIdx.x];
}

TEST(Emulator, StaticSharedMemoryOver48KBIsAnError) {
  std::vector<float> out(32);
  expect_emu_error({"big_static", "static shared memory", "`b`", "48 KB"},
                   [&] { launch("big_static", big_static_kernel, 1, 32, 0, nullptr, out.data()); });
}

// ------------------------------------------------------------------ launch limits
__global__ void nop_kernel(int* p) {
  if (p) *p = 1;
}
struct Big {
  char bytes[40000];
};
__global__ void big_param_kernel(Big b, int* p) { *p = b.bytes[0]; }

TEST(Emulator, LaunchLimitsOfAnH100) {
  int x = 0;
  expect_emu_error({"nop", "1024 threads"}, [&] { launch("nop", nop_kernel, 1, dim3(32, 33), 0, nullptr, &x); });
  expect_emu_error({"nop", "block dimensions"}, [&] { launch("nop", nop_kernel, 1, dim3(1, 1, 65), 0, nullptr, &x); });
  expect_emu_error({"nop", "grid dimensions"}, [&] { launch("nop", nop_kernel, dim3(1, 65536), 32, 0, nullptr, &x); });
  expect_emu_error({"nop", "dimension is 0"}, [&] { launch("nop", nop_kernel, 0, 32, 0, nullptr, &x); });
  expect_emu_error({"big_param", "kernel parameters"},
                   [&] { launch("big_param", big_param_kernel, 1, 1, 0, nullptr, Big{}, &x); });
  launch("nop", nop_kernel, dim3(2, 65535), 1, 0, nullptr, &x);  // the largest y is fine
  EXPECT_EQ(x, 1);
}

// ------------------------------------------------------------------ warp collectives
__global__ void shuffle_kernel(const int* in, int* out) {
  const int t = threadIdx.x, v = in[t];
  int* o = out + 8 * t;
  o[0] = __shfl_sync(0xffffffffu, v, (t * 7) % 32);  // each lane its own source
  o[1] = __shfl_xor_sync(0xffffffffu, v, 5);
  o[2] = __shfl_down_sync(0xffffffffu, v, 3);
  o[3] = __shfl_up_sync(0xffffffffu, v, 3);
  o[4] = __shfl_down_sync(0xffffffffu, v, 2, 8);  // segments of 8
  o[5] = static_cast<int>(__ballot_sync(0xffffffffu, v % 3 == 0));
  o[6] = __any_sync(0xffffffffu, v == 100 + 17);
  o[7] = __all_sync(0xffffffffu, v >= 100);
}

TEST(Emulator, ShufflesAndVotes) {
  std::vector<int> in(64), out(8 * 64);
  for (int t = 0; t < 64; ++t) in[static_cast<size_t>(t)] = 100 + t;
  launch("shuffle", shuffle_kernel, 1, 64, 0, nullptr, in.data(), out.data());
  for (int t = 0; t < 64; ++t) {
    const int w = t / 32 * 32, l = t % 32;
    auto v = [&](int lane) { return 100 + w + lane; };
    const int* o = out.data() + 8 * t;
    EXPECT_EQ(o[0], v((l * 7) % 32));
    EXPECT_EQ(o[1], v(l ^ 5));
    EXPECT_EQ(o[2], l + 3 < 32 ? v(l + 3) : v(l));
    EXPECT_EQ(o[3], l >= 3 ? v(l - 3) : v(l));
    EXPECT_EQ(o[4], l % 8 + 2 < 8 ? v(l + 2) : v(l));
    unsigned bits = 0;
    for (int k = 0; k < 32; ++k)
      if (v(k) % 3 == 0) bits |= 1u << k;
    EXPECT_EQ(static_cast<unsigned>(o[5]), bits);
    EXPECT_EQ(o[6], w == 0 ? 1 : 0);
    EXPECT_EQ(o[7], 1);
  }
}

__global__ void partial_mask_kernel(int* out) {
  const int l = threadIdx.x % 32;
  // The two half-warps shuffle separately, at the same time.
  const unsigned mask = l < 16 ? 0x0000ffffu : 0xffff0000u;
  out[threadIdx.x] = __shfl_xor_sync(mask, l, 1) + 100 * __popc(__ballot_sync(mask, l % 2));
}

TEST(Emulator, PartialMasks) {
  std::vector<int> out(32);
  for (const Schedule& s : kAllOrders) {
    ScheduleGuard g(s);
    launch("partial_mask", partial_mask_kernel, 1, 32, 0, nullptr, out.data());
    for (int l = 0; l < 32; ++l) EXPECT_EQ(out[static_cast<size_t>(l)], (l ^ 1) + 800) << l;
  }
}

__global__ void divergent_shuffle_kernel(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x < 16) {
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  } else {
    v = __shfl_xor_sync(0xffffffffu, v, 2);
  }
  out[threadIdx.x] = v;
}
__global__ void not_in_mask_kernel(int* out) { out[threadIdx.x] = __shfl_sync(0x1u, 1, 0); }
__global__ void missing_lane_kernel(int* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_sync(0xffffffffu, 1, 0);
}
__global__ void full_mask_kernel(int* out) { out[threadIdx.x] = __shfl_sync(0xffffffffu, 1, 0); }
__global__ void shuffle_vs_barrier_kernel(int* out) {
  if (threadIdx.x == 0)
    __syncthreads();
  else
    out[threadIdx.x] = __shfl_sync(0xffffffffu, 1, 1);  // waits for lane 0, which waits at the barrier
}

TEST(Emulator, WarpCollectiveErrors) {
  std::vector<int> out(48);
  expect_emu_error({"divergent warp collectives", "__shfl_xor_sync", "test_emu.cpp:"},
                   [&] { launch("divergent_shuffle", divergent_shuffle_kernel, 1, 32, 0, nullptr, out.data()); });
  expect_emu_error({"not in its mask"},
                   [&] { launch("not_in_mask", not_in_mask_kernel, 1, 32, 0, nullptr, out.data()); });
  for (const Schedule& s : kAllOrders) {
    ScheduleGuard g(s);
    const std::string m = emu_error([&] { launch("missing", missing_lane_kernel, 1, 32, 0, nullptr, out.data()); });
    EXPECT_TRUE(m.find("has exited") != std::string::npos || m.find("exits while lane") != std::string::npos) << m;
  }
  // A block of 48: the second warp has 16 lanes, and a full mask names lanes that do not exist.
  expect_emu_error({"do not exist", "16 threads"},
                   [&] { launch("short_warp", full_mask_kernel, 1, 48, 0, nullptr, out.data()); });
  expect_emu_error({"deadlock", "__syncthreads", "__shfl_sync"},
                   [&] { launch("shuffle_vs_barrier", shuffle_vs_barrier_kernel, 1, 32, 0, nullptr, out.data()); });
}

// ------------------------------------------------------------------ cp.async
// Rows of 8 floats (32 bytes = two 16-byte copies) of `in` into shared memory
// as two commit groups; `waits`: 0 = none (the broken kernel), 1 = only the
// first group, 2 = both.
__global__ void cp_async_kernel(const float* in, float* out, int waits) {
  S2H_SHARED_ALIGNED(16, float, tile, [2][64]);
  const int t = threadIdx.x;  // 16 threads: one 16-byte piece of each group each
  cp_async16(&tile[0][4 * t], in + 4 * t);
  cp_async_commit();
  cp_async16(&tile[1][4 * t], in + 64 + 4 * t);
  cp_async_commit();
  if (waits == 1) cp_async_wait<1>();
  if (waits == 2) cp_async_wait<0>();
  __syncthreads();
  for (int i = 0; i < 4; ++i) {
    out[4 * t + i] = tile[0][4 * t + i];
    out[64 + 4 * t + i] = tile[1][4 * t + i];
  }
  if (waits < 2) cp_async_wait<0>();  // retire the rest before exiting
}

TEST(Emulator, CpAsyncLandsAtTheWaitThatCoversIt) {
  const std::vector<float> in = iota_floats(128);
  std::vector<float> out(128);
  launch("cp_async", cp_async_kernel, 1, 16, 0, nullptr, in.data(), out.data(), 2);
  EXPECT_EQ(out, in);
  launch("cp_async", cp_async_kernel, 1, 16, 0, nullptr, in.data(), out.data(), 1);
  for (int i = 0; i < 64; ++i) EXPECT_EQ(out[static_cast<size_t>(i)], in[static_cast<size_t>(i)]);
  for (int i = 64; i < 128; ++i) EXPECT_TRUE(is_poison(out[static_cast<size_t>(i)])) << "group 2 was not waited for";
}

// Broken kernel 2: the missing cp.async wait.
TEST(Emulator, BrokenMissingCpAsyncWaitReadsPoison) {
  const std::vector<float> in = iota_floats(128);
  std::vector<float> out(128);
  for (const Schedule& s : kAllOrders) {
    ScheduleGuard g(s);
    launch("cp_async", cp_async_kernel, 1, 16, 0, nullptr, in.data(), out.data(), 0);
    for (float v : out) EXPECT_TRUE(is_poison(v)) << "data read before its cp.async wait";
  }
}

__global__ void cp_async_unwaited_kernel(const float* in) {
  S2H_SHARED_ALIGNED(16, float, tile, [64]);
  cp_async16(&tile[4 * threadIdx.x], in + 4 * threadIdx.x);
  cp_async_commit();
}
__global__ void cp_async_to_global_kernel(const float* in, float* out) { cp_async16(out, in); }

TEST(Emulator, CpAsyncErrors) {
  const std::vector<float> in = iota_floats(64);
  std::vector<float> out(64);
  expect_emu_error({"cp.async", "never", "unwaited"},
                   [&] { launch("unwaited", cp_async_unwaited_kernel, 1, 16, 0, nullptr, in.data()); });
  expect_emu_error({"cp.async", "not inside a shared-memory variable"},
                   [&] { launch("to_global", cp_async_to_global_kernel, 1, 1, 0, nullptr, in.data(), out.data()); });
}

// ------------------------------------------------------------------ ldmatrix and mma.sync
uint16_t bf16_bits_of(float f) { return emu::bf16_bits(f); }
float bf16_round(float f) { return emu::bf16_float(emu::bf16_bits(f)); }

// Four 8x8 b16 matrices in shared memory (matrix i, row r, column c holds
// 1000 i + 10 r + c); lanes give row addresses as ldmatrix wants; every lane
// writes the registers it got.
template <int N, bool T>
__global__ void ldmatrix_kernel(const uint16_t* mats, uint32_t* out) {
  S2H_SHARED_ALIGNED(16, uint16_t, sm, [4 * 8 * 8]);
  const int l = threadIdx.x;
  for (int i = l; i < 4 * 64; i += 32) sm[i] = mats[i];
  __syncthreads();
  const int row = l % 8, mat = (l / 8) % N;  // lanes past 8N give (ignored) copies
  const void* p = &sm[mat * 64 + row * 8];
  uint32_t r[N];
  ldsm<N, T>(r, p);
  for (int i = 0; i < N; ++i) out[4 * l + i] = r[i];
}

template <int N, bool T>
void check_ldmatrix() {
  std::vector<uint16_t> mats(4 * 64);
  for (int i = 0; i < 4; ++i)
    for (int r = 0; r < 8; ++r)
      for (int c = 0; c < 8; ++c)
        mats[static_cast<size_t>(i * 64 + r * 8 + c)] = static_cast<uint16_t>(1000 * i + 10 * r + c);
  std::vector<uint32_t> out(4 * 32);
  launch("ldmatrix", ldmatrix_kernel<N, T>, 1, 32, 0, nullptr, mats.data(), out.data());
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < N; ++i) {
      // PTX ISA: lane l holds row l/4, columns 2(l%4), 2(l%4)+1 (of the transpose with .trans).
      const int g = l / 4, t = l % 4;
      const int lo = T ? 1000 * i + 10 * (2 * t) + g : 1000 * i + 10 * g + 2 * t;
      const int hi = T ? 1000 * i + 10 * (2 * t + 1) + g : 1000 * i + 10 * g + 2 * t + 1;
      EXPECT_EQ(out[static_cast<size_t>(4 * l + i)], static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16)
          << "x" << N << (T ? ".trans" : "") << " lane " << l << " matrix " << i;
    }
}

TEST(Emulator, LdmatrixFragments) {
  check_ldmatrix<1, false>();
  check_ldmatrix<1, true>();
  check_ldmatrix<2, false>();
  check_ldmatrix<2, true>();
  check_ldmatrix<4, false>();
  check_ldmatrix<4, true>();
}

__global__ void ldmatrix_global_kernel(const uint16_t* g, uint32_t* out) {
  uint32_t r[4];
  ldsm<4, false>(r, g + 8 * (threadIdx.x % 8));
  out[threadIdx.x] = r[0];
}

TEST(Emulator, LdmatrixFromGlobalMemoryIsAnError) {
  std::vector<uint16_t> g(64 * 4);
  std::vector<uint32_t> out(32);
  expect_emu_error({"ldmatrix.x4", "not inside a shared-memory variable"},
                   [&] { launch("ldsm_global", ldmatrix_global_kernel, 1, 32, 0, nullptr, g.data(), out.data()); });
}

// D = A B + C for A 16x16 (row-major in shared memory, loaded with
// ldmatrix.x4 as attention.cu's ldsm_a does), B 16x8 stored [n][k] (ldmatrix.x2:
// matrix 0 = k 0..7, matrix 1 = k 8..15) and C, D in the accumulator layout.
__global__ void mma_kernel(const uint16_t* a, const uint16_t* b, const float* c, float* d) {
  S2H_SHARED_ALIGNED(16, uint16_t, as, [16 * 16]);
  S2H_SHARED_ALIGNED(16, uint16_t, bs, [8 * 16]);
  const int l = threadIdx.x, g = l / 4, t = l % 4;
  for (int i = l; i < 256; i += 32) as[i] = a[i];
  for (int i = l; i < 128; i += 32) bs[i] = b[i];
  __syncthreads();
  uint32_t af[4], bf[2];
  ldsm<4, false>(af, &as[(l % 16) * 16 + (l / 16) * 8]);
  ldsm<2, false>(bf, &bs[(l % 8) * 16 + ((l / 8) % 2) * 8]);
  float acc[4];
  for (int q = 0; q < 4; ++q) acc[q] = c[(g + 8 * (q / 2)) * 8 + 2 * t + q % 2];
  mma_bf16(acc, af, bf[0], bf[1]);
  for (int q = 0; q < 4; ++q) d[(g + 8 * (q / 2)) * 8 + 2 * t + q % 2] = acc[q];
}

TEST(Emulator, MmaM16n8k16Bf16) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<uint16_t> a(256), b(128);  // b: [n][k]
  std::vector<float> af(256), bf(128), c(128), d(128, 0.f);
  for (int i = 0; i < 256; ++i)
    a[static_cast<size_t>(i)] = bf16_bits_of(af[static_cast<size_t>(i)] = bf16_round(nd(rng)));
  for (int i = 0; i < 128; ++i)
    b[static_cast<size_t>(i)] = bf16_bits_of(bf[static_cast<size_t>(i)] = bf16_round(nd(rng)));
  for (float& v : c) v = nd(rng);
  launch("mma", mma_kernel, 1, 32, 0, nullptr, a.data(), b.data(), c.data(), d.data());
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      double s = c[static_cast<size_t>(m * 8 + n)];
      for (int k = 0; k < 16; ++k)
        s += static_cast<double>(af[static_cast<size_t>(m * 16 + k)]) * bf[static_cast<size_t>(n * 16 + k)];
      EXPECT_NEAR(d[static_cast<size_t>(m * 8 + n)], s, 1e-5 * (1 + std::abs(s))) << m << "," << n;
    }
}

// ------------------------------------------------------------------ WMMA
template <class LA, class LB>
__global__ void wmma_kernel(const __nv_bfloat16* a, const __nv_bfloat16* b, const float* c, float* d) {
  using namespace nvcuda;
  S2H_SHARED_ALIGNED(32, __nv_bfloat16, as, [16 * 24]);  // ldm 24: rows padded
  S2H_SHARED_ALIGNED(32, __nv_bfloat16, bs, [16 * 24]);
  for (int i = threadIdx.x; i < 16 * 24; i += 32) {
    as[i] = a[i];
    bs[i] = b[i];
  }
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, LA> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LB> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::load_matrix_sync(fa, as, 24);
  wmma::load_matrix_sync(fb, bs, 24);
  wmma::load_matrix_sync(fc, c, 16, wmma::mem_col_major);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(d, fc, 16, wmma::mem_row_major);
}

template <class LA, class LB>
void check_wmma() {
  constexpr bool ra = std::is_same_v<LA, nvcuda::wmma::row_major>, rb = std::is_same_v<LB, nvcuda::wmma::row_major>;
  std::mt19937 rng(4);
  std::normal_distribution<float> nd;
  std::vector<__nv_bfloat16> a(16 * 24), b(16 * 24);
  std::vector<float> A(256), B(256);
  alignas(32) float c[256], d[256];  // wmma pointers are 256-bit aligned
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      A[static_cast<size_t>(i * 16 + j)] = bf16_round(nd(rng));
      B[static_cast<size_t>(i * 16 + j)] = bf16_round(nd(rng));
      a[static_cast<size_t>(ra ? i * 24 + j : j * 24 + i)] = __float2bfloat16_rn(A[static_cast<size_t>(i * 16 + j)]);
      b[static_cast<size_t>(rb ? i * 24 + j : j * 24 + i)] = __float2bfloat16_rn(B[static_cast<size_t>(i * 16 + j)]);
      c[j * 16 + i] = static_cast<float>(i - j);  // col-major C(i, j)
    }
  launch("wmma", wmma_kernel<LA, LB>, 1, 32, 0, nullptr, a.data(), b.data(), c, d);
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      double s = i - j;
      for (int k = 0; k < 16; ++k)
        s += static_cast<double>(A[static_cast<size_t>(i * 16 + k)]) * B[static_cast<size_t>(k * 16 + j)];
      EXPECT_NEAR(d[i * 16 + j], s, 1e-5 * (1 + std::abs(s))) << ra << rb << " " << i << "," << j;
    }
}

TEST(Emulator, WmmaLoadMmaStore) {
  using nvcuda::wmma::col_major;
  using nvcuda::wmma::row_major;
  check_wmma<row_major, row_major>();
  check_wmma<row_major, col_major>();
  check_wmma<col_major, row_major>();
  check_wmma<col_major, col_major>();
}

__global__ void wmma_misaligned_kernel(const __nv_bfloat16* a, float* out) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::load_matrix_sync(fa, a + 8, 16);  // 16 bytes past a 32-byte boundary
  out[threadIdx.x] = static_cast<float>(fa.x[0]);
}

TEST(Emulator, WmmaAlignmentIsChecked) {
  std::vector<__nv_bfloat16> a(16 * 16 + 64);
  __nv_bfloat16* base = a.data();
  while (reinterpret_cast<uintptr_t>(base) % 32) ++base;
  std::vector<float> out(32);
  expect_emu_error({"wmma::load_matrix_sync", "256-bit"},
                   [&] { launch("wmma_misaligned", wmma_misaligned_kernel, 1, 32, 0, nullptr, base, out.data()); });
}

// ------------------------------------------------------------------ atomics, faults, exceptions
__global__ void atomic_kernel(float* sum, int* count) {
  atomicAdd(sum, 0.5f);
  atomicAdd(count, 1);
}

TEST(Emulator, AtomicsAcrossBlocks) {
  float sum = 0.f;
  int count = 0;
  launch("atomic", atomic_kernel, 7, 64, 0, nullptr, &sum, &count);
  EXPECT_EQ(count, 7 * 64);
  EXPECT_EQ(sum, 7 * 64 * 0.5f);
}

__global__ void trap_kernel(int* p) {
  if (threadIdx.x == 9) __trap();
  *p = 1;
}

TEST(Emulator, TrapNamesTheThread) {
  int x = 0;
  expect_emu_error({"trap", "__trap", "block (0,0,0)", "thread (9,0,0)"},
                   [&] { launch("trap", trap_kernel, 1, 32, 0, nullptr, &x); });
  launch("nop", nop_kernel, 1, 32, 0, nullptr, &x);  // the emulator is usable afterwards
  EXPECT_EQ(x, 1);
}

#ifndef S2H_EMU_ASAN  // ASan reports these faults itself
__global__ void wild_kernel(float* p) {
  if (threadIdx.x == 2) *reinterpret_cast<volatile float*>(p) = 1.f;  // p points nowhere
}

TEST(Emulator, InvalidAddressIsAnError) {
  expect_emu_error({"wild", "invalid memory access", "thread (2,0,0)"},
                   [&] { launch("wild", wild_kernel, 1, 32, 0, nullptr, reinterpret_cast<float*>(uintptr_t{16})); });
  int x = 0;
  launch("nop", nop_kernel, 1, 32, 0, nullptr, &x);
  EXPECT_EQ(x, 1);
}
#endif

TEST(Emulator, OutsideAKernelIsAnError) {
  EXPECT_THROW(__syncthreads(), EmuError);
  EXPECT_THROW((void)__shfl_sync(0xffffffffu, 1, 0), EmuError);
}

}  // namespace
}  // namespace s2h::cuda
