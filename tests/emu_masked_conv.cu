// Host emulation of kernels/cuda/masked_conv.cu (a CTest that needs nvcc but
// no GPU): the file's real loaders, index tables, epilogues and launch plans
// run for every thread between emulated barriers; the WMMA fragments are
// emulated from their documented memory layout (with the 256-bit alignment
// rule checked), each shared-memory stage is refilled with NaN after it is
// read, output buffers carry guard zones, and every result is compared with a
// direct double-precision convolution: forward, data gradient (+ input-scale
// partials), weight gradient (split-K, + output-scale gradient), dual forward,
// soft and hard (index lists and prefixes), odd sizes; and masked_conv_check's
// rejections. What it cannot show: that the GPU runs the kernels as the
// emulation assumes (tests/test_fused_ops.cpp does that on a GPU).
// Usage: emu_masked_conv [quick]
#include "kernels/cuda/masked_conv.cu"

#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

namespace s2h::cuda {
void throw_error(const std::string& call, const std::string& message, const char*, int) {
  throw CudaError(call + ": " + message);
}
}  // namespace s2h::cuda

using namespace s2h::cuda;
using s2h::DType;

static int g_fail = 0;
static std::mt19937 rng(1234);
static float urand(float a, float b) { return std::uniform_real_distribution<float>(a, b)(rng); }

constexpr uint16_t kPoisonBits = 0x7fc1;  // a bf16 NaN
static bf16 poison_bf() {
  __nv_bfloat16_raw r;
  r.x = kPoisonBits;
  return bf16(r);
}

// A buffer with guard zones that must stay poisoned.
template <class T>
struct Guarded {
  std::vector<T> v;
  size_t n, guard = 8192;
  T poison;
  Guarded(size_t n_, T p) : v(n_ + 2 * 8192, p), n(n_), poison(p) {}
  T* data() { return v.data() + guard; }
  void refill(size_t off, size_t len) {
    for (size_t i = 0; i < len; ++i) data()[off + i] = poison;
  }
  bool guards_ok() const {
    auto same = [&](const T& a) { return std::memcmp(&a, &poison, sizeof(T)) == 0; };
    for (size_t i = 0; i < guard; ++i)
      if (!same(v[i]) || !same(v[guard + n + i])) return false;
    return true;
  }
};

static void expect(bool ok, const char* what, const std::string& ctx) {
  if (!ok) {
    ++g_fail;
    std::printf("FAIL %s: %s\n", ctx.c_str(), what);
  }
}

// ---- wmma emulation
template <class AL, class BL>
void host_mma(float* acc, const bf16* as, const bf16* bs) {
  for (int wm = 0; wm < 4; ++wm)
    for (int wn = 0; wn < 2; ++wn)
      for (int kk = 0; kk < kBK; kk += 16)
        for (int i = 0; i < 2; ++i)
          for (int j = 0; j < 2; ++j) {
            const bf16* pa = as + a_at<AL>(32 * wm + 16 * i, kk);
            const bf16* pb = bs + b_at<BL>(kk, 32 * wn + 16 * j);
            // 256-bit alignment of fragment pointers (relative to the buffer base, itself 128-aligned)
            if (((pa - as) * 2) % 32 != 0 || ((pb - bs) * 2) % 32 != 0) {
              ++g_fail;
              std::printf("FAIL misaligned fragment\n");
            }
            for (int r = 0; r < 16; ++r)
              for (int c = 0; c < 16; ++c) {
                float s = 0.f;
                for (int k = 0; k < 16; ++k) {
                  const float a = bf2f(kRow<AL> ? pa[r * kLdA<AL> + k] : pa[r + k * kLdA<AL>]);
                  const float b = bf2f(kRow<BL> ? pb[k * kLdB<BL> + c] : pb[k + c * kLdB<BL>]);
                  s += a * b;
                }
                acc[(32 * wm + 16 * i + r) * kBN + 32 * wn + 16 * j + c] += s;
              }
          }
}
template <class CL>
void host_store(const float* acc, float* cs) {
  for (int wm = 0; wm < 4; ++wm)
    for (int wn = 0; wn < 2; ++wn)
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) {
          const int r0 = 32 * wm + 16 * i, c0 = 32 * wn + 16 * j;
          float* pc = cs + c_at<CL>(r0, c0);
          if (((pc - cs) * 4) % 32 != 0) {
            ++g_fail;
            std::printf("FAIL misaligned C fragment\n");
          }
          for (int r = 0; r < 16; ++r)
            for (int c = 0; c < 16; ++c)
              pc[kRow<CL> ? r * kLdC<CL> + c : r + c * kLdC<CL>] = acc[(r0 + r) * kBN + c0 + c];
        }
}

// gemm_loop, with the barrier semantics: all threads' loads, then the product, then all stores.
template <class Ld>
void emu_gemm_loop(std::vector<Ld>& ld, float* acc, Guarded<bf16>& sm, int ktiles) {
  bf16* smem = sm.data();
  for (auto& l : ld) l.load(0);
  for (auto& l : ld) l.store(smem, smem + kAElems);
  for (int kt = 0; kt < ktiles; ++kt) {
    bf16* cur = smem + (kt & 1) * kStage;
    bf16* nxt = smem + ((kt + 1) & 1) * kStage;
    const bool more = kt + 1 < ktiles;
    if (more)
      for (auto& l : ld) l.load(kt + 1);
    host_mma<typename Ld::ALayout, typename Ld::BLayout>(acc, cur, cur + kAElems);
    sm.refill(cur - smem, kStage);  // whatever is read next from this stage must be rewritten first
    if (more)
      for (auto& l : ld) l.store(nxt, nxt + kAElems);
  }
}

// Every block of a grid, in launch order (z slowest).
template <class F>
void for_each_block(const dim3& grid, F f) {
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned bx = 0; bx < grid.x; ++bx)
      for (unsigned by = 0; by < grid.y; ++by) f(bx, by, z);
}

// A block of fwd_kernel / dgrad_kernel / wgrad_kernel after its tables: gemm_block (the K loop over all
// threads' loaders, the accumulator staged in layout CL into a NaN-filled buffer), then epi(cs) as the
// epilogue; the guard zones of both shared buffers must stay poisoned.
template <class CL, class Ld, class Epi>
void emu_block(std::vector<Ld>& ld, int ktiles, Epi epi, const std::string& ctx) {
  std::vector<float> acc(kBM * kBN, 0.f);
  Guarded<bf16> sm(kSmemBytes / 2, poison_bf());
  emu_gemm_loop(ld, acc.data(), sm, ktiles);
  Guarded<float> cs(kSmemBytes / 4, std::numeric_limits<float>::quiet_NaN());
  host_store<CL>(acc.data(), cs.data());
  epi(cs.data());
  expect(sm.guards_ok() && cs.guards_ok(), "smem guard", ctx);
}

// ---- data
struct Case {
  const char* name;
  MaskedConvShape s;
  bool indexed, scaled;
};

template <class WT>
struct Data {
  MaskedConvShape s;
  std::vector<bf16> x, dy;
  std::vector<WT> w;
  std::vector<int64_t> oidx, iidx;
  std::vector<float> osc, isc;
  bool indexed, scaled;
  MaskedConvArgs args() const {
    MaskedConvArgs a;
    a.out_index = indexed ? oidx.data() : nullptr;
    a.in_index = indexed ? iidx.data() : nullptr;
    a.out_scale = scaled ? osc.data() : nullptr;
    a.in_scale = scaled ? isc.data() : nullptr;
    return a;
  }
  int64_t row(int oi) const { return indexed ? oidx[oi] : oi; }
  int64_t col(int ci) const { return indexed ? iidx[ci] : ci; }
  int64_t widx(int oi, int r, int q, int ci) const { return ((row(oi) * s.k + r) * s.k + q) * s.w_cols + col(ci); }
  double wq(int oi, int r, int q, int ci) const { return bf2f(w2bf(w[widx(oi, r, q, ci)])); }
  double wraw(int oi, int r, int q, int ci) const { return w2f(w[widx(oi, r, q, ci)]); }
  double xv(int nb, int ih, int iw, int ci) const {
    return bf2f(x[((static_cast<int64_t>(nb) * s.h + ih) * s.w + iw) * s.c + ci]);
  }
  double dyv(int nb, int oh, int ow, int oi) const {
    return bf2f(dy[((static_cast<int64_t>(nb) * s.ho + oh) * s.wo + ow) * s.o + oi]);
  }
  float in_s(int ci) const { return scaled ? isc[ci] : 1.f; }
  float out_s(int oi) const { return scaled ? osc[oi] : 1.f; }
};

static std::vector<int64_t> subset(int64_t of, int64_t k) {
  std::vector<int64_t> all(of);
  for (int64_t i = 0; i < of; ++i) all[i] = i;
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(k);
  return all;
}

template <class WT>
Data<WT> make_data(const Case& cs) {
  Data<WT> d;
  d.s = cs.s;
  d.indexed = cs.indexed;
  d.scaled = cs.scaled;
  const auto& s = cs.s;
  d.x.resize(s.n * s.h * s.w * s.c);
  for (auto& v : d.x) v = f2bf(urand(-1, 1));
  d.dy.resize(s.n * s.ho * s.wo * s.o);
  for (auto& v : d.dy) v = f2bf(urand(-1, 1));
  d.w.resize(s.w_rows * s.k * s.k * s.w_cols);
  for (auto& v : d.w) v = f2w<WT>(urand(-1, 1));
  d.oidx = subset(s.w_rows, s.o);
  d.iidx = subset(s.w_cols, s.c);
  d.osc.resize(s.o);
  for (auto& v : d.osc) v = urand(0.25f, 1.5f);
  d.isc.resize(s.c);
  for (auto& v : d.isc) v = urand(0.25f, 1.5f);
  return d;
}

struct Cmp {
  double worst = 0;
  int64_t bad = 0, nan = 0, count = 0;
  void add(double got, double ref, double sumabs, double rel) {
    ++count;
    if (std::isnan(got)) {
      ++nan;
      return;
    }
    const double tol = rel * std::fabs(ref) + 2e-5 * sumabs + 1e-30;
    const double e = std::fabs(got - ref) / tol;
    worst = std::max(worst, e);
    if (e > 1) ++bad;
  }
  void report(const std::string& ctx) {
    const bool ok = bad == 0 && nan == 0 && count > 0;
    std::printf("%s %-60s n=%lld worst=%.3f bad=%lld nan=%lld\n", ok ? "ok  " : "FAIL", ctx.c_str(),
                static_cast<long long>(count), worst, static_cast<long long>(bad), static_cast<long long>(nan));
    if (!ok) ++g_fail;
  }
};

// The A operand as the kernels multiply it: the scaled input rounded to bf16.
static double a_ref(float scale, double x) { return bf2f(f2bf(scale * static_cast<float>(x))); }

// Compares y [n, ho, wo, o] with the direct convolution of x [n, h, w, c] (channel ci scaled by isc) with
// d's weight, output channel oi scaled by osc (null: 1).
template <class WT>
void check_forward(const Data<WT>& d, const MaskedConvShape& s, const std::vector<bf16>& x, const float* isc,
                   const float* osc, const std::vector<bf16>& y, const std::string& what) {
  Cmp cmp;
  for (int nb = 0; nb < s.n; ++nb)
    for (int oh = 0; oh < s.ho; ++oh)
      for (int ow = 0; ow < s.wo; ++ow)
        for (int oi = 0; oi < s.o; ++oi) {
          double acc = 0, sa = 0;
          for (int r = 0; r < s.k; ++r)
            for (int q = 0; q < s.k; ++q) {
              const int ih = oh * s.stride - s.pad + r, iw = ow * s.stride - s.pad + q;
              if (ih < 0 || ih >= s.h || iw < 0 || iw >= s.w) continue;
              for (int ci = 0; ci < s.c; ++ci) {
                const float xv = bf2f(x[((static_cast<int64_t>(nb) * s.h + ih) * s.w + iw) * s.c + ci]);
                const double a = a_ref(isc ? isc[ci] : 1.f, xv);
                const double t = a * d.wq(oi, r, q, ci);
                acc += t;
                sa += std::fabs(t);
              }
            }
          const double os = osc ? osc[oi] : 1.f;
          cmp.add(bf2f(y[((static_cast<int64_t>(nb) * s.ho + oh) * s.wo + ow) * s.o + oi]), os * acc, os * sa,
                  1.0 / 128);
        }
  cmp.report(what);
}

// ---- forward
template <class WT>
void run_forward(const Data<WT>& d, bool force_scalar, const std::string& ctx) {
  const auto& s = d.s;
  std::vector<bf16> y(s.n * s.ho * s.wo * s.o, poison_bf());
  ConvLaunch<WT> l = forward_launch<WT>(s, d.args(), d.x.data(), d.w.data(), y.data());
  if (force_scalar) l.vec_a = false;
  auto block = [&]<bool VEC>() {
    const auto& p = l.p;
    for_each_block(l.grid, [&](unsigned bx, unsigned by, unsigned) {
      PixelTable tab;
      int64_t wrow[kBN];
      std::memset(&tab, 0x55, sizeof(tab));
      const int m0 = bx * kBM, n0 = by * kBN;
      for (int t = 0; t < kThreads; ++t) fill_fwd_tables(tab, wrow, p.g, p.out_index, m0, n0, t);
      std::vector<FwdLoader<WT, VEC>> ld(kThreads);
      for (int t = 0; t < kThreads; ++t) ld[t].init(p, &tab, wrow, t);
      emu_block<RowMajor>(ld, static_cast<int>(cdiv(p.g.taps * p.g.c, kBK)), [&](const float* cs) {
        for (int t = 0; t < kThreads; ++t)
          store_output(cs, p.y, p.out_scale, p.g.n * p.g.ho * p.g.wo, p.g.o, m0, n0, t);
      }, ctx);
    });
  };
  if (l.vec_a) block.template operator()<true>();
  else block.template operator()<false>();
  check_forward(d, s, d.x, d.args().in_scale, d.args().out_scale, y, ctx + (l.vec_a ? " fwd vec" : " fwd scalar"));
}

// ---- data grad
template <class WT>
void run_dgrad(const Data<WT>& d, bool force_scalar, bool with_partial, const std::string& ctx) {
  const auto& s = d.s;
  std::vector<bf16> dx(s.n * s.h * s.w * s.c, poison_bf());
  const int64_t blocks = masked_conv_dgrad_partial_blocks(s);
  std::vector<float> part(blocks * s.c, std::numeric_limits<float>::quiet_NaN());
  ConvLaunch<WT> l = dgrad_launch<WT>(s, d.args(), d.x.data(), d.dy.data(), d.w.data(), dx.data(),
                                      with_partial ? part.data() : nullptr);
  if (force_scalar) l.vec_a = false;
  expect(static_cast<int64_t>(l.grid.x) == blocks, "grid.x == partial blocks", ctx);
  auto block = [&]<bool VEC>() {
    const auto& p = l.p;
    for_each_block(l.grid, [&](unsigned bx, unsigned by, unsigned) {
      InPixelTable tab;
      std::memset(&tab, 0x55, sizeof(tab));
      const int m0 = bx * kBM, n0 = by * kBN;
      for (int t = 0; t < kThreads; ++t) fill_in_pixel_table(tab, p.g, m0, t);
      std::vector<DgradLoader<WT, VEC>> ld(kThreads);
      for (int t = 0; t < kThreads; ++t) ld[t].init(p, &tab, n0, t);
      emu_block<RowMajor>(ld, static_cast<int>(cdiv(p.g.taps * p.g.o, kBK)), [&](const float* cs) {
        const bool want = p.din_partial != nullptr;
        float red[kThreads];
        for (int t = 0; t < kThreads; ++t) red[t] = store_dgrad(cs, p, want, m0, n0, t);
        if (want)
          for (int t = 0; t < kThreads; ++t) store_dgrad_partial(red, p.din_partial, p.g.c, bx, n0, t);
      }, ctx);
    });
  };
  if (l.vec_a) block.template operator()<true>();
  else block.template operator()<false>();
  Cmp cmp, cmpp;
  std::vector<double> pref(blocks * s.c, 0.0), psa(blocks * s.c, 0.0);
  for (int nb = 0; nb < s.n; ++nb)
    for (int ih = 0; ih < s.h; ++ih)
      for (int iw = 0; iw < s.w; ++iw)
        for (int ci = 0; ci < s.c; ++ci) {
          double acc = 0, sa = 0;
          for (int r = 0; r < s.k; ++r)
            for (int q = 0; q < s.k; ++q) {
              const int th = ih + s.pad - r, tw = iw + s.pad - q;
              if (th < 0 || tw < 0 || th % s.stride || tw % s.stride) continue;
              const int oh = th / s.stride, ow = tw / s.stride;
              if (oh >= s.ho || ow >= s.wo) continue;
              for (int oi = 0; oi < s.o; ++oi) {
                const double a = a_ref(d.out_s(oi), d.dyv(nb, oh, ow, oi));
                const double t = a * d.wq(oi, r, q, ci);
                acc += t;
                sa += std::fabs(t);
              }
            }
          const int64_t pix = (static_cast<int64_t>(nb) * s.h + ih) * s.w + iw;
          cmp.add(bf2f(dx[pix * s.c + ci]), d.in_s(ci) * acc, d.in_s(ci) * sa, 1.0 / 128);
          const double xv = d.xv(nb, ih, iw, ci);
          pref[(pix / kBM) * s.c + ci] += xv * acc;
          psa[(pix / kBM) * s.c + ci] += std::fabs(xv) * sa;
        }
  cmp.report(ctx + (l.vec_a ? " dgrad vec" : " dgrad scalar"));
  if (with_partial) {
    for (int64_t i = 0; i < blocks * s.c; ++i) cmpp.add(part[i], pref[i], psa[i], 1e-4);
    cmpp.report(ctx + (l.vec_a ? " dgrad vec partial" : " dgrad scalar partial"));
  }
}

// ---- weight grad
template <class WT>
void run_wgrad(const Data<WT>& d, int force, bool with_dos, const std::string& ctx) {
  const auto& s = d.s;
  const WT sentinel = f2w<WT>(777.f);
  std::vector<WT> dw(d.w.size(), sentinel);
  std::vector<float> dos(s.o, std::numeric_limits<float>::quiet_NaN());
  const WgradPlan plan = wgrad_plan(s);
  const size_t bytes = masked_conv_wgrad_workspace_bytes(s);
  expect(bytes == wgrad_workspace(s, plan), "workspace bytes", ctx);
  Guarded<float> ws(bytes / 4, std::numeric_limits<float>::quiet_NaN());
  ConvLaunch<float> l = wgrad_launch(s, d.args(), d.x.data(), d.dy.data(), ws.data(), plan);
  if (force & 1) l.vec_a = false;
  if (force & 2) l.vec_b = false;
  const int pixels = s.n * s.ho * s.wo;
  auto block = [&]<bool VA, bool VB>() {
    const auto& p = l.p;
    for_each_block(l.grid, [&](unsigned bx, unsigned by, unsigned z) {
      const int m0 = bx * kBM, n0 = by * kBN;
      const int kb = z * p.chunk, ke = std::min(pixels, kb + p.chunk);
      if (ke <= kb) {
        ++g_fail;
        std::printf("FAIL empty split\n");
      }
      std::vector<WgradLoader<VA, VB>> ld(kThreads);
      for (int t = 0; t < kThreads; ++t) ld[t].init(p, m0, n0, kb, ke, t);
      emu_block<ColMajor>(ld, (ke - kb + kBK - 1) / kBK, [&](const float* cs) {
        for (int t = 0; t < kThreads; ++t) store_wgrad_split(cs, p.ws, p.g.taps * p.g.c, p.g.o, m0, n0, z, t);
      }, ctx);
    });
  };
  if (l.vec_a && l.vec_b) block.template operator()<true, true>();
  else if (l.vec_a) block.template operator()<true, false>();
  else if (l.vec_b) block.template operator()<false, true>();
  else block.template operator()<false, false>();
  expect(ws.guards_ok(), "workspace guard", ctx);
  int64_t unwritten = 0;
  for (size_t i = 0; i < ws.n; ++i) unwritten += std::isnan(ws.data()[i]);
  expect(unwritten == 0, "every workspace entry written", ctx);
  const FinalArgs<WT> f = finalize_args<WT>(s, d.args(), d.w.data(), dw.data(), with_dos ? dos.data() : nullptr,
                                            ws.data(), plan);
  for (int oi = 0; oi < s.o; ++oi) {
    float tot = 0.f;
    for (int t = 0; t < kThreads; ++t) tot += finalize_wgrad(f, oi, t);
    if (with_dos) dos[oi] = tot;
  }
  Cmp cmp, cmpd;
  std::vector<char> used(dw.size(), 0);
  for (int oi = 0; oi < s.o; ++oi) {
    double dref = 0, dsa = 0;
    for (int r = 0; r < s.k; ++r)
      for (int q = 0; q < s.k; ++q)
        for (int ci = 0; ci < s.c; ++ci) {
          double g = 0, sa = 0;
          for (int nb = 0; nb < s.n; ++nb)
            for (int oh = 0; oh < s.ho; ++oh)
              for (int ow = 0; ow < s.wo; ++ow) {
                const int ih = oh * s.stride - s.pad + r, iw = ow * s.stride - s.pad + q;
                if (ih < 0 || ih >= s.h || iw < 0 || iw >= s.w) continue;
                const double a = a_ref(d.in_s(ci), d.xv(nb, ih, iw, ci));
                const double t = a * d.dyv(nb, oh, ow, oi);
                g += t;
                sa += std::fabs(t);
              }
          const int64_t wi = d.widx(oi, r, q, ci);
          used[wi] = 1;
          cmp.add(w2f(dw[wi]), d.out_s(oi) * g, d.out_s(oi) * sa, std::is_same_v<WT, bf16> ? 1.0 / 128 : 1e-5);
          dref += d.wraw(oi, r, q, ci) * g;
          dsa += std::fabs(d.wraw(oi, r, q, ci)) * sa;
        }
    if (with_dos) cmpd.add(dos[oi], dref, dsa, 1e-5);
  }
  int64_t touched = 0;
  for (size_t i = 0; i < dw.size(); ++i)
    if (!used[i] && w2f(dw[i]) != w2f(sentinel)) ++touched;
  expect(touched == 0, "dweight entries outside the layer untouched", ctx);
  char buf[128];
  std::snprintf(buf, sizeof buf, " wgrad A%s B%s splits=%lld", l.vec_a ? "vec" : "scalar", l.vec_b ? "vec" : "scalar",
                static_cast<long long>(plan.splits));
  cmp.report(ctx + buf);
  if (with_dos) cmpd.report(ctx + buf + " dout_scale");
}

// ---- dual
template <class WT>
void run_dual(const Data<WT>& d, int64_t ch, int64_t oh_, bool force_scalar, const std::string& ctx) {
  MaskedConvShape ss = d.s;
  ss.w_rows = d.s.w_rows;
  ss.w_cols = d.s.w_cols;
  MaskedConvShape sh = ss;
  sh.c = ch;
  sh.o = oh_;
  masked_conv_check(ss, std::is_same_v<WT, float> ? DType::F32 : DType::BF16, "dual soft");
  masked_conv_check(sh, std::is_same_v<WT, float> ? DType::F32 : DType::BF16, "dual hard");
  std::vector<bf16> xh(sh.n * sh.h * sh.w * sh.c);
  for (auto& v : xh) v = f2bf(urand(-1, 1));
  std::vector<bf16> ys(ss.n * ss.ho * ss.wo * ss.o, poison_bf()), yh(sh.n * sh.ho * sh.wo * sh.o, poison_bf());
  const float* osc = d.scaled ? d.osc.data() : nullptr;
  const float* isc = d.scaled ? d.isc.data() : nullptr;
  DualLaunch<WT> l = dual_launch<WT>(ss, sh, osc, isc, d.x.data(), xh.data(), d.w.data(), ys.data(), yh.data());
  if (force_scalar) l.vec = false;
  int64_t hard_products = 0, soft_products = 0;
  auto block = [&]<bool VEC>() {
    const auto& p = l.p;
    for (unsigned bx = 0; bx < l.grid.x; ++bx)
      for (unsigned by = 0; by < l.grid.y; ++by) {
        PixelTable tab;
        int64_t wrow[kBN];
        std::memset(&tab, 0x55, sizeof(tab));
        const int m0 = bx * kBM, n0 = by * kBN;
        for (int t = 0; t < kThreads; ++t) fill_fwd_tables(tab, wrow, p.g, nullptr, m0, n0, t);
        std::vector<DualLoader<WT, VEC>> ld(kThreads);
        for (int t = 0; t < kThreads; ++t) ld[t].init(p, &tab, wrow, n0, t);
        std::vector<float> acc_s(kBM * kBN, 0.f), acc_h(kBM * kBN, 0.f);
        Guarded<bf16> sm(kDualSmemBytes / 2, poison_bf());
        bf16* smem = sm.data();
        const int ktiles = static_cast<int>(cdiv(p.g.taps * p.g.c, kBK));
        // the hard predicate must agree over the block
        auto hard_of = [&](int kt) {
          const bool h = ld[0].hard(kt);
          for (int t = 1; t < kThreads; ++t)
            if (ld[t].hard(kt) != h) {
              ++g_fail;
              std::printf("FAIL non-uniform hard predicate\n");
            }
          return h;
        };
        bool hard = hard_of(0);
        for (auto& x : ld) x.load(0, hard);
        for (auto& x : ld) x.store(smem, hard);
        for (int kt = 0; kt < ktiles; ++kt) {
          bf16* cur = smem + (kt & 1) * kDualStage;
          bf16* nxt = smem + ((kt + 1) & 1) * kDualStage;
          const bool more = kt + 1 < ktiles;
          const bool hard_next = more && hard_of(kt + 1);
          if (more)
            for (auto& x : ld) x.load(kt + 1, hard_next);
          host_mma<RowMajor, ColMajor>(acc_s.data(), cur, cur + 2 * kAElems);
          ++soft_products;
          if (hard) {
            host_mma<RowMajor, ColMajor>(acc_h.data(), cur + kAElems, cur + 2 * kAElems);
            ++hard_products;
          }
          sm.refill(cur - smem, kDualStage);
          if (more)
            for (auto& x : ld) x.store(nxt, hard_next);
          hard = hard_next;
        }
        const int mdim = p.g.n * p.g.ho * p.g.wo;
        Guarded<float> cs(kDualSmemBytes / 4, std::numeric_limits<float>::quiet_NaN());
        host_store<RowMajor>(acc_s.data(), cs.data());
        for (int t = 0; t < kThreads; ++t) store_output(cs.data(), p.ys, p.out_scale, mdim, p.g.o, m0, n0, t);
        if (ld[0].hard_n) {
          host_store<RowMajor>(acc_h.data(), cs.data());
          for (int t = 0; t < kThreads; ++t) store_output(cs.data(), p.yh, nullptr, mdim, p.oh, m0, n0, t);
        }
        expect(sm.guards_ok() && cs.guards_ok(), "smem guard", ctx);
      }
  };
  if (l.vec) block.template operator()<true>();
  else block.template operator()<false>();
  // references: the soft layer with scales and prefix weight, the hard one without scales (d is not indexed:
  // its weight rows and columns are the channels themselves)
  const std::string what = ctx + (l.vec ? " dual vec " : " dual scalar ");
  check_forward(d, ss, d.x, isc, osc, ys, what + "soft");
  check_forward(d, sh, xh, nullptr, nullptr, yh, what + "hard");
  std::printf("     (hard products %lld of %lld)\n", static_cast<long long>(hard_products),
              static_cast<long long>(soft_products));
}

MaskedConvShape shape(int64_t n, int64_t h, int64_t w, int64_t c, int64_t o, int64_t k, int64_t stride, int64_t pad,
                      int64_t w_rows = 0, int64_t w_cols = 0) {
  MaskedConvShape s;
  s.n = n;
  s.h = h;
  s.w = w;
  s.c = c;
  s.o = o;
  s.k = k;
  s.stride = stride;
  s.pad = pad;
  s.ho = (h + 2 * pad - k) / stride + 1;
  s.wo = (w + 2 * pad - k) / stride + 1;
  s.w_rows = w_rows ? w_rows : o;
  s.w_cols = w_cols ? w_cols : c;
  return s;
}

template <class WT>
void run_case(const Case& cs, bool quick) {
  const Data<WT> d = make_data<WT>(cs);
  const std::string ctx = std::string(cs.name) + (std::is_same_v<WT, float> ? " [f32 W]" : " [bf16 W]");
  masked_conv_check(cs.s, std::is_same_v<WT, float> ? DType::F32 : DType::BF16, "emu");
  for (int fs = 0; fs < 2; ++fs) {
    if (fs && quick) break;
    run_forward(d, fs, ctx);
    run_dgrad(d, fs, cs.scaled, ctx);
  }
  for (int f = 0; f < (quick ? 1 : 4); ++f) run_wgrad(d, f, cs.scaled, ctx);
  if (!cs.indexed) {  // dual: hard = a prefix of this layer
    const int64_t ch = std::max<int64_t>(1, cs.s.c * 3 / 5), oh = std::max<int64_t>(1, cs.s.o * 2 / 5);
    run_dual(d, ch, oh, false, ctx + " hard c=" + std::to_string(ch) + " o=" + std::to_string(oh));
    if (!quick) run_dual(d, ch, oh, true, ctx + " hard c=" + std::to_string(ch) + " o=" + std::to_string(oh));
    if (cs.s.c >= 16) run_dual(d, 8, cs.s.o, false, ctx + " hard c=8 o=all");
  }
}

int main(int argc, char** argv) {
  const bool quick = argc > 1;
  std::vector<Case> cases = {
      {"c3 o5 k3 s1 p1 7x7 n2", shape(2, 7, 7, 3, 5, 3, 1, 1), false, true},
      {"c17 o70 k3 s2 p1 9x7 n1", shape(1, 9, 7, 17, 70, 3, 2, 1), false, true},
      {"c16 o24 k1 s1 p0 5x5 n3", shape(3, 5, 5, 16, 24, 1, 1, 0), false, true},
      {"c40 o33 k3 s2 p1 11x9 n2", shape(2, 11, 9, 40, 33, 3, 2, 1), false, true},
      {"c64 o136 k3 s1 p1 8x8 n3 noscale", shape(3, 8, 8, 64, 136, 3, 1, 1), false, false},
      {"c24 o16 k1 s2 p0 9x9 n2", shape(2, 9, 9, 24, 16, 1, 2, 0), false, true},
      {"c8 o8 k3 s1 p0 6x5 n2", shape(2, 6, 5, 8, 8, 3, 1, 0), false, true},
      {"c5 o6 k3 s2 p2 5x6 n2 (pad 2)", shape(2, 5, 6, 5, 6, 3, 2, 2), false, true},
      {"c8 o16 k3 s1 p1 13x13 n5 (splits)", shape(5, 13, 13, 8, 16, 3, 1, 1), false, true},
      {"c3 o9 k3 s1 p1 13x13 n5 (splits)", shape(5, 13, 13, 3, 9, 3, 1, 1), false, true},
      {"hard idx c17 o21 of 30x50 k3 s1", shape(2, 7, 6, 17, 21, 3, 1, 1, 50, 30), true, true},
      {"hard idx c16 o24 of 40x33 k3 s2", shape(2, 9, 9, 16, 24, 3, 2, 1, 33, 40), true, true},
      {"hard idx c32 o40 of 64x72 k1 s1", shape(2, 6, 6, 32, 40, 1, 1, 0, 72, 64), true, false},
      {"hard prefix c12 o20 of 40x30 k3 s1", shape(2, 5, 5, 12, 20, 3, 1, 1, 30, 40), false, true},
      {"c1 o1 k3 s2 p1 1x1 n1", shape(1, 1, 1, 1, 1, 3, 2, 1), false, true},
      {"c1 o1 k1 s1 p0 2x3 n1", shape(1, 2, 3, 1, 1, 1, 1, 0), false, false},
  };
  for (const auto& cs : cases) {
    run_case<float>(cs, quick);
    run_case<bf16>(cs, quick);
  }
  // masked_conv_check rejections
  auto rejects = [&](MaskedConvShape s, DType dt, const char* what) {
    try {
      masked_conv_check(s, dt, "check");
      ++g_fail;
      std::printf("FAIL check accepted %s\n", what);
    } catch (const CudaError& e) {
      std::printf("ok   check rejects %s: %s\n", what, e.what());
    }
  };
  MaskedConvShape s = shape(2, 7, 7, 3, 5, 3, 1, 1);
  auto m = s;
  m.k = 5;
  rejects(m, DType::F32, "k=5");
  m = s;
  m.stride = 3;
  rejects(m, DType::F32, "stride 3");
  m = s;
  m.pad = -1;
  rejects(m, DType::F32, "pad -1");
  m = s;
  m.ho = 6;
  rejects(m, DType::F32, "ho");
  m = s;
  m.w_rows = 4;
  rejects(m, DType::F32, "o > w_rows");
  m = s;
  m.w_cols = 2;
  rejects(m, DType::F32, "c > w_cols");
  m = s;
  m.n = 0;
  rejects(m, DType::F32, "n=0");
  rejects(s, DType::F64, "f64 weight");
  m = shape(1 << 16, 256, 256, 3, 5, 3, 1, 1);
  rejects(m, DType::F32, "2^32 pixels");
  std::printf(g_fail ? "\n%d FAILURES\n" : "\nALL OK\n", g_fail);
  return g_fail != 0;
}
