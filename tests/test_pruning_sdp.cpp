// Self-distilled pruning and magnitude pruning (pruning/sdp.h), and the
// engine's InputCapture that SDP reads the classifier's input with.
#include <cmath>
#include <limits>
#include <map>
#include <memory>

#include "models/cnn_small.h"
#include "models/registry.h"
#include "pruning/sdp.h"
#include "tests/test_util.h"

namespace s2h {
namespace {

using pruning::SdpOptions;
using pruning::SdpPruner;

// input layer "0", prunable "2" and "4", classifier "6".
std::shared_ptr<Sequential> tiny_mlp() {
  auto m = std::make_shared<Sequential>();
  m->add(std::make_shared<Linear>(6, 8));
  m->add(std::make_shared<Activation>(ActKind::ReLU));
  m->add(std::make_shared<Linear>(8, 8));
  m->add(std::make_shared<Activation>(ActKind::ReLU));
  m->add(std::make_shared<Linear>(8, 8));
  m->add(std::make_shared<Activation>(ActKind::ReLU));
  m->add(std::make_shared<Linear>(8, 3));
  return m;
}

models::ModelConfig tiny_cnn_config() {
  models::ModelConfig c;
  c.num_classes = 3;
  c.in_channels = 1;
  c.image_size = 8;
  return c;
}

Tensor param(const Module& m, const std::string& name) {
  for (auto& [n, t] : m.named_parameters())
    if (n == name) return t;
  ADD_FAILURE() << "no parameter " << name;
  return {};
}

Tensor labels_of(const std::vector<int64_t>& v) { return Tensor::from_vector(v, {static_cast<int64_t>(v.size())}); }

// ------------------------------------------------------------------ schedule
TEST(SdpSchedule, Values) {
  EXPECT_DOUBLE_EQ(pruning::scheduled_sparsity("cubic", 0.8, 0.0), 0.0);
  EXPECT_DOUBLE_EQ(pruning::scheduled_sparsity("cubic", 0.8, 1.0), 0.8);
  EXPECT_NEAR(pruning::scheduled_sparsity("cubic", 0.8, 0.5), 0.8 * 0.875, 1e-12);
  EXPECT_NEAR(pruning::scheduled_sparsity("cubic", 0.8, 0.25), 0.8 * (1 - 0.75 * 0.75 * 0.75), 1e-12);
  EXPECT_DOUBLE_EQ(pruning::scheduled_sparsity("cubic", 0.8, 2.0), 0.8);  // clamped
  EXPECT_NEAR(pruning::scheduled_sparsity("linear", 0.8, 0.25), 0.2, 1e-12);
  EXPECT_DOUBLE_EQ(pruning::scheduled_sparsity("oneshot", 0.8, 0.0), 0.8);
  EXPECT_ERROR("schedule|bogus", pruning::scheduled_sparsity("bogus", 0.5, 0.5));
}

TEST(SdpSchedule, Events) {
  SdpOptions o;
  o.sparsity = 0.8;
  o.prune_steps = 4;
  o.prune_until = 0.5;
  const auto ev = pruning::prune_events(o, 100);
  ASSERT_EQ(ev.size(), 4u);
  const int64_t steps[] = {13, 25, 38, 50};  // round(k/4 * 50)
  for (int k = 0; k < 4; ++k) {
    EXPECT_EQ(ev[static_cast<size_t>(k)].step, steps[k]) << k;
    EXPECT_NEAR(ev[static_cast<size_t>(k)].sparsity, 0.8 * (1 - std::pow(1 - (k + 1) / 4.0, 3)), 1e-12) << k;
  }
  EXPECT_DOUBLE_EQ(ev.back().sparsity, 0.8);
  for (size_t k = 1; k < ev.size(); ++k) EXPECT_GT(ev[k].sparsity, ev[k - 1].sparsity);

  o.schedule = "oneshot";
  const auto one = pruning::prune_events(o, 100);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].step, 50);
  EXPECT_DOUBLE_EQ(one[0].sparsity, 0.8);

  o.schedule = "linear";
  o.prune_until = 1.0;
  const auto lin = pruning::prune_events(o, 10);
  EXPECT_EQ(lin.back().step, 9);  // never after the last step
  EXPECT_NEAR(lin[1].sparsity, 0.4, 1e-12);

  o.scope = "nope";
  EXPECT_ERROR("--sdp-scope|nope", pruning::validate(o));
}

// ------------------------------------------------------------------ masks
TEST(SdpMasks, FindsInputLayerAndClassifier) {
  manual_seed(1);
  auto cnn = models::make_model("cnn-small", tiny_cnn_config());
  SdpOptions o;
  o.cc = false;
  SdpPruner p(*cnn, o, Tensor::randn({2, 8, 8, 1}));
  EXPECT_EQ(p.input_layer(), "0");
  EXPECT_EQ(p.classifier(), "15");
  EXPECT_EQ(p.prunable_names(), (std::vector<std::string>{"5.weight", "10.weight"}));
}

void check_keeps_largest(const std::vector<float>& w, const std::vector<float>& m, int64_t expect_pruned,
                         const std::string& what) {
  int64_t pruned = 0;
  float max_pruned = 0, min_kept = std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < w.size(); ++i) {
    ASSERT_TRUE(m[i] == 0.0f || m[i] == 1.0f) << what;
    if (m[i] == 0.0f) {
      ++pruned;
      max_pruned = std::max(max_pruned, std::fabs(w[i]));
    } else {
      min_kept = std::min(min_kept, std::fabs(w[i]));
    }
  }
  EXPECT_EQ(pruned, expect_pruned) << what;
  EXPECT_LE(max_pruned, min_kept) << what;
}

TEST(SdpMasks, GlobalMagnitudeExact) {
  manual_seed(test::run_seed());
  auto mlp = tiny_mlp();
  const std::vector<float> w2 = param(*mlp, "2.weight").to_vector<float>(), w4 = param(*mlp, "4.weight").to_vector<float>();
  SdpOptions o;
  o.cc = false;
  o.scope = "global";
  SdpPruner p(*mlp, o, Tensor::randn({2, 6}));
  EXPECT_EQ(p.input_layer(), "0");
  EXPECT_EQ(p.classifier(), "6");
  p.prune_to(0.3);
  std::map<std::string, Tensor> masks;
  for (auto& [n, m] : p.masks()) masks[n] = m;
  ASSERT_EQ(masks.size(), 2u);
  std::vector<float> w = w2, m = masks["2.weight"].to_vector<float>();
  w.insert(w.end(), w4.begin(), w4.end());
  const std::vector<float> m4 = masks["4.weight"].to_vector<float>();
  m.insert(m.end(), m4.begin(), m4.end());
  check_keeps_largest(w, m, 38, "global 0.3 of 128");  // round(38.4)
  EXPECT_EQ(p.sparsity().prunable_pruned, 38);
  EXPECT_EQ(p.sparsity().prunable_total, 128);
  EXPECT_NEAR(p.sparsity().prunable, 38.0 / 128.0, 1e-12);
  EXPECT_EQ(p.sparsity().network_pruned, 38);
  EXPECT_EQ(p.sparsity().network_total, mlp->num_parameters());
  // Frozen (default): the pruned weights are zero in place; input layer and classifier untouched.
  const std::vector<float> now2 = param(*mlp, "2.weight").to_vector<float>();
  for (size_t i = 0; i < now2.size(); ++i) EXPECT_EQ(now2[i], m[i] == 0.0f ? 0.0f : w2[i]);
  for (float x : param(*mlp, "0.weight").to_vector<float>()) EXPECT_NE(x, 0.0f);
  for (float x : param(*mlp, "6.weight").to_vector<float>()) EXPECT_NE(x, 0.0f);
  // A higher sparsity keeps the zeros pruned.
  p.prune_to(0.6);
  EXPECT_EQ(p.sparsity().prunable_pruned, 77);  // round(76.8)
  for (auto& [n, mk] : p.masks()) {
    const std::vector<float> mv = mk.to_vector<float>();
    const std::vector<float>& old = n == "2.weight" ? masks["2.weight"].to_vector<float>() : m4;
    for (size_t i = 0; i < mv.size(); ++i)
      if (old[i] == 0.0f) {
        EXPECT_EQ(mv[i], 0.0f) << n << " " << i;
      }
  }
}

// |w| >= 1 everywhere, above the default initialisation's 1/sqrt(fan_in).
void make_large(Module& m, const std::string& name) {
  NoGradGuard g;
  Tensor w = param(m, name);
  std::vector<float> v = w.to_vector<float>();
  for (float& x : v) x = x < 0 ? x - 1.0f : x + 1.0f;
  w.detach().copy_(Tensor::from_vector(v, w.shape()));
}

TEST(SdpMasks, PerLayerMagnitudeExact) {
  manual_seed(test::run_seed());
  auto mlp = tiny_mlp();
  make_large(*mlp, "4.weight");  // a global threshold would spare it, per layer does not
  const std::vector<float> w2 = param(*mlp, "2.weight").to_vector<float>(), w4 = param(*mlp, "4.weight").to_vector<float>();
  SdpOptions o;
  o.cc = false;
  o.scope = "layer";
  SdpPruner p(*mlp, o, Tensor::randn({2, 6}));
  p.prune_to(0.3);
  for (auto& [n, mk] : p.masks()) check_keeps_largest(n == "2.weight" ? w2 : w4, mk.to_vector<float>(), 19, n);
  EXPECT_EQ(p.sparsity().prunable_pruned, 38);

  o.scope = "global";
  auto mlp2 = tiny_mlp();
  make_large(*mlp2, "4.weight");
  SdpPruner q(*mlp2, o, Tensor::randn({2, 6}));
  q.prune_to(0.3);
  for (auto& [n, mk] : q.masks())
    if (n == "4.weight") {
      EXPECT_EQ(test::values(mk), std::vector<double>(64, 1.0)) << "global spares the large layer";
    }
}

// ------------------------------------------------------------------ cross-correlation loss
TEST(SdpCrossCorrelation, IdenticalFeaturesGiveIdentity) {
  const Tensor z = test::randn({16, 5});
  const Tensor zt = add_scalar(mul_scalar(z, 3.0), 7.0);  // standardisation removes scale and shift
  // lambda 0: only the diagonal, which is var/(var+eps) ~ 1.
  EXPECT_LT(pruning::cross_correlation_loss(z, zt, 0.0).item(), 1e-8);
  // The whole loss against a direct computation.
  auto standardised = [](const std::vector<double>& v) {
    std::vector<double> s(v.size());
    for (int j = 0; j < 5; ++j) {
      double m = 0, var = 0;
      for (int b = 0; b < 16; ++b) m += v[static_cast<size_t>(b * 5 + j)] / 16;
      for (int b = 0; b < 16; ++b) var += std::pow(v[static_cast<size_t>(b * 5 + j)] - m, 2) / 16;
      for (int b = 0; b < 16; ++b)
        s[static_cast<size_t>(b * 5 + j)] = (v[static_cast<size_t>(b * 5 + j)] - m) / std::sqrt(var + 1e-5);
    }
    return s;
  };
  const std::vector<double> sa = standardised(test::values(z)), sb = standardised(test::values(zt));
  double on = 0, off = 0;
  for (int i = 0; i < 5; ++i)
    for (int j = 0; j < 5; ++j) {
      double c = 0;
      for (int b = 0; b < 16; ++b) c += sa[static_cast<size_t>(b * 5 + i)] * sb[static_cast<size_t>(b * 5 + j)] / 16;
      if (i == j) on += (1 - c) * (1 - c);
      else off += c * c;
    }
  EXPECT_GT(off, 0.01);
  EXPECT_NEAR(pruning::cross_correlation_loss(z, zt, 0.25).item(), on + 0.25 * off, 1e-9);
  // Gradient at the optimum of the diagonal term is ~0.
  Tensor zs = z.clone().detach();
  zs.set_requires_grad(true);
  pruning::cross_correlation_loss(zs, zt, 0.0).backward();
  for (double g : test::values(zs.grad())) EXPECT_NEAR(g, 0.0, 1e-6);
}

TEST(SdpCrossCorrelation, Gradcheck) {
  const Tensor zs = test::leaf({6, 4});
  const Tensor zt = test::randn({6, 4});
  test::gradcheck("cross_correlation_loss",
                  [&](const std::vector<Tensor>& in) { return pruning::cross_correlation_loss(in[0], zt, 0.3); }, {zs});
  // No gradient reaches the teacher.
  const Tensor a = test::leaf({6, 4}), b = test::leaf({6, 4});
  pruning::cross_correlation_loss(a, b, 0.1).backward();
  EXPECT_TRUE(a.grad().defined());
  EXPECT_FALSE(b.grad().defined());
}

// ------------------------------------------------------------------ training steps
struct TinyBatch {
  Tensor x, y;
};
TinyBatch cnn_batch() {
  TinyBatch b;
  b.x = Tensor::randn({8, 8, 8, 1});
  b.y = labels_of({0, 1, 2, 0, 1, 2, 0, 1});
  return b;
}

void sdp_steps_keep_zeros(const std::string& teacher, const std::string& repr) {
  SCOPED_TRACE(teacher + " teacher, " + repr);
  manual_seed(test::run_seed());
  const models::ModelConfig cfg = tiny_cnn_config();
  auto cnn = models::make_model("cnn-small", cfg);
  cnn->train();
  SdpOptions o;
  o.teacher = teacher;
  o.repr = repr;
  o.alpha = 0.5;
  const TinyBatch b = cnn_batch();
  SdpPruner p(*cnn, o, b.x, [&] { return models::make_model("cnn-small", cfg); });
  SGDOptions so;
  so.lr = 0.05;
  so.momentum = 0.9;
  so.nesterov = true;
  so.weight_decay = 5e-4;
  SGD opt(cnn->parameters(), so);
  // A dense step (momentum builds up), then prune, then more steps.
  auto st0 = p.train_step(b.x, b.y, opt);
  EXPECT_EQ(st0.cc, 0.0);
  EXPECT_FALSE(p.has_teacher());
  p.prune_to(0.5);
  EXPECT_TRUE(p.has_teacher());
  for (int i = 0; i < 3; ++i) {
    auto st = p.train_step(b.x, b.y, opt);
    EXPECT_TRUE(std::isfinite(st.loss));
    EXPECT_GT(st.cc, 0.0);
    EXPECT_NEAR(st.loss, 0.5 * st.ce + 0.5 * st.cc, 1e-4 * std::max(1.0, st.loss));
  }
  for (auto& [name, mk] : p.masks()) {
    const Tensor w = param(*cnn, name);
    const std::vector<float> m = mk.to_vector<float>(), wv = w.to_vector<float>(), g = w.grad().to_vector<float>();
    int64_t zeros = 0;
    for (size_t i = 0; i < m.size(); ++i) {
      if (m[i] != 0.0f) continue;
      ++zeros;
      EXPECT_EQ(g[i], 0.0f) << name << "[" << i << "]: a pruned weight got a gradient";
      if (teacher == "frozen") {
        ASSERT_EQ(wv[i], 0.0f) << name << "[" << i << "]";
      }
    }
    EXPECT_GT(zeros, 0) << name;
  }
  // Evaluating the masked network equals the network with the masks applied in place.
  cnn->eval();
  Tensor masked;
  {
    NoGradGuard g;
    SdpPruner::MaskedScope scope(p);
    masked = (*cnn)(b.x);
  }
  p.apply_masks();
  Tensor stored;
  {
    NoGradGuard g;
    stored = (*cnn)(b.x);
  }
  test::expect_close(stored, masked, 1e-6, 1e-6, "masked scope vs masks in place");
  EXPECT_EQ(p.features(b.x).shape(), (Shape{8, 2 * 2 * 64}));
}

TEST(SdpTrain, PrunedWeightsStayZeroFrozenPooled) { sdp_steps_keep_zeros("frozen", "pooled"); }
TEST(SdpTrain, PrunedWeightsGetNoGradientLiveLogits) { sdp_steps_keep_zeros("live", "logits"); }

TEST(SdpTrain, LiveTeacherKeepsRunningStatistics) {
  manual_seed(test::run_seed());
  auto cnn = models::make_model("cnn-small", tiny_cnn_config());
  cnn->train();
  SdpOptions o;
  o.teacher = "live";
  const TinyBatch b = cnn_batch();
  SdpPruner p(*cnn, o, b.x);
  SGD opt(cnn->parameters(), SGDOptions{});
  p.prune_to(0.5);
  p.train_step(b.x, b.y, opt);  // one teacher pass (restored) and one student pass
  for (auto& [n, t] : cnn->named_buffers())
    if (n.find("num_batches_tracked") != std::string::npos) {
      EXPECT_EQ(t.item(), 1.0) << n;
    }
}

TEST(SdpTrain, MagnitudeIsCrossEntropyOnly) {
  manual_seed(test::run_seed());
  auto mlp = tiny_mlp();
  SdpOptions o;
  o.cc = false;
  SdpPruner p(*mlp, o, Tensor::randn({2, 6}));
  SGD opt(mlp->parameters(), SGDOptions{});
  p.prune_to(0.5);
  const Tensor x = Tensor::randn({4, 6}), y = labels_of({0, 1, 2, 0});
  const auto st = p.train_step(x, y, opt);
  EXPECT_FALSE(p.has_teacher());
  EXPECT_EQ(st.cc, 0.0);
  EXPECT_DOUBLE_EQ(st.loss, st.ce);
  EXPECT_EQ(st.logits.shape(), (Shape{4, 3}));
}

// ------------------------------------------------------------------ structured
TEST(SdpStructured, ZeroesWholeChannels) {
  manual_seed(test::run_seed());
  auto cnn = models::make_model("cnn-small", tiny_cnn_config());
  SdpOptions o;
  o.cc = false;
  o.structured = true;
  o.scope = "layer";
  const TinyBatch b = cnn_batch();
  SdpPruner p(*cnn, o, b.x);
  p.prune_to(0.5);
  EXPECT_EQ(p.sparsity().units_total, 32 + 64 + 64);
  EXPECT_EQ(p.sparsity().units_pruned, 16 + 32 + 32);
  for (const auto& [conv, bn, channels] : std::vector<std::tuple<std::string, std::string, int64_t>>{
           {"0", "1", 32}, {"5", "6", 64}, {"10", "11", 64}}) {
    const std::vector<float> w = param(*cnn, conv + ".weight").to_vector<float>();
    const std::vector<float> g = param(*cnn, bn + ".weight").to_vector<float>();
    const std::vector<float> beta = param(*cnn, bn + ".bias").to_vector<float>();
    const int64_t per = static_cast<int64_t>(w.size()) / channels;
    int64_t zero_rows = 0;
    for (int64_t c = 0; c < channels; ++c) {
      int64_t z = 0;
      for (int64_t i = 0; i < per; ++i) z += w[static_cast<size_t>(c * per + i)] == 0.0f;
      EXPECT_TRUE(z == 0 || z == per) << conv << " channel " << c << ": " << z << " of " << per << " zero";
      if (z == per) {
        ++zero_rows;
        EXPECT_EQ(g[static_cast<size_t>(c)], 0.0f);
        EXPECT_EQ(beta[static_cast<size_t>(c)], 0.0f);
      }
    }
    EXPECT_EQ(zero_rows, channels / 2) << conv;
  }
  // Half the rows of the prunable convs 5 and 10 are zero.
  EXPECT_NEAR(p.sparsity().prunable, 0.5, 1e-12);
  // The masked network (ChannelMask scales on) equals the stored one (no scales), in eval mode.
  cnn->eval();
  NoGradGuard g;
  Tensor masked;
  {
    SdpPruner::MaskedScope scope(p);
    masked = (*cnn)(b.x);
  }
  test::expect_close((*cnn)(b.x), masked, 1e-5, 1e-6, "channel masks vs zeros in place");
}

TEST(SdpStructured, GlobalKeepsAUnitPerGroup) {
  manual_seed(test::run_seed());
  auto cnn = models::make_model("cnn-small", tiny_cnn_config());
  SdpOptions o;
  o.cc = false;
  o.structured = true;
  o.scope = "global";
  SdpPruner p(*cnn, o, Tensor::randn({2, 8, 8, 1}));
  p.prune_to(0.99);
  EXPECT_EQ(p.sparsity().units_pruned, 160 - 3);  // round(158.4) = 158 wanted, but each group keeps one
  p.prune_to(0.25);
  EXPECT_EQ(p.sparsity().units_pruned, 40);
}

// Other architectures: where the input layer and the classifier are, and the
// structured masks (residual streams, heads, MLP units) give the same function
// as the zeros in place.
TEST(SdpStructured, ResNetViTText) {
  struct Case {
    std::string model, input_layer, classifier;
  };
  for (const Case& c : std::vector<Case>{{"resnet20", "conv1", "fc"},
                                         {"vit-tiny", "patch_embed.proj", "head"},
                                         {"text-transformer", "token_embed", "head"}}) {
    SCOPED_TRACE(c.model);
    manual_seed(test::run_seed());
    const bool text = c.model == "text-transformer";
    models::ModelConfig cfg;
    cfg.num_classes = 4;
    cfg.in_channels = text ? 0 : 3;
    cfg.image_size = text ? 0 : 8;
    cfg.vocab_size = text ? 50 : 0;
    cfg.max_len = text ? 8 : 0;
    auto net = models::make_model(c.model, cfg);
    Tensor x = Tensor::randn({4, 8, 8, 3});
    if (text) {
      std::vector<int64_t> ids(32);
      for (size_t i = 0; i < ids.size(); ++i) ids[i] = 1 + static_cast<int64_t>((i * 7) % 49);
      x = Tensor::from_vector(ids, {4, 8});
    }
    for (bool structured : {false, true}) {
      SdpOptions o;
      o.cc = false;
      o.structured = structured;
      o.scope = "layer";
      SdpPruner p(*net, o, x);
      EXPECT_EQ(p.input_layer(), c.input_layer);
      EXPECT_EQ(p.classifier(), c.classifier);
      p.prune_to(0.5);
      if (!structured) {
        EXPECT_NEAR(p.sparsity().prunable, 0.5, 1e-3);
      } else {
        EXPECT_GT(p.sparsity().units_pruned, 0);
        EXPECT_GT(p.sparsity().prunable, 0.1);
      }
      net->eval();
      NoGradGuard g;
      Tensor masked;
      {
        SdpPruner::MaskedScope scope(p);
        masked = (*net)(x);
      }
      test::expect_close((*net)(x), masked, 1e-4, 1e-5, c.model + (structured ? " structured" : " unstructured"));
      net->train();
    }
  }
}

// ------------------------------------------------------------------ fisher ratio
TEST(SdpFisher, HandExample) {
  // 1-D: class 0 {0, 2}, class 1 {4, 6}: between 2*2^2 + 2*2^2 = 16, within 4 -> 4.
  EXPECT_NEAR(pruning::fisher_ratio(Tensor::from_vector<float>({0, 2, 4, 6}, {4, 1}), labels_of({0, 0, 1, 1})), 4.0,
              1e-12);
  // 2-D, three classes of unequal size: mean (1, 0.8); class means (0,0) n=2, (3,0) n=1, (1,2) n=2.
  const Tensor x = Tensor::from_vector<double>({-1, 0, 1, 0, 3, 0, 1, 1, 1, 3}, {5, 2});
  const double between = 2 * (1 + 0.64) + 1 * (4 + 0.64) + 2 * (0 + 1.44);  // 10.8
  const double within = 1 + 1 + 0 + 1 + 1;                                  // 4
  EXPECT_NEAR(pruning::fisher_ratio(x, labels_of({0, 0, 1, 2, 2})), between / within, 1e-12);
  EXPECT_TRUE(std::isinf(pruning::fisher_ratio(Tensor::from_vector<float>({0, 0, 1}, {3, 1}), labels_of({0, 0, 1}))));
  EXPECT_ERROR("fisher_ratio|labels", pruning::fisher_ratio(x, labels_of({0, 1})));
}

// ------------------------------------------------------------------ InputCapture
TEST(InputCapture, RecordsLastInputWithHistoryBesideATracer) {
  manual_seed(test::run_seed());
  auto mlp = tiny_mlp();
  const Module& cls = *mlp->children()[6].second;
  const Module& hidden = *mlp->children()[2].second;
  const Tensor x = Tensor::randn({3, 6});
  auto outer = std::make_unique<InputCapture>(cls);
  auto inner = std::make_unique<InputCapture>(hidden);
  ModuleTracer tracer(*mlp);
  const Tensor y = (*mlp)(x);
  EXPECT_FALSE(tracer.records().empty());
  ASSERT_TRUE(outer->input().defined());
  EXPECT_EQ(outer->calls(), 1);
  EXPECT_EQ(outer->input().shape(), (Shape{3, 8}));
  EXPECT_TRUE(outer->input().requires_grad());  // history kept
  const Tensor direct = (*mlp->children()[6].second)(outer->input());
  test::expect_close(direct, y, 1e-6, 1e-6, "classifier of the captured input");
  EXPECT_EQ(inner->input().shape(), (Shape{3, 8}));
  // Ended out of order, the remaining capture still works.
  outer.reset();
  (*mlp)(x);
  EXPECT_EQ(inner->calls(), 2);  // the direct classifier call is not its target
}

}  // namespace
}  // namespace s2h
