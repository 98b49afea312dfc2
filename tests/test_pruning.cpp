// pruning/: FLOPs model, width masks, narrowing and extraction, the budget
// guarantee, and the gradients of S2HPruner's step.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "engine/autograd.h"
#include "engine/layers.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "models/narrow.h"
#include "models/registry.h"
#include "models/transformer.h"
#include "pruning/extract.h"
#include "pruning/flops.h"
#include "pruning/masks.h"
#include "pruning/s2h.h"
#include "tests/test_util.h"

namespace s2h {
namespace {

using models::ChannelGroup;

// ------------------------------------------------------------------ FLOPs of single layers (2 x MACs)
TEST(PruningFlops, LayerCountsArePlainGroupedDepthwiseAndAttention) {
  auto conv_flops = [](int64_t in, int64_t out, int64_t k, int64_t groups, int64_t stride, int64_t hw) {
    Conv2d::Options o;
    o.groups = groups;
    o.stride = stride;
    o.padding = k / 2;
    o.bias = false;
    Conv2d c(in, out, k, o);
    NoGradGuard ng;
    const Tensor x = Tensor::zeros({2, hw, hw, in});
    const Tensor y = c.forward(x);
    return std::make_pair(c.flops(x, y), y.size(1));
  };
  {  // plain 3x3: 2 * Cin * 9 * Cout * H * W * N
    auto [f, ho] = conv_flops(8, 16, 3, 1, 1, 6);
    EXPECT_EQ(ho, 6);
    EXPECT_EQ(f, 2LL * 8 * 9 * 16 * 36 * 2);
  }
  {  // grouped (4 groups): each output reads Cin/4 inputs; stride 2 halves H and W
    auto [f, ho] = conv_flops(8, 16, 3, 4, 2, 6);
    EXPECT_EQ(ho, 3);
    EXPECT_EQ(f, 2LL * 2 * 9 * 16 * 9 * 2);
  }
  {  // depthwise: one input per output
    auto [f, ho] = conv_flops(8, 8, 3, 8, 1, 6);
    EXPECT_EQ(f, 2LL * 1 * 9 * 8 * 36 * 2);
  }
  {  // linear over tokens: 2 * in * out * tokens
    Linear l(12, 5);
    NoGradGuard ng;
    const Tensor x = Tensor::zeros({2, 3, 12});
    EXPECT_EQ(l.flops(x, l.forward(x)), 2LL * 12 * 5 * 6);
  }
  {  // attention products: q k^T and attn v, 2 * 2 * B * L * L * heads * head_dim
    models::MultiheadSelfAttention a(16, 4);
    NoGradGuard ng;
    const Tensor x = Tensor::zeros({2, 5, 16});
    EXPECT_EQ(a.flops(x, a.forward(x)), 4LL * 2 * 25 * 16);
    a.num_heads = 2;  // pruned heads: the products shrink with them
    EXPECT_EQ(a.flops(x, x), 4LL * 2 * 25 * 8);
  }
}

// ------------------------------------------------------------------ helpers
models::ModelConfig small_config(const std::string& name) {
  models::ModelConfig c;
  c.num_classes = 5;
  if (name == "text-transformer") {
    c.vocab_size = 40;
    c.max_len = 7;
    c.in_channels = 0;
    c.image_size = 0;
  } else if (name == "cnn-small") {
    c.in_channels = 1;
    c.image_size = 8;
  } else if (name.rfind("vit", 0) == 0) {
    c.in_channels = 3;
    c.image_size = 16;  // patch 2
  } else if (name.rfind("mobilenet", 0) == 0 || name == "vgg16-bn") {
    c.in_channels = 3;
    c.image_size = 32;
  } else {
    c.in_channels = 3;
    c.image_size = 16;
  }
  return c;
}

Tensor random_input(const models::ModelConfig& c, int64_t batch) {
  if (c.vocab_size > 0) {
    std::vector<int64_t> ids(static_cast<size_t>(batch * c.max_len));
    std::mt19937 rng(7);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = 1 + static_cast<int64_t>(rng() % (c.vocab_size - 1));
    ids[static_cast<size_t>(c.max_len - 1)] = 0;  // one padded position
    return Tensor::from_vector(ids, {batch, c.max_len});
  }
  return Tensor::randn({batch, c.image_size, c.image_size, c.in_channels});
}

// BatchNorm statistics and affine parameters away from their defaults, so eval mode is not an identity.
void randomise_norms(Module& m) {
  NoGradGuard ng;
  for (auto& [name, mod] : m.named_modules())
    if (auto* bn = dynamic_cast<BatchNorm*>(mod)) {
      bn->running_mean.copy_(Tensor::uniform({bn->channels}, -0.2, 0.2));
      bn->running_var.copy_(Tensor::uniform({bn->channels}, 0.5, 1.5));
      bn->weight.detach().copy_(Tensor::uniform({bn->channels}, 0.5, 1.5));
      bn->bias.detach().copy_(Tensor::uniform({bn->channels}, -0.2, 0.2));
    }
}

Tensor forward_eval(Module& m, const Tensor& x) {
  NoGradGuard ng;
  m.eval();
  return m(x).contiguous();
}

int64_t traced_flops(Module& m, const Tensor& x) {
  NoGradGuard ng;
  m.eval();
  ModuleTracer tracer(m);
  m(x);
  return tracer.total_flops();
}

// ------------------------------------------------------------------ extraction and budget, every model
class PruneEveryModel : public ::testing::TestWithParam<std::string> {};

TEST_P(PruneEveryModel, ExtractedEqualsHardForwardAndMeetsTheBudget) {
  const std::string name = GetParam();
  manual_seed(11);
  const models::ModelConfig cfg = small_config(name);
  ModulePtr model = models::make_model(name, cfg);
  randomise_norms(*model);
  const std::vector<ChannelGroup> groups = models::channel_groups(*model);
  const pruning::FlopsModel flops(*model, groups, pruning::example_input(cfg));
  // The FLOPs model at full width is the traced count.
  EXPECT_NEAR(flops.full(), static_cast<double>(traced_flops(*model, pruning::example_input(cfg))), 0.5) << name;

  pruning::MaskOptions mo;
  mo.init = "uniform";
  mo.ch_divisor = 4;
  pruning::WidthMasks masks(*model, groups, mo);
  ASSERT_FALSE(masks.groups().empty()) << name;
  const Tensor x = random_input(cfg, 2);
  for (double target : {0.15, 0.35, 0.55}) {
    SCOPED_TRACE(fmt::format("{} at {:.0f}% FLOPs", name, 100 * target));
    const pruning::BudgetResult b =
        pruning::enforce_budget(flops, masks, masks.hard_widths(), target, 0.02, pruning::FlopsScope::Network);
    EXPECT_TRUE(b.within) << "ratio " << b.ratio_after << " residual " << b.residual;
    EXPECT_LE(std::fabs(b.ratio_after / target - 1), 0.02);
    const models::ChannelSelection sel = masks.selection(b.widths);

    Tensor hard;
    {
      models::NarrowView view(*model, groups, sel);
      hard = forward_eval(*model, x);
    }
    ModulePtr net = pruning::extract(name, cfg, *model, sel);
    const Tensor ext = forward_eval(*net, x);
    EXPECT_LT(test::scaled_error(ext, hard), 1e-5);
    // The view is gone: the model computes at full width again.
    EXPECT_EQ(forward_eval(*model, x).shape(), hard.shape());
    EXPECT_LT(net->num_parameters(), model->num_parameters());
    // Audited FLOPs: the extracted network's traced count equals the model's prediction.
    const int64_t ext_flops = traced_flops(*net, pruning::example_input(cfg));
    EXPECT_NEAR(static_cast<double>(ext_flops), flops.at_widths(b.widths), 0.5 + 1e-9 * static_cast<double>(ext_flops));
    EXPECT_NEAR(static_cast<double>(ext_flops) / flops.full(), b.ratio_after, 1e-9);

    // Round trip through the architecture description (what `s2h eval` does).
    models::Architecture arch;
    arch.model = name;
    arch.config = cfg;
    arch.widths = models::selection_widths(groups, sel);
    const models::Architecture back = models::Architecture::from_json(arch.to_json(groups), "test");
    ModulePtr rebuilt = models::build_narrow(back);
    rebuilt->load_state_dict(net->state_dict());
    EXPECT_LT(test::scaled_error(forward_eval(*rebuilt, x), ext), 1e-6);
  }
}

INSTANTIATE_TEST_SUITE_P(AllModels, PruneEveryModel, ::testing::ValuesIn(models::model_names()),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& c : s)
                             if (c == '-') c = '_';
                           return s;
                         });

// ------------------------------------------------------------------ masks
TEST(PruningMasks, KeepProbabilitiesWidthsAndMaxInit) {
  manual_seed(3);
  ModulePtr model = models::make_model("cnn-small", small_config("cnn-small"));
  const auto groups = models::channel_groups(*model);
  pruning::MaskOptions mo;
  mo.ch_divisor = 8;
  pruning::WidthMasks masks(*model, groups, mo);
  ASSERT_EQ(masks.groups().size(), 3u);
  const pruning::WidthGroup& g = masks.groups()[1];  // 64 channels, d = 8, K = 8
  EXPECT_EQ(g.divisor, 8);
  EXPECT_EQ(g.choices, 8);
  // Max init: p_K = r = (C - d) / C.
  const std::vector<float> p = masks.probs(1).to_vector<float>();
  EXPECT_NEAR(p.back(), 56.0 / 64.0, 1e-6);
  const std::vector<float> keep = masks.keep_probs(1).to_vector<float>();
  EXPECT_NEAR(keep[0], 1.0, 1e-6);
  for (size_t k = 1; k < keep.size(); ++k) {
    double tail = 0;
    for (size_t j = k; j < p.size(); ++j) tail += p[j];
    EXPECT_NEAR(keep[k], tail, 1e-6);
  }
  // The relaxed mask: keep[k] on the units of block k, blocks in L1 order.
  const std::vector<float> w = masks.channel_mask(1).to_vector<float>();
  for (int64_t pos = 0; pos < 64; ++pos)
    EXPECT_FLOAT_EQ(w[static_cast<size_t>(g.order[static_cast<size_t>(pos)])], keep[static_cast<size_t>(pos / 8)]);
  // The order is by decreasing L1 norm of the producer's rows.
  for (size_t i = 1; i < g.order.size(); ++i)
    EXPECT_GE(g.importance[static_cast<size_t>(g.order[i - 1])], g.importance[static_cast<size_t>(g.order[i])]);
  // Expected width and the rounded-up hard width.
  double e = 0;
  for (size_t k = 0; k < p.size(); ++k) e += p[k] * 8.0 * static_cast<double>(k + 1);
  EXPECT_NEAR(masks.expected_width(1).item(), e, 1e-4);
  const int64_t n = masks.hard_width(1);
  EXPECT_EQ(n % 8, 0);
  EXPECT_GE(static_cast<double>(n), e - 1e-4);
  EXPECT_LT(static_cast<double>(n), e + 8);
  EXPECT_NEAR(masks.hard_width_st(1).item(), static_cast<double>(n), 1e-4);
  EXPECT_EQ(pruning::width_divisor(48, 8), 8);
  EXPECT_EQ(pruning::width_divisor(30, 8), 6);
  EXPECT_EQ(pruning::width_divisor(7, 4), 1);
}

// ------------------------------------------------------------------ gradients of the step
struct StepFixture {
  models::ModelConfig cfg = small_config("cnn-small");
  ModulePtr model;
  std::vector<ChannelGroup> groups;
  std::unique_ptr<pruning::FlopsModel> flops;
  std::unique_ptr<pruning::WidthMasks> masks;
  Tensor x, y;

  explicit StepFixture(uint64_t seed = 5) {
    manual_seed(seed);
    model = models::make_model("cnn-small", cfg);
    groups = models::channel_groups(*model);
    flops = std::make_unique<pruning::FlopsModel>(*model, groups, pruning::example_input(cfg));
    pruning::MaskOptions mo;
    mo.init = "uniform";
    mo.ch_divisor = 8;
    masks = std::make_unique<pruning::WidthMasks>(*model, groups, mo);
    // Logits away from uniform so every width block has its own keep probability.
    NoGradGuard ng;
    for (Tensor u : masks->parameters()) u.detach().copy_(Tensor::uniform(u.shape(), -1.0, 1.0));
    x = Tensor::randn({6, cfg.image_size, cfg.image_size, 1});
    y = Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 3, 4, 0}, {6});
  }
};

// d/du of CE(soft forward) + lambda_F (F(E(u))/F_full - t)^2 against central differences (f32 model).
TEST(PruningGradients, MaskLogitsMatchFiniteDifferences) {
  StepFixture f;
  f.model->eval();  // BN with running statistics: the loss is a smooth function of the masks
  pruning::S2HOptions so;
  so.target = 0.35;
  pruning::S2HPruner pruner(*f.model, *f.flops, *f.masks, so);
  auto loss = [&]() {
    pruner.set_soft_masks(true);
    const Tensor s = (*f.model)(f.x);
    pruner.set_soft_masks(false);
    std::vector<Tensor> ratio(f.groups.size());
    for (size_t i = 0; i < f.masks->groups().size(); ++i)
      ratio[static_cast<size_t>(f.masks->groups()[i].group)] =
          mul_scalar(f.masks->expected_width(i), 1.0 / static_cast<double>(f.masks->groups()[i].channels));
    const Tensor r = mul_scalar(f.flops->at(ratio), 1.0 / f.flops->full());
    return add(cross_entropy(s, f.y), mul_scalar(square(add_scalar(r, -so.target)), so.lambda_flops));
  };
  const std::vector<Tensor> us = f.masks->parameters();
  const Tensor l = loss();
  l.backward({}, us);
  double worst = 0;
  int checked = 0;
  for (const Tensor& u : us) {
    const std::vector<float> analytic = u.grad().to_vector<float>();
    for (int64_t k = 0; k < u.numel(); ++k) {
      const double eps = 1e-2;
      float* p = u.detach().data<float>() + k;
      const float orig = *p;
      double lp, lm;
      {
        NoGradGuard ng;
        *p = orig + static_cast<float>(eps);
        lp = loss().item();
        *p = orig - static_cast<float>(eps);
        lm = loss().item();
        *p = orig;
      }
      const double numeric = (lp - lm) / (2 * eps);
      const double a = analytic[static_cast<size_t>(k)];
      const double err = std::fabs(a - numeric) / std::max(1e-3, std::fabs(numeric));
      worst = std::max(worst, err);
      EXPECT_NEAR(a, numeric, 2e-4 + 2e-2 * std::fabs(numeric)) << "logit " << k;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 4 + 8 + 8);
  RecordProperty("worst_relative_error", std::to_string(worst));
}

// G1 moves only the weights (through the hard net), G2 only the masks (through the soft net).
TEST(PruningGradients, DecoupledDistillationSeparatesWeightsAndMasks) {
  auto run = [](double lambda_kd, std::vector<Tensor>& wgrads) {
    StepFixture f;
    f.model->train();
    pruning::S2HOptions so;
    so.lambda_kd = lambda_kd;
    pruning::S2HPruner pruner(*f.model, *f.flops, *f.masks, so);
    pruning::StepStats st;
    const pruning::MaskGrads g = pruner.gradients(f.x, f.y, st);
    for (const Tensor& p : f.model->parameters()) wgrads.push_back(p.grad().defined() ? p.grad().clone() : Tensor());
    return g;
  };
  std::vector<Tensor> w0, w1;
  const pruning::MaskGrads g0 = run(0.0, w0);
  const pruning::MaskGrads g1 = run(1.0, w1);
  ASSERT_EQ(g0.task.size(), g1.task.size());
  for (size_t i = 0; i < g0.task.size(); ++i) {
    // The distillation terms add nothing to the masks' task and resource gradients...
    EXPECT_LT(test::scaled_error(g1.task[i], g0.task[i]), 1e-6);
    EXPECT_LT(test::scaled_error(g1.flops[i], g0.flops[i]), 1e-6);
    // ...and their own mask gradient is G2's: zero without distillation, non-zero with.
    EXPECT_EQ(test::values(g0.kd[i]), std::vector<double>(static_cast<size_t>(g0.kd[i].numel()), 0.0));
  }
  double kd_norm = 0;
  for (const Tensor& g : g1.kd)
    for (double v : test::values(g)) kd_norm += v * v;
  EXPECT_GT(kd_norm, 0.0);

  // The weights' extra gradient is exactly G1's (through the hard net); G2 (through the soft net) is absent.
  StepFixture f;
  f.model->train();
  pruning::S2HPruner pruner(*f.model, *f.flops, *f.masks, {});
  pruner.set_soft_masks(true);
  const Tensor s = (*f.model)(f.x);
  pruner.set_soft_masks(false);
  Tensor h;
  {
    models::NarrowView view(*f.model, f.groups, f.masks->selection());
    h = (*f.model)(f.x);
  }
  const std::vector<Tensor> params = f.model->parameters();
  const Tensor G1 = kl_div(log_softmax(h, 1), softmax(s.detach(), 1));
  G1.backward({}, params);
  std::vector<Tensor> g1w;
  for (const Tensor& p : params) {
    g1w.push_back(p.grad().defined() ? p.grad().clone() : Tensor::zeros(p.shape()));
    p.zero_grad();
  }
  const Tensor G2 = kl_div(log_softmax(h.detach(), 1), softmax(s, 1));
  G2.backward({}, params);
  double g2_norm = 0;
  int compared = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor diff = sub(w1[i].defined() ? w1[i] : Tensor::zeros(params[i].shape()),
                            w0[i].defined() ? w0[i] : Tensor::zeros(params[i].shape()));
    EXPECT_LT(test::scaled_error(diff, g1w[i], 1e-8), 1e-4) << "parameter " << i;
    if (params[i].grad().defined())
      for (double v : test::values(params[i].grad())) g2_norm += v * v;
    ++compared;
  }
  EXPECT_EQ(compared, static_cast<int>(params.size()));
  EXPECT_GT(g2_norm, 0.0);  // G2 does reach the weights through the soft net; the step must not use it
}

// A few steps of every variant keep the loss finite and move the FLOPs toward the target.
TEST(PruningStep, EveryVariantStepsAndShrinksTheExpectedFlops) {
  for (const char* v : {"decoupled", "coupled", "no-kd", "hard-st", "self-only"}) {
    SCOPED_TRACE(v);
    StepFixture f;
    f.model->train();
    pruning::S2HOptions so;
    so.variant = pruning::parse_variant(v);
    so.mask_lr = 0.5;
    so.target = 0.15;  // the fixture starts near 36%
    pruning::S2HPruner pruner(*f.model, *f.flops, *f.masks, so);
    SGDOptions o;
    o.lr = 0.01;
    SGD sgd(f.model->parameters(), o);
    const double before = pruner.expected_ratio();
    for (int i = 0; i < 5; ++i) {
      const pruning::StepStats st = pruner.step(f.x, f.y, sgd, 1.0);
      EXPECT_TRUE(std::isfinite(st.loss));
      EXPECT_GE(st.kl, 0.0);
    }
    EXPECT_LT(pruner.expected_ratio(), before);
  }
  EXPECT_THROW(pruning::parse_variant("both"), Error);
}

TEST(PruningBudget, ReportsAnUnreachableTargetAndBnRecalibrationAverages) {
  StepFixture f;
  // Every group at its narrowest cannot go under this floor: the result says it missed.
  const pruning::BudgetResult b =
      pruning::enforce_budget(*f.flops, *f.masks, f.masks->hard_widths(), 0.001, 0.02, pruning::FlopsScope::Network);
  EXPECT_FALSE(b.within);
  EXPECT_GT(b.residual, 0.02);
  for (const auto& g : f.masks->groups()) EXPECT_EQ(b.widths.at(g.name), g.divisor);

  // Recalibration: the running mean becomes the plain average of the batch means.
  BatchNorm bn(3);
  Tensor a = Tensor::randn({4, 3}), c = Tensor::randn({4, 3});
  {
    pruning::BnRecalibration recal(bn);
    recal.step(a);
    recal.step(c);
  }
  const Tensor expected = mul_scalar(add(mean(a, {0}), mean(c, {0})), 0.5);
  EXPECT_LT(test::scaled_error(bn.running_mean, expected), 1e-6);
  EXPECT_DOUBLE_EQ(bn.momentum, 0.1);
}

}  // namespace
}  // namespace s2h
