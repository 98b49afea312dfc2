// Fused multi-tensor SGD and AdamW. The parameter table travels as one
// __grid_constant__ kernel parameter (up to 32764 bytes since CUDA 12.1 on
// sm_70+), so a step is one launch with no upload. Every tensor is cut into
// chunks of kChunk elements; block b updates chunk b, finding its tensor by a
// binary search over the chunk offsets in the table.
#include <climits>
#include <memory>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/optim.h"

namespace s2h::cuda {

namespace {

constexpr int64_t kChunk = 4096;  // elements per block
constexpr int kBlock = 256;       // 16 elements per thread and chunk
constexpr int kGradBf16 = 1, kFirst = 2;

struct SgdEntry {
  float* p;
  const void* g;
  float* buf;  // null without momentum
  int64_t n;
  int64_t chunk_start;  // index of this tensor's first chunk in the launch
  float lr, wd;
  int flags;
};

constexpr int kMaxSgd = 512;
struct SgdTable {
  int count;
  float momentum, damp;
  int nesterov;
  SgdEntry e[kMaxSgd];
};
static_assert(sizeof(SgdTable) <= 32764, "SGD table exceeds the kernel parameter limit");

struct AdamWEntry {
  float* p;
  const void* g;
  float* m;
  float* v;
  int64_t n;
  int64_t chunk_start;
  float decay, step_size, sqrt_bc2;
  int flags;
};

constexpr int kMaxAdamW = 480;
struct AdamWTable {
  int count;
  float beta1, beta2, one_minus_beta1, one_minus_beta2, eps;
  AdamWEntry e[kMaxAdamW];
};
static_assert(sizeof(AdamWTable) <= 32764, "AdamW table exceeds the kernel parameter limit");

// The last entry whose first chunk is <= chunk (entries are in chunk order
// and none is empty, so it is the one that holds the chunk).
template <class Table>
__device__ __forceinline__ int entry_of(const Table& t, int64_t chunk) {
  int lo = 0, hi = t.count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (t.e[mid].chunk_start <= chunk) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

__device__ __forceinline__ float load_grad(const void* g, bool bf16, int64_t i) {
  return bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(g)[i]) : static_cast<const float*>(g)[i];
}

__global__ void __launch_bounds__(kBlock) sgd_kernel(const __grid_constant__ SgdTable t) {
  const int64_t chunk = blockIdx.x;
  const SgdEntry& e = t.e[entry_of(t, chunk)];
  const int64_t begin = (chunk - e.chunk_start) * kChunk;
  const int64_t end = min(e.n, begin + kChunk);
  const bool bf16 = (e.flags & kGradBf16) != 0, first = (e.flags & kFirst) != 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kBlock) {
    const float w = e.p[i];
    float d = load_grad(e.g, bf16, i) + e.wd * w;
    if (e.buf) {
      const float b = first ? d : t.momentum * e.buf[i] + t.damp * d;
      e.buf[i] = b;
      d = t.nesterov ? d + t.momentum * b : b;
    }
    e.p[i] = w - e.lr * d;
  }
}

__global__ void __launch_bounds__(kBlock) adamw_kernel(const __grid_constant__ AdamWTable t) {
  const int64_t chunk = blockIdx.x;
  const AdamWEntry& e = t.e[entry_of(t, chunk)];
  const int64_t begin = (chunk - e.chunk_start) * kChunk;
  const int64_t end = min(e.n, begin + kChunk);
  const bool bf16 = (e.flags & kGradBf16) != 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kBlock) {
    const float g = load_grad(e.g, bf16, i);
    const float w = e.p[i] * e.decay;
    const float m = t.beta1 * e.m[i] + t.one_minus_beta1 * g;
    const float v = t.beta2 * e.v[i] + t.one_minus_beta2 * g * g;
    e.m[i] = m;
    e.v[i] = v;
    e.p[i] = w - e.step_size * m / (sqrtf(v) / e.sqrt_bc2 + t.eps);
  }
}

int64_t chunks_of(int64_t n) { return (n + kChunk - 1) / kChunk; }

void check_grid(int64_t chunks, const char* op) {
  if (chunks > INT_MAX) throw CudaError(std::string(op) + ": too many elements for one launch");
}

}  // namespace

void sgd_step(const SgdParam* params, int64_t count, float momentum, float damp, bool nesterov, Stream stream) {
  auto t = std::make_unique<SgdTable>();  // ~28 KiB: not on the stack
  t->momentum = momentum;
  t->damp = damp;
  t->nesterov = nesterov ? 1 : 0;
  int64_t i = 0;
  while (i < count) {
    t->count = 0;
    int64_t chunks = 0;
    for (; i < count && t->count < kMaxSgd; ++i) {
      const SgdParam& p = params[i];
      if (p.n == 0) continue;
      SgdEntry& e = t->e[t->count++];
      e.p = p.param;
      e.g = p.grad;
      e.buf = p.momentum;
      e.n = p.n;
      e.chunk_start = chunks;
      e.lr = p.lr;
      e.wd = p.weight_decay;
      e.flags = (p.grad_bf16 ? kGradBf16 : 0) | (p.first ? kFirst : 0);
      chunks += chunks_of(p.n);
    }
    if (t->count == 0) continue;
    check_grid(chunks, "SGD step");
    launch("sgd_kernel", sgd_kernel, static_cast<unsigned>(chunks), kBlock, 0, stream, *t);
  }
}

void adamw_step(const AdamWParam* params, int64_t count, float beta1, float beta2, float eps, Stream stream) {
  auto t = std::make_unique<AdamWTable>();
  t->beta1 = beta1;
  t->beta2 = beta2;
  t->one_minus_beta1 = 1.f - beta1;  // in float, as the CPU loop computes T(1) - b1
  t->one_minus_beta2 = 1.f - beta2;
  t->eps = eps;
  int64_t i = 0;
  while (i < count) {
    t->count = 0;
    int64_t chunks = 0;
    for (; i < count && t->count < kMaxAdamW; ++i) {
      const AdamWParam& p = params[i];
      if (p.n == 0) continue;
      AdamWEntry& e = t->e[t->count++];
      e.p = p.param;
      e.g = p.grad;
      e.m = p.exp_avg;
      e.v = p.exp_avg_sq;
      e.n = p.n;
      e.chunk_start = chunks;
      e.decay = p.decay;
      e.step_size = p.step_size;
      e.sqrt_bc2 = p.sqrt_bc2;
      e.flags = p.grad_bf16 ? kGradBf16 : 0;
      chunks += chunks_of(p.n);
    }
    if (t->count == 0) continue;
    check_grid(chunks, "AdamW step");
    launch("adamw_kernel", adamw_kernel, static_cast<unsigned>(chunks), kBlock, 0, stream, *t);
  }
}

}  // namespace s2h::cuda
