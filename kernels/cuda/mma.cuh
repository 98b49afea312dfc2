// Tensor-core and asynchronous-copy instructions as device functions: inline
// PTX on the GPU, the emulator's definitions from the PTX ISA in an S2H_EMU
// build (kernels/cuda/emu/emu.h). Kernels call these instead of writing asm at
// each use; WMMA comes from <mma.h> (or the emulator's wmma.h).
#pragma once

#include <cstdint>

#include "kernels/cuda/common.cuh"

#ifdef S2H_EMU
#include "kernels/cuda/emu/wmma.h"
// The emulator reports the caller of each wrapper as the place of the instruction.
#define S2H_CALLER , std::source_location s2h_caller = std::source_location::current()
#define S2H_AT , s2h_caller
#else
#include <mma.h>
#define S2H_CALLER
#define S2H_AT
#endif

namespace s2h::cuda {

#ifndef S2H_EMU
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

// 16-byte global -> shared copy that bypasses L1 (cp.async.cg); the data lands
// at the cp_async_wait that covers its commit group.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem S2H_CALLER) {
#ifdef S2H_EMU
  emu::cp_async(smem, gmem, 16 S2H_AT);
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(smem)), "l"(gmem) : "memory");
#endif
}
// Closes this thread's group of cp.async copies issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
#ifdef S2H_EMU
  emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef S2H_EMU
  emu::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// ldmatrix.sync.aligned.m8n8.x{N}[.trans].shared.b16 (N = 1, 2 or 4): lanes
// 8i..8i+7 give the row addresses (16 bytes each) of matrix i; lane l receives
// row l/4, elements 2(l%4) and 2(l%4)+1 of each matrix in r[i] (the lower
// index in the low half), or of its transpose with Trans. Volatile: the asm
// reads shared memory that other threads wrote, so it stays after the
// preceding cp_async_wait / __syncthreads.
template <int N, bool Trans>
__device__ __forceinline__ void ldsm(uint32_t (&r)[N], const void* p S2H_CALLER) {
  static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
#ifdef S2H_EMU
  emu::ldmatrix(r, N, Trans, p S2H_AT);
#else
// The instruction with its register list (the address is operand N, after the N outputs).
#define S2H_LDSM(shape, regs, addr, ...) \
  asm volatile("ldmatrix.sync.aligned.m8n8." shape ".shared.b16 " regs ", [%" addr "];\n" : __VA_ARGS__ : "r"(smem_u32(p)))
  if constexpr (N == 4 && Trans)
    S2H_LDSM("x4.trans", "{%0, %1, %2, %3}", "4", "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]));
  else if constexpr (N == 4)
    S2H_LDSM("x4", "{%0, %1, %2, %3}", "4", "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]));
  else if constexpr (N == 2 && Trans)
    S2H_LDSM("x2.trans", "{%0, %1}", "2", "=r"(r[0]), "=r"(r[1]));
  else if constexpr (N == 2)
    S2H_LDSM("x2", "{%0, %1}", "2", "=r"(r[0]), "=r"(r[1]));
  else if constexpr (Trans)
    S2H_LDSM("x1.trans", "{%0}", "1", "=r"(r[0]));
  else
    S2H_LDSM("x1", "{%0}", "1", "=r"(r[0]));
#undef S2H_LDSM
#endif
}

// c += a * b: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, with g =
// lane / 4, t = lane % 4 (the PTX ISA's "Matrix Fragments for mma.m16n8k16
// with floating point type"):
//   a (16 x 16, row-major): a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1],
//                           a[2] = A[g][2t+8, 2t+9], a[3] = A[g+8][2t+8, 2t+9]
//   b (16 x 8, "col"):      b0 = B[2t, 2t+1][g], b1 = B[2t+8, 2t+9][g]
//   c (16 x 8, f32):        c[0], c[1] = C[g][2t, 2t+1]; c[2], c[3] = C[g+8][2t, 2t+1]
// (two bf16 in one register: the lower index in the low half). Not volatile:
// a pure function of its operands.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1 S2H_CALLER) {
#ifdef S2H_EMU
  const uint32_t b[2] = {b0, b1};
  emu::mma_m16n8k16_bf16(c, a, b, c S2H_AT);
#else
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

}  // namespace s2h::cuda

#undef S2H_CALLER
#undef S2H_AT
