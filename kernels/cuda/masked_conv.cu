// Masked convolution on bf16 tensor cores (WMMA 16x16x16, fp32 accumulation),
// NHWC: the kernels behind kernels/cuda/masked_conv.h.
//
// Every direction is one implicit GEMM whose operands are gathered on the fly
// (no im2col buffer), K ordered (r, s, channel) like the weight's rows:
// - forward:     M = n*ho*wo output pixels, N = o, K = k*k*c.
//                A(p, (r,s,ci)) = in_scale[ci] * x[pixel p moved by (r, s), ci] (0 in the padding),
//                B((r,s,ci), oi) = W[row(oi), r, s, col(ci)];  y = out_scale[oi] * acc.
// - data grad:   M = n*h*w input pixels, N = c, K = k*k*o.
//                A(p, (r,s,oi)) = out_scale[oi] * dy[(ih+pad-r)/stride, (iw+pad-s)/stride, oi] where both
//                divide and land inside, else 0;  B((r,s,oi), ci) = W[row(oi), r, s, col(ci)];
//                dx = in_scale[ci] * acc, and per M block din_scale_partial[b][ci] = sum_p x * acc.
// - weight grad: computes G^T so that the long (r,s,ci) axis gets the 128-wide tile:
//                M = k*k*c, N = o, K = n*ho*wo pixels, A((r,s,ci), p) = in_scale[ci] * x[...],
//                B(p, oi) = dy[p, oi]. K is split over grid.z; each split stores its fp32 tile in the
//                workspace [splits][o][k*k*c]; a second kernel (one block per oi) sums the splits in a
//                fixed order, scatters out_scale[oi] * G into dweight[row(oi), r, s, col(ci)] and
//                reduces dout_scale[oi] = sum W * G. Deterministic: no atomics anywhere.
// - dual:        the forward's tile for the soft and for the hard layer of the same pixels and output
//                channels: one weight tile per K step, two A tiles (the hard one in the soft K order, zero
//                for channels >= hard.c), two accumulator sets; the hard product is skipped for K tiles
//                without a hard channel and for N tiles without a hard output.
// row(oi) = out_index ? out_index[oi] : oi and col(ci) = in_index ? in_index[ci] : ci (hard layers).
//
// Tiles: a block computes 128 (M) x 64 (N), stepping K by 32, with 256 threads = 8 warps of 32x32
// (2x2 wmma fragments each). Operands go global -> registers (plain, bounds-checked, coalesced loads;
// 16-byte vectors for the activation operands when their channel count is a multiple of 8) -> shared
// memory (bf16, rows padded by 8 elements against bank conflicts, double-buffered: tile k+1 is loaded into
// registers while tile k is multiplied, one barrier per K step) -> wmma::load_matrix_sync. The epilogue
// stages the fp32 accumulators through shared memory (aliasing the operand buffers) for coalesced,
// bounds-checked bf16 stores.
//
// Not in v1: cp.async / TMA / wgmma (sm_90a), vectorised weight loads, the sub-pixel split of stride-2
// data gradients (for a 3x3 stride-2 layer about 3/4 of the taps multiply zeros), skipping taps that fall
// in the padding, split-K for forward / dgrad grids smaller than the GPU, and a finer K granularity in the
// dual kernel (a 32-wide K tile with one hard channel runs the whole hard product).
//
// The loaders and epilogues are __host__ __device__ and take the thread index as an argument: plain functions of
// their inputs. The kernels themselves run on the CPU in the CUDA emulator (kernels/cuda/emu) in CI.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/masked_conv.h"
#include "kernels/cuda/mma.cuh"

#define S2H_MC_HD __host__ __device__ __forceinline__

namespace s2h::cuda {

namespace {

using bf16 = __nv_bfloat16;

// ------------------------------------------------------------------ tiles and shared-memory layouts
constexpr int kThreads = 256;  // 8 warps
constexpr int kBM = 128, kBN = 64, kBK = 32;
constexpr int kPad = 8;           // bf16 elements added to each smem row (16 bytes: rows stay 16-byte aligned)
constexpr int kFar = -(1 << 29);  // a coordinate that stays outside the image whatever tap is added

struct RowMajor {};
struct ColMajor {};
template <class L>
constexpr bool kRow = std::is_same_v<L, RowMajor>;

// A tile (M x K): row-major [kBM][kBK + kPad] or column-major [kBK][kBM + kPad].
template <class L>
constexpr int kLdA = kRow<L> ? kBK + kPad : kBM + kPad;
template <class L>
S2H_MC_HD int a_at(int m, int k) {
  if constexpr (kRow<L>) return m * kLdA<L> + k;
  else return k * kLdA<L> + m;
}
// B tile (K x N): row-major [kBK][kBN + kPad] or column-major [kBN][kBK + kPad].
template <class L>
constexpr int kLdB = kRow<L> ? kBN + kPad : kBK + kPad;
template <class L>
S2H_MC_HD int b_at(int k, int n) {
  if constexpr (kRow<L>) return k * kLdB<L> + n;
  else return n * kLdB<L> + k;
}
// The fp32 accumulator tile (M x N) of the epilogue.
template <class L>
constexpr int kLdC = kRow<L> ? kBN + 4 : kBM + 4;
template <class L>
S2H_MC_HD int c_at(int m, int n) {
  if constexpr (kRow<L>) return m * kLdC<L> + n;
  else return n * kLdC<L> + m;
}

constexpr int kAElems = kBM * (kBK + kPad);  // >= kBK * (kBM + kPad): room for either A layout
constexpr int kBElems = kBN * (kBK + kPad);  // >= kBK * (kBN + kPad): room for either B layout
static_assert(kAElems >= kBK * (kBM + kPad) && kBElems >= kBK * (kBN + kPad));
constexpr int kStage = kAElems + kBElems;        // one buffer of A and B (bf16 elements)
constexpr int kDualStage = 2 * kAElems + kBElems;  // soft A, hard A, B
constexpr int kCBytes = std::max(kBM * (kBN + 4), kBN * (kBM + 4)) * 4;
constexpr int kSmemBytes = std::max(2 * kStage * 2, kCBytes);
constexpr int kDualSmemBytes = std::max(2 * kDualStage * 2, kCBytes);
// wmma wants every fragment pointer 256-bit aligned: buffers start at multiples of 32 bytes, and rows of 16
// (A, B, C) or the k offset 16 move by multiples of 32 bytes in every layout above.
static_assert((kAElems * 2) % 128 == 0 && (kBElems * 2) % 128 == 0);
static_assert((16 * (kBK + kPad) * 2) % 32 == 0 && (16 * (kBM + kPad) * 2) % 32 == 0 &&
              (16 * (kBN + kPad) * 2) % 32 == 0 && (16 * (kBN + 4) * 4) % 32 == 0 && (16 * (kBM + 4) * 4) % 32 == 0);
static_assert((kBK + kPad) % 8 == 0 && (kBM + kPad) % 8 == 0 && (kBN + kPad) % 8 == 0);  // bf16 ldm
static_assert((kBN + 4) % 4 == 0 && (kBM + 4) % 4 == 0);                                // fp32 ldm
static_assert(kThreads == 256 && kBM == 128 && kBN == 64 && kBK == 32, "the thread maps below assume these");

// ------------------------------------------------------------------ scalar helpers (host and device)
S2H_MC_HD float bf2f(bf16 v) { return __bfloat162float(v); }
S2H_MC_HD bf16 f2bf(float v) { return __float2bfloat16_rn(v); }
S2H_MC_HD float w2f(float v) { return v; }
S2H_MC_HD float w2f(bf16 v) { return __bfloat162float(v); }
template <class WT>
S2H_MC_HD bf16 w2bf(WT v) {
  if constexpr (std::is_same_v<WT, bf16>) return v;
  else return __float2bfloat16_rn(v);
}
template <class WT>
S2H_MC_HD WT f2w(float v) {
  if constexpr (std::is_same_v<WT, bf16>) return __float2bfloat16_rn(v);
  else return v;
}
// The float of a bf16 given by its 16 bits (low half of b).
S2H_MC_HD float bits2f(uint32_t b) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(b << 16);
#else
  const uint32_t u = b << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}
S2H_MC_HD uint32_t f2bits(float f) { return static_cast<__nv_bfloat16_raw>(__float2bfloat16_rn(f)).x; }
S2H_MC_HD uint32_t scale_pair(uint32_t v, float lo, float hi) {
  return f2bits(bits2f(v & 0xffffu) * lo) | (f2bits(bits2f(v >> 16) * hi) << 16);
}
S2H_MC_HD uint32_t bf_bits(bf16 v) { return static_cast<__nv_bfloat16_raw>(v).x; }
// Scalar loaders keep two bf16 per 32-bit register (element i in the half i % 2 of e[i / 2]): half the
// registers of one bf16 per register, which the dual kernel needs.
S2H_MC_HD uint32_t pack2(uint32_t lo_bits, uint32_t hi_bits) { return lo_bits | (hi_bits << 16); }
S2H_MC_HD void put_bits(bf16* dst, const uint32_t* e, int i) {
  *reinterpret_cast<uint16_t*>(dst) = static_cast<uint16_t>(e[i >> 1] >> (16 * (i & 1)));
}
// 8 bf16 (little-endian in a uint4) times 8 scales, rounded back to bf16.
S2H_MC_HD uint4 scale8(uint4 u, const float* s) {
  u.x = scale_pair(u.x, s[0], s[1]);
  u.y = scale_pair(u.y, s[2], s[3]);
  u.z = scale_pair(u.z, s[4], s[5]);
  u.w = scale_pair(u.w, s[6], s[7]);
  return u;
}

// ------------------------------------------------------------------ arguments
struct Geo {  // the shape as ints (masked_conv_check bounds every product used in int arithmetic)
  int n, h, w, c, o, ks, stride, pad, ho, wo, w_rows, w_cols, taps;
};

template <class WT>
struct ConvArgs {
  Geo g;
  const bf16* x = nullptr;
  const bf16* dy = nullptr;
  const WT* wt = nullptr;
  const int64_t* out_index = nullptr;
  const int64_t* in_index = nullptr;
  const float* out_scale = nullptr;
  const float* in_scale = nullptr;
  bf16* y = nullptr;               // forward
  bf16* dx = nullptr;              // data grad
  float* din_partial = nullptr;    // data grad: [M blocks][c]
  float* ws = nullptr;             // weight grad: [splits][o][k*k*c]
  int chunk = 0;                   // weight grad: pixels per split (a multiple of kBK)
};

template <class WT>
struct FinalArgs {  // the weight gradient's second kernel
  const float* ws;
  int splits, o, c, taps, w_cols, kdim;
  const int64_t* out_index;
  const int64_t* in_index;
  const float* out_scale;
  const WT* wt;
  WT* dw;
  float* dout_scale;
};

template <class WT>
struct DualArgs {
  Geo g;       // the soft shape
  int ch, oh;  // the hard layer's c and o (prefixes of the soft ones)
  const bf16* xs;
  const bf16* xh;
  const WT* wt;
  const float* out_scale;
  const float* in_scale;
  bf16* ys;
  bf16* yh;
};

// ------------------------------------------------------------------ per-block tables (shared memory)
// Pixel p of a batch of hh x ww images as (image, row, column), and the next pixel in that order.
struct PixelPos {
  int nb, ph, pw;
};
S2H_MC_HD PixelPos pixel_pos(int p, int hh, int ww) {
  const int hw = hh * ww, nb = p / hw, rem = p - nb * hw, ph = rem / ww;
  return {nb, ph, rem - ph * ww};
}
S2H_MC_HD void next_pixel(PixelPos& pp, int hh, int ww) {
  if (++pp.pw == ww) {
    pp.pw = 0;
    if (++pp.ph == hh) {
      pp.ph = 0;
      ++pp.nb;
    }
  }
}

// Forward / dual: the output pixels of the block's M tile.
struct PixelTable {
  int pix[kBM];            // (nb*h + ih0)*w + iw0: the input pixel under tap (0, 0), maybe in the padding
  int ih0[kBM], iw0[kBM];  // its row and column; kFar for rows past the end
};
S2H_MC_HD void fill_pixel_table(PixelTable& tab, const Geo& g, int m0, int t) {
  const int mdim = g.n * g.ho * g.wo;
  for (int i = t; i < kBM; i += kThreads) {
    const int p = m0 + i;
    if (p < mdim) {
      const PixelPos pp = pixel_pos(p, g.ho, g.wo);
      const int ih0 = pp.ph * g.stride - g.pad, iw0 = pp.pw * g.stride - g.pad;
      tab.pix[i] = (pp.nb * g.h + ih0) * g.w + iw0;
      tab.ih0[i] = ih0;
      tab.iw0[i] = iw0;
    } else {
      tab.pix[i] = 0;
      tab.ih0[i] = kFar;
      tab.iw0[i] = kFar;
    }
  }
}
// Forward / dual: the pixel table and the element offset of weight row row(n0 + j), or -1 past o.
S2H_MC_HD void fill_fwd_tables(PixelTable& tab, int64_t* wrow, const Geo& g, const int64_t* out_index, int m0, int n0,
                               int t) {
  fill_pixel_table(tab, g, m0, t);
  const int64_t row_elems = static_cast<int64_t>(g.taps) * g.w_cols;
  for (int j = t; j < kBN; j += kThreads) {
    const int oi = n0 + j;
    wrow[j] = oi < g.o ? (out_index ? out_index[oi] : static_cast<int64_t>(oi)) * row_elems : -1;
  }
}
// Data grad: the input pixels of the block's M tile.
struct InPixelTable {
  int base[kBM];           // nb*ho*wo: the first output pixel of its image
  int ihp[kBM], iwp[kBM];  // ih + pad, iw + pad; kFar for rows past the end
};
S2H_MC_HD void fill_in_pixel_table(InPixelTable& tab, const Geo& g, int m0, int t) {
  const int mdim = g.n * g.h * g.w;
  for (int i = t; i < kBM; i += kThreads) {
    const int p = m0 + i;
    if (p < mdim) {
      const PixelPos pp = pixel_pos(p, g.h, g.w);
      tab.base[i] = pp.nb * g.ho * g.wo;
      tab.ihp[i] = pp.ph + g.pad;
      tab.iwp[i] = pp.pw + g.pad;
    } else {
      tab.base[i] = 0;
      tab.ihp[i] = kFar;
      tab.iwp[i] = kFar;
    }
  }
}

// ------------------------------------------------------------------ operand loaders
// Each loader reads one K tile of one operand into registers (load) and writes them into a shared tile
// (store). t is the thread index; all bounds are checked per element (or per 8-element vector).

// K index kk of an activation operand, (tap, channel) with cdim channels per tap, as the tap's (r, q) and the
// channel ch; valid = kk inside the operand (r = q = ch = 0 otherwise).
struct KCol {
  int r, q, ch;
  bool valid;
};
S2H_MC_HD KCol k_col(int kk, int kdim, int cdim, int ks) {
  KCol c{0, 0, 0, kk < kdim};
  if (c.valid) {
    const int tap = kk / cdim;
    c.ch = kk - tap * cdim;
    c.r = tap / ks;
    c.q = tap - c.r * ks;
  }
  return c;
}
// The scale of column c's channel, or of the 8 channels from it (1 without scales or outside the operand).
S2H_MC_HD float scale1(const float* scale, const KCol& c) { return c.valid && scale ? scale[c.ch] : 1.f; }
S2H_MC_HD void scales8(float* sc, const float* scale, const KCol& c) {
#pragma unroll
  for (int j = 0; j < 8; ++j) sc[j] = c.valid && scale ? scale[c.ch + j] : 1.f;
}
// 8 bf16 from src (16-byte aligned), times sc[0..7] when there are scales.
S2H_MC_HD uint4 load8(const bf16* src, const float* scale, const float* sc) {
  const uint4 u = *reinterpret_cast<const uint4*>(src);
  return scale ? scale8(u, sc) : u;
}
// e[j] = elem(2 j) in the low and elem(2 j + 1) in the high half (bf16 bits).
template <int N, class Elem>
S2H_MC_HD void pack_elems(uint32_t (&e)[N], Elem elem) {
#pragma unroll
  for (int j = 0; j < N; ++j) e[j] = pack2(elem(2 * j), elem(2 * j + 1));
}

// The registers of the loaders whose tiles share a thread map, and their store into shared memory.
// Row-major A, one element per K column: thread t owns K column t % 32 and rows t / 32 + 8 i (a warp covers
// 32 consecutive K indexes).
struct ScalarRowA {
  uint32_t e[8];
  S2H_MC_HD void store(bf16* as, int t) const {
#pragma unroll
    for (int i = 0; i < 16; ++i) put_bits(as + a_at<RowMajor>((t >> 5) + 8 * i, t & 31), e, i);
  }
};
// Row-major A, 8-element vectors: thread t owns the 8 K columns 8 (t % 4) ... and rows t / 4 + 64 i.
struct VectorRowA {
  uint4 v[2];
  S2H_MC_HD void store(bf16* as, int t) const {
#pragma unroll
    for (int i = 0; i < 2; ++i)
      *reinterpret_cast<uint4*>(as + a_at<RowMajor>((t >> 2) + 64 * i, 8 * (t & 3))) = v[i];
  }
};
// Row-major B, one element per N column: thread t owns N column t % 64 (a warp covers 32 consecutive ones)
// and the 8 consecutive K rows 8 (t / 64) ...
struct ScalarRowB {
  uint32_t e[4];
  S2H_MC_HD void store(bf16* bs, int t) const {
#pragma unroll
    for (int i = 0; i < 8; ++i) put_bits(bs + b_at<RowMajor>(8 * (t >> 6) + i, t & 63), e, i);
  }
};

// Forward / dual / data-grad A: A(m, kk) = scale[ch] * src[an offset found through the block's table] into a
// row-major tile. The source Src says which column kk is and where row m of it lives:
//   using Table;  const bf16* src;  const float* scale (or null);
//   KCol column(int kk) const;
//   bool at(const Table&, int row, const KCol&, int64_t& off) const: false where A is 0 (an invalid column,
//   the padding), else off = the element's offset in src. The bounds tests stay written out in each at()
//   (no shared inside() helper): with one, nvcc branched around each element instead of predicating it
//   (about 8% more instructions in the scalar forward kernel, same loads).
template <class Src, bool VEC>
struct GatherA;
template <class Src>
struct GatherA<Src, false> : ScalarRowA {
  S2H_MC_HD void load(const Src& s, const typename Src::Table& tab, int t, int k0) {
    const KCol c = s.column(k0 + (t & 31));
    const float sc = scale1(s.scale, c);
    pack_elems(e, [&](int i) -> uint32_t {
      int64_t off;
      return s.at(tab, (t >> 5) + 8 * i, c, off) ? f2bits(sc * bf2f(s.src[off])) : 0u;
    });
  }
};
// Vector (channel counts multiples of 8, src 16-byte aligned): 8 consecutive K indexes are 8 consecutive
// channels of one tap.
template <class Src>
struct GatherA<Src, true> : VectorRowA {
  S2H_MC_HD void load(const Src& s, const typename Src::Table& tab, int t, int k0) {
    const KCol c = s.column(k0 + 8 * (t & 3));
    float sc[8];
    scales8(sc, s.scale, c);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      int64_t off;
      v[i] = s.at(tab, (t >> 2) + 64 * i, c, off) ? load8(s.src + off, s.scale, sc) : make_uint4(0, 0, 0, 0);
    }
  }
};

// Forward / dual A: A(p, kk) with kk = (tap, ci) in the K order of `corder` channels; x has `cx` channels
// per pixel and channels >= cx read as 0 (the dual's hard input); scale (or null) multiplies channel ci.
struct ActSrc {
  using Table = PixelTable;
  const bf16* src;  // x
  const float* scale;
  int cx, corder, h, w, ks, kdim;
  S2H_MC_HD KCol column(int kk) const {
    KCol c = k_col(kk, kdim, corder, ks);
    c.valid = c.valid && c.ch < cx;
    return c;
  }
  S2H_MC_HD bool at(const PixelTable& tab, int row, const KCol& c, int64_t& off) const {
    const int ih = tab.ih0[row] + c.r, iw = tab.iw0[row] + c.q;  // unsigned: also rejects negatives
    if (!(c.valid && static_cast<unsigned>(ih) < static_cast<unsigned>(h) &&
          static_cast<unsigned>(iw) < static_cast<unsigned>(w)))
      return false;
    off = static_cast<int64_t>(tab.pix[row] + (c.r * w + c.q)) * cx + c.ch;
    return true;
  }
};
template <bool VEC>
using ActA = GatherA<ActSrc, VEC>;

// Forward / dual B: B((tap, ci), oi) = W[row(oi), tap, col(ci)] into a column-major tile; thread t owns
// K column t % 32 and N rows t / 32 + 8 i (a warp reads consecutive channels of one weight row).
template <class WT>
struct WSrcNK {
  const WT* wt;
  const int64_t* in_index;
  int corder, w_cols, kdim;
};
template <class WT>
struct WeightNK {
  uint32_t e[4];
  S2H_MC_HD void load(const WSrcNK<WT>& s, const int64_t* wrow, int t, int k0) {
    const int kk = k0 + (t & 31);
    const bool kv = kk < s.kdim;
    int64_t koff = 0;
    if (kv) {
      const int tap = kk / s.corder, ci = kk - tap * s.corder;
      koff = static_cast<int64_t>(tap) * s.w_cols + (s.in_index ? s.in_index[ci] : static_cast<int64_t>(ci));
    }
    pack_elems(e, [&](int i) -> uint32_t {
      const int64_t ro = wrow[(t >> 5) + 8 * i];
      return kv && ro >= 0 ? bf_bits(w2bf(s.wt[ro + koff])) : 0u;
    });
  }
  S2H_MC_HD void store(bf16* bs, int t) const {
#pragma unroll
    for (int i = 0; i < 8; ++i) put_bits(bs + b_at<ColMajor>(t & 31, (t >> 5) + 8 * i), e, i);
  }
};

// Data grad A: A(p, (tap, oi)) = scale[oi] * dy[the output pixel that tap (r, q) of input pixel p feeds, oi].
struct DySrc {
  using Table = InPixelTable;
  const bf16* src;  // dy
  const float* scale;
  int o, ks, stride, ho, wo, kdim;
  S2H_MC_HD KCol column(int kk) const { return k_col(kk, kdim, o, ks); }
  // The dy pixel (relative to the image's first) fed by input pixel row `row` through tap (r, q), or -1.
  S2H_MC_HD int pixel(const InPixelTable& tab, int row, int r, int q) const {
    int th = tab.ihp[row] - r, tw = tab.iwp[row] - q;
    if (th < 0 || tw < 0) return -1;
    if (stride == 2) {
      if ((th | tw) & 1) return -1;
      th >>= 1;
      tw >>= 1;
    }
    if (th >= ho || tw >= wo) return -1;
    return th * wo + tw;
  }
  S2H_MC_HD bool at(const InPixelTable& tab, int row, const KCol& c, int64_t& off) const {
    const int pix = c.valid ? pixel(tab, row, c.r, c.q) : -1;
    if (pix < 0) return false;
    off = static_cast<int64_t>(tab.base[row] + pix) * o + c.ch;
    return true;
  }
};
template <bool VEC>
using DyA = GatherA<DySrc, VEC>;

// Data grad B: B((tap, oi), ci) = W[row(oi), tap, col(ci)] into a row-major tile (a warp reads 32
// consecutive weight columns).
template <class WT>
struct WSrcKN {
  const WT* wt;
  const int64_t* out_index;
  const int64_t* in_index;
  int o, c, taps, w_cols, kdim;
};
template <class WT>
struct WeightKN : ScalarRowB {
  int64_t col;  // col(ci) of this thread's column
  bool nv;      // ci < c
  S2H_MC_HD void init(const WSrcKN<WT>& s, int t, int n0) {
    const int ci = n0 + (t & 63);
    nv = ci < s.c;
    col = nv ? (s.in_index ? s.in_index[ci] : static_cast<int64_t>(ci)) : 0;
  }
  S2H_MC_HD void load(const WSrcKN<WT>& s, int t, int k0) {
    const int kk = k0 + 8 * (t >> 6);
    int tap = kk / s.o, oi = kk - tap * s.o;
#pragma unroll
    for (int j = 0; j < 4; ++j) e[j] = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      if (nv && kk + i < s.kdim) {
        const int64_t row = s.out_index ? s.out_index[oi] : static_cast<int64_t>(oi);
        e[i >> 1] |= bf_bits(w2bf(s.wt[(row * s.taps + tap) * s.w_cols + col])) << (16 * (i & 1));
      }
      if (++oi == s.o) {
        oi = 0;
        ++tap;
      }
    }
  }
};

// Weight grad A: A((tap, ci), p) = scale[ci] * x[input pixel of output pixel p under tap, ci] into a
// column-major tile; the M index (tap, ci) of a thread is fixed for the whole kernel.
struct XSrc {
  const bf16* x;
  const float* scale;
  int h, w, c, ks, stride, pad, ho, wo, kdim;
  S2H_MC_HD KCol column(int kk) const { return k_col(kk, kdim, c, ks); }
  // The offset of x under column col of output pixel pp; false in the padding.
  S2H_MC_HD bool at(const PixelPos& pp, const KCol& col, int64_t& off) const {
    const int ih = pp.ph * stride - pad + col.r, iw = pp.pw * stride - pad + col.q;
    off = (static_cast<int64_t>(pp.nb * h + ih) * w + iw) * c + col.ch;
    return static_cast<unsigned>(ih) < static_cast<unsigned>(h) && static_cast<unsigned>(iw) < static_cast<unsigned>(w);
  }
};
template <bool VEC>
struct XA;
// Scalar: thread t owns M column t % 128 (a warp reads 32 consecutive channels) and the 16 consecutive K
// rows (pixels) 16 (t / 128) ...
template <>
struct XA<false> {
  uint32_t e[8];
  KCol col;
  float sc;
  S2H_MC_HD void init(const XSrc& s, int t, int m0) {
    col = s.column(m0 + (t & 127));
    sc = scale1(s.scale, col);
  }
  S2H_MC_HD void load(const XSrc& s, int t, int k0, int kend) {
    const int p0 = k0 + 16 * (t >> 7);
    PixelPos pp = pixel_pos(p0, s.ho, s.wo);
#pragma unroll
    for (int j = 0; j < 8; ++j) e[j] = 0;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      int64_t off;
      if (col.valid && p0 + i < kend && s.at(pp, col, off))
        e[i >> 1] |= f2bits(sc * bf2f(s.x[off])) << (16 * (i & 1));
      next_pixel(pp, s.ho, s.wo);
    }
  }
  S2H_MC_HD void store(bf16* as, int t) const {
#pragma unroll
    for (int i = 0; i < 16; ++i) put_bits(as + a_at<ColMajor>(t & 127, 16 * (t >> 7) + i), e, i);
  }
};
// Vector (c a multiple of 8, x 16-byte aligned): thread t owns M columns 8 (t % 16) ... and the K rows
// 2 (t / 16), 2 (t / 16) + 1.
template <>
struct XA<true> {
  uint4 v[2];
  KCol col;
  float sc[8];
  S2H_MC_HD void init(const XSrc& s, int t, int m0) {
    col = s.column(m0 + 8 * (t & 15));
    scales8(sc, s.scale, col);
  }
  S2H_MC_HD void load(const XSrc& s, int t, int k0, int kend) {
    const int p0 = k0 + 2 * (t >> 4);
    PixelPos pp = pixel_pos(p0, s.ho, s.wo);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      int64_t off;
      v[i] = col.valid && p0 + i < kend && s.at(pp, col, off) ? load8(s.x + off, s.scale, sc) : make_uint4(0, 0, 0, 0);
      next_pixel(pp, s.ho, s.wo);
    }
  }
  S2H_MC_HD void store(bf16* as, int t) const {
#pragma unroll
    for (int i = 0; i < 2; ++i)
      *reinterpret_cast<uint4*>(as + a_at<ColMajor>(8 * (t & 15), 2 * (t >> 4) + i)) = v[i];
  }
};

// Weight grad B: B(p, oi) = dy[p, oi] into a row-major tile.
struct DyBSrc {
  const bf16* dy;
  int o;
};
template <bool VEC>
struct DyB;
// Scalar: thread t owns N column t % 64 and the 8 K rows 8 (t / 64) ...
template <>
struct DyB<false> : ScalarRowB {
  S2H_MC_HD void load(const DyBSrc& s, int t, int k0, int kend, int n0) {
    const int oi = n0 + (t & 63), p0 = k0 + 8 * (t >> 6);
    pack_elems(e, [&](int i) -> uint32_t {
      return oi < s.o && p0 + i < kend ? bf_bits(s.dy[static_cast<int64_t>(p0 + i) * s.o + oi]) : 0u;
    });
  }
};
// Vector (o a multiple of 8, dy 16-byte aligned): thread t owns N columns 8 (t % 8) ... of K row t / 8.
template <>
struct DyB<true> {
  uint4 v;
  S2H_MC_HD void load(const DyBSrc& s, int t, int k0, int kend, int n0) {
    const int oi = n0 + 8 * (t & 7), p = k0 + (t >> 3);
    v = oi < s.o && p < kend ? *reinterpret_cast<const uint4*>(s.dy + static_cast<int64_t>(p) * s.o + oi)
                             : make_uint4(0, 0, 0, 0);
  }
  S2H_MC_HD void store(bf16* bs, int t) const {
    *reinterpret_cast<uint4*>(bs + b_at<RowMajor>(t >> 3, 8 * (t & 7))) = v;
  }
};

// ------------------------------------------------------------------ per-direction loaders (one K tile of A and B)
// The activation and weight sources of the forward and the dual (the soft layer's K order, of g.c channels).
S2H_MC_HD ActSrc act_src(const Geo& g, const bf16* x, const float* scale, int cx) {
  return ActSrc{x, scale, cx, g.c, g.h, g.w, g.ks, g.taps * g.c};
}
template <class WT>
S2H_MC_HD WSrcNK<WT> weight_src_nk(const Geo& g, const WT* wt, const int64_t* in_index) {
  return WSrcNK<WT>{wt, in_index, g.c, g.w_cols, g.taps * g.c};
}

// What the loaders of gemm_loop share: the tile layouts, this thread's A and B registers, and their store
// (A at as, B at bs).
template <class AL, class BL, class A, class B>
struct Operands {
  using ALayout = AL;
  using BLayout = BL;
  int t;
  A a;
  B b;
  S2H_MC_HD void store(bf16* as, bf16* bs) const {
    a.store(as, t);
    b.store(bs, t);
  }
};

template <class WT, bool VEC>
struct FwdLoader : Operands<RowMajor, ColMajor, ActA<VEC>, WeightNK<WT>> {
  // The sources are rebuilt from the kernel parameters at each load rather than kept in members: the
  // compiler then reads them from the constant bank instead of holding them in registers.
  const ConvArgs<WT>* p;
  const PixelTable* tab;
  const int64_t* wrow;
  S2H_MC_HD void init(const ConvArgs<WT>& p_, const PixelTable* tab_, const int64_t* wrow_, int t_) {
    p = &p_;
    tab = tab_;
    wrow = wrow_;
    this->t = t_;
  }
  S2H_MC_HD void load(int kt) {
    this->a.load(act_src(p->g, p->x, p->in_scale, p->g.c), *tab, this->t, kt * kBK);
    this->b.load(weight_src_nk(p->g, p->wt, p->in_index), wrow, this->t, kt * kBK);
  }
};

template <class WT, bool VEC>
struct DgradLoader : Operands<RowMajor, RowMajor, DyA<VEC>, WeightKN<WT>> {
  DySrc asrc;
  WSrcKN<WT> bsrc;
  const InPixelTable* tab;
  S2H_MC_HD void init(const ConvArgs<WT>& p, const InPixelTable* tab_, int n0, int t_) {
    const Geo& g = p.g;
    asrc = DySrc{p.dy, p.out_scale, g.o, g.ks, g.stride, g.ho, g.wo, g.taps * g.o};
    bsrc = WSrcKN<WT>{p.wt, p.out_index, p.in_index, g.o, g.c, g.taps, g.w_cols, g.taps * g.o};
    tab = tab_;
    this->t = t_;
    this->b.init(bsrc, t_, n0);
  }
  S2H_MC_HD void load(int kt) {
    this->a.load(asrc, *tab, this->t, kt * kBK);
    this->b.load(bsrc, this->t, kt * kBK);
  }
};

template <bool VA, bool VB>
struct WgradLoader : Operands<ColMajor, RowMajor, XA<VA>, DyB<VB>> {
  XSrc asrc;
  DyBSrc bsrc;
  int n0, kb, ke;  // this split's pixels are [kb, ke)
  template <class WT>
  S2H_MC_HD void init(const ConvArgs<WT>& p, int m0, int n0_, int kb_, int ke_, int t_) {
    const Geo& g = p.g;
    asrc = XSrc{p.x, p.in_scale, g.h, g.w, g.c, g.ks, g.stride, g.pad, g.ho, g.wo, g.taps * g.c};
    bsrc = DyBSrc{p.dy, g.o};
    this->t = t_;
    n0 = n0_;
    kb = kb_;
    ke = ke_;
    this->a.init(asrc, t_, m0);
  }
  S2H_MC_HD void load(int kt) {
    this->a.load(asrc, this->t, kb + kt * kBK, ke);
    this->b.load(bsrc, this->t, kb + kt * kBK, ke, n0);
  }
};

// Dual: soft A, hard A (in the soft K order), one weight tile.
template <class WT, bool VEC>
struct DualLoader {
  const DualArgs<WT>* p;
  const PixelTable* tab;
  const int64_t* wrow;
  int t;
  bool hard_n;  // this block's N tile has hard outputs
  ActA<VEC> as, ah;
  WeightNK<WT> b;
  S2H_MC_HD void init(const DualArgs<WT>& p_, const PixelTable* tab_, const int64_t* wrow_, int n0, int t_) {
    p = &p_;
    tab = tab_;
    wrow = wrow_;
    t = t_;
    hard_n = n0 < p_.oh;
  }
  // Whether K tile kt holds a channel < hard.c (in the soft order (tap, ci) of c channels) and this block
  // has hard outputs: only then is the hard product computed. The same for every thread of the block.
  S2H_MC_HD bool hard(int kt) const {
    if (!hard_n) return false;
    const int c = p->g.c, kdim = p->g.taps * c, k0 = kt * kBK, ci0 = k0 % c;
    if (ci0 < p->ch) return true;
    return k0 + (c - ci0) < std::min(k0 + kBK, kdim);  // the next tap (channel 0) starts inside the tile
  }
  S2H_MC_HD void load(int kt, bool with_hard) {
    const Geo& g = p->g;
    as.load(act_src(g, p->xs, p->in_scale, g.c), *tab, t, kt * kBK);
    b.load(weight_src_nk<WT>(g, p->wt, nullptr), wrow, t, kt * kBK);
    if (with_hard) ah.load(act_src(g, p->xh, nullptr, p->ch), *tab, t, kt * kBK);
  }
  // stage: soft A at 0, hard A at kAElems, B at 2 kAElems
  S2H_MC_HD void store(bf16* stage, bool with_hard) const {
    as.store(stage, t);
    b.store(stage + 2 * kAElems, t);
    if (with_hard) ah.store(stage + kAElems, t);
  }
};

// ------------------------------------------------------------------ epilogues
// The rows of a row-major C tile that thread t writes out: it owns column t % 64 and rows t / 64 + 4 i; f(ml, p)
// runs for each of them that is inside the output (p = m0 + ml < mdim).
template <class F>
S2H_MC_HD void for_my_rows(int mdim, int m0, int t, F f) {
#pragma unroll 4
  for (int i = 0; i < kBM / 4; ++i) {
    const int ml = (t >> 6) + 4 * i, p = m0 + ml;
    if (p >= mdim) break;
    f(ml, p);
  }
}

// Forward / dual: y[p, oi] = scale[oi] * C(p, oi) (row-major C).
S2H_MC_HD void store_output(const float* cs, bf16* y, const float* scale, int mdim, int ncols, int m0, int n0,
                            int t) {
  const int nl = t & 63, oi = n0 + nl;
  if (oi >= ncols) return;
  const float sc = scale ? scale[oi] : 1.f;
  for_my_rows(mdim, m0, t, [&](int ml, int p) {
    y[static_cast<int64_t>(p) * ncols + oi] = f2bf(sc * cs[c_at<RowMajor>(ml, nl)]);
  });
}

// Data grad: dx[p, ci] = in_scale[ci] * C(p, ci); returns this thread's part of sum_p x[p, ci] * C(p, ci)
// (0 unless want_partial), which the block reduces by column.
template <class WT>
S2H_MC_HD float store_dgrad(const float* cs, const ConvArgs<WT>& a, bool want_partial, int m0, int n0, int t) {
  const int nl = t & 63, ci = n0 + nl, c = a.g.c;
  float part = 0.f;
  if (ci >= c) return part;
  const float sc = a.in_scale ? a.in_scale[ci] : 1.f;
  for_my_rows(a.g.n * a.g.h * a.g.w, m0, t, [&](int ml, int p) {
    const float v = cs[c_at<RowMajor>(ml, nl)];
    const int64_t off = static_cast<int64_t>(p) * c + ci;
    a.dx[off] = f2bf(sc * v);
    if (want_partial) part += bf2f(a.x[off]) * v;
  });
  return part;
}
// The block's partial of column ci = n0 + t (t < 64) from the 4 row groups' parts red[g * 64 + t], summed
// in a fixed order.
S2H_MC_HD void store_dgrad_partial(const float* red, float* out, int c, int m_block, int n0, int t) {
  const int ci = n0 + t;
  if (t >= kBN || ci >= c) return;
  out[static_cast<int64_t>(m_block) * c + ci] = ((red[t] + red[kBN + t]) + red[2 * kBN + t]) + red[3 * kBN + t];
}

// Weight grad: the split's tile (column-major C: M = (tap, ci), N = oi) into ws[z][oi][(tap, ci)]; thread t
// owns M row t % 128 and N columns t / 128 + 2 i.
S2H_MC_HD void store_wgrad_split(const float* cs, float* ws, int kdim, int o, int m0, int n0, int z, int t) {
  const int ml = t & 127, kk = m0 + ml;
  if (kk >= kdim) return;
#pragma unroll 4
  for (int i = 0; i < kBN / 2; ++i) {
    const int nl = (t >> 7) + 2 * i, oi = n0 + nl;
    if (oi >= o) break;
    ws[(static_cast<int64_t>(z) * o + oi) * kdim + kk] = cs[c_at<ColMajor>(ml, nl)];
  }
}

// Weight grad, second kernel: for output channel oi, thread t handles (tap, ci) = kk = t, t + 256, ...:
// G = the sum of the splits (in order), dweight = out_scale * G; returns the thread's part of sum W * G.
template <class WT>
S2H_MC_HD float finalize_wgrad(const FinalArgs<WT>& f, int oi, int t) {
  const int64_t row = f.out_index ? f.out_index[oi] : static_cast<int64_t>(oi);
  const float osc = f.out_scale ? f.out_scale[oi] : 1.f;
  float part = 0.f;
  for (int kk = t; kk < f.kdim; kk += kThreads) {
    float g = 0.f;
    for (int z = 0; z < f.splits; ++z) g += f.ws[(static_cast<int64_t>(z) * f.o + oi) * f.kdim + kk];
    const int tap = kk / f.c, ci = kk - tap * f.c;
    const int64_t widx = (row * f.taps + tap) * f.w_cols + (f.in_index ? f.in_index[ci] : static_cast<int64_t>(ci));
    f.dw[widx] = f2w<WT>(osc * g);
    if (f.dout_scale) part += w2f(f.wt[widx]) * g;
  }
  return part;
}

// ------------------------------------------------------------------ device-only: wmma and the kernels
template <class L>
struct Wmma;
template <>
struct Wmma<RowMajor> {
  using frag = nvcuda::wmma::row_major;
  static constexpr nvcuda::wmma::layout_t mem = nvcuda::wmma::mem_row_major;
};
template <>
struct Wmma<ColMajor> {
  using frag = nvcuda::wmma::col_major;
  static constexpr nvcuda::wmma::layout_t mem = nvcuda::wmma::mem_col_major;
};

// A warp's 32x32 accumulator: 2x2 fragments at rows 32 wm + 16 i, columns 32 wn + 16 j of the block tile.
struct Acc {
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> f[2][2];
};
__device__ __forceinline__ void acc_zero(Acc& acc) {
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(acc.f[i][j], 0.f);
}
// acc += A tile x B tile (one K step of 32) for warp (wm, wn).
template <class AL, class BL>
__device__ __forceinline__ void tile_mma(Acc& acc, const bf16* as, const bf16* bs, int wm, int wn) {
  using namespace nvcuda;
#pragma unroll
  for (int kk = 0; kk < kBK; kk += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, typename Wmma<AL>::frag> a[2];
    wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, typename Wmma<BL>::frag> b[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], as + a_at<AL>(32 * wm + 16 * i, kk), kLdA<AL>);
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], bs + b_at<BL>(kk, 32 * wn + 16 * j), kLdB<BL>);
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::mma_sync(acc.f[i][j], a[i], b[j], acc.f[i][j]);
  }
}
template <class CL>
__device__ __forceinline__ void acc_store(const Acc& acc, float* cs, int wm, int wn) {
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      nvcuda::wmma::store_matrix_sync(cs + c_at<CL>(32 * wm + 16 * i, 32 * wn + 16 * j), acc.f[i][j], kLdC<CL>,
                                      Wmma<CL>::mem);
}

// The K loop of forward, dgrad and wgrad: stage s holds A at s * kStage and B at s * kStage + kAElems.
// Tile kt + 1 is read into registers before tile kt is multiplied and stored into the other stage after;
// the barrier at the end of each step both publishes that stage and retires the reads of the current one
// (which the next step overwrites). Ends with a barrier, so the caller may reuse the buffers.
template <class Ld>
__device__ __forceinline__ void gemm_loop(Ld& ld, Acc& acc, bf16* smem, int ktiles, int wm, int wn) {
  ld.load(0);
  ld.store(smem, smem + kAElems);
  __syncthreads();
  for (int kt = 0; kt < ktiles; ++kt) {
    bf16* const cur = smem + (kt & 1) * kStage;
    bf16* const nxt = smem + ((kt + 1) & 1) * kStage;
    const bool more = kt + 1 < ktiles;
    if (more) ld.load(kt + 1);
    tile_mma<typename Ld::ALayout, typename Ld::BLayout>(acc, cur, cur + kAElems, wm, wn);
    if (more) ld.store(nxt, nxt + kAElems);
    __syncthreads();
  }
}

// A block's whole GEMM: gemm_loop into a fresh accumulator, then the fp32 tile staged in shared memory in
// layout CL (aliasing the operand buffers) and a barrier; returns the staged tile for the epilogue.
template <class CL, class Ld>
__device__ __forceinline__ const float* gemm_block(Ld& ld, unsigned char* smem, int ktiles, int warp) {
  Acc acc;
  acc_zero(acc);
  gemm_loop(ld, acc, reinterpret_cast<bf16*>(smem), ktiles, warp & 3, warp >> 2);
  float* cs = reinterpret_cast<float*>(smem);
  acc_store<CL>(acc, cs, warp & 3, warp >> 2);
  __syncthreads();
  return cs;
}

template <class WT, bool VEC>
__global__ void __launch_bounds__(kThreads, 2) fwd_kernel(const ConvArgs<WT> p) {
  S2H_SHARED_ALIGNED(128, unsigned char, smem, [kSmemBytes]);
  S2H_SHARED(PixelTable, tab);
  S2H_SHARED(int64_t, wrow, [kBN]);
  const int t = threadIdx.x;
  const int m0 = blockIdx.x * kBM, n0 = blockIdx.y * kBN;
  fill_fwd_tables(tab, wrow, p.g, p.out_index, m0, n0, t);
  __syncthreads();
  FwdLoader<WT, VEC> ld;
  ld.init(p, &tab, wrow, t);
  const float* cs = gemm_block<RowMajor>(ld, smem, (p.g.taps * p.g.c + kBK - 1) / kBK, t >> 5);
  store_output(cs, p.y, p.out_scale, p.g.n * p.g.ho * p.g.wo, p.g.o, m0, n0, t);
}

template <class WT, bool VEC>
__global__ void __launch_bounds__(kThreads, 2) dgrad_kernel(const ConvArgs<WT> p) {
  S2H_SHARED_ALIGNED(128, unsigned char, smem, [kSmemBytes]);
  S2H_SHARED(InPixelTable, tab);
  S2H_SHARED(float, red, [kThreads]);
  const int t = threadIdx.x;
  const int m0 = blockIdx.x * kBM, n0 = blockIdx.y * kBN;
  fill_in_pixel_table(tab, p.g, m0, t);
  __syncthreads();
  DgradLoader<WT, VEC> ld;
  ld.init(p, &tab, n0, t);
  const float* cs = gemm_block<RowMajor>(ld, smem, (p.g.taps * p.g.o + kBK - 1) / kBK, t >> 5);
  const bool want_partial = p.din_partial != nullptr;
  const float part = store_dgrad(cs, p, want_partial, m0, n0, t);
  if (want_partial) {  // the same for the whole block
    red[t] = part;     // t = 64 * (row group) + column
    __syncthreads();
    store_dgrad_partial(red, p.din_partial, p.g.c, blockIdx.x, n0, t);
  }
}

template <bool VA, bool VB>
__global__ void __launch_bounds__(kThreads, 2) wgrad_kernel(const ConvArgs<float> p) {
  S2H_SHARED_ALIGNED(128, unsigned char, smem, [kSmemBytes]);
  const int t = threadIdx.x;
  const int m0 = blockIdx.x * kBM, n0 = blockIdx.y * kBN, z = blockIdx.z;
  const int pixels = p.g.n * p.g.ho * p.g.wo;
  const int kb = z * p.chunk, ke = kb + std::min(pixels - kb, p.chunk);  // no int overflow near 2^31 pixels
  WgradLoader<VA, VB> ld;
  ld.init(p, m0, n0, kb, ke, t);
  const float* cs = gemm_block<ColMajor>(ld, smem, (ke - kb + kBK - 1) / kBK, t >> 5);
  store_wgrad_split(cs, p.ws, p.g.taps * p.g.c, p.g.o, m0, n0, z, t);
}

template <class WT>
__global__ void __launch_bounds__(kThreads) wgrad_finalize_kernel(const FinalArgs<WT> f) {
  S2H_SHARED(float, red, [kThreads / 32]);
  const int t = threadIdx.x, oi = blockIdx.x;
  float part = finalize_wgrad(f, oi, t);
  if (f.dout_scale) {  // the same for the whole block
    part = warp_sum(part);
    if ((t & 31) == 0) red[t >> 5] = part;
    __syncthreads();
    if (t == 0) {
      float s = 0.f;
      for (int i = 0; i < kThreads / 32; ++i) s += red[i];
      f.dout_scale[oi] = s;
    }
  }
}

// One block per SM: two accumulator sets (64 fp32 registers a thread) do not fit the 128 registers of two.
template <class WT, bool VEC>
__global__ void __launch_bounds__(kThreads, 1) dual_kernel(const DualArgs<WT> p) {
  S2H_DYNAMIC_SHARED(128, unsigned char, dsmem);
  S2H_SHARED(PixelTable, tab);
  S2H_SHARED(int64_t, wrow, [kBN]);
  const int t = threadIdx.x, warp = t >> 5, wm = warp & 3, wn = warp >> 2;
  const int m0 = blockIdx.x * kBM, n0 = blockIdx.y * kBN;
  fill_fwd_tables(tab, wrow, p.g, nullptr, m0, n0, t);
  __syncthreads();
  DualLoader<WT, VEC> ld;
  ld.init(p, &tab, wrow, n0, t);
  Acc acc_s, acc_h;
  acc_zero(acc_s);
  acc_zero(acc_h);
  bf16* const smem = reinterpret_cast<bf16*>(dsmem);
  const int ktiles = (p.g.taps * p.g.c + kBK - 1) / kBK;
  // The same pipeline as gemm_loop with a third operand; hard(kt) is uniform over the block, so the
  // skipped loads, stores and products never separate the threads around a barrier.
  bool hard = ld.hard(0);
  ld.load(0, hard);
  ld.store(smem, hard);
  __syncthreads();
  for (int kt = 0; kt < ktiles; ++kt) {
    bf16* const cur = smem + (kt & 1) * kDualStage;
    bf16* const nxt = smem + ((kt + 1) & 1) * kDualStage;
    const bool more = kt + 1 < ktiles;
    const bool hard_next = more && ld.hard(kt + 1);
    if (more) ld.load(kt + 1, hard_next);
    tile_mma<RowMajor, ColMajor>(acc_s, cur, cur + 2 * kAElems, wm, wn);
    if (hard) tile_mma<RowMajor, ColMajor>(acc_h, cur + kAElems, cur + 2 * kAElems, wm, wn);
    if (more) ld.store(nxt, hard_next);
    __syncthreads();
    hard = hard_next;
  }
  const int mdim = p.g.n * p.g.ho * p.g.wo;
  float* cs = reinterpret_cast<float*>(dsmem);
  acc_store<RowMajor>(acc_s, cs, wm, wn);
  __syncthreads();
  store_output(cs, p.ys, p.out_scale, mdim, p.g.o, m0, n0, t);
  __syncthreads();  // every read of the soft tile is done before the hard one overwrites it
  if (ld.hard_n) acc_store<RowMajor>(acc_h, cs, wm, wn);
  __syncthreads();
  if (ld.hard_n) store_output(cs, p.yh, nullptr, mdim, p.oh, m0, n0, t);
}

// ------------------------------------------------------------------ host side
int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

Geo geo_of(const MaskedConvShape& s) {
  Geo g;
  g.n = static_cast<int>(s.n);
  g.h = static_cast<int>(s.h);
  g.w = static_cast<int>(s.w);
  g.c = static_cast<int>(s.c);
  g.o = static_cast<int>(s.o);
  g.ks = static_cast<int>(s.k);
  g.stride = static_cast<int>(s.stride);
  g.pad = static_cast<int>(s.pad);
  g.ho = static_cast<int>(s.ho);
  g.wo = static_cast<int>(s.wo);
  g.w_rows = static_cast<int>(s.w_rows);
  g.w_cols = static_cast<int>(s.w_cols);
  g.taps = g.ks * g.ks;
  return g;
}

void require_ptr(const void* p, const char* what, const char* op) {
  if (p == nullptr) throw CudaError(std::string(op) + ": " + what + " is null");
}

// The weight gradient's split of the pixel axis: `splits` groups of `tiles` K tiles, none empty.
struct WgradPlan {
  int64_t splits = 1, tiles = 1;
};
// Aim at about 2 waves of the GEMM kernel on an H100 (132 SMs, 2 blocks each); keep at least 8 K tiles
// per split (so the partial tiles' traffic stays small next to the loads) and the workspace within 64 MiB
// (unless a single split already needs more). A fixed SM count keeps the plan a function of the shape
// alone, so masked_conv_wgrad_workspace_bytes always agrees with the launch.
WgradPlan wgrad_plan(const MaskedConvShape& s) {
  constexpr int64_t kTargetBlocks = 132 * 2 * 2, kMinTilesPerSplit = 8, kMaxWorkspace = int64_t{64} << 20;
  const int64_t ktiles = cdiv(s.n * s.ho * s.wo, kBK);
  const int64_t kdim = s.k * s.k * s.c;
  const int64_t blocks = cdiv(kdim, kBM) * cdiv(s.o, kBN);
  const int64_t split_bytes = s.o * kdim * static_cast<int64_t>(sizeof(float));
  int64_t splits = cdiv(kTargetBlocks, blocks);
  splits = std::min(splits, std::max<int64_t>(1, ktiles / kMinTilesPerSplit));
  splits = std::min(splits, std::max<int64_t>(1, kMaxWorkspace / split_bytes));
  splits = std::clamp<int64_t>(splits, 1, 65535);
  WgradPlan plan;
  plan.tiles = cdiv(ktiles, splits);
  plan.splits = cdiv(ktiles, plan.tiles);  // drop splits that would get no tile
  return plan;
}
size_t wgrad_workspace(const MaskedConvShape& s, const WgradPlan& plan) {
  return static_cast<size_t>(plan.splits * s.o * s.k * s.k * s.c) * sizeof(float);
}

// What each launcher launches (a function of its arguments, kept apart from the launch so that it can be
// checked on a host): kernel arguments, grid and the vector variant.
template <class WT>
struct ConvLaunch {
  ConvArgs<WT> p;
  dim3 grid;
  bool vec_a = false, vec_b = false;
};

// A grid of m x n tiles (x splits).
dim3 tile_grid(int64_t m, int64_t n, int64_t splits = 1) {
  return dim3(static_cast<unsigned>(cdiv(m, kBM)), static_cast<unsigned>(cdiv(n, kBN)), static_cast<unsigned>(splits));
}

// The operands and index lists of the forward and the data gradient.
template <class WT>
ConvArgs<WT> conv_args(const MaskedConvShape& s, const MaskedConvArgs& a, const void* x, const void* dy,
                       const void* weight) {
  ConvArgs<WT> p;
  p.g = geo_of(s);
  p.x = static_cast<const bf16*>(x);
  p.dy = static_cast<const bf16*>(dy);
  p.wt = static_cast<const WT*>(weight);
  p.out_index = a.out_index;
  p.in_index = a.in_index;
  p.out_scale = a.out_scale;
  p.in_scale = a.in_scale;
  return p;
}

template <class WT>
ConvLaunch<WT> forward_launch(const MaskedConvShape& s, const MaskedConvArgs& a, const void* x, const void* weight,
                              void* y) {
  ConvLaunch<WT> l;
  l.p = conv_args<WT>(s, a, x, nullptr, weight);
  l.p.y = static_cast<bf16*>(y);
  l.grid = tile_grid(s.n * s.ho * s.wo, s.o);
  l.vec_a = s.c % 8 == 0 && aligned16(x);
  return l;
}

template <class WT>
ConvLaunch<WT> dgrad_launch(const MaskedConvShape& s, const MaskedConvArgs& a, const void* x, const void* dy,
                            const void* weight, void* dx, float* din_scale_partial) {
  ConvLaunch<WT> l;
  l.p = conv_args<WT>(s, a, x, dy, weight);
  l.p.dx = static_cast<bf16*>(dx);
  l.p.din_partial = din_scale_partial;
  l.grid = tile_grid(s.n * s.h * s.w, s.c);
  l.vec_a = s.o % 8 == 0 && aligned16(dy);
  return l;
}

// The GEMM kernel of the weight gradient does not read the weight (hence ConvArgs<float>).
ConvLaunch<float> wgrad_launch(const MaskedConvShape& s, const MaskedConvArgs& a, const void* x, const void* dy,
                               void* workspace, const WgradPlan& plan) {
  ConvLaunch<float> l;
  l.p.g = geo_of(s);
  l.p.x = static_cast<const bf16*>(x);
  l.p.dy = static_cast<const bf16*>(dy);
  l.p.in_scale = a.in_scale;
  l.p.ws = static_cast<float*>(workspace);
  l.p.chunk = static_cast<int>(plan.tiles * kBK);
  l.grid = tile_grid(s.k * s.k * s.c, s.o, plan.splits);
  l.vec_a = s.c % 8 == 0 && aligned16(x);
  l.vec_b = s.o % 8 == 0 && aligned16(dy);
  return l;
}

template <class WT>
FinalArgs<WT> finalize_args(const MaskedConvShape& s, const MaskedConvArgs& a, const void* weight, void* dweight,
                            float* dout_scale, const void* workspace, const WgradPlan& plan) {
  const Geo g = geo_of(s);
  return FinalArgs<WT>{static_cast<const float*>(workspace), static_cast<int>(plan.splits), g.o, g.c, g.taps,
                       g.w_cols, g.taps * g.c, a.out_index, a.in_index, a.out_scale, static_cast<const WT*>(weight),
                       static_cast<WT*>(dweight), dout_scale};
}

template <class WT>
struct DualLaunch {
  DualArgs<WT> p;
  dim3 grid;
  bool vec = false;
};
template <class WT>
DualLaunch<WT> dual_launch(const MaskedConvShape& soft, const MaskedConvShape& hard, const float* out_scale,
                           const float* in_scale, const void* xs, const void* xh, const void* weight, void* ys,
                           void* yh) {
  DualLaunch<WT> l;
  l.p = DualArgs<WT>{geo_of(soft),
                     static_cast<int>(hard.c),
                     static_cast<int>(hard.o),
                     static_cast<const bf16*>(xs),
                     static_cast<const bf16*>(xh),
                     static_cast<const WT*>(weight),
                     out_scale,
                     in_scale,
                     static_cast<bf16*>(ys),
                     static_cast<bf16*>(yh)};
  l.grid = tile_grid(soft.n * soft.ho * soft.wo, soft.o);
  l.vec = soft.c % 8 == 0 && hard.c % 8 == 0 && aligned16(xs) && aligned16(xh);
  return l;
}

// Sets the dynamic shared memory a kernel may use above the default 48 KB. Done before every launch:
// the attribute is per device and the call is cheap next to the kernel.
template <class Kernel>
void allow_smem(Kernel kernel, int bytes) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

}  // namespace

void masked_conv_check(const MaskedConvShape& s, DType weight_dtype, const char* op) {
  auto fail = [&](const std::string& what) {
    throw CudaError(std::string(op) + ": " + what + " (shape n=" + std::to_string(s.n) + " h=" + std::to_string(s.h) +
                    " w=" + std::to_string(s.w) + " c=" + std::to_string(s.c) + " o=" + std::to_string(s.o) +
                    " k=" + std::to_string(s.k) + " stride=" + std::to_string(s.stride) +
                    " pad=" + std::to_string(s.pad) + " ho=" + std::to_string(s.ho) + " wo=" + std::to_string(s.wo) +
                    " weight=[" + std::to_string(s.w_rows) + "," + std::to_string(s.k) + "," + std::to_string(s.k) +
                    "," + std::to_string(s.w_cols) + "])");
  };
  auto positive = [&](int64_t v, const char* name) {
    if (v <= 0) fail(std::string(name) + " = " + std::to_string(v) + " (expected > 0)");
  };
  if (weight_dtype != DType::F32 && weight_dtype != DType::BF16)
    fail(std::string("weight dtype ") + std::to_string(static_cast<int>(weight_dtype)) + " (expected f32 or bf16)");
  if (s.k != 1 && s.k != 3) fail("kernel size k = " + std::to_string(s.k) + " (expected 1 or 3)");
  if (s.stride != 1 && s.stride != 2) fail("stride = " + std::to_string(s.stride) + " (expected 1 or 2)");
  if (s.pad < 0) fail("pad = " + std::to_string(s.pad) + " (expected >= 0)");
  positive(s.n, "n");
  positive(s.h, "h");
  positive(s.w, "w");
  positive(s.c, "c");
  positive(s.o, "o");
  // Bound every size before multiplying (no int64 overflow below); the exact int limits come after.
  constexpr int64_t kBig = int64_t{1} << 30;
  for (const auto& [v, name] : {std::pair{s.n, "n"}, {s.h, "h"}, {s.w, "w"}, {s.c, "c"}, {s.o, "o"}, {s.pad, "pad"},
                                {s.w_rows, "w_rows"}, {s.w_cols, "w_cols"}, {s.ho, "ho"}, {s.wo, "wo"}})
    if (v > kBig) fail(std::string(name) + " = " + std::to_string(v) + " is too large (at most 2^30)");
  if (s.h + 2 * s.pad < s.k || s.w + 2 * s.pad < s.k) fail("the padded input is smaller than the kernel");
  const int64_t eho = (s.h + 2 * s.pad - s.k) / s.stride + 1, ewo = (s.w + 2 * s.pad - s.k) / s.stride + 1;
  if (s.ho != eho) fail("ho = " + std::to_string(s.ho) + " (expected (h + 2 pad - k) / stride + 1 = " +
                        std::to_string(eho) + ")");
  if (s.wo != ewo) fail("wo = " + std::to_string(s.wo) + " (expected (w + 2 pad - k) / stride + 1 = " +
                        std::to_string(ewo) + ")");
  if (s.o > s.w_rows)
    fail("o = " + std::to_string(s.o) + " exceeds the weight's rows w_rows = " + std::to_string(s.w_rows));
  if (s.c > s.w_cols) fail("c = " + std::to_string(s.c) + " exceeds the weight's columns w_cols = " +
                           std::to_string(s.w_cols));
  // The kernels index pixels and (tap, channel) pairs in int: every such value, padding included, must stay
  // below 2^31 with a tile's worth of slack.
  // (Products of two sizes <= 2^31 fit int64; a third factor is compared by division.)
  constexpr int64_t kIntLimit = int64_t{INT_MAX} - 2 * kBM;
  if (s.n * s.h + 2 * s.pad + s.k > kIntLimit / (s.w + 2 * s.pad + s.k))
    fail("the padded input has too many pixels for the kernels' int indexing");
  if (s.n * s.ho > kIntLimit / s.wo) fail("the output has too many pixels for the kernels' int indexing");
  if (s.k * s.k * std::max(s.c, s.o) > kIntLimit) fail("k*k*channels is too large for the kernels' int indexing");
  if (cdiv(std::max(s.c, s.o), kBN) > 65535) fail("too many channels for the grid (at most 65535 tiles of 64)");
}

void masked_conv_forward(const MaskedConvShape& s, const MaskedConvArgs& a, const void* x, const void* weight,
                         DType weight_dtype, void* y, Stream stream) {
  const char* op = "masked_conv_forward";
  masked_conv_check(s, weight_dtype, op);
  require_ptr(x, "x", op);
  require_ptr(weight, "weight", op);
  require_ptr(y, "y", op);
  dispatch_gpu_float(weight_dtype, op, [&]<typename WT>() {
    const ConvLaunch<WT> l = forward_launch<WT>(s, a, x, weight, y);
    if (l.vec_a)
      launch(op, fwd_kernel<WT, true>, l.grid, kThreads, 0, stream, l.p);
    else
      launch(op, fwd_kernel<WT, false>, l.grid, kThreads, 0, stream, l.p);
  });
}

int64_t masked_conv_dgrad_partial_blocks(const MaskedConvShape& s) { return cdiv(s.n * s.h * s.w, kBM); }

void masked_conv_backward_data(const MaskedConvShape& s, const MaskedConvArgs& a, const void* x, const void* dy,
                               const void* weight, DType weight_dtype, void* dx, float* din_scale_partial,
                               Stream stream) {
  const char* op = "masked_conv_backward_data";
  masked_conv_check(s, weight_dtype, op);
  require_ptr(dy, "dy", op);
  require_ptr(weight, "weight", op);
  require_ptr(dx, "dx", op);
  if (din_scale_partial) require_ptr(x, "x (needed for the input-scale gradient)", op);
  dispatch_gpu_float(weight_dtype, op, [&]<typename WT>() {
    const ConvLaunch<WT> l = dgrad_launch<WT>(s, a, x, dy, weight, dx, din_scale_partial);
    if (l.vec_a)
      launch(op, dgrad_kernel<WT, true>, l.grid, kThreads, 0, stream, l.p);
    else
      launch(op, dgrad_kernel<WT, false>, l.grid, kThreads, 0, stream, l.p);
  });
}

size_t masked_conv_wgrad_workspace_bytes(const MaskedConvShape& s) {
  masked_conv_check(s, DType::F32, "masked_conv_wgrad_workspace_bytes");
  return wgrad_workspace(s, wgrad_plan(s));
}

void masked_conv_backward_weight(const MaskedConvShape& s, const MaskedConvArgs& a, const void* x, const void* dy,
                                 const void* weight, DType weight_dtype, void* dweight, float* dout_scale,
                                 void* workspace, size_t workspace_bytes, Stream stream) {
  const char* op = "masked_conv_backward_weight";
  masked_conv_check(s, weight_dtype, op);
  require_ptr(x, "x", op);
  require_ptr(dy, "dy", op);
  require_ptr(dweight, "dweight", op);
  if (dout_scale) require_ptr(weight, "weight (needed for the output-scale gradient)", op);
  const WgradPlan plan = wgrad_plan(s);
  const size_t need = wgrad_workspace(s, plan);
  if (workspace_bytes < need || workspace == nullptr)
    throw CudaError(std::string(op) + ": the workspace has " + std::to_string(workspace_bytes) + " bytes" +
                    (workspace ? "" : " (null)") + ", expected " + std::to_string(need) +
                    " (masked_conv_wgrad_workspace_bytes)");
  const ConvLaunch<float> l = wgrad_launch(s, a, x, dy, workspace, plan);
  if (l.vec_a && l.vec_b)
    launch(op, wgrad_kernel<true, true>, l.grid, kThreads, 0, stream, l.p);
  else if (l.vec_a)
    launch(op, wgrad_kernel<true, false>, l.grid, kThreads, 0, stream, l.p);
  else if (l.vec_b)
    launch(op, wgrad_kernel<false, true>, l.grid, kThreads, 0, stream, l.p);
  else
    launch(op, wgrad_kernel<false, false>, l.grid, kThreads, 0, stream, l.p);
  dispatch_gpu_float(weight_dtype, op, [&]<typename WT>() {
    const FinalArgs<WT> f = finalize_args<WT>(s, a, weight, dweight, dout_scale, workspace, plan);
    launch("masked_conv_backward_weight (finalize)", wgrad_finalize_kernel<WT>, static_cast<unsigned>(s.o), kThreads, 0,
           stream, f);
  });
}

void masked_conv_dual_forward(const MaskedConvShape& soft, const MaskedConvShape& hard, const float* out_scale,
                              const float* in_scale, const void* xs, const void* xh, const void* weight,
                              DType weight_dtype, void* ys, void* yh, Stream stream) {
  const char* op = "masked_conv_dual_forward";
  masked_conv_check(soft, weight_dtype, "masked_conv_dual_forward (soft)");
  masked_conv_check(hard, weight_dtype, "masked_conv_dual_forward (hard)");
  auto same = [&](int64_t a, int64_t b, const char* name) {
    if (a != b)
      throw CudaError(std::string(op) + ": the hard shape's " + name + " = " + std::to_string(b) +
                      " differs from the soft shape's " + std::to_string(a));
  };
  same(soft.n, hard.n, "n");
  same(soft.h, hard.h, "h");
  same(soft.w, hard.w, "w");
  same(soft.k, hard.k, "k");
  same(soft.stride, hard.stride, "stride");
  same(soft.pad, hard.pad, "pad");
  same(soft.ho, hard.ho, "ho");
  same(soft.wo, hard.wo, "wo");
  same(soft.w_rows, hard.w_rows, "w_rows");
  same(soft.w_cols, hard.w_cols, "w_cols");
  if (hard.o > soft.o || hard.c > soft.c)
    throw CudaError(std::string(op) + ": the hard widths (c=" + std::to_string(hard.c) + ", o=" +
                    std::to_string(hard.o) + ") exceed the soft ones (c=" + std::to_string(soft.c) + ", o=" +
                    std::to_string(soft.o) + ")");
  require_ptr(xs, "xs", op);
  require_ptr(xh, "xh", op);
  require_ptr(weight, "weight", op);
  require_ptr(ys, "ys", op);
  require_ptr(yh, "yh", op);
  dispatch_gpu_float(weight_dtype, op, [&]<typename WT>() {
    const DualLaunch<WT> l = dual_launch<WT>(soft, hard, out_scale, in_scale, xs, xh, weight, ys, yh);
    if (l.vec) {
      allow_smem(dual_kernel<WT, true>, kDualSmemBytes);
      launch(op, dual_kernel<WT, true>, l.grid, kThreads, kDualSmemBytes, stream, l.p);
    } else {
      allow_smem(dual_kernel<WT, false>, kDualSmemBytes);
      launch(op, dual_kernel<WT, false>, l.grid, kThreads, kDualSmemBytes, stream, l.p);
    }
  });
}

}  // namespace s2h::cuda

#undef S2H_MC_HD
