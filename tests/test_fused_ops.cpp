// The fused S2HPruner ops of ops.h: masked_conv2d (soft and hard conv),
// dual_conv2d and attention.
//
// CPU (runs everywhere): finite-difference gradient checks in f64 of every
// differentiable input, and the ops against their meaning written out as
// direct loops (a gathered weight, a naive softmax attention), plus the
// argument checks.
//
// CUDA (skipped, with the driver's reason, without a usable GPU; run on the
// CUDA emulator by the emulated build test_fused_ops_emu, on smaller layers):
// over a grid of layer shapes (ResNet-50 and MobileNetV2 layers with a small
// batch; odd sizes that do not divide any tile), fresh random inputs rounded to what the
// GPU sees (bf16 activations, bf16-exact f32 weights and scales), the fused
// path (set_fused_kernels(true)) and the library path (set_fused_kernels(false))
// under the bf16 policy are both compared with the f64 CPU reference: output
// and every gradient. The fused path passes when its relative L2 error is
// within 2x the library's error plus a floor of 1e-3 (the flash-attention
// test criterion; a scale's gradient is measured against its summands' norm,
// see SummandNorm) and below an absolute cap; both errors are printed. New
// allocations are poisoned (NaN), so an element a kernel forgets to write
// fails. The autograd node's name proves the fused kernels ran (no silent
// fallback).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "engine/precision.h"
#include "kernels/cuda/runtime.h"
#include "tests/test_util.h"

namespace s2h::test {
namespace {

using Inputs = std::vector<Tensor>;
using Fn = std::function<Tensor(const Inputs&)>;

// ------------------------------------------------------------------ helpers
Tensor index_of(const std::vector<int64_t>& v) { return Tensor::from_vector(v, {static_cast<int64_t>(v.size())}); }
Tensor u8_of(const std::vector<uint8_t>& v, const Shape& s) { return Tensor::from_vector(v, s); }

// `count` distinct values of [0, n) in random order.
std::vector<int64_t> random_subset(int64_t n, int64_t count) {
  std::vector<int64_t> all(static_cast<size_t>(n));
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), test_generator().engine());
  all.resize(static_cast<size_t>(count));
  return all;
}

std::vector<int64_t> iota_of(int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

// The name of the autograd node that produced t ("" for a leaf / no history).
std::string node_name(const Tensor& t) {
  const auto& meta = t.impl().autograd;
  return meta && meta->grad_fn ? meta->grad_fn->name : "";
}

// ------------------------------------------------------------------ direct loops
// y[n,i,j,o] = out_scale[o] * sum_{a,b,ci} x[n, i*s-p+a, j*s-p+b, ci] * in_scale[ci] * W[rows[o], a, b, cols[ci]]
// (empty scales mean 1).
Tensor direct_masked_conv(const Tensor& x, const Tensor& w, const std::vector<int64_t>& rows,
                          const std::vector<int64_t>& cols, const std::vector<double>& in_scale,
                          const std::vector<double>& out_scale, int64_t stride, int64_t pad) {
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const int64_t K = w.size(1), WC = w.size(3), O = static_cast<int64_t>(rows.size());
  const int64_t HO = (H + 2 * pad - K) / stride + 1, WO = (W + 2 * pad - K) / stride + 1;
  const std::vector<double> xv = values(x), wv = values(w);
  std::vector<double> y(static_cast<size_t>(N * HO * WO * O), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < HO; ++i)
      for (int64_t j = 0; j < WO; ++j)
        for (int64_t o = 0; o < O; ++o) {
          double acc = 0;
          for (int64_t a = 0; a < K; ++a)
            for (int64_t b = 0; b < K; ++b) {
              const int64_t hi = i * stride - pad + a, wi = j * stride - pad + b;
              if (hi < 0 || hi >= H || wi < 0 || wi >= W) continue;
              for (int64_t c = 0; c < C; ++c) {
                const double s = in_scale.empty() ? 1.0 : in_scale[static_cast<size_t>(c)];
                acc += xv[static_cast<size_t>(((n * H + hi) * W + wi) * C + c)] * s *
                       wv[static_cast<size_t>(((rows[static_cast<size_t>(o)] * K + a) * K + b) * WC +
                                              cols[static_cast<size_t>(c)])];
              }
            }
          y[static_cast<size_t>(((n * HO + i) * WO + j) * O + o)] =
              acc * (out_scale.empty() ? 1.0 : out_scale[static_cast<size_t>(o)]);
        }
  return Tensor::from_vector(y, {N, HO, WO, O});
}

// out[b,i,h,:] = factor[h] * sum_j softmax_j(scale * q_i.k_j + pad_j) v_j
// with the softmax over unpadded keys only (pad: [B*L] or empty).
Tensor direct_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                        const std::vector<uint8_t>& pad, const std::vector<double>& factor) {
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2), D = q.size(3);
  const std::vector<double> qv = values(q), kv = values(k), vv = values(v);
  auto at = [&](int64_t b, int64_t s, int64_t h, int64_t d) {
    return static_cast<size_t>(((b * L + s) * H + h) * D + d);
  };
  std::vector<double> out(qv.size(), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < L; ++i) {
        std::vector<double> p(static_cast<size_t>(L), 0.0);
        double mx = -INFINITY;
        for (int64_t j = 0; j < L; ++j) {
          if (!pad.empty() && pad[static_cast<size_t>(b * L + j)]) continue;
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += qv[at(b, i, h, d)] * kv[at(b, j, h, d)];
          p[static_cast<size_t>(j)] = scale * dot;
          mx = std::max(mx, scale * dot);
        }
        double den = 0;
        for (int64_t j = 0; j < L; ++j) {
          if (!pad.empty() && pad[static_cast<size_t>(b * L + j)]) {
            p[static_cast<size_t>(j)] = 0;
            continue;
          }
          p[static_cast<size_t>(j)] = std::exp(p[static_cast<size_t>(j)] - mx);
          den += p[static_cast<size_t>(j)];
        }
        const double f = factor.empty() ? 1.0 : factor[static_cast<size_t>(h)];
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0;
          for (int64_t j = 0; j < L; ++j) acc += p[static_cast<size_t>(j)] * vv[at(b, j, h, d)];
          out[at(b, i, h, d)] = f * acc / den;
        }
      }
  return Tensor::from_vector(out, {B, L, H, D});
}

// The options of a test case's conv: empty index lists mean the prefix.
MaskedConvOptions conv_options(int64_t stride, int64_t pad, const std::vector<int64_t>& in_index,
                               const std::vector<int64_t>& out_index, int64_t out_channels) {
  MaskedConvOptions opt;
  opt.stride = stride;
  opt.padding = pad;
  opt.out_channels = out_index.empty() ? out_channels : -1;
  if (!in_index.empty()) opt.in_index = index_of(in_index);
  if (!out_index.empty()) opt.out_index = index_of(out_index);
  return opt;
}

// ------------------------------------------------------------------ CPU: gradient checks
struct ConvGradCase {
  const char* name;
  Shape x, w;
  int64_t stride, pad;
  std::vector<int64_t> in_index, out_index;  // empty: prefix
  int64_t out_channels;                      // -1: all (or the index's length)
  bool in_scale, out_scale;
};

TEST(FusedOpsCpu, MaskedConvGradcheck) {
  const std::vector<ConvGradCase> cases = {
      {"3x3 s1 full, in+out scales", {2, 5, 5, 3}, {4, 3, 3, 3}, 1, 1, {}, {}, -1, true, true},
      {"3x3 s2 prefix 2/4 -> 3/5, no scales", {1, 6, 5, 2}, {5, 3, 3, 4}, 2, 1, {}, {}, 3, false, false},
      {"1x1 s2 indexes, in+out scales", {2, 5, 3, 3}, {6, 1, 1, 5}, 2, 0, {4, 1, 2}, {0, 5, 2, 3}, -1, true, true},
      {"1x1 s1 prefix in, index out, in scale", {1, 3, 4, 3}, {5, 1, 1, 4}, 1, 0, {}, {2, 0}, -1, true, false},
      {"3x3 s1 pad 0 indexes, out scale", {1, 5, 4, 2}, {3, 3, 3, 3}, 1, 0, {2, 0}, {1, 2}, -1, false, true},
      {"3x3 s2 odd, index in, prefix out", {1, 7, 3, 3}, {4, 3, 3, 3}, 2, 1, {1, 2, 0}, {}, 2, true, true},
  };
  for (const ConvGradCase& c : cases) {
    const int64_t cin = c.x[3];
    const int64_t o = !c.out_index.empty() ? static_cast<int64_t>(c.out_index.size())
                                           : (c.out_channels == -1 ? c.w[0] : c.out_channels);
    MaskedConvOptions opt = conv_options(c.stride, c.pad, c.in_index, c.out_index, c.out_channels);
    Inputs in{leaf(c.x), leaf(c.w), c.in_scale ? leaf_uniform({cin}, 0.5, 1.5) : Tensor(),
              c.out_scale ? leaf_uniform({o}, 0.5, 1.5) : Tensor()};
    gradcheck(std::string("masked_conv2d ") + c.name,
              [opt](const Inputs& v) {
                MaskedConvOptions p = opt;
                p.in_scale = v[2];
                p.out_scale = v[3];
                return masked_conv2d(v[0], v[1], p);
              },
              in);
  }
}

TEST(FusedOpsCpu, DualConvGradcheck) {
  struct Case {
    const char* name;
    Shape xs, xh, w;
    int64_t stride, pad, hard_out;
  };
  const std::vector<Case> cases = {
      {"3x3 s1", {1, 5, 5, 4}, {1, 5, 5, 2}, {3, 3, 3, 4}, 1, 1, 2},
      {"1x1 s2 odd", {2, 5, 3, 3}, {2, 5, 3, 1}, {5, 1, 1, 3}, 2, 0, 3},
  };
  for (const Case& c : cases) {
    Inputs in{leaf(c.xs), leaf(c.xh), leaf(c.w), leaf_uniform({c.xs[3]}, 0.5, 1.5), leaf_uniform({c.w[0]}, 0.5, 1.5)};
    const int64_t stride = c.stride, pad = c.pad, hard_out = c.hard_out;
    gradcheck(std::string("dual_conv2d ") + c.name,
              [=](const Inputs& v) {
                MaskedConvOptions opt;
                opt.stride = stride;
                opt.padding = pad;
                opt.in_scale = v[3];
                opt.out_scale = v[4];
                auto [ys, yh] = dual_conv2d(v[0], v[1], v[2], opt, hard_out);
                return concat({reshape(ys, {-1}), reshape(yh, {-1})}, 0);
              },
              in);
  }
}

TEST(FusedOpsCpu, AttentionGradcheck) {
  const int64_t B = 2, H = 3, D = 4;
  for (int64_t L : {5, 1}) {
    for (int variant = 0; variant < 3; ++variant) {
      // 0: plain; 1: key padding + head scale; 2: key padding + head scale + a skipped head.
      AttentionOptions opt;
      opt.softmax_scale = 0.5;
      if (variant >= 1 && L > 2) {
        std::vector<uint8_t> pad(static_cast<size_t>(B * L), 0);
        pad[static_cast<size_t>(L + L - 1)] = pad[static_cast<size_t>(L + L - 2)] = 1;  // batch 1: last two keys
        opt.key_padding = u8_of(pad, {B, L});
      }
      if (variant == 2) opt.head_keep = u8_of({1, 0, 1}, {H});
      Inputs in{leaf({B, L, H, D}), leaf({B, L, H, D}), leaf({B, L, H, D}),
                variant >= 1 ? leaf_uniform({H}, 0.5, 1.5) : Tensor()};
      gradcheck("attention L=" + std::to_string(L) + " variant " + std::to_string(variant),
                [opt](const Inputs& v) {
                  AttentionOptions o = opt;
                  o.head_scale = v[3];
                  return attention(v[0], v[1], v[2], o);
                },
                in);
    }
  }
  // Strided q, k, v: [B, L, H, D] views of [B, H, L, D] tensors.
  Inputs in{leaf({B, H, 4, D}), leaf({B, H, 4, D}), leaf({B, H, 4, D})};
  gradcheck("attention, permuted views",
            [](const Inputs& v) {
              AttentionOptions o;
              o.softmax_scale = 0.7;
              return attention(permute(v[0], {0, 2, 1, 3}), permute(v[1], {0, 2, 1, 3}), permute(v[2], {0, 2, 1, 3}),
                               o);
            },
            in);
}

// ------------------------------------------------------------------ CPU: meaning
TEST(FusedOpsCpu, MaskedConvMatchesDirectLoops) {
  struct Case {
    const char* name;
    Shape x, w;
    int64_t stride, pad;
    std::vector<int64_t> in_index, out_index;
    int64_t out_channels;
    bool scales;
  };
  const std::vector<Case> cases = {
      {"indexes, scales, 3x3 s2", {2, 7, 6, 3}, {6, 3, 3, 5}, 2, 1, {4, 0, 2}, {5, 1, 3, 0}, -1, true},
      {"prefix, 3x3 s1", {1, 6, 5, 3}, {6, 3, 3, 5}, 1, 1, {}, {}, 4, false},
      {"full, scales, 1x1 s1", {2, 3, 4, 5}, {7, 1, 1, 5}, 1, 0, {}, {}, -1, true},
      {"index out only, 1x1 s2", {1, 5, 5, 2}, {4, 1, 1, 3}, 2, 0, {}, {3, 0}, -1, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const Tensor x = randn(c.x), w = randn(c.w);
    const int64_t cin = c.x[3];
    const std::vector<int64_t> cols = c.in_index.empty() ? iota_of(cin) : c.in_index;
    const std::vector<int64_t> rows =
        !c.out_index.empty() ? c.out_index : iota_of(c.out_channels == -1 ? c.w[0] : c.out_channels);
    const Tensor is = uniform({cin}, 0.5, 1.5), os = uniform({static_cast<int64_t>(rows.size())}, 0.5, 1.5);
    MaskedConvOptions opt = conv_options(c.stride, c.pad, c.in_index, c.out_index, c.out_channels);
    if (c.scales) {
      opt.in_scale = is;
      opt.out_scale = os;
    }
    const Tensor got = masked_conv2d(x, w, opt);
    const Tensor want = direct_masked_conv(x, w, rows, cols, c.scales ? values(is) : std::vector<double>{},
                                           c.scales ? values(os) : std::vector<double>{}, c.stride, c.pad);
    expect_close(got, want, 1e-12, 1e-12, c.name);
  }
}

TEST(FusedOpsCpu, MaskedConvGradientOnlyTouchesUsedWeights) {
  const Tensor x = randn({1, 4, 4, 2});
  Tensor w = leaf({5, 3, 3, 4});
  MaskedConvOptions opt;
  opt.padding = 1;
  opt.in_index = index_of({3, 1});
  opt.out_index = index_of({4, 0});
  sum(masked_conv2d(x, w, opt)).backward();
  const std::vector<double> g = values(w.grad());
  for (int64_t o = 0; o < 5; ++o)
    for (int64_t k = 0; k < 9; ++k)
      for (int64_t c = 0; c < 4; ++c) {
        const bool used = (o == 4 || o == 0) && (c == 3 || c == 1);
        const double v = g[static_cast<size_t>((o * 9 + k) * 4 + c)];
        if (used) {
          EXPECT_NE(v, 0.0) << "row " << o << " tap " << k << " column " << c;
        } else {
          EXPECT_EQ(v, 0.0) << "row " << o << " tap " << k << " column " << c;
        }
      }
}

TEST(FusedOpsCpu, DualConvIsTwoMaskedConvs) {
  const Tensor xs = randn({2, 6, 5, 4}), xh = randn({2, 6, 5, 3}), w = randn({5, 3, 3, 4});
  MaskedConvOptions opt;
  opt.stride = 2;
  opt.padding = 1;
  opt.in_scale = uniform({4}, 0.5, 1.5);
  opt.out_scale = uniform({5}, 0.5, 1.5);
  auto [ys, yh] = dual_conv2d(xs, xh, w, opt, 2);
  expect_close(ys, direct_masked_conv(xs, w, iota_of(5), iota_of(4), values(opt.in_scale), values(opt.out_scale), 2, 1),
               1e-12, 1e-12, "soft");
  expect_close(yh, direct_masked_conv(xh, w, iota_of(2), iota_of(3), {}, {}, 2, 1), 1e-12, 1e-12, "hard");
}

TEST(FusedOpsCpu, AttentionMatchesDirectLoops) {
  const int64_t B = 2, L = 6, H = 3, D = 5;
  const Tensor q = randn({B, L, H, D}), k = randn({B, L, H, D}), v = randn({B, L, H, D});
  std::vector<uint8_t> pad(static_cast<size_t>(B * L), 0);
  pad[1] = 1;                                              // batch 0: key 1
  pad[static_cast<size_t>(L + 4)] = pad[static_cast<size_t>(L + 5)] = 1;  // batch 1: keys 4, 5
  const Tensor hs = uniform({H}, 0.5, 1.5);
  AttentionOptions opt;
  opt.softmax_scale = 1 / std::sqrt(static_cast<double>(D));
  expect_close(attention(q, k, v, opt), direct_attention(q, k, v, opt.softmax_scale, {}, {}), 1e-12, 1e-12, "plain");
  opt.key_padding = u8_of(pad, {B, L});
  opt.head_scale = hs;
  opt.head_keep = u8_of({1, 0, 7}, {H});  // any nonzero value keeps a head
  std::vector<double> factor = values(hs);
  factor[1] = 0;
  expect_close(attention(q, k, v, opt), direct_attention(q, k, v, opt.softmax_scale, pad, factor), 1e-12, 1e-12,
               "padding, head scale, skipped head");
}

TEST(FusedOpsCpu, SkippedHeadHasNoOutputAndNoGradient) {
  const int64_t B = 2, L = 5, H = 3, D = 4;
  Tensor q = leaf({B, L, H, D}), k = leaf({B, L, H, D}), v = leaf({B, L, H, D}), hs = leaf_uniform({H}, 0.5, 1.5);
  AttentionOptions opt;
  opt.softmax_scale = 0.5;
  opt.head_scale = hs;
  opt.head_keep = u8_of({1, 1, 0}, {H});
  const Tensor out = attention(q, k, v, opt);
  sum(mul(out, randn(out.shape()))).backward();
  const std::vector<double> o = values(out), gq = values(q.grad()), gk = values(k.grad()), gv = values(v.grad());
  for (int64_t i = 0; i < B * L; ++i)
    for (int64_t d = 0; d < D; ++d) {
      const size_t at = static_cast<size_t>((i * H + 2) * D + d);
      EXPECT_EQ(o[at], 0.0);
      EXPECT_EQ(gq[at], 0.0);
      EXPECT_EQ(gk[at], 0.0);
      EXPECT_EQ(gv[at], 0.0);
      EXPECT_NE(o[at - static_cast<size_t>(D)], 0.0);  // head 1 is kept
    }
  EXPECT_EQ(values(hs.grad())[2], 0.0);
  EXPECT_NE(values(hs.grad())[1], 0.0);
}

// On the CPU the fused switch and the bf16 policy change nothing.
TEST(FusedOpsCpu, SwitchesDoNotChangeTheCpu) {
  const Tensor x = randn({1, 5, 5, 3}), w = randn({4, 3, 3, 3});
  MaskedConvOptions opt;
  opt.padding = 1;
  opt.out_scale = uniform({4}, 0.5, 1.5);
  const Tensor plain = masked_conv2d(x, w, opt);
  FusedKernelsGuard fused(true);
  PrecisionGuard bf16(Precision::BF16);
  const Tensor switched = masked_conv2d(x, w, opt);
  EXPECT_EQ(switched.dtype(), DType::F64);
  expect_close(switched, plain, 0, 0, "masked_conv2d under fused + bf16 on the CPU");
}

TEST(FusedOpsCpu, NoHistoryWithoutGrad) {
  Tensor x = leaf({1, 3, 3, 2}), w = leaf({2, 1, 1, 2});
  NoGradGuard guard;
  EXPECT_FALSE(masked_conv2d(x, w, {}).requires_grad());
}

TEST(FusedOpsCpu, BadArgumentsAreNamed) {
  const Tensor x = randn({1, 5, 5, 3}), w = randn({4, 3, 3, 3});
  auto with = [](auto f) {
    MaskedConvOptions o;
    o.padding = 1;
    f(o);
    return o;
  };
  EXPECT_ERROR("masked_conv2d|in_index|out of range",
               masked_conv2d(x, w, with([](MaskedConvOptions& o) { o.in_index = index_of({0, 1, 3}); })));
  EXPECT_ERROR("masked_conv2d|in_index|repeats",
               masked_conv2d(x, w, with([](MaskedConvOptions& o) { o.in_index = index_of({0, 1, 1}); })));
  EXPECT_ERROR("masked_conv2d|in_index|2 entries",
               masked_conv2d(x, w, with([](MaskedConvOptions& o) { o.in_index = index_of({0, 1}); })));
  EXPECT_ERROR("masked_conv2d|out_index|out of range",
               masked_conv2d(x, w, with([](MaskedConvOptions& o) { o.out_index = index_of({0, 4}); })));
  EXPECT_ERROR("masked_conv2d|out_index|i64",
               masked_conv2d(x, w, with([](MaskedConvOptions& o) { o.out_index = Tensor::zeros({2}, DType::F64); })));
  EXPECT_ERROR("masked_conv2d|out_channels|5",
               masked_conv2d(x, w, with([](MaskedConvOptions& o) { o.out_channels = 5; })));
  EXPECT_ERROR("masked_conv2d|out_channels|out_index",
               masked_conv2d(x, w, with([](MaskedConvOptions& o) {
                 o.out_index = index_of({0, 1});
                 o.out_channels = 3;
               })));
  EXPECT_ERROR("masked_conv2d|in_scale|[3]",
               masked_conv2d(x, w, with([](MaskedConvOptions& o) { o.in_scale = Tensor::ones({4}, DType::F64); })));
  EXPECT_ERROR("masked_conv2d|out_scale|[4]",
               masked_conv2d(x, w, with([](MaskedConvOptions& o) { o.out_scale = Tensor::ones({3}, DType::F64); })));
  EXPECT_ERROR("masked_conv2d|out_scale|i64",
               masked_conv2d(x, w, with([](MaskedConvOptions& o) { o.out_scale = Tensor::zeros({4}, DType::I64); })));
  EXPECT_ERROR("masked_conv2d|x|4 channels|3 input columns", masked_conv2d(randn({1, 5, 5, 4}), w, {}));
  EXPECT_ERROR("masked_conv2d|x|NHWC", masked_conv2d(randn({5, 5, 3}), w, {}));
  EXPECT_ERROR("masked_conv2d|weight|square", masked_conv2d(x, randn({4, 3, 1, 3}), {}));
  EXPECT_ERROR("masked_conv2d|weight|f32|f64", masked_conv2d(x, randn({4, 3, 3, 3}, DType::F32), {}));
  EXPECT_ERROR("masked_conv2d|stride", masked_conv2d(x, w, with([](MaskedConvOptions& o) { o.stride = 0; })));

  MaskedConvOptions soft;
  soft.padding = 1;
  EXPECT_ERROR("dual_conv2d|hard_out", dual_conv2d(x, randn({1, 5, 5, 2}), w, soft, 5));
  EXPECT_ERROR("dual_conv2d|x_hard|4 channels", dual_conv2d(x, randn({1, 5, 5, 4}), w, soft, 2));
  soft.in_index = index_of({0, 1, 2});
  EXPECT_ERROR("dual_conv2d|in_index", dual_conv2d(x, randn({1, 5, 5, 2}), w, soft, 2));

  const Tensor q = randn({2, 4, 3, 5});
  AttentionOptions a;
  EXPECT_ERROR("attention|one shape", attention(q, randn({2, 4, 3, 6}), q, a));
  EXPECT_ERROR("attention|q|[B, L, H, D]", attention(randn({2, 4, 15}), randn({2, 4, 15}), randn({2, 4, 15}), a));
  EXPECT_ERROR("attention|one dtype", attention(q, q.to(DType::F32), q, a));
  a.key_padding = Tensor::zeros({2, 5}, DType::U8);
  EXPECT_ERROR("attention|key_padding|u8 [2, 4]", attention(q, q, q, a));
  a = {};
  a.head_keep = Tensor::ones({3}, DType::F32);
  EXPECT_ERROR("attention|head_keep|u8 [3]", attention(q, q, q, a));
  a = {};
  a.head_scale = Tensor::ones({4}, DType::F64);
  EXPECT_ERROR("attention|head_scale|[3]", attention(q, q, q, a));
}

// ------------------------------------------------------------------ CUDA: fused vs library vs f64

constexpr double kFloor = 1e-3;  // the fused error may exceed 2x the library's by this much
// ... and by this much for a scale's gradient measured against its summands' norm (see SummandNorm): either
// path's rounding noise there is of order 2^-8 (bf16 operands), and with a handful of heads or channels the
// two noises are a few samples each, so the library's may come out far below the fused one's by chance.
constexpr double kSumFloor = 1e-2;
constexpr double kCap = 3e-2;    // and never this (both paths wrong the same way must still fail)

// How an input reaches the GPU: an activation as bf16, a parameter as f32
// (bf16-exact values), a constant (index, mask) as it is, on the device or
// left on the CPU.
enum class Kind { Act, Param, ParamBf16, Const, ConstCpu };

struct Arg {
  Tensor v;  // f64 values (i64 / u8 for constants), already rounded to what the GPU sees
  Kind kind = Kind::Act;
  bool grad = true;
};

Tensor bf16_exact(const Tensor& t) { return t.to(DType::BF16).to(DType::F64); }
Arg act_arg(const Shape& s, double scale = 1.0) { return {bf16_exact(randn(s, DType::F64, scale)), Kind::Act, true}; }
Arg scale_arg(int64_t n) { return {bf16_exact(uniform({n}, 0.5, 1.5)), Kind::Param, true}; }
Arg const_arg(Tensor v, bool on_device = true) {
  return {std::move(v), on_device ? Kind::Const : Kind::ConstCpu, false};
}
Arg none_arg() { return {Tensor(), Kind::Const, false}; }

struct Result {
  Tensor out;                // f64 on the CPU
  std::vector<Tensor> grads; // per input: f64 on the CPU, undefined when it takes none
  std::string node;          // the autograd node that made the output
};

// The f64 CPU reference: forward, then backward of `g` (drawn here, rounded
// to bf16, returned through *g).
Result run_reference(const Fn& fn, const std::vector<Arg>& args, Tensor* g) {
  Inputs ins;
  for (const Arg& a : args) {
    Tensor t = a.v.defined() ? a.v.clone() : Tensor();
    if (a.grad) t.set_requires_grad(true);
    ins.push_back(t);
  }
  Result r;
  r.out = fn(ins);
  *g = bf16_exact(randn(r.out.shape()));
  r.out.backward(*g);
  for (const Tensor& t : ins) r.grads.push_back(t.defined() && t.requires_grad() ? t.grad() : Tensor());
  r.out = r.out.detach();
  return r;
}

// The op on the GPU under the bf16 policy, fused or library kernels.
Result run_device(const Fn& fn, const std::vector<Arg>& args, const Tensor& g, bool fused, const std::string& what) {
  const Device dev = Device::cuda(0);
  FusedKernelsGuard fg(fused);
  PrecisionGuard pg(Precision::BF16);
  PoisonGuard poison(true);
  Inputs ins;
  for (const Arg& a : args) {
    Tensor t;
    if (a.v.defined()) {
      switch (a.kind) {
        case Kind::Act: t = a.v.to(DType::BF16).to(dev); break;
        case Kind::Param: t = a.v.to(DType::F32).to(dev); break;
        case Kind::ParamBf16: t = a.v.to(DType::BF16).to(dev); break;
        case Kind::Const: t = a.v.to(dev); break;
        case Kind::ConstCpu: t = a.v.clone(); break;
      }
    }
    if (a.grad) t.set_requires_grad(true);
    ins.push_back(t);
  }
  Result r;
  const Tensor out = fn(ins);
  r.node = node_name(out);
  EXPECT_EQ(out.dtype(), DType::BF16) << what << ": output " << out.str();
  EXPECT_EQ(out.device(), dev) << what << ": output " << out.str();
  out.backward(g.to(DType::BF16).to(dev));
  r.out = out.detach().to(Device::cpu()).to(DType::F64);
  for (size_t i = 0; i < ins.size(); ++i) {
    const Tensor& t = ins[i];
    if (!t.defined() || !t.requires_grad()) {
      r.grads.emplace_back();
      continue;
    }
    const Tensor gi = t.grad();
    if (!gi.defined()) {  // check_paths says whether one was due
      r.grads.emplace_back();
      continue;
    }
    EXPECT_EQ(gi.dtype(), t.dtype()) << what << ": gradient of input " << i << " is " << gi.str();
    EXPECT_EQ(gi.device(), dev) << what << ": gradient of input " << i << " is " << gi.str();
    r.grads.push_back(gi.to(Device::cpu()).to(DType::F64));
  }
  return r;
}

// The gradient of a scale sums products over many elements (pixels, rows):
// both paths' rounding errors grow with the norm of those summands, while the
// sum itself may cancel to near zero (with random inputs it often does), so
// such a gradient's error is measured against the summands' norm. A
// SummandNorm returns that norm for a gradient by name, or 0 for "its own
// norm" (every other output and gradient).
using SummandNorm =
    std::function<double(const std::string& grad, const std::vector<Arg>& args, const Result& ref, const Tensor& g)>;

// ||a (.) b / s|| with s broadcast along `axis` of a and b (of one shape).
double scaled_product_norm(const Tensor& a, const Tensor& b, const Tensor& s, int axis) {
  const std::vector<double> va = values(a), vb = values(b), vs = values(s);
  int64_t inner = 1;
  for (int d = axis + 1; d < a.dim(); ++d) inner *= a.size(d);
  const int64_t n = a.size(axis);
  double sum = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    const double t = va[i] * vb[i] / vs[static_cast<size_t>((static_cast<int64_t>(i) / inner) % n)];
    sum += t * t;
  }
  return std::sqrt(sum);
}

// masked_conv2d / the soft output of dual_conv2d, x at 0, in_scale and out_scale at in_at, out_at:
// dout_scale[o] = sum g * y / out_scale[o], din_scale[c] = sum x * dx / in_scale[c]. hard_out > 0: the output
// is dual_conv2d's two outputs flattened into one, the soft one first and then the hard one, of hard_out
// channels (which no scale reaches).
SummandNorm conv_summands(size_t in_at, size_t out_at, int64_t hard_out = 0) {
  return [=](const std::string& grad, const std::vector<Arg>& args, const Result& ref, const Tensor& g) -> double {
    if (grad == "dout_scale" && ref.out.dim() == 4) return scaled_product_norm(g, ref.out, args[out_at].v, 3);
    if (grad == "dout_scale" && hard_out > 0) {
      const int64_t o = args[out_at].v.numel(), soft = g.numel() / (o + hard_out) * o;
      const auto soft_part = [&](const Tensor& t) { return reshape(slice(t, 0, 0, soft), {-1, o}); };
      return scaled_product_norm(soft_part(g), soft_part(ref.out), args[out_at].v, 1);
    }
    if (grad == "din_scale" && ref.grads[0].defined())
      return scaled_product_norm(args[0].v, ref.grads[0], args[in_at].v, 3);
    return 0.0;
  };
}
// attention, head_scale at hs_at: dhead_scale[h] = sum g * out / head_scale[h] (heads: axis 2).
SummandNorm attention_summands(size_t hs_at) {
  return [=](const std::string& grad, const std::vector<Arg>& args, const Result& ref, const Tensor& g) -> double {
    return grad == "dhead_scale" ? scaled_product_norm(g, ref.out, args[hs_at].v, 2) : 0.0;
  };
}

// ||a - ref|| / scale, or the relative error when scale is 0; infinity for NaN/Inf.
double error_against(const Tensor& a, const Tensor& ref, double scale) {
  if (scale <= 0) return rel_error(a, ref);
  const std::vector<double> va = values(a), vr = values(ref);
  double num = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    if (!std::isfinite(va[i])) return INFINITY;
    num += (va[i] - vr[i]) * (va[i] - vr[i]);
  }
  return std::sqrt(num) / scale;
}

// Runs the three paths and compares (see the file comment). `names` names
// the inputs; `fused_node` is the node name the fused path must produce
// ("" when the output comes from another op).
void check_paths(const std::string& what, const Fn& fn, const std::vector<Arg>& args,
                 const std::vector<std::string>& names, const std::string& fused_node,
                 const SummandNorm& summands = {}) {
  SCOPED_TRACE(what);
  Tensor g;
  const Result ref = run_reference(fn, args, &g);
  const Result lib = run_device(fn, args, g, false, what + " (library)");
  const Result fus = run_device(fn, args, g, true, what + " (fused)");
  if (!fused_node.empty()) {
    EXPECT_EQ(fus.node, fused_node) << what << ": the fused path did not run its kernel (node '" << fus.node << "')";
    EXPECT_NE(lib.node, fused_node) << what << ": the library path ran the fused node";
  }
  auto one = [&](const std::string& name, const Tensor& r, const Tensor& l, const Tensor& f) {
    ASSERT_TRUE(l.defined()) << what << " " << name << ": the library path gave no result";
    ASSERT_TRUE(f.defined()) << what << " " << name << ": the fused path gave no result";
    ASSERT_EQ(f.shape(), r.shape()) << what << " " << name;
    ASSERT_EQ(l.shape(), r.shape()) << what << " " << name;
    const double scale = summands ? summands(name, args, ref, g) : 0.0;
    const double el = error_against(l, r, scale), ef = error_against(f, r, scale);
    std::printf("[ error    ] %-58s %-10s fused %.3e  library %.3e%s\n", what.c_str(), name.c_str(), ef, el,
                scale > 0 ? "  (against the summands' norm)" : "");
    EXPECT_LE(ef, 2 * el + (scale > 0 ? kSumFloor : kFloor))
        << what << " " << name << ": fused error " << ef << ", library error " << el;
    EXPECT_LE(ef, kCap) << what << " " << name << ": fused error " << ef;
  };
  one("output", ref.out, lib.out, fus.out);
  for (size_t i = 0; i < args.size(); ++i)
    if (ref.grads[i].defined()) one("d" + names[i], ref.grads[i], lib.grads[i], fus.grads[i]);
}

class FusedOpsCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (cuda::device_count(&why) == 0) GTEST_SKIP() << "no usable GPU: " << why;
  }
};

struct ConvShape {
  const char* name;
  int64_t n, h, w, c, o, k, stride;  // c, o: the full widths (the weight's)
};

// ResNet-50 layers with a small batch, MobileNetV2 pointwise layers, and odd
// sizes that divide no tile (c = 3, 17; o = 5; 13x13; n*ho*wo prime).
const std::vector<ConvShape> kConvShapes = {
    {"r50 1x1 256->64 56x56", 2, 56, 56, 256, 64, 1, 1},
    {"r50 3x3 64->64 56x56", 2, 56, 56, 64, 64, 3, 1},
    {"r50 3x3 128->128 s2 56x56", 1, 56, 56, 128, 128, 3, 2},
    {"r50 1x1 256->512 s2 56x56", 1, 56, 56, 256, 512, 1, 2},
    {"r50 3x3 256->256 14x14", 2, 14, 14, 256, 256, 3, 1},
    {"r50 1x1 1024->256 14x14", 2, 14, 14, 1024, 256, 1, 1},
    {"r50 1x1 512->2048 7x7", 2, 7, 7, 512, 2048, 1, 1},
    {"r50 3x3 512->512 7x7", 2, 7, 7, 512, 512, 3, 1},
    {"mbv2 1x1 32->16 112x112", 1, 112, 112, 32, 16, 1, 1},
    {"mbv2 1x1 16->96 112x112", 1, 112, 112, 16, 96, 1, 1},
    {"mbv2 1x1 144->24 56x56", 2, 56, 56, 144, 24, 1, 1},
    {"mbv2 1x1 384->64 14x14", 2, 14, 14, 384, 64, 1, 1},
    {"mbv2 1x1 960->160 7x7", 2, 7, 7, 960, 160, 1, 1},
    {"mbv2 1x1 320->1280 7x7", 2, 7, 7, 320, 1280, 1, 1},
    {"odd 3x3 3->5 13x13", 1, 13, 13, 3, 5, 3, 1},
    {"odd 3x3 17->5 s2 13x11", 3, 13, 11, 17, 5, 3, 2},
    {"odd 1x1 17->33 13x13", 1, 13, 13, 17, 33, 1, 1},
    {"odd 3x3 19->23 1x127 (127 pixels)", 1, 1, 127, 19, 23, 3, 1},
    {"odd 3x3 7->9 s2 1x61 (31 pixels)", 1, 1, 61, 7, 9, 3, 2},
    {"odd 1x1 5->3 s2 9x9", 2, 9, 9, 5, 3, 1, 2},
    {"odd 3x3 17->24 9x9 (vector dy only)", 1, 9, 9, 17, 24, 3, 1},
};

// On the emulated device (kernels/cuda/emu, CI without a GPU) the kernels run
// one thread at a time: smaller layers that still cover every path of the
// kernels (vector and scalar loaders, k 1 and 3, stride 1 and 2, several M, N
// and K tiles, split-K weight gradients, partial tiles) and the odd shapes.
const std::vector<ConvShape> kEmuConvShapes = {
    {"3x3 64->64 16x16", 1, 16, 16, 64, 64, 3, 1},
    {"3x3 16->24 32x32 (split-K wgrad)", 1, 32, 32, 16, 24, 3, 1},
    {"3x3 32->80 s2 16x16", 2, 16, 16, 32, 80, 3, 2},
    {"1x1 96->136 9x9", 2, 9, 9, 96, 136, 1, 1},
    {"1x1 128->48 s2 14x14", 1, 14, 14, 128, 48, 1, 2},
    kConvShapes[14],
    kConvShapes[15],
    kConvShapes[16],
    kConvShapes[17],
    kConvShapes[18],
    kConvShapes[19],
    kConvShapes[20],
};
const std::vector<ConvShape>& conv_shapes() { return cuda::emulated() ? kEmuConvShapes : kConvShapes; }
// The shapes of the tests that take a few: a 3x3 stride-1 layer with vector loaders, an odd stride-2 one and an odd
// 1x1.
const ConvShape& vector_3x3_shape() { return cuda::emulated() ? kEmuConvShapes[0] : kConvShapes[1]; }
const ConvShape& odd_s2_shape() { return kConvShapes[15]; }
const ConvShape& odd_1x1_shape() { return kConvShapes[16]; }

// A kept width: about `fraction` of `full`, at least 1, odd where possible.
int64_t kept(int64_t full, double fraction) {
  int64_t k = std::max<int64_t>(1, static_cast<int64_t>(std::lround(full * fraction)));
  if (k % 2 == 0 && k > 1) --k;
  return k;
}

std::string conv_name(const ConvShape& s, const std::string& mode) { return mode + " " + s.name; }

// The full weight [o, k, k, c], bf16-exact, scaled by 1/sqrt(fan-in) (outputs of order 1).
Tensor weight_scaled(const ConvShape& s) {
  return bf16_exact(randn({s.o, s.k, s.k, s.c}, DType::F64, 1.0 / std::sqrt(static_cast<double>(s.c * s.k * s.k))));
}

TEST_F(FusedOpsCuda, MaskedConvSoft) {
  for (const ConvShape& s : conv_shapes()) {
    const int64_t pad = s.k / 2;
    check_paths(
        conv_name(s, "soft"),
        [&](const Inputs& v) {
          MaskedConvOptions o;
          o.stride = s.stride;
          o.padding = pad;
          o.in_scale = v[2];
          o.out_scale = v[3];
          return masked_conv2d(v[0], v[1], o);
        },
        {act_arg({s.n, s.h, s.w, s.c}), {weight_scaled(s), Kind::Param, true}, scale_arg(s.c), scale_arg(s.o)},
        {"x", "weight", "in_scale", "out_scale"}, "masked_conv2d", conv_summands(2, 3));
  }
}

TEST_F(FusedOpsCuda, MaskedConvSoftOutScaleOnlyBf16Weight) {
  // A bf16 weight (the kernel reads either dtype; the gradient keeps the weight's dtype).
  for (const ConvShape& s : {vector_3x3_shape(), odd_s2_shape(), odd_1x1_shape()}) {
    check_paths(
        conv_name(s, "soft out-scale, bf16 weight"),
        [&](const Inputs& v) {
          MaskedConvOptions o;
          o.stride = s.stride;
          o.padding = s.k / 2;
          o.out_scale = v[2];
          return masked_conv2d(v[0], v[1], o);
        },
        {act_arg({s.n, s.h, s.w, s.c}), {weight_scaled(s), Kind::ParamBf16, true}, scale_arg(s.o)},
        {"x", "weight", "out_scale"}, "masked_conv2d", conv_summands(0, 2));  // no in_scale: index 0 is never read
  }
}

TEST_F(FusedOpsCuda, MaskedConvHardPrefix) {
  for (const ConvShape& s : conv_shapes()) {
    for (double f : {0.35, 0.75}) {
      const int64_t c = kept(s.c, f), o = kept(s.o, f);
      check_paths(conv_name(s, "hard prefix " + std::to_string(c) + "->" + std::to_string(o)),
                  [&](const Inputs& v) {
                    MaskedConvOptions opt;
                    opt.stride = s.stride;
                    opt.padding = s.k / 2;
                    opt.out_channels = o;
                    return masked_conv2d(v[0], v[1], opt);
                  },
                  {act_arg({s.n, s.h, s.w, c}), {weight_scaled(s), Kind::Param, true}}, {"x", "weight"},
                  "masked_conv2d");
    }
  }
}

TEST_F(FusedOpsCuda, MaskedConvHardIndex) {
  for (size_t i = 0; i < conv_shapes().size(); ++i) {
    const ConvShape& s = conv_shapes()[i];
    const int64_t c = kept(s.c, 0.55), o = kept(s.o, 0.55);
    const Tensor in_index = index_of(random_subset(s.c, c)), out_index = index_of(random_subset(s.o, o));
    // Every other shape keeps the indexes on the CPU (the op moves them), and
    // every third adds soft scales on top of the hard widths.
    const bool on_device = i % 2 == 0, scales = i % 3 == 0;
    check_paths(
        conv_name(s, std::string("hard index") + (scales ? " + scales" : "") + (on_device ? "" : " (cpu idx)")),
        [&](const Inputs& v) {
          MaskedConvOptions opt;
          opt.stride = s.stride;
          opt.padding = s.k / 2;
          opt.in_index = v[2];
          opt.out_index = v[3];
          opt.in_scale = v[4];
          opt.out_scale = v[5];
          return masked_conv2d(v[0], v[1], opt);
        },
        {act_arg({s.n, s.h, s.w, c}),
         {weight_scaled(s), Kind::Param, true},
         const_arg(in_index, on_device),
         const_arg(out_index, on_device),
         scales ? scale_arg(c) : none_arg(),
         scales ? scale_arg(o) : none_arg()},
        {"x", "weight", "in_index", "out_index", "in_scale", "out_scale"}, "masked_conv2d", conv_summands(4, 5));
  }
}

TEST_F(FusedOpsCuda, MaskedConvOnlySomeGradients) {
  // The backward runs only the kernels it needs: x alone, the weight alone, a scale alone.
  const ConvShape& s = odd_s2_shape();
  for (int want = 0; want < 4; ++want) {
    std::vector<Arg> args{act_arg({s.n, s.h, s.w, s.c}), {weight_scaled(s), Kind::Param, true}, scale_arg(s.c),
                          scale_arg(s.o)};
    for (int i = 0; i < 4; ++i) args[static_cast<size_t>(i)].grad = i == want;
    check_paths(
        conv_name(s, "only d" + std::to_string(want)),
        [&](const Inputs& v) {
          MaskedConvOptions o;
          o.stride = s.stride;
          o.padding = 1;
          o.in_scale = v[2];
          o.out_scale = v[3];
          return masked_conv2d(v[0], v[1], o);
        },
        args, {"x", "weight", "in_scale", "out_scale"}, "masked_conv2d", conv_summands(2, 3));
  }
}

// dual_conv2d of shape s (hard widths hc -> ho) with soft in- and out-scales
// against the library path and the reference: part 0 checks the soft output,
// 1 the hard one (a fresh run each, so that each output's gradients are
// checked alone), 2 both through one tensor.
void check_dual(const ConvShape& s, int64_t hc, int64_t ho, int part) {
  static const char* kPart[] = {"soft", "hard", "both"};
  check_paths(
      conv_name(s, std::string("dual (") + kPart[part] + ") hard " + std::to_string(hc) + "->" + std::to_string(ho)),
      [&](const Inputs& v) {
        MaskedConvOptions o;
        o.stride = s.stride;
        o.padding = s.k / 2;
        o.in_scale = v[3];
        o.out_scale = v[4];
        auto [ys, yh] = dual_conv2d(v[0], v[1], v[2], o, ho);
        if (part == 0) return ys;
        if (part == 1) return yh;
        // Both outputs in one tensor (bf16 on the GPU, f64 on the CPU).
        return concat({reshape(ys, {-1}), reshape(yh, {-1})}, 0);
      },
      {act_arg({s.n, s.h, s.w, s.c}), act_arg({s.n, s.h, s.w, hc}), {weight_scaled(s), Kind::Param, true},
       scale_arg(s.c), scale_arg(s.o)},
      {"x_soft", "x_hard", "weight", "in_scale", "out_scale"},
      part == 1 ? "dual_conv2d (hard)" : part == 0 ? "dual_conv2d (soft)" : "",
      conv_summands(3, 4, part == 2 ? ho : 0));
}

TEST_F(FusedOpsCuda, DualConv) {
  for (const ConvShape& s : conv_shapes())
    for (int part = 0; part < 3; ++part) check_dual(s, kept(s.c, 0.45), kept(s.o, 0.45), part);
}

// The dual kernel's vector loaders need both widths multiples of 8 (the odd
// widths of DualConv never take them), here with a bf16 weight.
TEST_F(FusedOpsCuda, DualConvVectorLoadsBf16Weight) {
  for (const ConvShape& s : {vector_3x3_shape(), cuda::emulated() ? kEmuConvShapes[3] : kConvShapes[5]}) {
    const int64_t hc = std::max<int64_t>(8, s.c / 16 * 8), ho = std::max<int64_t>(8, s.o / 16 * 8);
    check_paths(
        conv_name(s, "dual (soft) bf16 weight, hard " + std::to_string(hc) + "->" + std::to_string(ho)),
        [&](const Inputs& v) {
          MaskedConvOptions o;
          o.stride = s.stride;
          o.padding = s.k / 2;
          o.in_scale = v[3];
          auto [ys, yh] = dual_conv2d(v[0], v[1], v[2], o, ho);
          return concat({reshape(ys, {-1}), reshape(yh, {-1})}, 0);
        },
        {act_arg({s.n, s.h, s.w, s.c}),
         act_arg({s.n, s.h, s.w, hc}),
         {weight_scaled(s), Kind::ParamBf16, true},
         scale_arg(s.c)},
        {"x_soft", "x_hard", "weight", "in_scale"}, "", conv_summands(3, 3));
  }
}

TEST_F(FusedOpsCuda, Attention) {
  const int64_t B = 2, H = 3;
  for (int64_t d : {64, 128}) {
    // Emulated: 130 still spans several query and key tiles (64, and 32 in the d=128 backward).
    for (int64_t L : cuda::emulated() ? std::vector<int64_t>{1, 37, 130} : std::vector<int64_t>{1, 37, 128, 300}) {
      // 0: plain; 1: key padding; 2: padding + head scale + a skipped head;
      // 3: q, k, v as permuted [B, H, L, D] views (strided); 4: head scale
      // only with mismatched layouts (the op makes them contiguous).
      for (int variant = 0; variant < 5; ++variant) {
        std::vector<uint8_t> pad(static_cast<size_t>(B * L), 0);
        for (int64_t j = L - L / 3; j < L; ++j) pad[static_cast<size_t>(L + j)] = 1;  // batch 1: the last third
        const Tensor pad_t = u8_of(pad, {B, L});
        const Tensor keep = u8_of({1, 0, 1}, {H});
        const double scale = 1 / std::sqrt(static_cast<double>(d));
        const bool permuted = variant == 3;
        const Shape qs = permuted ? Shape{B, H, L, d} : Shape{B, L, H, d};
        std::vector<Arg> args{act_arg(qs), act_arg(qs), act_arg(variant == 4 ? Shape{B, H, L, d} : qs),
                              variant >= 2 ? scale_arg(H) : none_arg()};
        check_paths(
            "attention d=" + std::to_string(d) + " L=" + std::to_string(L) + " variant " + std::to_string(variant),
            [&](const Inputs& v) {
              AttentionOptions o;
              o.softmax_scale = scale;
              if (variant == 1 || variant == 2) o.key_padding = pad_t;
              if (variant == 2) o.head_keep = keep;
              o.head_scale = v[3];
              const Tensor q = permuted ? permute(v[0], {0, 2, 1, 3}) : v[0];
              const Tensor k = permuted ? permute(v[1], {0, 2, 1, 3}) : v[1];
              const Tensor vv = permuted || variant == 4 ? permute(v[2], {0, 2, 1, 3}) : v[2];
              return attention(q, k, vv, o);
            },
            args, {"q", "k", "v", "head_scale"}, "attention", attention_summands(3));
      }
    }
  }
}

TEST_F(FusedOpsCuda, SkippedHeadIsExactlyZero) {
  const int64_t B = 2, L = 37, H = 3, D = 64;
  FusedKernelsGuard fg(true);
  PrecisionGuard pg(Precision::BF16);
  PoisonGuard poison(true);
  const Device dev = Device::cuda(0);
  Tensor q = randn({B, L, H, D}).to(DType::BF16).to(dev), k = randn({B, L, H, D}).to(DType::BF16).to(dev),
         v = randn({B, L, H, D}).to(DType::BF16).to(dev), hs = uniform({H}, 0.5, 1.5, DType::F32).to(dev);
  for (Tensor* t : {&q, &k, &v, &hs}) t->set_requires_grad(true);
  AttentionOptions o;
  o.softmax_scale = 0.125;
  o.head_scale = hs;
  o.head_keep = u8_of({0, 1, 1}, {H});
  const Tensor out = attention(q, k, v, o);
  EXPECT_EQ(node_name(out), "attention");
  out.backward(randn(out.shape()).to(DType::BF16).to(dev));
  const std::vector<double> ov = values(out), gq = values(q.grad()), gk = values(k.grad()), gv = values(v.grad());
  for (int64_t i = 0; i < B * L; ++i)
    for (int64_t d = 0; d < D; ++d) {
      const size_t at = static_cast<size_t>(i * H * D + d);  // head 0
      ASSERT_EQ(ov[at], 0.0) << "output row " << i;
      ASSERT_EQ(gq[at], 0.0) << "dq row " << i;
      ASSERT_EQ(gk[at], 0.0) << "dk row " << i;
      ASSERT_EQ(gv[at], 0.0) << "dv row " << i;
    }
  EXPECT_EQ(values(hs.grad())[0], 0.0);
}

// The backward kernels read the masks that the forward moved to the device
// (key padding, head keep, head scale, all given on the CPU here): the
// autograd node must keep them alive. Between the forward and the backward,
// tensors of the masks' sizes filled with other values take whatever memory
// the pool freed; the (deterministic) results must not change.
TEST_F(FusedOpsCuda, MasksOutliveTheForward) {
  const int64_t B = 2, L = 37, H = 3, D = 64;
  FusedKernelsGuard fg(true);
  PrecisionGuard pg(Precision::BF16);
  const Device dev = Device::cuda(0);
  const Tensor q0 = randn({B, L, H, D}).to(DType::BF16).to(dev), k0 = randn({B, L, H, D}).to(DType::BF16).to(dev),
               v0 = randn({B, L, H, D}).to(DType::BF16).to(dev), hs0 = uniform({H}, 0.5, 1.5, DType::F32);
  const Tensor g = randn({B, L, H, D}).to(DType::BF16).to(dev);
  std::vector<uint8_t> pad(static_cast<size_t>(B * L), 0);
  for (int64_t j = 25; j < L; ++j) pad[static_cast<size_t>(L + j)] = 1;
  AttentionOptions o;
  o.softmax_scale = 0.125;
  o.key_padding = u8_of(pad, {B, L});
  o.head_keep = u8_of({1, 0, 1}, {H});
  auto run = [&](bool scribble) {
    Tensor q = q0.clone(), k = k0.clone(), v = v0.clone(), hs = hs0.clone();
    for (Tensor* t : {&q, &k, &v, &hs}) t->set_requires_grad(true);
    AttentionOptions oo = o;
    oo.head_scale = hs;
    const Tensor out = attention(q, k, v, oo);
    EXPECT_EQ(node_name(out), "attention");
    std::vector<Tensor> junk;
    if (scribble)
      for (int i = 0; i < 64; ++i) {
        junk.push_back(Tensor::full({B, L}, 1, DType::U8, dev));   // every key padded
        junk.push_back(Tensor::full({H}, 1, DType::U8, dev));      // every head kept
        junk.push_back(Tensor::full({H}, -3.0, DType::F32, dev));  // another head scale
      }
    out.backward(g);
    return std::vector<std::vector<double>>{values(out), values(q.grad()), values(k.grad()), values(v.grad()),
                                            values(hs.grad())};
  };
  const auto clean = run(false), scribbled = run(true);
  const char* names[] = {"out", "dq", "dk", "dv", "dhead_scale"};
  for (size_t i = 0; i < clean.size(); ++i) EXPECT_EQ(clean[i], scribbled[i]) << names[i];
}

// Shapes the kernels do not take run the library path under the fused switch.
TEST_F(FusedOpsCuda, FallbacksMatchTheLibraryPath) {
  const Device dev = Device::cuda(0);
  PrecisionGuard pg(Precision::BF16);
  const Tensor x = randn({1, 9, 9, 6}).to(DType::BF16).to(dev);
  for (auto [k, stride] : {std::pair<int64_t, int64_t>{5, 1}, {3, 3}, {2, 1}}) {
    const Tensor w = randn({4, k, k, 6}, DType::F32).to(dev);
    MaskedConvOptions o;
    o.stride = stride;
    o.padding = k / 2;
    Tensor a, b;
    {
      FusedKernelsGuard fg(true);
      a = masked_conv2d(x, w, o);
    }
    {
      FusedKernelsGuard fg(false);
      b = masked_conv2d(x, w, o);
    }
    expect_close(a, b, 1e-2, 1e-2, "masked_conv2d k=" + std::to_string(k) + " stride " + std::to_string(stride));
  }
  const Tensor q = randn({2, 7, 2, 32}).to(DType::BF16).to(dev);
  AttentionOptions ao;
  ao.softmax_scale = 0.2;
  Tensor a, b;
  {
    FusedKernelsGuard fg(true);
    a = attention(q, q, q, ao);
  }
  {
    FusedKernelsGuard fg(false);
    b = attention(q, q, q, ao);
  }
  expect_close(a, b, 1e-2, 1e-2, "attention d=32");
}

// Small cases for compute-sanitizer racecheck (benchmarks/gpu_check.sh runs
// FusedOpsCuda.Racecheck* under it; the full tests are too slow there): the
// dual kernel with partial hard tiles and attention with padding and an odd
// length, forward and backward.
TEST_F(FusedOpsCuda, RacecheckDualConv) {
  check_dual({"racecheck 3x3 40->70 s2 9x7", 2, 9, 7, 40, 70, 3, 2}, 17, 33, 2);
}

TEST_F(FusedOpsCuda, RacecheckAttention) {
  const int64_t B = 2, L = 37, H = 2;
  for (int64_t d : {64, 128}) {
    std::vector<uint8_t> pad(static_cast<size_t>(B * L), 0);
    for (int64_t j = 30; j < L; ++j) pad[static_cast<size_t>(L + j)] = 1;
    const Tensor pad_t = u8_of(pad, {B, L});
    check_paths(
        "racecheck attention d=" + std::to_string(d),
        [&](const Inputs& v) {
          AttentionOptions o;
          o.softmax_scale = 1 / std::sqrt(static_cast<double>(d));
          o.key_padding = pad_t;
          o.head_scale = v[3];
          return attention(v[0], v[1], v[2], o);
        },
        {act_arg({B, L, H, d}), act_arg({B, L, H, d}), act_arg({B, L, H, d}), scale_arg(H)},
        {"q", "k", "v", "head_scale"}, "attention", attention_summands(3));
  }
}

}  // namespace
}  // namespace s2h::test
