// Fused multi-head attention for sm_90 (FlashAttention-2 algorithm, v1):
// bf16 q/k/v/out, fp32 logits, softmax and accumulation, head dim 64 or 128,
// bidirectional, with key padding, per-head output scale and skipped heads
// (the contract is kernels/cuda/attention.h).
//
// Algorithm
// - Forward (attn_fwd_kernel): one block of 4 warps per (64-query tile, head,
//   batch). Each warp owns 16 query rows; its Q fragments stay in registers.
//   Key tiles of 64 keys (K, V and the key biases) stream through shared
//   memory, double-buffered with cp.async. Per key tile and warp:
//   S = Q K^T (16 x 64, registers), x = fma(S, scale, bias) + unbias (bias:
//   0, -1e9 for padded keys, -inf past the end), online softmax (row max and
//   rescale per tile, quad shuffles), P rounded to bf16 and used straight from
//   the accumulator registers as the A operand of O += P V. At the end
//   O /= l; out = head_scale * O, out_unscaled = O, lse = m + log(l).
// - Backward (deterministic, no atomics), three launches:
//   1. attn_bwd_preprocess_kernel: delta = hs * rowsum(dout * O_u) and
//      dhead_scale_rows = rowsum(dout * O_u), one warp per row.
//   2. attn_bwd_dkdv_kernel: one block per (64-key tile, head, batch); each warp
//      owns 16 keys and works in the transposed orientation, so that nothing
//      crosses warps: S^T = K Q^T, P^T = exp(x - lse), dV += P^T dout,
//      dP^T = V dout^T, dS^T = P^T (hs dP^T - delta), dK += dS^T Q. Query tiles
//      (Q, dout, lse, delta) stream through shared memory, double-buffered.
//      dV *= hs and dK *= scale at the end (dO_eff = hs * dout).
//   3. attn_bwd_dq_kernel: one block per (64-query tile, head, batch), loops
//      over key tiles like the forward: S, P, dP = dout V^T, dS, dQ += dS K;
//      dQ *= scale at the end.
// - Key padding is the CPU path's additive fp32 -1e9. One exception, so that
//   the backward can recompute P: when every key of a batch element is padded
//   (then every logit is -1e9 + y, quantised to steps of 64 in fp32, and
//   m + log(l) would round back to m, losing log(l)), all kernels add 1e9 back
//   to the logit ("unbias", exact by Sterbenz) and lse is stored in those
//   shifted units (true lse + 1e9). The softmax itself is unchanged.
//
// Tensor cores: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, fragments
// as in the PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point
// type"), with g = lane / 4, t = lane % 4:
//   A (16 x 16, row-major): a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1],
//                           a[2] = A[g][2t+8, 2t+9], a[3] = A[g+8][2t+8, 2t+9]
//   B (16 x 8, "col"):      b[0] = B[2t, 2t+1][g], b[1] = B[2t+8, 2t+9][g]
//   C (16 x 8, f32):        c[0], c[1] = C[g][2t, 2t+1]; c[2], c[3] = C[g+8][2t, 2t+1]
// (two bf16 in one register: the lower column/row index in the low half).
// Fragments come from shared memory through ldmatrix.m8n8.x4 (lanes 8i..8i+7
// give the row addresses of matrix i; lane l receives row l/4, elements
// 2(l%4), 2(l%4)+1 of each matrix, or of its transpose with .trans):
//   ldsm_a   A operand, 16 rows x 16 cols of a row-major tile at (r0, c0):
//            lane address (r0 + l%16, c0 + (l/16)*8) -> a[0..3].
//   ldsm_b   two B operands (n-tiles n0 and n0+8, k = c0..c0+15) from a tile
//            stored [n][k] (K for S = Q K^T): lane address
//            (n0 + l%8 + (l/16)*8, c0 + ((l/8)%2)*8) -> {r0, r1} for n0, {r2, r3} for n0+8.
//   ldsm_bt  two B operands (n-tiles c0 and c0+8, k = r0..r0+15) from a tile
//            stored [k][n] (V for O = P V), with .trans: lane address
//            (r0 + l%16, c0 + (l/16)*8) -> {r0, r1} for c0, {r2, r3} for c0+8.
// An accumulator tile pair C[:, 16j..16j+15] becomes the A operand of the next
// product (k = 16j..16j+15) as a = {pack(c[2j][0..1]), pack(c[2j][2..3]),
// pack(c[2j+1][0..1]), pack(c[2j+1][2..3])}.
//
// Tiles and shared memory (rows padded to D + 8 elements, so that the 8 rows
// of an ldmatrix hit 8 different 16-byte bank groups; L = D + 8). The backward
// streams tiles of T = 64 rows for D = 64 and T = 32 for D = 128 (with 64 the
// D = 128 kernels need more than 255 registers and spill):
//   forward  Q 64xL + K 2x64xL + V 2x64xL (bf16) + bias 2x64 (f32):
//            D=64: 46,592 B; D=128: 87,552 B
//   dK/dV    K 64xL + V 64xL + Q 2xTxL + dout 2xTxL + lse, delta 2xT each:
//            D=64: 56,320 B; D=128: 70,144 B
//   dQ       Q 64xL + dout 64xL + K 2xTxL + V 2xTxL + bias 2xT:
//            D=64: 55,808 B; D=128: 69,888 B
// All blocks are 128 threads (4 warps), at most 2 blocks per SM by registers
// (__launch_bounds__(128, 2); ptxas reports 165-251 registers, no spills).
//
// Not in v1: wgmma / TMA (sm_90a), warp specialisation, causal masking,
// swizzled (instead of padded) shared memory, register-resident Q / dout in
// the backward, 16-byte output stores through shared memory, splitting the
// key range of long sequences over several blocks.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/common.cuh"

namespace s2h::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kTile = 64;  // query and key tile (rows); 16 per warp
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kMaskedLogit = -1e9f;  // the CPU path's additive padding bias

// ------------------------------------------------------------------ PTX helpers
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy that bypasses L1; completes at cp_async_wait.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(smem)), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ldmatrix reads shared memory that other threads wrote: volatile keeps it
// after the preceding cp_async_wait / __syncthreads.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

// c += a * b (16x8x16, bf16 in, f32 accumulate). Not volatile: a pure function of its operands.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
               "{%0, %1, %2, %3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as a bf16 pair: `lo` in the low 16 bits (the lower index).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// ------------------------------------------------------------------ fragment loads (see the top comment)
// A operand: rows r0..r0+15, cols c0..c0+15 of a row-major [rows][L] tile.
template <int L>
__device__ __forceinline__ void ldsm_a(uint32_t (&a)[4], const bf16* tile, int r0, int c0, int lane) {
  ldsm_x4(a, tile + (r0 + (lane & 15)) * L + c0 + ((lane >> 4) << 3));
}
// B operands of n-tiles n0 and n0+8 (k = c0..c0+15) from a tile stored [n][k].
template <int L>
__device__ __forceinline__ void ldsm_b(uint32_t (&b)[4], const bf16* tile, int n0, int c0, int lane) {
  ldsm_x4(b, tile + (n0 + (lane & 7) + ((lane >> 4) << 3)) * L + c0 + (((lane >> 3) & 1) << 3));
}
// B operands of n-tiles c0 and c0+8 (k = r0..r0+15) from a tile stored [k][n].
template <int L>
__device__ __forceinline__ void ldsm_bt(uint32_t (&b)[4], const bf16* tile, int r0, int c0, int lane) {
  ldsm_x4_trans(b, tile + (r0 + (lane & 15)) * L + c0 + ((lane >> 4) << 3));
}
// Accumulator n-tiles 2j, 2j+1 (16 columns) as the A operand over k = those columns.
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack_bf16(c0[0], c0[1]);
  a[1] = pack_bf16(c0[2], c0[3]);
  a[2] = pack_bf16(c1[0], c1[1]);
  a[3] = pack_bf16(c1[2], c1[3]);
}

// ------------------------------------------------------------------ tiles and masks
// Rows [0, R) x D of a bf16 matrix (row stride `stride` elements, unit column
// stride) into shared memory [R][D + 8]: rows < nvalid by cp.async, the rest
// zero-filled by plain stores (visible after the next __syncthreads).
template <int D, int R>
__device__ __forceinline__ void load_tile(bf16* smem, const bf16* gmem, int64_t stride, int nvalid) {
  constexpr int kChunks = D / 8;  // 16-byte pieces per row
  static_assert((R * kChunks) % kThreads == 0, "tile pieces must divide among the threads");
#pragma unroll
  for (int it = 0; it < R * kChunks / kThreads; ++it) {
    const int c = it * kThreads + static_cast<int>(threadIdx.x);
    const int r = c / kChunks, col = (c % kChunks) * 8;
    bf16* dst = smem + r * (D + 8) + col;
    if (r < nvalid) {
      cp_async16(dst, gmem + r * stride + col);
    } else {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

// Rows of a tile of `tile` rows that lie before the end (`left` = s - first row > 0).
__device__ __forceinline__ int tile_rows(int tile, int64_t left) {
  return left < tile ? static_cast<int>(left) : tile;
}

// The additive bias of key j: -inf past the end, -1e9 where padded, else 0.
__device__ __forceinline__ float key_bias(const uint8_t* pad_b, int64_t j, int64_t s) {
  if (j >= s) return -INFINITY;
  return (pad_b != nullptr && pad_b[j] != 0) ? kMaskedLogit : 0.f;
}

// 1e9 when every key of this batch element is padded (see the top comment),
// else 0. Block-uniform; contains a barrier, so the whole block must call it.
// Cheap in the usual case: a batch element whose first key is not padded.
__device__ __forceinline__ float unbias_for(const uint8_t* pad_b, int64_t s) {
  if (pad_b == nullptr || pad_b[0] == 0) return 0.f;  // the same byte for every thread
  int any_kept = 0;
  for (int64_t j = threadIdx.x; j < s; j += blockDim.x) any_kept |= (pad_b[j] == 0);
  return __syncthreads_or(any_kept) ? 0.f : -kMaskedLogit;
}

// The scaled, padded logit; the one formula of all kernels, so that the
// backward recomputes exactly the forward's logits.
__device__ __forceinline__ float logit(float acc, float scale, float bias, float unbias) {
  return __fadd_rn(__fmaf_rn(acc, scale, bias), unbias);
}

// Offset of row i, head hh of the contiguous [b, s, h, D] tensors.
__device__ __forceinline__ int64_t row_offset(int64_t bb, int64_t i, int64_t hh, const AttentionShape& sh, int d) {
  return ((bb * sh.s + i) * sh.h + hh) * d;
}

// Zeroes rows [r0, r0 + n) of head hh, batch bb of a contiguous [b, s, h, D] bf16 tensor (whole block).
template <int D>
__device__ __forceinline__ void zero_rows(bf16* dst, int64_t bb, int64_t r0, int n, int64_t hh,
                                          const AttentionShape& sh) {
  if (dst == nullptr) return;
  constexpr int kChunks = D / 8;
  for (int c = threadIdx.x; c < n * kChunks; c += blockDim.x) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    *reinterpret_cast<uint4*>(dst + row_offset(bb, r0 + r, hh, sh, D) + col) = make_uint4(0u, 0u, 0u, 0u);
  }
}

// ------------------------------------------------------------------ forward
template <int D>
__global__ void __launch_bounds__(kThreads, 2)
    attn_fwd_kernel(AttentionShape sh, AttentionMasks mk, const bf16* __restrict__ q, const bf16* __restrict__ k,
                    const bf16* __restrict__ v, bf16* out, bf16* out_u, float* __restrict__ lse) {
  constexpr int L = D + 8, Br = kTile, Bc = kTile;
  const int64_t s = sh.s, bb = blockIdx.z, hh = blockIdx.y;
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * Br;
  const int nq = tile_rows(Br, s - q0);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;

  if (mk.head_keep != nullptr && mk.head_keep[hh] == 0) {  // skipped head (block-uniform, before any barrier)
    zero_rows<D>(out, bb, q0, nq, hh, sh);
    zero_rows<D>(out_u, bb, q0, nq, hh, sh);
    for (int r = tid; r < nq; r += kThreads) lse[(bb * sh.h + hh) * s + q0 + r] = 0.f;
    return;
  }
  const float hs = mk.head_scale != nullptr ? mk.head_scale[hh] : 1.f;
  const float scale = sh.softmax_scale;
  const uint8_t* pad_b = mk.key_padding != nullptr ? mk.key_padding + bb * s : nullptr;
  const float unbias = unbias_for(pad_b, s);

  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);                 // [Br][L]
  bf16* Ks = Qs + Br * L;                                       // [2][Bc][L]
  bf16* Vs = Ks + 2 * Bc * L;                                   // [2][Bc][L]
  float* bias_s = reinterpret_cast<float*>(Vs + 2 * Bc * L);   // [2][Bc]

  const int64_t head = bb * sh.stride_b + hh * sh.stride_h;
  auto load_kv = [&](int kt, int buf) {
    const int64_t k0 = static_cast<int64_t>(kt) * Bc;
    const int nk = tile_rows(Bc, s - k0);
    load_tile<D, Bc>(Ks + buf * Bc * L, k + head + k0 * sh.stride_s, sh.stride_s, nk);
    load_tile<D, Bc>(Vs + buf * Bc * L, v + head + k0 * sh.stride_s, sh.stride_s, nk);
    if (tid < Bc) bias_s[buf * Bc + tid] = key_bias(pad_b, k0 + tid, s);
  };

  load_tile<D, Br>(Qs, q + head + q0 * sh.stride_s, sh.stride_s, nq);
  cp_async_commit();
  load_kv(0, 0);
  cp_async_commit();
  cp_async_wait<1>();  // Q has landed
  __syncthreads();
  uint32_t qf[D / 16][4];  // this warp's 16 query rows as A operands, k = 16 kk..
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) ldsm_a<L>(qf[kk], Qs, warp * 16, kk * 16, lane);

  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float mrow[2] = {-INFINITY, -INFINITY};  // running max of rows g, g+8
  float lrow[2] = {0.f, 0.f};              // this lane's part of the running sum (quad-reduced at the end)

  const int nkt = static_cast<int>((s + Bc - 1) / Bc);
  for (int kt = 0; kt < nkt; ++kt) {
    const int buf = kt & 1;
    if (kt + 1 < nkt) load_kv(kt + 1, buf ^ 1);  // the other buffer: free since the barrier ending kt-1
    cp_async_commit();                           // (possibly empty group: keeps the count uniform)
    cp_async_wait<1>();                          // tile kt has landed
    __syncthreads();
    const bf16* Kb = Ks + buf * Bc * L;
    const bf16* Vb = Vs + buf * Bc * L;
    const float* bias = bias_s + buf * Bc;

    // S = Q K^T: [16 rows] x [Bc keys] per warp.
    float sacc[Bc / 8][4];
#pragma unroll
    for (int n = 0; n < Bc / 8; ++n) sacc[n][0] = sacc[n][1] = sacc[n][2] = sacc[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < Bc / 16; ++np) {
        uint32_t b[4];
        ldsm_b<L>(b, Kb, np * 16, kk * 16, lane);
        mma_bf16(sacc[2 * np], qf[kk], b[0], b[1]);
        mma_bf16(sacc[2 * np + 1], qf[kk], b[2], b[3]);
      }
    }

    // Logits, then the online softmax update of rows g (e = 0, 1) and g+8 (e = 2, 3).
    float mx[2] = {mrow[0], mrow[1]};
#pragma unroll
    for (int n = 0; n < Bc / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float x = logit(sacc[n][e], scale, bias[n * 8 + 2 * t + (e & 1)], unbias);
        sacc[n][e] = x;
        mx[e >> 1] = fmaxf(mx[e >> 1], x);
      }
    }
    float alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      // The 4 lanes of a quad hold the same row.
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      // Finite: key 0 exists and is at worst -1e9 (or 64k when unbiased).
      alpha[r] = exp2f((mrow[r] - mx[r]) * kLog2e);  // 0 on the first tile (mrow = -inf)
      mrow[r] = mx[r];
      lrow[r] *= alpha[r];
    }
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      o[n][0] *= alpha[0];
      o[n][1] *= alpha[0];
      o[n][2] *= alpha[1];
      o[n][3] *= alpha[1];
    }
#pragma unroll
    for (int n = 0; n < Bc / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float p = exp2f((sacc[n][e] - mrow[e >> 1]) * kLog2e);  // keys past the end: exp2(-inf) = 0
        sacc[n][e] = p;
        lrow[e >> 1] += p;
      }
    }

    // O += P V (P as bf16 A operands straight from the accumulators).
#pragma unroll
    for (int kk = 0; kk < Bc / 16; ++kk) {
      uint32_t a[4];
      acc_to_a(a, sacc[2 * kk], sacc[2 * kk + 1]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b[4];
        ldsm_bt<L>(b, Vb, kk * 16, dp * 16, lane);
        mma_bf16(o[2 * dp], a, b[0], b[1]);
        mma_bf16(o[2 * dp + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // everyone is done with `buf` before the next iteration refills it
  }

  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 1);
    lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 2);
    inv[r] = 1.f / lrow[r];  // l >= 1 (the max term contributes exp(0))
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = q0 + warp * 16 + g + 8 * r;
    if (i >= s) continue;
    const int64_t row = row_offset(bb, i, hh, sh, D);
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const int d = n * 8 + 2 * t;
      const float o0 = o[n][2 * r] * inv[r], o1 = o[n][2 * r + 1] * inv[r];
      *reinterpret_cast<uint32_t*>(out + row + d) = pack_bf16(hs * o0, hs * o1);
      if (out_u != nullptr) *reinterpret_cast<uint32_t*>(out_u + row + d) = pack_bf16(o0, o1);
    }
    if (t == 0) lse[(bb * sh.h + hh) * s + i] = mrow[r] + logf(lrow[r]);
  }
}

// ------------------------------------------------------------------ backward
// delta[b,h,i] = hs * sum_d dout * O_u; dhs_rows[b,h,i] = sum_d dout * O_u; zeros for skipped heads.
template <int D>
__global__ void attn_bwd_preprocess_kernel(AttentionShape sh, AttentionMasks mk, const bf16* __restrict__ out_u,
                                           const bf16* __restrict__ dout, float* __restrict__ delta,
                                           float* __restrict__ dhs_rows) {
  const int64_t rows = sh.b * sh.h * sh.s;
  const int lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int64_t step = static_cast<int64_t>(gridDim.x) * warps;
  // r is the same for the 32 lanes of a warp, so the loop and warp_sum are warp-uniform.
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * warps + threadIdx.x / 32; r < rows; r += step) {
    const int64_t i = r % sh.s, bh = r / sh.s, hh = bh % sh.h, bb = bh / sh.h;
    const bool keep = mk.head_keep == nullptr || mk.head_keep[hh] != 0;
    float sum = 0.f;
    if (keep) {
      const int64_t row = row_offset(bb, i, hh, sh, D);
#pragma unroll
      for (int d = lane * 2; d < D; d += 64) {
        const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(dout + row + d));
        const float2 o = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(out_u + row + d));
        sum += a.x * o.x + a.y * o.y;
      }
    }
    sum = warp_sum(sum);
    if (lane == 0) {
      const float hs = (keep && mk.head_scale != nullptr) ? mk.head_scale[hh] : 1.f;
      delta[r] = keep ? hs * sum : 0.f;
      if (dhs_rows != nullptr) dhs_rows[r] = keep ? sum : 0.f;
    }
  }
}

// dK, dV of one 64-key tile (see the top comment); query tiles of Br rows.
template <int D, int Br>
__global__ void __launch_bounds__(kThreads, 2)
    attn_bwd_dkdv_kernel(AttentionShape sh, AttentionMasks mk, const bf16* __restrict__ q, const bf16* __restrict__ k,
                         const bf16* __restrict__ v, const bf16* __restrict__ dout, const float* __restrict__ lse,
                         const float* __restrict__ delta, bf16* __restrict__ dk, bf16* __restrict__ dv) {
  constexpr int L = D + 8, Bc = kTile;
  const int64_t s = sh.s, bb = blockIdx.z, hh = blockIdx.y;
  const int64_t k0 = static_cast<int64_t>(blockIdx.x) * Bc;
  const int nk = tile_rows(Bc, s - k0);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;

  if (mk.head_keep != nullptr && mk.head_keep[hh] == 0) {  // skipped head: zero gradients
    zero_rows<D>(dk, bb, k0, nk, hh, sh);
    zero_rows<D>(dv, bb, k0, nk, hh, sh);
    return;
  }
  const float hs = mk.head_scale != nullptr ? mk.head_scale[hh] : 1.f;
  const float scale = sh.softmax_scale;
  const uint8_t* pad_b = mk.key_padding != nullptr ? mk.key_padding + bb * s : nullptr;
  const float unbias = unbias_for(pad_b, s);
  // This lane's keys (rows g and g+8 of the warp's 16) and their biases.
  float kbias[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) kbias[r] = key_bias(pad_b, k0 + warp * 16 + g + 8 * r, s);

  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Ks = reinterpret_cast<bf16*>(smem_raw);                  // [Bc][L]
  bf16* Vs = Ks + Bc * L;                                        // [Bc][L]
  bf16* Qs = Vs + Bc * L;                                        // [2][Br][L]
  bf16* dOs = Qs + 2 * Br * L;                                   // [2][Br][L]
  float* lse_s = reinterpret_cast<float*>(dOs + 2 * Br * L);    // [2][Br]
  float* delta_s = lse_s + 2 * Br;                               // [2][Br]

  const int64_t head = bb * sh.stride_b + hh * sh.stride_h;
  const int64_t rows_bh = (bb * sh.h + hh) * s;  // lse / delta offset of (bb, hh)
  auto load_q = [&](int it, int buf) {
    const int64_t i0 = static_cast<int64_t>(it) * Br;
    const int nq = tile_rows(Br, s - i0);
    load_tile<D, Br>(Qs + buf * Br * L, q + head + i0 * sh.stride_s, sh.stride_s, nq);
    load_tile<D, Br>(dOs + buf * Br * L, dout + row_offset(bb, i0, hh, sh, D), sh.h * D, nq);
    if (tid < Br) {
      // Rows past the end: lse = +inf makes P = 0 (x - inf = -inf, also for x = -inf), delta = 0.
      const bool ok = i0 + tid < s;
      lse_s[buf * Br + tid] = ok ? lse[rows_bh + i0 + tid] : INFINITY;
      delta_s[buf * Br + tid] = ok ? delta[rows_bh + i0 + tid] : 0.f;
    }
  };

  load_tile<D, Bc>(Ks, k + head + k0 * sh.stride_s, sh.stride_s, nk);
  load_tile<D, Bc>(Vs, v + head + k0 * sh.stride_s, sh.stride_s, nk);
  load_q(0, 0);
  cp_async_commit();

  float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    dka[n][0] = dka[n][1] = dka[n][2] = dka[n][3] = 0.f;
    dva[n][0] = dva[n][1] = dva[n][2] = dva[n][3] = 0.f;
  }

  const int nqt = static_cast<int>((s + Br - 1) / Br);
  for (int it = 0; it < nqt; ++it) {
    const int buf = it & 1;
    if (it + 1 < nqt) load_q(it + 1, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();  // K, V and query tile `it` have landed
    __syncthreads();
    const bf16* Qb = Qs + buf * Br * L;
    const bf16* dOb = dOs + buf * Br * L;
    const float* lse_b = lse_s + buf * Br;
    const float* delta_b = delta_s + buf * Br;

    // S^T = K Q^T: [16 keys] x [Br queries]; then P^T in place.
    float pt[Br / 8][4];
#pragma unroll
    for (int n = 0; n < Br / 8; ++n) pt[n][0] = pt[n][1] = pt[n][2] = pt[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4];
      ldsm_a<L>(a, Ks, warp * 16, kk * 16, lane);
#pragma unroll
      for (int np = 0; np < Br / 16; ++np) {
        uint32_t b[4];
        ldsm_b<L>(b, Qb, np * 16, kk * 16, lane);
        mma_bf16(pt[2 * np], a, b[0], b[1]);
        mma_bf16(pt[2 * np + 1], a, b[2], b[3]);
      }
    }
#pragma unroll
    for (int n = 0; n < Br / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float x = logit(pt[n][e], scale, kbias[e >> 1], unbias);
        pt[n][e] = exp2f((x - lse_b[n * 8 + 2 * t + (e & 1)]) * kLog2e);
      }
    }

    // dV += P^T dout.
#pragma unroll
    for (int kk = 0; kk < Br / 16; ++kk) {
      uint32_t a[4];
      acc_to_a(a, pt[2 * kk], pt[2 * kk + 1]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b[4];
        ldsm_bt<L>(b, dOb, kk * 16, dp * 16, lane);
        mma_bf16(dva[2 * dp], a, b[0], b[1]);
        mma_bf16(dva[2 * dp + 1], a, b[2], b[3]);
      }
    }

    // dP^T = V dout^T, then dS^T = P^T (hs dP^T - delta) in place.
    float dst[Br / 8][4];
#pragma unroll
    for (int n = 0; n < Br / 8; ++n) dst[n][0] = dst[n][1] = dst[n][2] = dst[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4];
      ldsm_a<L>(a, Vs, warp * 16, kk * 16, lane);
#pragma unroll
      for (int np = 0; np < Br / 16; ++np) {
        uint32_t b[4];
        ldsm_b<L>(b, dOb, np * 16, kk * 16, lane);
        mma_bf16(dst[2 * np], a, b[0], b[1]);
        mma_bf16(dst[2 * np + 1], a, b[2], b[3]);
      }
    }
#pragma unroll
    for (int n = 0; n < Br / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) dst[n][e] = pt[n][e] * (hs * dst[n][e] - delta_b[n * 8 + 2 * t + (e & 1)]);
    }

    // dK += dS^T Q.
#pragma unroll
    for (int kk = 0; kk < Br / 16; ++kk) {
      uint32_t a[4];
      acc_to_a(a, dst[2 * kk], dst[2 * kk + 1]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b[4];
        ldsm_bt<L>(b, Qb, kk * 16, dp * 16, lane);
        mma_bf16(dka[2 * dp], a, b[0], b[1]);
        mma_bf16(dka[2 * dp + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // everyone is done with `buf` before the next iteration refills it
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t j = k0 + warp * 16 + g + 8 * r;
    if (j >= s) continue;
    const int64_t row = row_offset(bb, j, hh, sh, D);
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const int d = n * 8 + 2 * t;
      *reinterpret_cast<uint32_t*>(dk + row + d) = pack_bf16(scale * dka[n][2 * r], scale * dka[n][2 * r + 1]);
      *reinterpret_cast<uint32_t*>(dv + row + d) = pack_bf16(hs * dva[n][2 * r], hs * dva[n][2 * r + 1]);
    }
  }
}

// dQ of one 64-query tile (see the top comment); key tiles of Bc keys.
template <int D, int Bc>
__global__ void __launch_bounds__(kThreads, 2)
    attn_bwd_dq_kernel(AttentionShape sh, AttentionMasks mk, const bf16* __restrict__ q, const bf16* __restrict__ k,
                       const bf16* __restrict__ v, const bf16* __restrict__ dout, const float* __restrict__ lse,
                       const float* __restrict__ delta, bf16* __restrict__ dq) {
  constexpr int L = D + 8, Br = kTile;
  const int64_t s = sh.s, bb = blockIdx.z, hh = blockIdx.y;
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * Br;
  const int nq = tile_rows(Br, s - q0);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;

  if (mk.head_keep != nullptr && mk.head_keep[hh] == 0) {  // skipped head: zero gradient
    zero_rows<D>(dq, bb, q0, nq, hh, sh);
    return;
  }
  const float hs = mk.head_scale != nullptr ? mk.head_scale[hh] : 1.f;
  const float scale = sh.softmax_scale;
  const uint8_t* pad_b = mk.key_padding != nullptr ? mk.key_padding + bb * s : nullptr;
  const float unbias = unbias_for(pad_b, s);
  // lse and delta of this lane's rows g, g+8 (past the end: P = 0, delta = 0).
  const int64_t rows_bh = (bb * sh.h + hh) * s;
  float lse_r[2], delta_r[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = q0 + warp * 16 + g + 8 * r;
    lse_r[r] = i < s ? lse[rows_bh + i] : INFINITY;
    delta_r[r] = i < s ? delta[rows_bh + i] : 0.f;
  }

  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);                 // [Br][L]
  bf16* dOs = Qs + Br * L;                                      // [Br][L]
  bf16* Ks = dOs + Br * L;                                      // [2][Bc][L]
  bf16* Vs = Ks + 2 * Bc * L;                                   // [2][Bc][L]
  float* bias_s = reinterpret_cast<float*>(Vs + 2 * Bc * L);   // [2][Bc]

  const int64_t head = bb * sh.stride_b + hh * sh.stride_h;
  auto load_kv = [&](int kt, int buf) {
    const int64_t k0 = static_cast<int64_t>(kt) * Bc;
    const int nk = tile_rows(Bc, s - k0);
    load_tile<D, Bc>(Ks + buf * Bc * L, k + head + k0 * sh.stride_s, sh.stride_s, nk);
    load_tile<D, Bc>(Vs + buf * Bc * L, v + head + k0 * sh.stride_s, sh.stride_s, nk);
    if (tid < Bc) bias_s[buf * Bc + tid] = key_bias(pad_b, k0 + tid, s);
  };

  load_tile<D, Br>(Qs, q + head + q0 * sh.stride_s, sh.stride_s, nq);
  load_tile<D, Br>(dOs, dout + row_offset(bb, q0, hh, sh, D), sh.h * D, nq);
  load_kv(0, 0);
  cp_async_commit();

  float dqa[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) dqa[n][0] = dqa[n][1] = dqa[n][2] = dqa[n][3] = 0.f;

  const int nkt = static_cast<int>((s + Bc - 1) / Bc);
  for (int kt = 0; kt < nkt; ++kt) {
    const int buf = kt & 1;
    if (kt + 1 < nkt) load_kv(kt + 1, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();  // Q, dout and key tile kt have landed
    __syncthreads();
    const bf16* Kb = Ks + buf * Bc * L;
    const bf16* Vb = Vs + buf * Bc * L;
    const float* bias = bias_s + buf * Bc;

    // S = Q K^T, then P in place.
    float p[Bc / 8][4];
#pragma unroll
    for (int n = 0; n < Bc / 8; ++n) p[n][0] = p[n][1] = p[n][2] = p[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4];
      ldsm_a<L>(a, Qs, warp * 16, kk * 16, lane);
#pragma unroll
      for (int np = 0; np < Bc / 16; ++np) {
        uint32_t b[4];
        ldsm_b<L>(b, Kb, np * 16, kk * 16, lane);
        mma_bf16(p[2 * np], a, b[0], b[1]);
        mma_bf16(p[2 * np + 1], a, b[2], b[3]);
      }
    }
#pragma unroll
    for (int n = 0; n < Bc / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float x = logit(p[n][e], scale, bias[n * 8 + 2 * t + (e & 1)], unbias);
        p[n][e] = exp2f((x - lse_r[e >> 1]) * kLog2e);
      }
    }

    // dP = dout V^T, then dS = P (hs dP - delta) in place.
    float ds[Bc / 8][4];
#pragma unroll
    for (int n = 0; n < Bc / 8; ++n) ds[n][0] = ds[n][1] = ds[n][2] = ds[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4];
      ldsm_a<L>(a, dOs, warp * 16, kk * 16, lane);
#pragma unroll
      for (int np = 0; np < Bc / 16; ++np) {
        uint32_t b[4];
        ldsm_b<L>(b, Vb, np * 16, kk * 16, lane);
        mma_bf16(ds[2 * np], a, b[0], b[1]);
        mma_bf16(ds[2 * np + 1], a, b[2], b[3]);
      }
    }
#pragma unroll
    for (int n = 0; n < Bc / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) ds[n][e] = p[n][e] * (hs * ds[n][e] - delta_r[e >> 1]);
    }

    // dQ += dS K.
#pragma unroll
    for (int kk = 0; kk < Bc / 16; ++kk) {
      uint32_t a[4];
      acc_to_a(a, ds[2 * kk], ds[2 * kk + 1]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b[4];
        ldsm_bt<L>(b, Kb, kk * 16, dp * 16, lane);
        mma_bf16(dqa[2 * dp], a, b[0], b[1]);
        mma_bf16(dqa[2 * dp + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // everyone is done with `buf` before the next iteration refills it
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = q0 + warp * 16 + g + 8 * r;
    if (i >= s) continue;
    const int64_t row = row_offset(bb, i, hh, sh, D);
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const int d = n * 8 + 2 * t;
      *reinterpret_cast<uint32_t*>(dq + row + d) = pack_bf16(scale * dqa[n][2 * r], scale * dqa[n][2 * r + 1]);
    }
  }
}

// ------------------------------------------------------------------ launchers
// The streamed tile of the backward kernels (query rows for dK/dV, keys for
// dQ): 64 for D = 64; 32 for D = 128, where 64 would need more than 255
// registers (the dK and dV accumulators alone take 128) and spill.
template <int D>
constexpr int kBwdStream = D == 64 ? 64 : 32;

constexpr size_t fwd_smem(int d) { return (kTile + 4 * kTile) * (d + 8) * sizeof(bf16) + 2 * kTile * sizeof(float); }
constexpr size_t dkdv_smem(int d, int br) {
  return (2 * kTile + 4 * br) * (d + 8) * sizeof(bf16) + 4 * br * sizeof(float);
}
constexpr size_t dq_smem(int d, int bc) {
  return (2 * kTile + 4 * bc) * (d + 8) * sizeof(bf16) + 2 * bc * sizeof(float);
}
// The budgets of the top comment.
static_assert(fwd_smem(64) == 46592 && fwd_smem(128) == 87552);
static_assert(dkdv_smem(64, kBwdStream<64>) == 56320 && dkdv_smem(128, kBwdStream<128>) == 70144);
static_assert(dq_smem(64, kBwdStream<64>) == 55808 && dq_smem(128, kBwdStream<128>) == 69888);

// Dynamic shared memory beyond 48 KB must be opted into (per kernel; cheap, so
// done at every launch, which also covers every device of the process).
template <class Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

void require_aligned(const void* p, const char* op, const char* what) {
  if (p == nullptr) throw CudaError(std::string(op) + ": " + what + " is null");
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
    throw CudaError(std::string(op) + ": " + what + " must be 16-byte aligned (the kernels load 8 bf16 at a time)");
}

dim3 grid_of(const AttentionShape& s, int tile) {
  return dim3(static_cast<unsigned>((s.s + tile - 1) / tile), static_cast<unsigned>(s.h), static_cast<unsigned>(s.b));
}

template <int D>
void forward_impl(const AttentionShape& s, const AttentionMasks& m, const bf16* q, const bf16* k, const bf16* v,
                  bf16* out, bf16* out_u, float* lse, Stream stream) {
  const size_t smem = fwd_smem(D);
  allow_smem(attn_fwd_kernel<D>, smem);
  attn_fwd_kernel<D><<<grid_of(s, kTile), kThreads, smem, stream>>>(s, m, q, k, v, out, out_u, lse);
  CUDA_CHECK_LAUNCH("attention_forward");
}

template <int D>
void backward_impl(const AttentionShape& s, const AttentionMasks& m, const bf16* q, const bf16* k, const bf16* v,
                   const bf16* out_u, const bf16* dout, const float* lse, bf16* dq, bf16* dk, bf16* dv, float* delta,
                   float* dhs_rows, Stream stream) {
  constexpr int kPreBlock = 256;  // 8 rows (warps) per block
  attn_bwd_preprocess_kernel<D><<<grid_for(s.b * s.h * s.s, kPreBlock / 32), kPreBlock, 0, stream>>>(
      s, m, out_u, dout, delta, dhs_rows);
  CUDA_CHECK_LAUNCH("attention_backward (preprocess)");

  constexpr int Br = kBwdStream<D>;
  const size_t smem_kv = dkdv_smem(D, Br);
  allow_smem(attn_bwd_dkdv_kernel<D, Br>, smem_kv);
  attn_bwd_dkdv_kernel<D, Br><<<grid_of(s, kTile), kThreads, smem_kv, stream>>>(s, m, q, k, v, dout, lse, delta, dk,
                                                                                 dv);
  CUDA_CHECK_LAUNCH("attention_backward (dk, dv)");

  constexpr int Bc = kBwdStream<D>;
  const size_t smem_q = dq_smem(D, Bc);
  allow_smem(attn_bwd_dq_kernel<D, Bc>, smem_q);
  attn_bwd_dq_kernel<D, Bc><<<grid_of(s, kTile), kThreads, smem_q, stream>>>(s, m, q, k, v, dout, lse, delta, dq);
  CUDA_CHECK_LAUNCH("attention_backward (dq)");
}

}  // namespace

void attention_check(const AttentionShape& s, const char* op) {
  const std::string o(op);
  if (s.d != 64 && s.d != 128) throw CudaError(o + ": head dim must be 64 or 128, got " + std::to_string(s.d));
  if (s.b <= 0 || s.s <= 0 || s.h <= 0)
    throw CudaError(o + ": sizes must be positive, got b=" + std::to_string(s.b) + " s=" + std::to_string(s.s) +
                    " h=" + std::to_string(s.h));
  // Grid: x = tiles of the sequence, y = heads, z = batch.
  if (s.h > 65535 || s.b > 65535)
    throw CudaError(o + ": at most 65535 heads and 65535 batch elements, got h=" + std::to_string(s.h) +
                    " b=" + std::to_string(s.b));
  if (s.s > (int64_t{1} << 30)) throw CudaError(o + ": sequence length above 2^30: " + std::to_string(s.s));
  // 16-byte loads of 8 bf16: every row start must stay 16-byte aligned. A
  // stride of an axis of size 1 is never used; 0 (a broadcast axis) is fine.
  auto check_stride = [&](int64_t stride, int64_t size, const char* name) {
    if (size > 1 && (stride < 0 || stride % 8 != 0))
      throw CudaError(o + ": " + name + " must be a non-negative multiple of 8 elements, got " +
                      std::to_string(stride));
  };
  check_stride(s.stride_b, s.b, "stride_b");
  check_stride(s.stride_s, s.s, "stride_s");
  check_stride(s.stride_h, s.h, "stride_h");
  if (!std::isfinite(s.softmax_scale))
    throw CudaError(o + ": softmax_scale must be finite, got " + std::to_string(s.softmax_scale));
}

void attention_forward(const AttentionShape& s, const AttentionMasks& m, const void* q, const void* k, const void* v,
                       void* out, void* out_unscaled, float* lse, Stream stream) {
  const char* op = "attention_forward";
  attention_check(s, op);
  require_aligned(q, op, "q");
  require_aligned(k, op, "k");
  require_aligned(v, op, "v");
  require_aligned(out, op, "out");
  if (out_unscaled != nullptr) require_aligned(out_unscaled, op, "out_unscaled");
  if (lse == nullptr) throw CudaError(std::string(op) + ": lse is null");
  auto run = [&]<int D>() {
    forward_impl<D>(s, m, static_cast<const bf16*>(q), static_cast<const bf16*>(k), static_cast<const bf16*>(v),
                    static_cast<bf16*>(out), static_cast<bf16*>(out_unscaled), lse, stream);
  };
  if (s.d == 64) {
    run.template operator()<64>();
  } else {
    run.template operator()<128>();
  }
}

void attention_backward(const AttentionShape& s, const AttentionMasks& m, const void* q, const void* k, const void* v,
                        const void* out_unscaled, const void* dout, const float* lse, void* dq, void* dk, void* dv,
                        float* delta, float* dhead_scale_rows, Stream stream) {
  const char* op = "attention_backward";
  attention_check(s, op);
  require_aligned(q, op, "q");
  require_aligned(k, op, "k");
  require_aligned(v, op, "v");
  require_aligned(out_unscaled, op, "out_unscaled");
  require_aligned(dout, op, "dout");
  require_aligned(dq, op, "dq");
  require_aligned(dk, op, "dk");
  require_aligned(dv, op, "dv");
  if (lse == nullptr || delta == nullptr) throw CudaError(std::string(op) + ": lse and delta must not be null");
  auto run = [&]<int D>() {
    backward_impl<D>(s, m, static_cast<const bf16*>(q), static_cast<const bf16*>(k), static_cast<const bf16*>(v),
                     static_cast<const bf16*>(out_unscaled), static_cast<const bf16*>(dout), lse,
                     static_cast<bf16*>(dq), static_cast<bf16*>(dk), static_cast<bf16*>(dv), delta, dhead_scale_rows,
                     stream);
  };
  if (s.d == 64) {
    run.template operator()<64>();
  } else {
    run.template operator()<128>();
  }
}

}  // namespace s2h::cuda
