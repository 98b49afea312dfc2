// Autograd unit tests: accumulation, grad mode, detach, explicit and restricted
// backward (S2HPruner backpropagates two losses that share a subgraph to
// different leaves), retained graphs, diamonds, leaves as roots, in-place
// guards, private first gradients, and a check that gradcheck itself catches a
// wrong backward.
#include <gtest/gtest-spi.h>

#include <cmath>

#include "tests/test_util.h"

namespace s2h::test {
namespace {

// ------------------------------------------------------------------ helpers

// A fresh leaf holding the same values as t.
Tensor twin(const Tensor& t) {
  Tensor c = t.detach().clone();
  c.set_requires_grad(true);
  return c;
}

void expect_same(const Tensor& a, const Tensor& ref, const std::string& what, double tol = 1e-13) {
  ASSERT_TRUE(a.defined()) << what << " is undefined";
  ASSERT_TRUE(ref.defined()) << what << ": reference is undefined";
  ASSERT_EQ(a.shape(), ref.shape()) << what;
  EXPECT_LE(scaled_error(a, ref), tol) << what;
}

// ------------------------------------------------------------------ accumulation
TEST(Autograd, GradientsAccumulateAcrossBackwards) {
  Tensor x = leaf({2, 3});
  sum(mul(x, x)).backward();
  const std::vector<double> xv = values(x), g1 = values(x.grad());
  for (size_t i = 0; i < xv.size(); ++i) EXPECT_NEAR(g1[i], 2 * xv[i], 1e-14);
  sum(mul_scalar(x, 3.0)).backward();
  const std::vector<double> g2 = values(x.grad());
  for (size_t i = 0; i < xv.size(); ++i) EXPECT_NEAR(g2[i], 2 * xv[i] + 3, 1e-14);
  EXPECT_EQ(x.grad().shape(), x.shape());
  EXPECT_EQ(x.grad().dtype(), DType::F64);
  EXPECT_FALSE(x.grad().requires_grad()) << "a gradient carries no history";
  // f32 leaves get f32 gradients.
  Tensor y = leaf({4}, DType::F32);
  sum(y).backward();
  EXPECT_EQ(y.grad().dtype(), DType::F32);
  EXPECT_EQ(values(y.grad()), std::vector<double>(4, 1.0));
}

TEST(Autograd, ZeroGradDropsTheGradient) {
  Tensor x = leaf({3});
  EXPECT_FALSE(x.grad().defined()) << "no gradient before any backward";
  sum(mul_scalar(x, 2.0)).backward();
  ASSERT_TRUE(x.grad().defined());
  x.zero_grad();
  EXPECT_FALSE(x.grad().defined());
  sum(mul_scalar(x, 5.0)).backward();
  EXPECT_EQ(values(x.grad()), std::vector<double>(3, 5.0)) << "the next backward starts from zero";
  // zero_grad on a tensor without autograd metadata is harmless.
  Tensor plain = randn({2});
  EXPECT_NO_THROW(plain.zero_grad());
  // set_grad replaces the gradient, with a shape check.
  x.set_grad(Tensor::full({3}, 7.0, DType::F64));
  EXPECT_EQ(values(x.grad()), std::vector<double>(3, 7.0));
  EXPECT_ERROR("set_grad|[4]|[3]", x.set_grad(Tensor::zeros({4}, DType::F64)));
}

// ------------------------------------------------------------------ grad mode
TEST(Autograd, NoGradGuardRecordsNoHistory) {
  Tensor x = leaf({3});
  ASSERT_TRUE(grad_enabled());
  Tensor y;
  {
    NoGradGuard guard;
    EXPECT_FALSE(grad_enabled());
    y = mul_scalar(x, 2.0);
    EXPECT_FALSE(y.requires_grad());
    EXPECT_TRUE(y.is_leaf());
    EXPECT_FALSE(any_requires_grad({x}));
    EXPECT_ERROR("backward|does not require grad", sum(y).backward());
  }
  EXPECT_TRUE(grad_enabled());
  EXPECT_EQ(values(y), values(mul_scalar(x.detach(), 2.0))) << "values are still computed";
  // A value computed without grad is a constant for later ops.
  Tensor z = sum(mul(y, x));
  z.backward();
  EXPECT_EQ(values(x.grad()), values(y));
}

TEST(Autograd, NestedGuardsRestore) {
  ASSERT_TRUE(grad_enabled());
  {
    NoGradGuard outer;
    EXPECT_FALSE(grad_enabled());
    {
      NoGradGuard inner;
      EXPECT_FALSE(grad_enabled());
    }
    EXPECT_FALSE(grad_enabled()) << "the inner guard restores the outer state (off), not on";
  }
  EXPECT_TRUE(grad_enabled());
  // A guard entered while grad mode is already off leaves it off.
  set_grad_enabled(false);
  {
    NoGradGuard guard;
    EXPECT_FALSE(grad_enabled());
  }
  EXPECT_FALSE(grad_enabled());
  set_grad_enabled(true);
  // The guard restores even when an exception leaves its scope.
  try {
    NoGradGuard guard;
    throw std::runtime_error("leave");
  } catch (const std::runtime_error&) {
  }
  EXPECT_TRUE(grad_enabled());
}

TEST(Autograd, DetachStopsTheGradient) {
  Tensor x = leaf({4});
  Tensor d = x.detach();
  EXPECT_TRUE(d.same_storage(x));
  EXPECT_FALSE(d.requires_grad());
  EXPECT_TRUE(d.is_leaf());
  // loss = sum(detach(x) * x): the gradient is x's value, not 2x.
  sum(mul(d, x)).backward();
  EXPECT_EQ(values(x.grad()), values(x));
  // Detaching a non-leaf cuts the graph there.
  Tensor w = leaf({4});
  Tensor h = mul_scalar(w, 3.0);
  Tensor loss = sum(add(mul(h.detach(), h.detach()), w));
  loss.backward();
  EXPECT_EQ(values(w.grad()), std::vector<double>(4, 1.0));
  // A detached result requires no grad at all.
  EXPECT_ERROR("backward|does not require grad", sum(h.detach()).backward());
}

// ------------------------------------------------------------------ backward forms
TEST(Autograd, NonScalarBackwardNeedsAGradient) {
  Tensor x = leaf({3});
  Tensor y = mul_scalar(x, 2.0);
  EXPECT_ERROR("backward|gradient|[3]", y.backward());
  EXPECT_ERROR("backward|[2]|[3]", y.backward(Tensor::ones({2}, DType::F64)));
  EXPECT_FALSE(x.grad().defined()) << "a failed backward must not leave a gradient";
  // A one-element non-scalar is fine without a gradient.
  Tensor one = leaf({1, 1});
  mul_scalar(one, 4.0).backward();
  EXPECT_EQ(values(one.grad()), std::vector<double>{4.0});
  // Backward of a tensor that does not require grad.
  EXPECT_ERROR("backward|does not require grad", sum(randn({3})).backward());
}

TEST(Autograd, BackwardWithExplicitGradient) {
  Tensor x = leaf({2, 3});
  const Tensor c = randn({2, 3}), g = randn({2, 3});
  Tensor y = mul(x, c);
  y.backward(g);
  EXPECT_LT(scaled_error(x.grad(), mul(g, c)), 1e-15);
  // A scalar root with an explicit gradient scales the result.
  Tensor a = leaf({3});
  sum(mul(a, a)).backward(Tensor::scalar(2.5, DType::F64));
  EXPECT_LT(scaled_error(a.grad(), mul_scalar(a.detach(), 5.0)), 1e-15);
  // The given gradient may be a strided view.
  Tensor b = leaf({3, 2});
  const Tensor gt = randn({2, 3});
  mul_scalar(b, -1.0).backward(gt.transpose(0, 1));
  EXPECT_LT(scaled_error(b.grad(), neg(gt.transpose(0, 1))), 1e-15);
}

TEST(Autograd, BackwardRestrictedToChosenLeaves) {
  Tensor a = leaf({3}), b = leaf({3}), c = leaf({3});
  Tensor loss = sum(mul(mul(a, b), c));
  loss.backward({}, {a});
  EXPECT_LT(scaled_error(a.grad(), mul(b.detach(), c.detach())), 1e-15);
  EXPECT_FALSE(b.grad().defined()) << "b was not asked for";
  EXPECT_FALSE(c.grad().defined()) << "c was not asked for";
  // Existing gradients of other leaves are left exactly as they are.
  c.set_grad(Tensor::full({3}, 42.0, DType::F64));
  loss.backward({}, {b, a});
  EXPECT_LT(scaled_error(b.grad(), mul(a.detach(), c.detach())), 1e-15);
  EXPECT_LT(scaled_error(a.grad(), mul_scalar(mul(b.detach(), c.detach()), 2.0)), 1e-15) << "a accumulated twice";
  EXPECT_EQ(values(c.grad()), std::vector<double>(3, 42.0));
  // A leaf outside the graph, given as an input, simply gets nothing.
  Tensor outside = leaf({2});
  loss.backward({}, {outside});
  EXPECT_FALSE(outside.grad().defined());
  // Inputs must be leaves that require grad.
  EXPECT_ERROR("backward|leaf", loss.backward({}, {mul(a, b)}));
  EXPECT_ERROR("backward|does not require grad", loss.backward({}, {randn({3})}));
}

// S2HPruner: one forward shares the "soft" trunk between two losses; loss1 is
// backpropagated to the weights only, loss2 to the architecture (mask) only.
TEST(Autograd, SharedSubgraphTwoLossesToDifferentLeaves) {
  const Tensor x = randn({4, 5});
  Tensor w = leaf({5, 6}), m = leaf({6}), v = leaf({6, 3});
  auto build = [&](const Tensor& w_, const Tensor& m_, const Tensor& v_) {
    Tensor h = tanh(matmul(x, w_));                  // shared trunk
    Tensor soft = mul(h, sigmoid(m_));               // masked (soft) branch
    Tensor logits = matmul(soft, v_);                // head shared by both losses
    Tensor loss1 = mean(square(logits));             // "task loss"
    Tensor loss2 = add(sum(mul(soft, soft)), mean(mul(logits, sum(h))));  // "architecture loss"
    return std::make_pair(loss1, loss2);
  };
  auto [loss1, loss2] = build(w, m, v);
  loss1.backward({}, {w});
  loss2.backward({}, {m});

  // References: each loss alone, full backward, on fresh twins.
  Tensor w1 = twin(w), m1 = twin(m), v1 = twin(v);
  build(w1, m1, v1).first.backward();
  Tensor w2 = twin(w), m2 = twin(m), v2 = twin(v);
  build(w2, m2, v2).second.backward();

  expect_same(w.grad(), w1.grad(), "w gets d loss1 / dw only");
  expect_same(m.grad(), m2.grad(), "m gets d loss2 / dm only");
  EXPECT_FALSE(v.grad().defined()) << "v is in both graphs but was never asked for";

  // The reverse assignment through the same (retained) graph.
  w.zero_grad();
  m.zero_grad();
  loss2.backward({}, {w, v});
  loss1.backward({}, {m});
  expect_same(w.grad(), w2.grad(), "w from loss2");
  expect_same(v.grad(), v2.grad(), "v from loss2");
  expect_same(m.grad(), m1.grad(), "m from loss1");

  // Backprop of one loss to each leaf in turn equals one full backward.
  w.zero_grad();
  m.zero_grad();
  v.zero_grad();
  loss1.backward({}, {w});
  loss1.backward({}, {m});
  loss1.backward({}, {v});
  expect_same(w.grad(), w1.grad(), "w piecewise");
  expect_same(m.grad(), m1.grad(), "m piecewise");
  expect_same(v.grad(), v1.grad(), "v piecewise");
}

TEST(Autograd, BackwardTwiceThroughARetainedGraph) {
  Tensor x = leaf({2, 5, 5, 3}), w = leaf({4, 3, 3, 3}), b = leaf({4});
  Conv2dOptions o;
  o.padding = {1, 1};
  Tensor loss = mean(square(tanh(conv2d(x, w, b, o))));
  loss.backward();
  const Tensor gx = x.grad().clone(), gw = w.grad().clone(), gb = b.grad().clone();
  loss.backward();
  expect_same(x.grad(), mul_scalar(gx, 2.0), "x after two backwards", 1e-15);
  expect_same(w.grad(), mul_scalar(gw, 2.0), "w after two backwards", 1e-15);
  expect_same(b.grad(), mul_scalar(gb, 2.0), "b after two backwards", 1e-15);
  // A second loss built on the same intermediate also works after the first backward.
  x.zero_grad();
  w.zero_grad();
  b.zero_grad();
  Tensor y = conv2d(x, w, b, o);
  Tensor l1 = sum(y), l2 = sum(square(y));
  l1.backward();
  l2.backward();
  Tensor x2 = twin(x), w2 = twin(w), b2 = twin(b);
  Tensor y2 = conv2d(x2, w2, b2, o);
  add(sum(y2), sum(square(y2))).backward();
  expect_same(x.grad(), x2.grad(), "x, two losses vs their sum");
  expect_same(w.grad(), w2.grad(), "w, two losses vs their sum");
  expect_same(b.grad(), b2.grad(), "b, two losses vs their sum");
}

TEST(Autograd, DiamondGraphs) {
  // One tensor used twice by one op.
  Tensor x = leaf({5});
  sum(mul(x, x)).backward();
  EXPECT_LT(scaled_error(x.grad(), mul_scalar(x.detach(), 2.0)), 1e-15);

  // b = 2a; c = b*b + b; dc/da = (2b + 1) * 2 = 8a + 2.
  Tensor a = leaf({4});
  Tensor b = mul_scalar(a, 2.0);
  sum(add(mul(b, b), b)).backward();
  EXPECT_LT(scaled_error(a.grad(), add_scalar(mul_scalar(a.detach(), 8.0), 2.0)), 1e-15);

  // A wider diamond: p = exp(a) feeds three branches that meet again.
  // L = sum(p * sin-free terms): L = sum(p*p + 3p + p*a) -> dL/da = 2p^2 + 3p + p*a + p.
  Tensor q = leaf({6});
  Tensor p = exp(q);
  sum(add(add(mul(p, p), mul_scalar(p, 3.0)), mul(p, q))).backward();
  const std::vector<double> qv = values(q), gv = values(q.grad());
  for (size_t i = 0; i < qv.size(); ++i) {
    const double e = std::exp(qv[i]);
    EXPECT_NEAR(gv[i], 2 * e * e + 3 * e + e * qv[i] + e, 1e-12 * (1 + std::abs(gv[i])));
  }

  // Views of one leaf used in two branches (slice and permute).
  Tensor m = leaf({3, 4});
  sum(add(m.slice(1, 0, 2), mul_scalar(m.transpose(0, 1).slice(0, 1, 3).transpose(0, 1), 10.0))).backward();
  EXPECT_EQ(values(m.grad()), (std::vector<double>{1, 11, 10, 0, 1, 11, 10, 0, 1, 11, 10, 0}));
}

TEST(Autograd, LeafAsTheRoot) {
  Tensor s = leaf({});
  s.backward();
  EXPECT_EQ(values(s.grad()), std::vector<double>{1.0});
  s.backward();
  EXPECT_EQ(values(s.grad()), std::vector<double>{2.0});

  Tensor x = leaf({3});
  Tensor g = Tensor::from_vector<double>({1, 2, 3}, {3});
  x.backward(g);
  EXPECT_EQ(values(x.grad()), (std::vector<double>{1, 2, 3}));
  EXPECT_FALSE(x.grad().same_storage(g)) << "the stored gradient is a copy of the given one";
  g.fill_(100.0);
  EXPECT_EQ(values(x.grad()), (std::vector<double>{1, 2, 3}));
  // Restricted to other leaves: the root itself is not touched.
  Tensor other = leaf({1});
  x.backward(g, {other});
  EXPECT_EQ(values(x.grad()), (std::vector<double>{1, 2, 3}));
  x.backward(g, {x});
  EXPECT_EQ(values(x.grad()), (std::vector<double>{101, 102, 103}));
}

TEST(Autograd, RequiresGradPropagationAndLeaves) {
  Tensor x = leaf({3}), c = randn({3});
  EXPECT_TRUE(x.requires_grad());
  EXPECT_TRUE(x.is_leaf());
  EXPECT_FALSE(c.requires_grad());
  EXPECT_TRUE(c.is_leaf());
  Tensor y = mul(x, c);
  EXPECT_TRUE(y.requires_grad());
  EXPECT_FALSE(y.is_leaf());
  Tensor z = mul(c, c);
  EXPECT_FALSE(z.requires_grad());
  EXPECT_TRUE(z.is_leaf());
  // Views of a leaf are not leaves.
  EXPECT_FALSE(x.slice(0, 0, 2).is_leaf());
  EXPECT_FALSE(x.reshape({3, 1}).is_leaf());
  // Turning requires_grad off on a leaf stops recording.
  Tensor t = leaf({2});
  t.set_requires_grad(false);
  EXPECT_FALSE(t.requires_grad());
  EXPECT_FALSE(mul_scalar(t, 2.0).requires_grad());
}

TEST(Autograd, SetRequiresGradOnNonLeafThrows) {
  Tensor x = leaf({3});
  Tensor y = mul_scalar(x, 2.0);
  EXPECT_ERROR("set_requires_grad|leaf|mul_scalar", y.set_requires_grad(true));
  EXPECT_ERROR("set_requires_grad|leaf", y.set_requires_grad(false));
  EXPECT_ERROR("set_requires_grad|i64", Tensor::arange(3).set_requires_grad(true));
  EXPECT_ERROR("set_requires_grad|u8", Tensor::zeros({2}, DType::U8).set_requires_grad(true));
  EXPECT_NO_THROW(Tensor::zeros({2}, DType::BF16).set_requires_grad(true));
}

TEST(Autograd, InPlaceOnRequiresGradThrowsWhileGradOn) {
  Tensor x = leaf({3});
  EXPECT_ERROR("fill_|requires grad", x.fill_(1.0));
  EXPECT_ERROR("mul_|requires grad", x.mul_(2.0));
  EXPECT_ERROR("add_|requires grad", x.add_(randn({3})));
  EXPECT_ERROR("copy_|requires grad", x.copy_(randn({3})));
  EXPECT_ERROR("fill_|requires grad", x.zero_());
  // Non-leaves and views that carry history are refused too.
  Tensor y = mul_scalar(x, 2.0);
  EXPECT_ERROR("mul_|requires grad", y.mul_(3.0));
  EXPECT_ERROR("fill_|requires grad", x.slice(0, 0, 2).fill_(0.0));
  // Allowed without grad mode, or on a detached handle.
  {
    NoGradGuard guard;
    EXPECT_NO_THROW(x.mul_(2.0));
    EXPECT_NO_THROW(x.fill_(1.0));
  }
  EXPECT_NO_THROW(x.detach().add_(Tensor::ones({3}, DType::F64)));
  EXPECT_EQ(values(x), std::vector<double>(3, 2.0));
}

TEST(Autograd, FirstStoredGradIsAPrivateCopy) {
  // add's backward hands the same gradient tensor to both inputs.
  Tensor a = leaf({4}), b = leaf({4});
  sum(add(a, b)).backward();
  ASSERT_TRUE(a.grad().defined());
  ASSERT_TRUE(b.grad().defined());
  EXPECT_FALSE(a.grad().same_storage(b.grad()));
  a.grad().mul_(5.0);
  EXPECT_EQ(values(a.grad()), std::vector<double>(4, 5.0));
  EXPECT_EQ(values(b.grad()), std::vector<double>(4, 1.0)) << "scaling a's gradient changed b's";
  // Accumulation later still works on both and stays independent.
  sum(add(a, b)).backward();
  EXPECT_EQ(values(a.grad()), std::vector<double>(4, 6.0));
  EXPECT_EQ(values(b.grad()), std::vector<double>(4, 2.0));

  // The same through views: c = a + (b as a reshaped view); the gradient
  // of both comes from one tensor.
  Tensor c = leaf({2, 2}), d = leaf({4});
  sum(add(c, d.reshape({2, 2}))).backward();
  c.grad().fill_(-1.0);
  EXPECT_EQ(values(d.grad()), std::vector<double>(4, 1.0));

  // A gradient passed in by the caller is not aliased either (non-leaf root).
  Tensor e = leaf({3}), f = leaf({3});
  Tensor seed = Tensor::ones({3}, DType::F64);
  add(e, f).backward(seed);
  seed.fill_(9.0);
  EXPECT_EQ(values(e.grad()), std::vector<double>(3, 1.0));
  EXPECT_EQ(values(f.grad()), std::vector<double>(3, 1.0));
  e.grad().fill_(3.0);
  EXPECT_EQ(values(f.grad()), std::vector<double>(3, 1.0));
}

// Regression test: the autograd graph was once freed recursively. Each Node
// owns (shared_ptr) the AutogradMeta of its inputs, which owns the input's
// Node, so dropping the last handle of a long chain runs one nested destructor
// call per node (engine/autograd.h: Node::inputs -> AutogradMeta::grad_fn).
// With the default 8 MiB stack, a chain of ~200k nodes (e.g. a running total
// `total = total + loss` kept with history over many steps) overflows the
// stack and the process dies with SIGSEGV, after backward() itself succeeded.
// PyTorch frees such graphs iteratively. The chain is built in a child
// process so that a crash fails only this test.
TEST(AutogradDeathTest, DeepGraphIsFreedWithoutStackOverflow) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        ::s2h::Tensor x = ::s2h::Tensor::ones({1});
        x.set_requires_grad(true);
        {
          ::s2h::Tensor y = x;
          for (int i = 0; i < 300000; ++i) y = ::s2h::add_scalar(y, 1.0);
          y.backward();
          if (x.grad().item() != 1.0) std::exit(2);
        }  // the chain is freed here
        std::exit(0);
      },
      ::testing::ExitedWithCode(0), "");
}

// ------------------------------------------------------------------ record() contract
TEST(Autograd, RecordChecksWhatBackwardReturns) {
  Tensor x = leaf({3});
  // No node when nothing requires grad, or grad mode is off.
  Tensor plain = record(randn({3}), "plain", {randn({3})}, [](const Tensor& g) { return std::vector<Tensor>{g}; });
  EXPECT_FALSE(plain.requires_grad());
  {
    NoGradGuard guard;
    EXPECT_FALSE(record(randn({3}), "off", {x}, [](const Tensor& g) { return std::vector<Tensor>{g}; }).requires_grad());
  }
  // Wrong number of gradients.
  Tensor two = record(x.detach().clone(), "two_grads", {x}, [](const Tensor& g) { return std::vector<Tensor>{g, g}; });
  EXPECT_ERROR("two_grads|2|1", sum(two).backward());
  // Wrong gradient shape.
  Tensor bad = record(x.detach().clone(), "bad_shape", {x},
                      [](const Tensor&) { return std::vector<Tensor>{Tensor::ones({2}, DType::F64)}; });
  EXPECT_ERROR("bad_shape|[2]|[3]", sum(bad).backward());
  // An undefined gradient means "none".
  Tensor none = record(x.detach().clone(), "none", {x}, [](const Tensor&) { return std::vector<Tensor>{Tensor()}; });
  x.zero_grad();
  sum(none).backward();
  EXPECT_FALSE(x.grad().defined());
  // The backward function gets a contiguous gradient of the output's shape.
  Shape seen_shape;
  bool seen_contiguous = false;
  Tensor y = record(Tensor::zeros({2, 3}, DType::F64), "probe", {x}, [&](const Tensor& g) {
    seen_shape = g.shape();
    seen_contiguous = g.is_contiguous();
    return std::vector<Tensor>{Tensor::zeros({3}, DType::F64)};
  });
  y.backward(randn({3, 2}).transpose(0, 1));
  EXPECT_EQ(seen_shape, (Shape{2, 3}));
  EXPECT_TRUE(seen_contiguous);
}

// ------------------------------------------------------------------ gradcheck catches a wrong backward
// y = 3x with a backward that returns 6 g (twice the right gradient).
Tensor triple_with_wrong_backward(const Tensor& x) {
  Tensor out = mul_scalar(x.detach(), 3.0);
  return record(out, "triple_wrong", {x}, [](const Tensor& g) { return std::vector<Tensor>{mul_scalar(g, 6.0)}; });
}
Tensor triple_with_right_backward(const Tensor& x) {
  Tensor out = mul_scalar(x.detach(), 3.0);
  return record(out, "triple_right", {x}, [](const Tensor& g) { return std::vector<Tensor>{mul_scalar(g, 3.0)}; });
}

TEST(GradcheckSelfTest, ReportsAWrongBackward) {
  // One element: exactly one failure, naming the analytic and numeric values.
  const Tensor one = leaf({1});
  EXPECT_NONFATAL_FAILURE(
      gradcheck("wrong backward", [](const std::vector<Tensor>& v) { return triple_with_wrong_backward(v[0]); }, {one}),
      "analytic");
  // Several elements: at least one failure per wrong element (up to its report limit).
  ::testing::TestPartResultArray failures;
  {
    ::testing::ScopedFakeTestPartResultReporter reporter(
        ::testing::ScopedFakeTestPartResultReporter::INTERCEPT_ONLY_CURRENT_THREAD, &failures);
    gradcheck("wrong backward 2x3", [](const std::vector<Tensor>& v) { return triple_with_wrong_backward(v[0]); },
              {leaf({2, 3})});
  }
  ASSERT_GE(failures.size(), 1);
  for (int i = 0; i < failures.size(); ++i) {
    EXPECT_TRUE(failures.GetTestPartResult(i).nonfatally_failed());
    EXPECT_NE(std::string(failures.GetTestPartResult(i).message()).find("wrong backward 2x3"), std::string::npos);
  }
}

TEST(GradcheckSelfTest, AcceptsTheRightBackward) {
  ::testing::TestPartResultArray failures;
  {
    ::testing::ScopedFakeTestPartResultReporter reporter(
        ::testing::ScopedFakeTestPartResultReporter::INTERCEPT_ONLY_CURRENT_THREAD, &failures);
    gradcheck("right backward", [](const std::vector<Tensor>& v) { return triple_with_right_backward(v[0]); },
              {leaf({2, 3})});
  }
  EXPECT_EQ(failures.size(), 0);
}

TEST(GradcheckSelfTest, ReportsAnInputThatGetsNoGradient) {
  // The op uses its second input in forward but gives it no gradient.
  EXPECT_FATAL_FAILURE(
      {
        const ::s2h::Tensor a = ::s2h::test::leaf({3});
        const ::s2h::Tensor b = ::s2h::test::leaf({3});
        ::s2h::test::gradcheck(
            "forgets b",
            [](const std::vector<::s2h::Tensor>& v) {
              ::s2h::Tensor out = ::s2h::mul(v[0].detach(), v[1].detach());
              const ::s2h::Tensor bb = v[1].detach();
              return ::s2h::record(out, "forgets_b", {v[0], v[1]}, [bb](const ::s2h::Tensor& g) {
                return std::vector<::s2h::Tensor>{::s2h::mul(g, bb), ::s2h::Tensor()};
              });
            },
            {a, b});
      },
      "no gradient reached input 1");
}

}  // namespace
}  // namespace s2h::test
