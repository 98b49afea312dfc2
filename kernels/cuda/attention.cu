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
// Code: the kernels share their steps, each written once: gemm_abt (C = A B^T:
// S, S^T, dP, dP^T) and gemm_pb (C += P B with P straight from accumulators:
// O, dV, dK, dQ); for_each_acc (elementwise passes over an accumulator tile
// with each element's row and column: logits, online softmax, prob / dscore
// for the backward's P and dS); load_kv_rows, load_q_dout_rows, load_key_tile
// and next_tile (cp.async tiles and the double-buffered loop); tile_block /
// head_params (block indices, per-head values); for_each_out_pair (epilogues).
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
// (__launch_bounds__(128, 2); ptxas reports 165-249 registers, no spills).
//
// Not in v1: wgmma / TMA (sm_90a), warp specialisation, causal masking,
// swizzled (instead of padded) shared memory, register-resident Q / dout in
// the backward, 16-byte output stores through shared memory, splitting the
// key range of long sequences over several blocks.
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/attention.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma.cuh"

namespace s2h::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kTile = 64;  // query and key tile (rows); 16 per warp
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kMaskedLogit = -1e9f;  // the CPU path's additive padding bias

// ------------------------------------------------------------------ helpers
// Two floats as a bf16 pair: `lo` in the low 16 bits (the lower index).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// ------------------------------------------------------------------ fragment loads (see the top comment)
// A operand: rows r0..r0+15, cols c0..c0+15 of a row-major [rows][L] tile.
template <int L>
__device__ __forceinline__ void ldsm_a(uint32_t (&a)[4], const bf16* tile, int r0, int c0, int lane) {
  ldsm<4, false>(a, tile + (r0 + (lane & 15)) * L + c0 + ((lane >> 4) << 3));
}
// B operands of n-tiles n0 and n0+8 (k = c0..c0+15) from a tile stored [n][k].
template <int L>
__device__ __forceinline__ void ldsm_b(uint32_t (&b)[4], const bf16* tile, int n0, int c0, int lane) {
  ldsm<4, false>(b, tile + (n0 + (lane & 7) + ((lane >> 4) << 3)) * L + c0 + (((lane >> 3) & 1) << 3));
}
// B operands of n-tiles c0 and c0+8 (k = r0..r0+15) from a tile stored [k][n].
template <int L>
__device__ __forceinline__ void ldsm_bt(uint32_t (&b)[4], const bf16* tile, int r0, int c0, int lane) {
  ldsm<4, true>(b, tile + (r0 + (lane & 15)) * L + c0 + ((lane >> 4) << 3));
}
// Accumulator n-tiles 2j, 2j+1 (16 columns) as the A operand over k = those columns.
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = pack_bf16(c0[0], c0[1]);
  a[1] = pack_bf16(c0[2], c0[3]);
  a[2] = pack_bf16(c1[0], c1[1]);
  a[3] = pack_bf16(c1[2], c1[3]);
}

// ------------------------------------------------------------------ warp tile products
// A warp's accumulator tile of 16 rows x 8 NT columns is float c[NT][4]: element e
// of n-tile n is row g + 8 (e / 2), column 8 n + 2 t + e % 2 (the C fragment above).
template <int NT>
__device__ __forceinline__ void zero_acc(float (&c)[NT][4]) {
#pragma unroll
  for (int n = 0; n < NT; ++n) c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.f;
}

// f(n, e, r, col) for every element c[n][e] of this lane's part of a 16 x N
// accumulator tile, with its row g + 8 r (r = e / 2) and column col.
template <int N, class F>
__device__ __forceinline__ void for_each_acc(int t, F&& f) {
#pragma unroll
  for (int n = 0; n < N / 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) f(n, e, e >> 1, n * 8 + 2 * t + (e & 1));
  }
}

// c += a B^T over k = k0..k0+15: a one A operand (16 rows), B a tile stored [n][k] with row length L (NT n-tiles).
template <int L, int NT>
__device__ __forceinline__ void mma_a_bt(float (&c)[NT][4], const uint32_t (&a)[4], const bf16* B, int k0, int lane) {
#pragma unroll
  for (int np = 0; np < NT / 2; ++np) {
    uint32_t b[4];
    ldsm_b<L>(b, B, np * 16, k0, lane);
    mma_bf16(c[2 * np], a, b[0], b[1]);
    mma_bf16(c[2 * np + 1], a, b[2], b[3]);
  }
}

// c = A B^T (16 x 8 NT) over k = 0..D-1: A = rows r0..r0+15 of a row-major [.][D + 8]
// shared tile, B a [8 NT][D + 8] shared tile stored [n][k]. (S = Q K^T, dP = dout V^T
// and their transposes.)
template <int D, int NT>
__device__ __forceinline__ void gemm_abt(float (&c)[NT][4], const bf16* A, int r0, const bf16* B, int lane) {
  zero_acc(c);
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[4];
    ldsm_a<D + 8>(a, A, r0, kk * 16, lane);
    mma_a_bt<D + 8>(c, a, B, kk * 16, lane);
  }
}
// The same with A already in registers as KT A operands (k = 16 kk..16 kk+15).
template <int KT, int NT>
__device__ __forceinline__ void gemm_abt(float (&c)[NT][4], const uint32_t (&a)[KT][4], const bf16* B, int lane) {
  zero_acc(c);
#pragma unroll
  for (int kk = 0; kk < KT; ++kk) mma_a_bt<16 * KT + 8>(c, a[kk], B, kk * 16, lane);
}

// c += P B (16 x 8 NT) over k = 0..8 KT-1: P this warp's accumulator tile p, rounded to
// bf16 A operands (acc_to_a), B a [8 KT][8 NT + 8] shared tile stored [k][n]. (O += P V,
// dV += P^T dout, dK += dS^T Q, dQ += dS K.)
template <int KT, int NT>
__device__ __forceinline__ void gemm_pb(float (&c)[NT][4], const float (&p)[KT][4], const bf16* B, int lane) {
  constexpr int L = 8 * NT + 8;
#pragma unroll
  for (int kk = 0; kk < KT / 2; ++kk) {
    uint32_t a[4];
    acc_to_a(a, p[2 * kk], p[2 * kk + 1]);
#pragma unroll
    for (int dp = 0; dp < NT / 2; ++dp) {
      uint32_t b[4];
      ldsm_bt<L>(b, B, kk * 16, dp * 16, lane);
      mma_bf16(c[2 * dp], a, b[0], b[1]);
      mma_bf16(c[2 * dp + 1], a, b[2], b[3]);
    }
  }
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

// The backward's recomputed probability exp(x - lse) of an S accumulator.
__device__ __forceinline__ float prob(float acc, float scale, float bias, float unbias, float lse) {
  return exp2f((logit(acc, scale, bias, unbias) - lse) * kLog2e);
}
// dS = P (hs dP - delta) (dO_eff = hs * dout, see the top comment).
__device__ __forceinline__ float dscore(float p, float dp, float hs, float delta) { return p * (hs * dp - delta); }

// ------------------------------------------------------------------ block setup, tile loads, output stores
// A tile kernel's block: batch bb = blockIdx.z, head hh = blockIdx.y, its kTile rows
// (queries; keys for dK/dV) from r0 = blockIdx.x * kTile, n of them before the end;
// this thread's warp, lane and fragment coordinates g = lane / 4, t = lane % 4.
struct TileBlock {
  int64_t s, bb, hh, r0;
  int n, tid, warp, lane, g, t;
};
__device__ __forceinline__ TileBlock tile_block(const AttentionShape& sh) {
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int tid = threadIdx.x, lane = tid % 32;
  return {sh.s, blockIdx.z, blockIdx.y, r0, tile_rows(kTile, sh.s - r0), tid, tid / 32, lane, lane / 4, lane % 4};
}

// The per-head values of a kept head. unbias_for has a barrier: after the skipped-head return.
struct HeadParams {
  float hs, scale;
  const uint8_t* pad_b;  // this batch element's key padding, or null
  float unbias;
};
__device__ __forceinline__ HeadParams head_params(const AttentionShape& sh, const AttentionMasks& mk, int64_t bb,
                                                  int64_t hh) {
  const float hs = mk.head_scale != nullptr ? mk.head_scale[hh] : 1.f;
  const uint8_t* pad_b = mk.key_padding != nullptr ? mk.key_padding + bb * sh.s : nullptr;
  return {hs, sh.softmax_scale, pad_b, unbias_for(pad_b, sh.s)};
}

// Rows r0.. (n of them before the end) of K and V (strided alike; `head` = the
// offset of batch and head) into the shared tiles Ks, Vs [R][D + 8].
template <int D, int R>
__device__ __forceinline__ void load_kv_rows(bf16* Ks, bf16* Vs, const bf16* k, const bf16* v, int64_t head,
                                             int64_t r0, int n, const AttentionShape& sh) {
  load_tile<D, R>(Ks, k + head + r0 * sh.stride_s, sh.stride_s, n);
  load_tile<D, R>(Vs, v + head + r0 * sh.stride_s, sh.stride_s, n);
}
// The same for Q (strided like K, V) and dout (contiguous [b, s, h, D]).
template <int D, int R>
__device__ __forceinline__ void load_q_dout_rows(bf16* Qs, bf16* dOs, const bf16* q, const bf16* dout, int64_t head,
                                                 int64_t bb, int64_t hh, int64_t r0, int n,
                                                 const AttentionShape& sh) {
  load_tile<D, R>(Qs, q + head + r0 * sh.stride_s, sh.stride_s, n);
  load_tile<D, R>(dOs, dout + row_offset(bb, r0, hh, sh, D), sh.h * D, n);
}
// Key tile kt (Bc keys) into buffer buf of Ks, Vs [2][Bc][D + 8] and its key
// biases into bias_s [2][Bc] (the forward's and dQ's streamed tile).
template <int D, int Bc>
__device__ __forceinline__ void load_key_tile(bf16* Ks, bf16* Vs, float* bias_s, int kt, int buf, const bf16* k,
                                              const bf16* v, int64_t head, const uint8_t* pad_b,
                                              const AttentionShape& sh) {
  constexpr int L = D + 8;
  const int64_t k0 = static_cast<int64_t>(kt) * Bc;
  const int tid = threadIdx.x;
  load_kv_rows<D, Bc>(Ks + buf * Bc * L, Vs + buf * Bc * L, k, v, head, k0, tile_rows(Bc, sh.s - k0), sh);
  if (tid < Bc) bias_s[buf * Bc + tid] = key_bias(pad_b, k0 + tid, sh.s);
}

// The start of iteration it of a double-buffered tile loop: loads tile it + 1
// into the other buffer (free since the barrier that ended iteration it - 1),
// then waits until tile it and everything committed before it have landed.
// Returns the buffer of tile it.
template <class Load>
__device__ __forceinline__ int next_tile(int it, int ntiles, Load&& load) {
  const int buf = it & 1;
  if (it + 1 < ntiles) load(it + 1, buf ^ 1);
  cp_async_commit();  // (possibly empty group: keeps the count uniform)
  cp_async_wait<1>();
  __syncthreads();
  return buf;
}

// For this lane's output rows i = i0 + g + 8 r (r = 0, 1) of a warp's 16 that lie
// before the end: pair(r, n, row, d) for the columns d, d + 1 (d = 8 n + 2 t; row =
// the offset of row i in the contiguous [b, s, h, D] tensors), then row_end(r, i).
template <int D, class Pair, class RowEnd>
__device__ __forceinline__ void for_each_out_pair(int64_t i0, int g, int t, int64_t bb, int64_t hh,
                                                  const AttentionShape& sh, Pair&& pair, RowEnd&& row_end) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = i0 + g + 8 * r;
    if (i >= sh.s) continue;
    const int64_t row = row_offset(bb, i, hh, sh, D);
#pragma unroll
    for (int n = 0; n < D / 8; ++n) pair(r, n, row, n * 8 + 2 * t);
    row_end(r, i);
  }
}
struct NoRowEnd {  // for_each_out_pair without a row_end
  __device__ void operator()(int, int64_t) const {}
};
__device__ __forceinline__ void store_pair(bf16* p, float lo, float hi) {
  *reinterpret_cast<uint32_t*>(p) = pack_bf16(lo, hi);
}

// ------------------------------------------------------------------ forward
template <int D>
__global__ void __launch_bounds__(kThreads, 2)
    attn_fwd_kernel(AttentionShape sh, AttentionMasks mk, const bf16* __restrict__ q, const bf16* __restrict__ k,
                    const bf16* __restrict__ v, bf16* out, bf16* out_u, float* __restrict__ lse) {
  constexpr int L = D + 8, Br = kTile, Bc = kTile;
  const auto [s, bb, hh, q0, nq, tid, warp, lane, g, t] = tile_block(sh);

  if (mk.head_keep != nullptr && mk.head_keep[hh] == 0) {  // skipped head (block-uniform, before any barrier)
    zero_rows<D>(out, bb, q0, nq, hh, sh);
    zero_rows<D>(out_u, bb, q0, nq, hh, sh);
    for (int r = tid; r < nq; r += kThreads) lse[(bb * sh.h + hh) * s + q0 + r] = 0.f;
    return;
  }
  const auto [hs, scale, pad_b, unbias] = head_params(sh, mk, bb, hh);

  S2H_DYNAMIC_SHARED(16, unsigned char, smem_raw);
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);                 // [Br][L]
  bf16* Ks = Qs + Br * L;                                       // [2][Bc][L]
  bf16* Vs = Ks + 2 * Bc * L;                                   // [2][Bc][L]
  float* bias_s = reinterpret_cast<float*>(Vs + 2 * Bc * L);   // [2][Bc]

  const int64_t head = bb * sh.stride_b + hh * sh.stride_h;
  auto load_kv = [&](int kt, int buf) { load_key_tile<D, Bc>(Ks, Vs, bias_s, kt, buf, k, v, head, pad_b, sh); };

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
  zero_acc(o);
  float mrow[2] = {-INFINITY, -INFINITY};  // running max of rows g, g+8
  float lrow[2] = {0.f, 0.f};              // this lane's part of the running sum (quad-reduced at the end)

  const int nkt = static_cast<int>((s + Bc - 1) / Bc);
  for (int kt = 0; kt < nkt; ++kt) {
    const int buf = next_tile(kt, nkt, load_kv);  // key tile kt has landed
    const bf16* Kb = Ks + buf * Bc * L;
    const bf16* Vb = Vs + buf * Bc * L;
    const float* bias = bias_s + buf * Bc;

    // S = Q K^T: [16 rows] x [Bc keys] per warp.
    float sacc[Bc / 8][4];
    gemm_abt(sacc, qf, Kb, lane);

    // Logits, then the online softmax update of rows g (r = 0) and g+8 (r = 1).
    float mx[2] = {mrow[0], mrow[1]};
    for_each_acc<Bc>(t, [&](int n, int e, int r, int col) {
      const float x = logit(sacc[n][e], scale, bias[col], unbias);
      sacc[n][e] = x;
      mx[r] = fmaxf(mx[r], x);
    });
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
    for_each_acc<D>(t, [&](int n, int e, int r, int) { o[n][e] *= alpha[r]; });
    for_each_acc<Bc>(t, [&](int n, int e, int r, int) {
      const float p = exp2f((sacc[n][e] - mrow[r]) * kLog2e);  // keys past the end: exp2(-inf) = 0
      sacc[n][e] = p;
      lrow[r] += p;
    });

    // O += P V (P as bf16 A operands straight from the accumulators).
    gemm_pb(o, sacc, Vb, lane);
    __syncthreads();  // everyone is done with `buf` before the next iteration refills it
  }

  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 1);
    lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 2);
    inv[r] = 1.f / lrow[r];  // l >= 1 (the max term contributes exp(0))
  }
  for_each_out_pair<D>(
      q0 + warp * 16, g, t, bb, hh, sh,
      [&](int r, int n, int64_t row, int d) {
        const float o0 = o[n][2 * r] * inv[r], o1 = o[n][2 * r + 1] * inv[r];
        store_pair(out + row + d, hs * o0, hs * o1);
        if (out_u != nullptr) store_pair(out_u + row + d, o0, o1);
      },
      [&](int r, int64_t i) {
        if (t == 0) lse[(bb * sh.h + hh) * s + i] = mrow[r] + logf(lrow[r]);
      });
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
  const auto [s, bb, hh, k0, nk, tid, warp, lane, g, t] = tile_block(sh);

  if (mk.head_keep != nullptr && mk.head_keep[hh] == 0) {  // zero gradients
    zero_rows<D>(dk, bb, k0, nk, hh, sh);
    zero_rows<D>(dv, bb, k0, nk, hh, sh);
    return;
  }
  const auto [hs, scale, pad_b, unbias] = head_params(sh, mk, bb, hh);
  // This lane's keys (rows g and g+8 of the warp's 16) and their biases.
  float kbias[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) kbias[r] = key_bias(pad_b, k0 + warp * 16 + g + 8 * r, s);

  S2H_DYNAMIC_SHARED(16, unsigned char, smem_raw);
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
    load_q_dout_rows<D, Br>(Qs + buf * Br * L, dOs + buf * Br * L, q, dout, head, bb, hh, i0, nq, sh);
    if (tid < Br) {
      // Rows past the end: lse = +inf makes P = 0 (x - inf = -inf, also for x = -inf), delta = 0.
      const bool ok = i0 + tid < s;
      lse_s[buf * Br + tid] = ok ? lse[rows_bh + i0 + tid] : INFINITY;
      delta_s[buf * Br + tid] = ok ? delta[rows_bh + i0 + tid] : 0.f;
    }
  };

  load_kv_rows<D, Bc>(Ks, Vs, k, v, head, k0, nk, sh);
  load_q(0, 0);
  cp_async_commit();

  float dka[D / 8][4], dva[D / 8][4];
  zero_acc(dka);
  zero_acc(dva);

  const int nqt = static_cast<int>((s + Br - 1) / Br);
  for (int it = 0; it < nqt; ++it) {
    const int buf = next_tile(it, nqt, load_q);  // K, V and query tile `it` have landed
    const bf16* Qb = Qs + buf * Br * L;
    const bf16* dOb = dOs + buf * Br * L;
    const float* lse_b = lse_s + buf * Br;
    const float* delta_b = delta_s + buf * Br;

    // S^T = K Q^T: [16 keys] x [Br queries]; then P^T in place (rows: keys, columns: queries).
    float pt[Br / 8][4];
    gemm_abt<D>(pt, Ks, warp * 16, Qb, lane);
    for_each_acc<Br>(t, [&](int n, int e, int r, int col) {
      pt[n][e] = prob(pt[n][e], scale, kbias[r], unbias, lse_b[col]);
    });

    // dV += P^T dout.
    gemm_pb(dva, pt, dOb, lane);

    // dP^T = V dout^T, then dS^T = P^T (hs dP^T - delta) in place.
    float dst[Br / 8][4];
    gemm_abt<D>(dst, Vs, warp * 16, dOb, lane);
    for_each_acc<Br>(t, [&](int n, int e, int, int col) { dst[n][e] = dscore(pt[n][e], dst[n][e], hs, delta_b[col]); });

    // dK += dS^T Q.
    gemm_pb(dka, dst, Qb, lane);
    __syncthreads();  // everyone is done with `buf` before the next iteration refills it
  }

  for_each_out_pair<D>(
      k0 + warp * 16, g, t, bb, hh, sh,
      [&](int r, int n, int64_t row, int d) {
        store_pair(dk + row + d, scale * dka[n][2 * r], scale * dka[n][2 * r + 1]);
        store_pair(dv + row + d, hs * dva[n][2 * r], hs * dva[n][2 * r + 1]);
      },
      NoRowEnd{});
}

// dQ of one 64-query tile (see the top comment); key tiles of Bc keys.
template <int D, int Bc>
__global__ void __launch_bounds__(kThreads, 2)
    attn_bwd_dq_kernel(AttentionShape sh, AttentionMasks mk, const bf16* __restrict__ q, const bf16* __restrict__ k,
                       const bf16* __restrict__ v, const bf16* __restrict__ dout, const float* __restrict__ lse,
                       const float* __restrict__ delta, bf16* __restrict__ dq) {
  constexpr int L = D + 8, Br = kTile;
  const auto [s, bb, hh, q0, nq, tid, warp, lane, g, t] = tile_block(sh);

  if (mk.head_keep != nullptr && mk.head_keep[hh] == 0) {  // zero gradient
    zero_rows<D>(dq, bb, q0, nq, hh, sh);
    return;
  }
  const auto [hs, scale, pad_b, unbias] = head_params(sh, mk, bb, hh);
  // lse and delta of this lane's rows g, g+8 (past the end: P = 0, delta = 0).
  const int64_t rows_bh = (bb * sh.h + hh) * s;
  float lse_r[2], delta_r[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = q0 + warp * 16 + g + 8 * r;
    lse_r[r] = i < s ? lse[rows_bh + i] : INFINITY;
    delta_r[r] = i < s ? delta[rows_bh + i] : 0.f;
  }

  S2H_DYNAMIC_SHARED(16, unsigned char, smem_raw);
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);                 // [Br][L]
  bf16* dOs = Qs + Br * L;                                      // [Br][L]
  bf16* Ks = dOs + Br * L;                                      // [2][Bc][L]
  bf16* Vs = Ks + 2 * Bc * L;                                   // [2][Bc][L]
  float* bias_s = reinterpret_cast<float*>(Vs + 2 * Bc * L);   // [2][Bc]

  const int64_t head = bb * sh.stride_b + hh * sh.stride_h;
  auto load_kv = [&](int kt, int buf) { load_key_tile<D, Bc>(Ks, Vs, bias_s, kt, buf, k, v, head, pad_b, sh); };

  load_q_dout_rows<D, Br>(Qs, dOs, q, dout, head, bb, hh, q0, nq, sh);
  load_kv(0, 0);
  cp_async_commit();

  float dqa[D / 8][4];
  zero_acc(dqa);

  const int nkt = static_cast<int>((s + Bc - 1) / Bc);
  for (int kt = 0; kt < nkt; ++kt) {
    const int buf = next_tile(kt, nkt, load_kv);  // Q, dout and key tile kt have landed
    const bf16* Kb = Ks + buf * Bc * L;
    const bf16* Vb = Vs + buf * Bc * L;
    const float* bias = bias_s + buf * Bc;

    // S = Q K^T, then P in place.
    float p[Bc / 8][4];
    gemm_abt<D>(p, Qs, warp * 16, Kb, lane);
    for_each_acc<Bc>(t, [&](int n, int e, int r, int col) {
      p[n][e] = prob(p[n][e], scale, bias[col], unbias, lse_r[r]);
    });

    // dP = dout V^T, then dS = P (hs dP - delta) in place.
    float ds[Bc / 8][4];
    gemm_abt<D>(ds, dOs, warp * 16, Vb, lane);
    for_each_acc<Bc>(t, [&](int n, int e, int r, int) { ds[n][e] = dscore(p[n][e], ds[n][e], hs, delta_r[r]); });

    // dQ += dS K.
    gemm_pb(dqa, ds, Kb, lane);
    __syncthreads();  // everyone is done with `buf` before the next iteration refills it
  }

  for_each_out_pair<D>(
      q0 + warp * 16, g, t, bb, hh, sh,
      [&](int r, int n, int64_t row, int d) {
        store_pair(dq + row + d, scale * dqa[n][2 * r], scale * dqa[n][2 * r + 1]);
      },
      NoRowEnd{});
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
  launch("attention_forward", attn_fwd_kernel<D>, grid_of(s, kTile), kThreads, smem, stream, s, m, q, k, v, out, out_u,
         lse);
}

template <int D>
void backward_impl(const AttentionShape& s, const AttentionMasks& m, const bf16* q, const bf16* k, const bf16* v,
                   const bf16* out_u, const bf16* dout, const float* lse, bf16* dq, bf16* dk, bf16* dv, float* delta,
                   float* dhs_rows, Stream stream) {
  constexpr int kPreBlock = 256;  // 8 rows (warps) per block
  launch("attention_backward (preprocess)", attn_bwd_preprocess_kernel<D>, grid_for(s.b * s.h * s.s, kPreBlock / 32),
         kPreBlock, 0, stream, s, m, out_u, dout, delta, dhs_rows);

  constexpr int Br = kBwdStream<D>;
  const size_t smem_kv = dkdv_smem(D, Br);
  allow_smem(attn_bwd_dkdv_kernel<D, Br>, smem_kv);
  launch("attention_backward (dk, dv)", attn_bwd_dkdv_kernel<D, Br>, grid_of(s, kTile), kThreads, smem_kv, stream, s, m,
         q, k, v, dout, lse, delta, dk, dv);

  constexpr int Bc = kBwdStream<D>;
  const size_t smem_q = dq_smem(D, Bc);
  allow_smem(attn_bwd_dq_kernel<D, Bc>, smem_q);
  launch("attention_backward (dq)", attn_bwd_dq_kernel<D, Bc>, grid_of(s, kTile), kThreads, smem_q, stream, s, m, q, k,
         v, dout, lse, delta, dq);
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
