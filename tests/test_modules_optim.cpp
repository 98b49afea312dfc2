// Module tree, layers with state (BatchNorm, Dropout), optimisers against
// PyTorch's update formulas written out by hand, and learning-rate schedules.
#include <algorithm>
#include <cmath>
#include <numbers>

#include "tests/test_util.h"

namespace s2h::test {
namespace {

// ------------------------------------------------------------------ helpers

std::vector<std::string> names_of(const NamedTensors& nt) {
  std::vector<std::string> out;
  for (const auto& [n, t] : nt) out.push_back(n);
  return out;
}

const Tensor& find(const NamedTensors& nt, const std::string& name) {
  for (const auto& [n, t] : nt)
    if (n == name) return t;
  static const Tensor none;
  ADD_FAILURE() << "no tensor named " << name;
  return none;
}

bool contains(const NamedTensors& nt, const std::string& name) {
  for (const auto& [n, t] : nt)
    if (n == name) return true;
  return false;
}

// A deep copy of named tensors (what a checkpoint on disk would hold).
NamedTensors deep_copy(const NamedTensors& nt) {
  NamedTensors out;
  for (const auto& [n, t] : nt) out.emplace_back(n, t.detach().clone());
  return out;
}

// conv(3->4, 3x3, p1) -> BN -> ReLU, flatten, linear(4*4*4 -> 5), on 4x4 NHWC images.
std::shared_ptr<Sequential> small_net() {
  Conv2d::Options o;
  o.padding = 1;
  auto features = std::make_shared<Sequential>();
  features->add(std::make_shared<Conv2d>(3, 4, 3, o));
  features->add(std::make_shared<BatchNorm>(4));
  features->add(std::make_shared<Activation>(ActKind::ReLU));
  auto net = std::make_shared<Sequential>();
  net->add(features);
  net->add(std::make_shared<Flatten>());
  net->add(std::make_shared<Linear>(4 * 4 * 4, 5));
  return net;
}

Tensor images(int64_t n) { return randn({n, 4, 4, 3}, DType::F32); }

// ================================================================== module tree
TEST(ModuleTree, DottedNamesOfParametersBuffersAndModules) {
  auto net = small_net();
  EXPECT_EQ(names_of(net->named_parameters()),
            (std::vector<std::string>{"0.0.weight", "0.0.bias", "0.1.weight", "0.1.bias", "2.weight", "2.bias"}));
  EXPECT_EQ(names_of(net->named_buffers()),
            (std::vector<std::string>{"0.1.running_mean", "0.1.running_var", "0.1.num_batches_tracked"}));
  std::vector<std::string> mods;
  for (const auto& [n, m] : net->named_modules()) mods.push_back(n);
  EXPECT_EQ(mods, (std::vector<std::string>{"", "0", "0.0", "0.1", "0.2", "1", "2"}));
  EXPECT_EQ(net->named_modules()[0].second, net.get());

  // The named tensors are the layers' own tensors, not copies.
  auto* conv = dynamic_cast<Conv2d*>(net->named_modules()[2].second);
  auto* bn = dynamic_cast<BatchNorm*>(net->named_modules()[3].second);
  auto* fc = dynamic_cast<Linear*>(net->named_modules()[6].second);
  ASSERT_TRUE(conv && bn && fc);
  EXPECT_EQ(find(net->named_parameters(), "0.0.weight").impl_ptr(), conv->weight.impl_ptr());
  EXPECT_EQ(find(net->named_buffers(), "0.1.running_var").impl_ptr(), bn->running_var.impl_ptr());
  EXPECT_EQ(find(net->named_parameters(), "2.bias").impl_ptr(), fc->bias.impl_ptr());
  EXPECT_EQ(conv->weight.shape(), (Shape{4, 3, 3, 3}));
  EXPECT_EQ(fc->weight.shape(), (Shape{5, 64}));
  EXPECT_EQ(bn->num_batches_tracked.dtype(), DType::I64);
  EXPECT_EQ(bn->num_batches_tracked.dim(), 0);

  for (const Tensor& p : net->parameters()) {
    EXPECT_TRUE(p.requires_grad());
    EXPECT_TRUE(p.is_leaf());
    EXPECT_EQ(p.dtype(), DType::F32);
  }
  for (const auto& [n, b] : net->named_buffers()) EXPECT_FALSE(b.requires_grad()) << n;
  EXPECT_EQ(net->num_parameters(), 4 * 3 * 3 * 3 + 4 + 4 + 4 + 5 * 64 + 5);
  // state_dict: parameters, then buffers.
  std::vector<std::string> sd = names_of(net->named_parameters());
  for (const auto& n : names_of(net->named_buffers())) sd.push_back(n);
  EXPECT_EQ(names_of(net->state_dict()), sd);
  // A conv without bias has no bias parameter.
  Conv2d::Options nb;
  nb.bias = false;
  EXPECT_EQ(names_of(Conv2d(2, 2, 1, nb).named_parameters()), std::vector<std::string>{"weight"});
  // The summary has one line per module.
  const std::string summary = net->summary();
  EXPECT_EQ(std::count(summary.begin(), summary.end(), '\n'), 7) << summary;
  EXPECT_NE(summary.find("Conv2d(3, 4"), std::string::npos) << summary;
  EXPECT_NE(summary.find("BatchNorm(4)"), std::string::npos) << summary;
}

TEST(ModuleTree, TrainEvalPropagates) {
  auto net = small_net();
  for (const auto& [n, m] : net->named_modules()) EXPECT_TRUE(m->is_training()) << "'" << n << "' starts in training";
  net->eval();
  for (const auto& [n, m] : net->named_modules()) EXPECT_FALSE(m->is_training()) << "'" << n << "' after eval()";
  net->train();
  for (const auto& [n, m] : net->named_modules()) EXPECT_TRUE(m->is_training()) << "'" << n << "' after train()";
  net->train(false);
  for (const auto& [n, m] : net->named_modules()) EXPECT_FALSE(m->is_training()) << "'" << n << "' after train(false)";
  // A child switched alone does not switch its parent.
  net->children()[0].second->train(true);
  EXPECT_FALSE(net->is_training());
  EXPECT_TRUE(net->named_modules()[2].second->is_training());
}

TEST(ModuleTree, ZeroGradDropsEveryParameterGradient) {
  auto net = small_net();
  sum(net->forward(images(2))).backward();
  for (const auto& [n, p] : net->named_parameters()) EXPECT_TRUE(p.grad().defined()) << n;
  net->zero_grad();
  for (const auto& [n, p] : net->named_parameters()) EXPECT_FALSE(p.grad().defined()) << n;
}

TEST(ModuleTree, StateDictRoundTripReproducesOutputs) {
  auto a = small_net();
  // Train-mode forwards change the running statistics.
  for (int i = 0; i < 3; ++i) a->forward(images(4));
  auto b = small_net();
  const Tensor x = images(3);
  a->eval();
  b->eval();
  const Tensor ya = a->forward(x);
  EXPECT_GT(scaled_error(b->forward(x), ya), 1e-3) << "two fresh models should differ (else the test proves nothing)";

  b->load_state_dict(deep_copy(a->state_dict()));
  EXPECT_EQ(values(b->forward(x)), values(ya)) << "eval outputs must be identical";
  a->train();
  b->train();
  EXPECT_EQ(values(b->forward(x)), values(a->forward(x))) << "train outputs must be identical";
  const NamedTensors sa = a->state_dict(), sb = b->state_dict();
  for (size_t i = 0; i < sa.size(); ++i) EXPECT_EQ(values(sa[i].second), values(sb[i].second)) << sa[i].first;
  EXPECT_EQ(find(sb, "0.1.num_batches_tracked").item(), 4.0);

  // Loading copies values: later changes to the source do not reach the model.
  auto c = small_net();
  NamedTensors src = deep_copy(a->state_dict());
  c->load_state_dict(src);
  Tensor src_weight = find(src, "2.weight");
  src_weight.fill_(0.0);
  EXPECT_EQ(values(find(c->state_dict(), "2.weight")), values(find(a->state_dict(), "2.weight")));
  // Loading keeps the model's own tensors (optimisers hold them).
  auto* fc = dynamic_cast<Linear*>(c->named_modules()[6].second);
  EXPECT_EQ(find(c->named_parameters(), "2.weight").impl_ptr(), fc->weight.impl_ptr());
  EXPECT_TRUE(fc->weight.requires_grad());
}

TEST(ModuleTree, LoadStateDictErrorsNameTheTensor) {
  auto net = small_net();
  const NamedTensors good = deep_copy(net->state_dict());

  NamedTensors missing;
  for (const auto& nt : good)
    if (nt.first != "0.1.running_var") missing.push_back(nt);
  EXPECT_ERROR("load_state_dict|missing|0.1.running_var", net->load_state_dict(missing));

  NamedTensors unexpected = good;
  unexpected.emplace_back("head.extra", Tensor::zeros({2}));
  EXPECT_ERROR("load_state_dict|unexpected|head.extra", net->load_state_dict(unexpected));

  NamedTensors wrong = good;
  for (auto& [n, t] : wrong)
    if (n == "2.weight") t = Tensor::zeros({5, 63});
  EXPECT_ERROR("load_state_dict|2.weight|[5, 63]|[5, 64]", net->load_state_dict(wrong));

  // Not strict: missing and unexpected names are ignored, the rest is loaded.
  auto other = small_net();
  NamedTensors partial = deep_copy(other->state_dict());
  partial.erase(partial.begin());  // drop 0.0.weight
  partial.emplace_back("unknown", Tensor::zeros({1}));
  const std::vector<double> w_before = values(find(net->state_dict(), "0.0.weight"));
  EXPECT_NO_THROW(net->load_state_dict(partial, false));
  EXPECT_EQ(values(find(net->state_dict(), "0.0.weight")), w_before);
  EXPECT_EQ(values(find(net->state_dict(), "2.weight")), values(find(other->state_dict(), "2.weight")));
  // A wrong shape is an error even when not strict.
  EXPECT_ERROR("load_state_dict|2.weight", net->load_state_dict(wrong, false));
}

// ================================================================== layers with state
TEST(Layers, BatchNormCountsBatchesAndUpdatesRunningStats) {
  BatchNorm bn(3, 1e-5, 0.1);
  const Tensor x = randn({4, 2, 2, 3}, DType::F32, 2.0);
  bn.forward(x);
  EXPECT_EQ(bn.num_batches_tracked.item(), 1.0);
  // running = (1 - momentum) * running + momentum * batch (unbiased variance).
  const std::vector<double> xv = values(x), rm = values(bn.running_mean), rv = values(bn.running_var);
  const int64_t count = 16;
  for (int64_t c = 0; c < 3; ++c) {
    double m = 0, v = 0;
    for (int64_t i = 0; i < count; ++i) m += xv[i * 3 + c];
    m /= count;
    for (int64_t i = 0; i < count; ++i) v += (xv[i * 3 + c] - m) * (xv[i * 3 + c] - m);
    v /= count - 1;
    EXPECT_NEAR(rm[c], 0.1 * m, 1e-5) << c;
    EXPECT_NEAR(rv[c], 0.9 + 0.1 * v, 1e-5) << c;
  }
  bn.forward(x);
  bn.forward(x);
  EXPECT_EQ(bn.num_batches_tracked.item(), 3.0);
  bn.eval();
  const std::vector<double> rm_before = values(bn.running_mean);
  bn.forward(x);
  EXPECT_EQ(bn.num_batches_tracked.item(), 3.0) << "evaluation does not count";
  EXPECT_EQ(values(bn.running_mean), rm_before) << "evaluation does not update the statistics";
  // Evaluation normalises with the running statistics.
  const Tensor y = bn.forward(x);
  const std::vector<double> yv = values(y), rm3 = values(bn.running_mean), rv3 = values(bn.running_var);
  for (int64_t i = 0; i < count; ++i)
    for (int64_t c = 0; c < 3; ++c)
      EXPECT_NEAR(yv[i * 3 + c], (xv[i * 3 + c] - rm3[c]) / std::sqrt(rv3[c] + 1e-5), 1e-5);
}

TEST(Layers, DropoutIsIdentityInEval) {
  Dropout d(0.5);
  d.eval();
  const Tensor x = randn({8, 16}, DType::F32);
  const Tensor y = d.forward(x);
  EXPECT_EQ(values(y), values(x));
  // Training: every element is either dropped or scaled by 1/(1-p).
  d.train();
  const Tensor big = Tensor::ones({20000});
  const std::vector<double> yv = values(d.forward(big));
  int64_t kept = 0;
  for (double v : yv) {
    EXPECT_TRUE(v == 0.0 || v == 2.0) << v;
    kept += v != 0.0;
  }
  EXPECT_NEAR(static_cast<double>(kept) / 20000, 0.5, 0.03);
  // p = 0 keeps everything even in training; p outside [0, 1] is an error.
  EXPECT_EQ(values(dropout(x, 0.0, true)), values(x));
  EXPECT_ERROR("dropout|1.5", dropout(x, 1.5, true));
  // In a Sequential, eval() of the parent reaches the dropout.
  auto seq = std::make_shared<Sequential>();
  seq->add(std::make_shared<Dropout>(0.9));
  seq->eval();
  EXPECT_EQ(values(seq->forward(x)), values(x));
}

// ================================================================== SGD
// PyTorch's SGD for one parameter, in double.
struct RefSGD {
  SGDOptions o;
  std::vector<double> buf;
  void step(std::vector<double>& p, const std::vector<double>& g, double lr, double wd) {
    const bool first = buf.empty();
    if (o.momentum > 0 && first) buf.assign(p.size(), 0.0);
    for (size_t i = 0; i < p.size(); ++i) {
      double d = g[i] + wd * p[i];
      if (o.momentum > 0) {
        buf[i] = first ? d : o.momentum * buf[i] + (1 - o.dampening) * d;
        d = o.nesterov ? d + o.momentum * buf[i] : buf[i];
      }
      p[i] -= lr * d;
    }
  }
};

void check_sgd(const SGDOptions& o, const std::string& what) {
  SCOPED_TRACE(what);
  Tensor w = leaf({3, 4}), b = leaf({4});
  SGD opt({w, b}, o);
  std::vector<double> pw = values(w), pb = values(b);
  RefSGD rw{o, {}}, rb{o, {}};
  for (int step = 0; step < 4; ++step) {
    const Tensor gw = randn({3, 4}), gb = randn({4});
    w.set_grad(gw);
    b.set_grad(gb);
    opt.step();
    rw.step(pw, values(gw), o.lr, o.weight_decay);
    rb.step(pb, values(gb), o.lr, o.weight_decay);
    const std::vector<double> vw = values(w), vb = values(b);
    for (size_t i = 0; i < pw.size(); ++i) EXPECT_NEAR(vw[i], pw[i], 1e-13) << "step " << step << " w[" << i << "]";
    for (size_t i = 0; i < pb.size(); ++i) EXPECT_NEAR(vb[i], pb[i], 1e-13) << "step " << step << " b[" << i << "]";
  }
}

TEST(SGDTest, MatchesPyTorchFormulas) {
  check_sgd({.lr = 0.1}, "plain");
  check_sgd({.lr = 0.05, .weight_decay = 0.01}, "weight decay");
  check_sgd({.lr = 0.1, .momentum = 0.9}, "momentum");
  check_sgd({.lr = 0.1, .momentum = 0.9, .dampening = 0.3}, "momentum with dampening");
  check_sgd({.lr = 0.1, .momentum = 0.9, .nesterov = true}, "nesterov");
  check_sgd({.lr = 0.2, .momentum = 0.8, .nesterov = true, .weight_decay = 5e-4}, "nesterov + weight decay");
  check_sgd({.lr = 0.1, .momentum = 0.5, .dampening = 0.5, .weight_decay = 0.1}, "everything");
}

TEST(SGDTest, FirstStepBufferIsTheUndampedUpdate) {
  // By hand: p = 1, g = 2, wd = 0.5 -> d = 2.5; buf = d (no dampening at the
  // first step); p = 1 - 0.1 * 2.5 = 0.75. Second step g = 2: d = 2 + 0.5*0.75
  // = 2.375; buf = 0.9*2.5 + 0.5*2.375 = 3.4375; p = 0.75 - 0.34375 = 0.40625.
  Tensor p = Tensor::ones({1}, DType::F64);
  p.set_requires_grad(true);
  SGD opt({p}, {.lr = 0.1, .momentum = 0.9, .dampening = 0.5, .weight_decay = 0.5});
  p.set_grad(Tensor::full({1}, 2.0, DType::F64));
  opt.step();
  EXPECT_DOUBLE_EQ(p.item(), 0.75);
  EXPECT_DOUBLE_EQ(find(opt.state_dict(), "momentum.0.0").item(), 2.5);
  opt.step();
  EXPECT_DOUBLE_EQ(find(opt.state_dict(), "momentum.0.0").item(), 3.4375);
  EXPECT_DOUBLE_EQ(p.item(), 0.40625);
}

TEST(SGDTest, F32ParametersFollowTheF64Reference) {
  Tensor w = leaf({64}, DType::F32);
  const SGDOptions o{.lr = 0.1, .momentum = 0.9, .weight_decay = 1e-3};
  SGD opt({w}, o);
  std::vector<double> pw = values(w);
  RefSGD r{o, {}};
  for (int step = 0; step < 3; ++step) {
    const Tensor g = randn({64}, DType::F32);
    w.set_grad(g);
    opt.step();
    r.step(pw, values(g), o.lr, o.weight_decay);
  }
  EXPECT_LT(scaled_error(w, Tensor::from_vector<double>(pw, {64})), 1e-6);
}

TEST(SGDTest, ParamGroupsOverrideWeightDecayAndScaleLr) {
  Tensor a = leaf({5}), b = leaf({5}), c = leaf({5});
  const SGDOptions o{.lr = 0.1, .momentum = 0.9, .weight_decay = 0.05};
  SGD opt({ParamGroup{{a}, 0.0, 0.5}, ParamGroup{{b}, 0.3, 1.0}, ParamGroup{{c}, std::nullopt, 2.0}}, o);
  std::vector<double> pa = values(a), pb = values(b), pc = values(c);
  RefSGD ra{o, {}}, rb{o, {}}, rc{o, {}};
  for (int step = 0; step < 3; ++step) {
    const Tensor ga = randn({5}), gb = randn({5}), gc = randn({5});
    a.set_grad(ga);
    b.set_grad(gb);
    c.set_grad(gc);
    opt.step();
    ra.step(pa, values(ga), 0.05, 0.0);
    rb.step(pb, values(gb), 0.1, 0.3);
    rc.step(pc, values(gc), 0.2, 0.05);
  }
  EXPECT_LT(scaled_error(a, Tensor::from_vector<double>(pa, {5})), 1e-14) << "group 0: no decay, half lr";
  EXPECT_LT(scaled_error(b, Tensor::from_vector<double>(pb, {5})), 1e-14) << "group 1: decay 0.3";
  EXPECT_LT(scaled_error(c, Tensor::from_vector<double>(pc, {5})), 1e-14) << "group 2: default decay, double lr";
  // set_lr changes the base of every group.
  opt.set_lr(0.01);
  EXPECT_DOUBLE_EQ(opt.lr(), 0.01);
  const Tensor g = randn({5});
  a.set_grad(g);
  b.zero_grad();
  c.zero_grad();
  opt.step();
  ra.step(pa, values(g), 0.005, 0.0);
  EXPECT_LT(scaled_error(a, Tensor::from_vector<double>(pa, {5})), 1e-14) << "after set_lr";
}

TEST(SGDTest, ParametersWithoutGradAreSkipped) {
  Tensor a = leaf({4}), b = leaf({4});
  SGD opt({a, b}, {.lr = 0.1, .momentum = 0.9, .weight_decay = 0.1});
  const std::vector<double> b0 = values(b);
  a.set_grad(randn({4}));
  opt.step();
  EXPECT_EQ(values(b), b0) << "no gradient: no update, not even weight decay";
  const NamedTensors st = opt.state_dict();
  EXPECT_TRUE(contains(st, "momentum.0.0"));
  EXPECT_FALSE(contains(st, "momentum.0.1")) << "no momentum buffer for a parameter never updated";
  // zero_grad of the optimiser drops the gradients.
  opt.zero_grad();
  EXPECT_FALSE(a.grad().defined());
  const std::vector<double> a1 = values(a);
  opt.step();
  EXPECT_EQ(values(a), a1) << "momentum alone does not move a parameter without a gradient";
}

TEST(SGDTest, RejectsBadParametersAndOptions) {
  Tensor x = leaf({3});
  EXPECT_ERROR("optimizer|leaf", SGD({mul_scalar(x, 2.0)}, SGDOptions{}));
  EXPECT_ERROR("optimizer|leaf", SGD({randn({3})}, SGDOptions{}));
  EXPECT_ERROR("SGD|Nesterov", SGD({x}, {.lr = 0.1, .momentum = 0.9, .dampening = 0.1, .nesterov = true}));
  EXPECT_ERROR("SGD|Nesterov", SGD({x}, {.lr = 0.1, .nesterov = true}));
  EXPECT_ERROR("SGD", SGD({x}, {.lr = -0.1}));
}

// ================================================================== AdamW
struct RefAdamW {
  AdamWOptions o;
  std::vector<double> m, v;
  int64_t t = 0;
  void step(std::vector<double>& p, const std::vector<double>& g, double lr, double wd) {
    if (m.empty()) {
      m.assign(p.size(), 0.0);
      v.assign(p.size(), 0.0);
    }
    ++t;
    const double bc1 = 1 - std::pow(o.beta1, static_cast<double>(t)), bc2 = 1 - std::pow(o.beta2, static_cast<double>(t));
    for (size_t i = 0; i < p.size(); ++i) {
      p[i] *= 1 - lr * wd;
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * g[i];
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * g[i] * g[i];
      const double mhat = m[i] / bc1, vhat = v[i] / bc2;
      p[i] -= lr * mhat / (std::sqrt(vhat) + o.eps);
    }
  }
};

TEST(AdamWTest, MatchesPyTorchFormulaForThreeSteps) {
  for (const AdamWOptions& o : {AdamWOptions{.lr = 1e-2, .weight_decay = 0.1},
                                AdamWOptions{.lr = 3e-3, .beta1 = 0.8, .beta2 = 0.99, .eps = 1e-6, .weight_decay = 0.0}}) {
    SCOPED_TRACE(fmt::format("lr {} betas {} {} wd {}", o.lr, o.beta1, o.beta2, o.weight_decay));
    Tensor w = leaf({3, 4}), b = leaf({4});
    AdamW opt({w, b}, o);
    std::vector<double> pw = values(w), pb = values(b);
    RefAdamW rw{o, {}, {}}, rb{o, {}, {}};
    for (int step = 0; step < 3; ++step) {
      const Tensor gw = randn({3, 4}), gb = randn({4}, DType::F64, 0.01);
      w.set_grad(gw);
      b.set_grad(gb);
      opt.step();
      rw.step(pw, values(gw), o.lr, o.weight_decay);
      rb.step(pb, values(gb), o.lr, o.weight_decay);
      EXPECT_LT(scaled_error(w, Tensor::from_vector<double>(pw, {3, 4})), 1e-13) << "step " << step;
      EXPECT_LT(scaled_error(b, Tensor::from_vector<double>(pb, {4})), 1e-13) << "step " << step;
    }
    const NamedTensors st = opt.state_dict();
    EXPECT_EQ(find(st, "step.0.0").item(), 3.0);
    EXPECT_EQ(find(st, "step.0.1").item(), 3.0);
    EXPECT_LT(scaled_error(find(st, "exp_avg.0.0"), Tensor::from_vector<double>(rw.m, {3, 4})), 1e-14);
    EXPECT_LT(scaled_error(find(st, "exp_avg_sq.0.1"), Tensor::from_vector<double>(rb.v, {4})), 1e-14);
  }
}

TEST(AdamWTest, FirstStepByHand) {
  // m = 0.1 g, v = 0.001 g^2, bias-corrected: mhat = g, vhat = g^2, so the
  // first step is p*(1 - lr*wd) - lr * g / (|g| + eps).
  Tensor p = Tensor::from_vector<double>({1.0, -2.0}, {2});
  p.set_requires_grad(true);
  AdamW opt({p}, {.lr = 0.1, .eps = 1e-8, .weight_decay = 0.5});
  p.set_grad(Tensor::from_vector<double>({4.0, -0.5}, {2}));
  opt.step();
  const std::vector<double> v = values(p);
  EXPECT_NEAR(v[0], 1.0 * 0.95 - 0.1 * 4.0 / (4.0 + 1e-8), 1e-14);
  EXPECT_NEAR(v[1], -2.0 * 0.95 + 0.1 * 0.5 / (0.5 + 1e-8), 1e-14);
}

TEST(AdamWTest, ParamGroupsOverrideWeightDecayAndScaleLr) {
  const AdamWOptions o{.lr = 1e-2, .weight_decay = 0.2};
  Tensor a = leaf({6}), b = leaf({6});
  AdamW opt({ParamGroup{{a}, 0.0, 2.0}, ParamGroup{{b}, std::nullopt, 0.5}}, o);
  std::vector<double> pa = values(a), pb = values(b);
  RefAdamW ra{o, {}, {}}, rb{o, {}, {}};
  for (int step = 0; step < 3; ++step) {
    const Tensor ga = randn({6}), gb = randn({6});
    a.set_grad(ga);
    b.set_grad(gb);
    opt.step();
    ra.step(pa, values(ga), 2e-2, 0.0);
    rb.step(pb, values(gb), 5e-3, 0.2);
  }
  EXPECT_LT(scaled_error(a, Tensor::from_vector<double>(pa, {6})), 1e-13) << "group 0: no decay, lr x2";
  EXPECT_LT(scaled_error(b, Tensor::from_vector<double>(pb, {6})), 1e-13) << "group 1: default decay, lr x0.5";
}

TEST(AdamWTest, ParametersWithoutGradAreSkipped) {
  Tensor a = leaf({4}), b = leaf({4});
  AdamW opt({a, b}, {.lr = 1e-2, .weight_decay = 0.1});
  const std::vector<double> b0 = values(b);
  a.set_grad(randn({4}));
  opt.step();
  opt.step();
  EXPECT_EQ(values(b), b0) << "no gradient: no update, not even decoupled weight decay";
  const NamedTensors st = opt.state_dict();
  EXPECT_TRUE(contains(st, "exp_avg.0.0"));
  EXPECT_FALSE(contains(st, "exp_avg.0.1"));
  EXPECT_FALSE(contains(st, "exp_avg_sq.0.1"));
}

// Regression test: AdamW once kept one step count for the whole optimiser.
// PyTorch's AdamW keeps state['step'] per parameter, counting only the steps in
// which that parameter had a gradient. A parameter whose first gradient
// arrives at the optimiser's second step must get the t = 1 update
// lr * g / (|g| + eps) (the shared count gave t = 2, about 0.74 lr).
TEST(AdamWTest, BiasCorrectionCountsEachParametersOwnSteps) {
  const AdamWOptions o{.lr = 1e-2, .weight_decay = 0.0};
  Tensor a = leaf({3}), b = leaf({3});
  AdamW opt({a, b}, o);
  std::vector<double> pa = values(a), pb = values(b);
  RefAdamW ra{o, {}, {}}, rb{o, {}, {}};
  // Step 1: only a has a gradient.
  const Tensor ga1 = randn({3});
  a.set_grad(ga1);
  opt.step();
  ra.step(pa, values(ga1), o.lr, o.weight_decay);
  // Step 2: both.
  const Tensor ga2 = randn({3}), gb2 = randn({3});
  a.set_grad(ga2);
  b.set_grad(gb2);
  opt.step();
  ra.step(pa, values(ga2), o.lr, o.weight_decay);
  rb.step(pb, values(gb2), o.lr, o.weight_decay);  // b's first step: t = 1
  EXPECT_LT(scaled_error(a, Tensor::from_vector<double>(pa, {3})), 1e-13);
  EXPECT_LT(scaled_error(b, Tensor::from_vector<double>(pb, {3})), 1e-13)
      << "b's first update must use bias correction for t = 1 (PyTorch keeps a step count per parameter)";
}

// ================================================================== optimiser state round trip
// Feeds two optimisers the same three gradients (for a [3,4] weight and a [4]
// bias each); their parameters must stay identical.
void expect_same_continuation(Optimizer& opt, const Tensor& w, const Tensor& b, Optimizer& opt2, const Tensor& w2,
                              const Tensor& b2) {
  for (int i = 0; i < 3; ++i) {
    const Tensor gw = randn({3, 4}), gb = randn({4});
    w.set_grad(gw);
    b.set_grad(gb);
    w2.set_grad(gw.clone());
    b2.set_grad(gb.clone());
    opt.step();
    opt2.step();
    EXPECT_EQ(values(w2), values(w)) << "step " << i;
    EXPECT_EQ(values(b2), values(b)) << "step " << i;
  }
}

TEST(OptimizerState, SGDStateDictRoundTripContinuesIdentically) {
  const SGDOptions o{.lr = 0.1, .momentum = 0.9, .dampening = 0.1, .weight_decay = 1e-3};
  Tensor w = leaf({3, 4}), b = leaf({4});
  SGD opt({w, b}, o);
  for (int i = 0; i < 3; ++i) {
    w.set_grad(randn({3, 4}));
    b.set_grad(randn({4}));
    opt.step();
  }
  const NamedTensors saved = deep_copy(opt.state_dict());
  EXPECT_EQ(names_of(saved), (std::vector<std::string>{"momentum.0.0", "momentum.0.1"}));
  Tensor w2 = w.detach().clone(), b2 = b.detach().clone();
  w2.set_requires_grad(true);
  b2.set_requires_grad(true);
  SGD opt2({w2, b2}, o);
  opt2.load_state_dict(saved);
  expect_same_continuation(opt, w, b, opt2, w2, b2);
  // Without the state, the continuation differs (the momentum matters).
  Tensor w3 = w.detach().clone();
  w3.set_requires_grad(true);
  SGD opt3({w3}, o);
  Tensor w4 = w.detach().clone();
  w4.set_requires_grad(true);
  SGD opt4({w4}, o);
  opt4.load_state_dict({{"momentum.0.0", find(opt.state_dict(), "momentum.0.0").clone()}});
  const Tensor g = randn({3, 4});
  w3.set_grad(g);
  w4.set_grad(g);
  opt3.step();
  opt4.step();
  EXPECT_NE(values(w3), values(w4));
  // A state tensor of the wrong shape is refused, naming it.
  SGD opt5({leaf({3, 4}), leaf({4})}, o);
  EXPECT_ERROR("momentum.0.1|[5]|[4]", opt5.load_state_dict({{"momentum.0.1", Tensor::zeros({5}, DType::F64)}}));
}

TEST(OptimizerState, AdamWStateDictRoundTripContinuesIdentically) {
  const AdamWOptions o{.lr = 1e-2, .weight_decay = 0.05};
  Tensor w = leaf({3, 4}), b = leaf({4});
  AdamW opt({w, b}, o);
  for (int i = 0; i < 3; ++i) {
    w.set_grad(randn({3, 4}));
    b.set_grad(randn({4}));
    opt.step();
  }
  const NamedTensors saved = deep_copy(opt.state_dict());
  EXPECT_EQ(find(saved, "step.0.0").item(), 3.0);
  EXPECT_TRUE(contains(saved, "exp_avg.0.1"));
  EXPECT_TRUE(contains(saved, "exp_avg_sq.0.0"));
  Tensor w2 = w.detach().clone(), b2 = b.detach().clone();
  w2.set_requires_grad(true);
  b2.set_requires_grad(true);
  AdamW opt2({w2, b2}, o);
  opt2.load_state_dict(saved);
  EXPECT_EQ(find(opt2.state_dict(), "step.0.1").item(), 3.0);
  expect_same_continuation(opt, w, b, opt2, w2, b2);
  // The state of an optimiser over f32 parameters loads into f32 slots.
  Tensor f = leaf({4}, DType::F32);
  AdamW opt3({f}, o);
  f.set_grad(randn({4}, DType::F32));
  opt3.step();
  const NamedTensors s3 = deep_copy(opt3.state_dict());
  EXPECT_EQ(find(s3, "exp_avg.0.0").dtype(), DType::F32);
}

// ================================================================== learning-rate schedules
TEST(LrScheduleTest, WarmupIsLinearFromWarmupStartTimesBase) {
  LrSchedule s;
  s.kind = LrSchedule::Kind::Cosine;
  s.base_lr = 0.1;
  s.total_steps = 110;
  s.warmup_steps = 10;
  s.warmup_start = 0.1;
  s.min_lr = 0.001;
  EXPECT_NEAR(s.at(0), 0.01, 1e-15);
  EXPECT_NEAR(s.at(5), 0.1 * (0.1 + 0.9 * 0.5), 1e-15);
  EXPECT_NEAR(s.at(9), 0.1 * (0.1 + 0.9 * 0.9), 1e-15);
  for (int64_t i = 1; i < 10; ++i) EXPECT_GT(s.at(i), s.at(i - 1)) << "warm-up increases";
  EXPECT_NEAR(s.at(10), 0.1, 1e-15) << "warm-up ends at the base rate";
  // warmup_start = 0: from zero.
  s.warmup_start = 0.0;
  EXPECT_EQ(s.at(0), 0.0);
  EXPECT_NEAR(s.at(4), 0.04, 1e-15);
}

TEST(LrScheduleTest, CosineEndpointsAndMidpoint) {
  LrSchedule s;
  s.kind = LrSchedule::Kind::Cosine;
  s.base_lr = 0.1;
  s.total_steps = 110;
  s.warmup_steps = 10;
  s.min_lr = 0.001;
  EXPECT_NEAR(s.at(10), 0.1, 1e-15);
  EXPECT_NEAR(s.at(60), (0.1 + 0.001) / 2, 1e-15);
  EXPECT_NEAR(s.at(35), 0.001 + 0.099 * 0.5 * (1 + std::cos(std::numbers::pi * 0.25)), 1e-15);
  EXPECT_NEAR(s.at(110), 0.001, 1e-15);
  EXPECT_NEAR(s.at(500), 0.001, 1e-15) << "stays at min_lr after the end";
  for (int64_t i = 11; i <= 110; ++i) EXPECT_LE(s.at(i), s.at(i - 1)) << "cosine decreases";
  // Without warm-up it starts at the base rate.
  LrSchedule c;
  c.kind = LrSchedule::Kind::Cosine;
  c.base_lr = 0.5;
  c.total_steps = 100;
  EXPECT_NEAR(c.at(0), 0.5, 1e-15);
  EXPECT_NEAR(c.at(50), 0.25, 1e-15);
  EXPECT_NEAR(c.at(100), 0.0, 1e-15);
}

TEST(LrScheduleTest, StepDecayAndConstant) {
  LrSchedule s;
  s.kind = LrSchedule::Kind::Step;
  s.base_lr = 0.1;
  s.step_size = 30;
  s.gamma = 0.1;
  EXPECT_NEAR(s.at(0), 0.1, 1e-15);
  EXPECT_NEAR(s.at(29), 0.1, 1e-15);
  EXPECT_NEAR(s.at(30), 0.01, 1e-15);
  EXPECT_NEAR(s.at(59), 0.01, 1e-15);
  EXPECT_NEAR(s.at(60), 0.001, 1e-16);
  EXPECT_NEAR(s.at(95), 0.0001, 1e-17);
  // With warm-up, the decay counts from the end of the warm-up.
  s.warmup_steps = 5;
  s.warmup_start = 0.5;
  EXPECT_NEAR(s.at(0), 0.05, 1e-15);
  EXPECT_NEAR(s.at(5), 0.1, 1e-15);
  EXPECT_NEAR(s.at(34), 0.1, 1e-15);
  EXPECT_NEAR(s.at(35), 0.01, 1e-15);

  LrSchedule k;
  k.kind = LrSchedule::Kind::Constant;
  k.base_lr = 0.03;
  k.total_steps = 10;
  for (int64_t i : {0, 1, 9, 10, 1000}) EXPECT_EQ(k.at(i), 0.03) << i;
  k.warmup_steps = 4;
  k.warmup_start = 0.25;
  EXPECT_NEAR(k.at(0), 0.0075, 1e-15);
  EXPECT_NEAR(k.at(2), 0.03 * (0.25 + 0.75 * 0.5), 1e-15);
  EXPECT_EQ(k.at(4), 0.03);
  EXPECT_EQ(k.at(400), 0.03);
}

TEST(LrScheduleTest, ParseKind) {
  EXPECT_EQ(LrSchedule::parse_kind("constant"), LrSchedule::Kind::Constant);
  EXPECT_EQ(LrSchedule::parse_kind("cosine"), LrSchedule::Kind::Cosine);
  EXPECT_EQ(LrSchedule::parse_kind("step"), LrSchedule::Kind::Step);
  EXPECT_ERROR("linear|constant|cosine|step", LrSchedule::parse_kind("linear"));
  EXPECT_ERROR("Cosine", LrSchedule::parse_kind("Cosine"));
}

}  // namespace
}  // namespace s2h::test
