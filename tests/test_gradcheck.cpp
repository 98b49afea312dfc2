// Finite-difference gradient tests: every op, on fresh random f64 inputs
// (central differences, step 1e-6, per-element tolerance 1e-7 + 1e-5*|g|),
// plus the same op in f32 compared with f64 (scaled error <= 1e-4).
#include "tests/test_util.h"

namespace s2h::test {
namespace {

using Inputs = std::vector<Tensor>;

// Keeps inputs away from the kinks of piecewise functions (relu at 0, relu6 at
// 0 and 6, hard* at +-3), where a central difference is not the derivative.
Tensor away_from(Tensor t, std::vector<double> kinks, double margin = 1e-3) {
  double* p = t.data<double>();
  for (int64_t i = 0; i < t.numel(); ++i)
    for (double k : kinks)
      if (std::abs(p[i] - k) < margin) p[i] = k + (p[i] < k ? -margin : margin) * 2;
  return t;
}

Tensor kinked_leaf(const Shape& shape, std::vector<double> kinks, double scale) {
  Tensor t = away_from(randn(shape, DType::F64, scale), std::move(kinks));
  t.set_requires_grad(true);
  return t;
}

// ------------------------------------------------------------------ elementwise
TEST(Gradcheck, BroadcastArithmetic) {
  const std::vector<std::pair<Shape, Shape>> shapes = {
      {{3, 4}, {3, 4}}, {{2, 3, 4}, {4}}, {{2, 1, 4}, {3, 1}}, {{5}, {}}, {{2, 3, 1, 2}, {1, 3, 4, 1}}};
  for (const auto& [sa, sb] : shapes) {
    const std::string tag = shape_str(sa) + " op " + shape_str(sb);
    gradcheck("add " + tag, [](const Inputs& v) { return add(v[0], v[1]); }, {leaf(sa), leaf(sb)});
    gradcheck("sub " + tag, [](const Inputs& v) { return sub(v[0], v[1]); }, {leaf(sa), leaf(sb)});
    gradcheck("mul " + tag, [](const Inputs& v) { return mul(v[0], v[1]); }, {leaf(sa), leaf(sb)});
    gradcheck("div " + tag, [](const Inputs& v) { return div(v[0], v[1]); },
              {leaf(sa), leaf_uniform(sb, 0.5, 2.0)});
  }
  // Only one side requiring grad.
  gradcheck("mul, rhs constant", [](const Inputs& v) { return mul(v[0], v[1]); }, {leaf({3, 4}), randn({4})});
}

TEST(Gradcheck, ScalarOps) {
  gradcheck("add_scalar", [](const Inputs& v) { return add_scalar(v[0], 1.5); }, {leaf({7})});
  gradcheck("mul_scalar", [](const Inputs& v) { return mul_scalar(v[0], -2.5); }, {leaf({7})});
  gradcheck("rsub_scalar", [](const Inputs& v) { return rsub_scalar(v[0], 3.0); }, {leaf({7})});
  gradcheck("rdiv_scalar", [](const Inputs& v) { return rdiv_scalar(v[0], 2.0); }, {leaf_uniform({7}, 0.5, 2)});
  gradcheck("pow_scalar", [](const Inputs& v) { return pow_scalar(v[0], 2.5); }, {leaf_uniform({7}, 0.5, 2)});
  gradcheck("operators", [](const Inputs& v) { return (v[0] * 2.0 - v[1]) / 3.0 + 1.0 - (-v[0]) * v[1]; },
            {leaf({2, 3}), leaf({3})});
}

TEST(Gradcheck, MathFunctions) {
  gradcheck("neg", [](const Inputs& v) { return neg(v[0]); }, {leaf({9})});
  gradcheck("exp", [](const Inputs& v) { return exp(v[0]); }, {leaf({9})});
  gradcheck("log", [](const Inputs& v) { return log(v[0]); }, {leaf_uniform({9}, 0.2, 3)});
  gradcheck("sqrt", [](const Inputs& v) { return sqrt(v[0]); }, {leaf_uniform({9}, 0.2, 3)});
  gradcheck("square", [](const Inputs& v) { return square(v[0]); }, {leaf({9})});
  gradcheck("abs", [](const Inputs& v) { return abs(v[0]); }, {kinked_leaf({9}, {0.0}, 1.0)});
}

TEST(Gradcheck, Activations) {
  const Shape s{4, 6};
  gradcheck("relu", [](const Inputs& v) { return relu(v[0]); }, {kinked_leaf(s, {0}, 2)});
  gradcheck("relu6", [](const Inputs& v) { return relu6(v[0]); }, {kinked_leaf(s, {0, 6}, 4)});
  gradcheck("hardswish", [](const Inputs& v) { return hardswish(v[0]); }, {kinked_leaf(s, {-3, 3}, 3)});
  gradcheck("hardsigmoid", [](const Inputs& v) { return hardsigmoid(v[0]); }, {kinked_leaf(s, {-3, 3}, 3)});
  gradcheck("gelu", [](const Inputs& v) { return gelu(v[0]); }, {leaf(s, DType::F64, 2)});
  gradcheck("gelu tanh", [](const Inputs& v) { return gelu(v[0], true); }, {leaf(s, DType::F64, 2)});
  gradcheck("sigmoid", [](const Inputs& v) { return sigmoid(v[0]); }, {leaf(s, DType::F64, 2)});
  gradcheck("tanh", [](const Inputs& v) { return tanh(v[0]); }, {leaf(s, DType::F64, 2)});
}

// ------------------------------------------------------------------ reductions
TEST(Gradcheck, Reductions) {
  const Shape s{2, 3, 4, 5};
  const std::vector<std::vector<int64_t>> axes = {{0}, {3}, {1, 2}, {0, 2}, {-1, 0}, {0, 1, 2, 3}};
  for (const auto& ax : axes)
    for (bool keep : {false, true}) {
      const std::string tag = fmt::format("axes {} keepdim {}", shape_str(ax), keep);
      gradcheck("sum " + tag, [&](const Inputs& v) { return sum(v[0], ax, keep); }, {leaf(s)});
      gradcheck("mean " + tag, [&](const Inputs& v) { return mean(v[0], ax, keep); }, {leaf(s)});
    }
  gradcheck("sum all", [](const Inputs& v) { return sum(v[0]); }, {leaf({3, 4})});
  gradcheck("mean all", [](const Inputs& v) { return mean(v[0]); }, {leaf({3, 4})});
  gradcheck("sum_to", [](const Inputs& v) { return sum_to(v[0], {3, 1}); }, {leaf({2, 3, 4})});
}

// ------------------------------------------------------------------ shape
TEST(Gradcheck, ShapeOps) {
  gradcheck("reshape", [](const Inputs& v) { return reshape(v[0], {4, -1}); }, {leaf({2, 3, 4})});
  gradcheck("permute", [](const Inputs& v) { return permute(v[0], {2, 0, 1}); }, {leaf({2, 3, 4})});
  gradcheck("transpose", [](const Inputs& v) { return transpose(v[0], 0, 2); }, {leaf({2, 3, 4})});
  gradcheck("permute then reshape (copy)", [](const Inputs& v) { return reshape(permute(v[0], {1, 0, 2}), {-1}); },
            {leaf({2, 3, 4})});
  gradcheck("slice", [](const Inputs& v) { return slice(v[0], 1, 1, 5, 2); }, {leaf({3, 6})});
  gradcheck("slice negative", [](const Inputs& v) { return slice(v[0], -1, -3, 6); }, {leaf({3, 6})});
  gradcheck("concat", [](const Inputs& v) { return concat({v[0], v[1], v[2]}, 1); },
            {leaf({2, 1, 3}), leaf({2, 4, 3}), leaf({2, 2, 3})});
  const Tensor idx = Tensor::from_vector<int64_t>({3, 0, 3, 1}, {4});
  gradcheck("index_select (repeats)", [&](const Inputs& v) { return index_select(v[0], 1, v[1]); },
            {leaf({2, 5, 3}), idx});
  gradcheck("contiguous", [](const Inputs& v) { return contiguous(transpose(v[0], 0, 1)); }, {leaf({3, 4})});
  gradcheck("expand", [](const Inputs& v) { return expand(v[0], {2, 3, 4}); }, {leaf({3, 1})});
  gradcheck("flatten", [](const Inputs& v) { return v[0].flatten(1); }, {leaf({2, 3, 4})});
  gradcheck("clone of a strided view", [](const Inputs& v) { return v[0].transpose(0, 1).clone(); }, {leaf({3, 4})});
}

// ------------------------------------------------------------------ linear algebra
TEST(Gradcheck, MatrixProducts) {
  gradcheck("matmul 2d", [](const Inputs& v) { return matmul(v[0], v[1]); }, {leaf({3, 4}), leaf({4, 5})});
  gradcheck("matmul nd x 2d", [](const Inputs& v) { return matmul(v[0], v[1]); }, {leaf({2, 3, 4}), leaf({4, 2})});
  gradcheck("matmul batched", [](const Inputs& v) { return matmul(v[0], v[1]); },
            {leaf({2, 2, 3, 4}), leaf({2, 2, 4, 3})});
  gradcheck("bmm", [](const Inputs& v) { return bmm(v[0], v[1]); }, {leaf({3, 2, 4}), leaf({3, 4, 5})});
  gradcheck("linear", [](const Inputs& v) { return linear(v[0], v[1], v[2]); },
            {leaf({5, 4}), leaf({3, 4}), leaf({3})});
  gradcheck("linear 3d, no bias", [](const Inputs& v) { return linear(v[0], v[1]); }, {leaf({2, 3, 4}), leaf({6, 4})});
}

// ------------------------------------------------------------------ convolution
struct ConvCase {
  const char* name;
  Shape x, w;
  Conv2dOptions opt;
  bool bias;
};

Conv2dOptions conv_opt(int64_t s, int64_t p, int64_t d = 1, int64_t g = 1) {
  Conv2dOptions o;
  o.stride = {s, s};
  o.padding = {p, p};
  o.dilation = {d, d};
  o.groups = g;
  return o;
}

TEST(Gradcheck, Conv2d) {
  Conv2dOptions asym = conv_opt(1, 0);
  asym.stride = {2, 1};
  asym.padding = {1, 0};
  const std::vector<ConvCase> cases = {
      {"3x3 s1 p1", {2, 5, 5, 3}, {4, 3, 3, 3}, conv_opt(1, 1), true},
      {"3x3 s2 p1", {2, 6, 5, 3}, {4, 3, 3, 3}, conv_opt(2, 1), false},
      {"3x3 dilation 2", {1, 7, 7, 2}, {3, 3, 3, 2}, conv_opt(1, 2, 2), true},
      {"1x1 pointwise", {2, 4, 4, 5}, {3, 1, 1, 5}, conv_opt(1, 0), true},
      {"1x1 stride 2", {2, 5, 5, 3}, {4, 1, 1, 3}, conv_opt(2, 0), false},
      {"groups 2", {2, 5, 5, 4}, {6, 3, 3, 2}, conv_opt(1, 1, 1, 2), true},
      {"depthwise", {2, 6, 6, 4}, {4, 3, 3, 1}, conv_opt(1, 1, 1, 4), true},
      {"depthwise s2 multiplier 2", {2, 6, 6, 3}, {6, 3, 3, 1}, conv_opt(2, 1, 1, 3), false},
      {"5x5 rectangular input", {1, 7, 9, 2}, {2, 5, 5, 2}, conv_opt(1, 2), true},
      {"asymmetric stride and padding", {1, 6, 5, 2}, {3, 3, 2, 2}, asym, true},
  };
  for (const ConvCase& c : cases) {
    const Conv2dOptions opt = c.opt;
    gradcheck(std::string("conv2d ") + c.name,
              [opt](const Inputs& v) { return conv2d(v[0], v[1], v[2], opt); },
              {leaf(c.x), leaf(c.w), c.bias ? leaf({c.w[0]}) : Tensor()});
  }
}

TEST(Gradcheck, Pooling) {
  Pool2dOptions p3;
  p3.kernel = {3, 3};
  p3.stride = {2, 2};
  p3.padding = {1, 1};
  Pool2dOptions p2;  // 2x2 stride 2
  gradcheck("max_pool2d 2x2", [p2](const Inputs& v) { return max_pool2d(v[0], p2); }, {leaf({2, 4, 6, 3})});
  gradcheck("max_pool2d 3x3 s2 p1", [p3](const Inputs& v) { return max_pool2d(v[0], p3); }, {leaf({2, 5, 5, 2})});
  gradcheck("avg_pool2d 3x3 s2 p1", [p3](const Inputs& v) { return avg_pool2d(v[0], p3); }, {leaf({2, 5, 5, 2})});
  Pool2dOptions p3x = p3;
  p3x.count_include_pad = false;
  gradcheck("avg_pool2d no pad count", [p3x](const Inputs& v) { return avg_pool2d(v[0], p3x); }, {leaf({1, 5, 6, 2})});
  gradcheck("adaptive_avg_pool2d 7x5 -> 3x2", [](const Inputs& v) { return adaptive_avg_pool2d(v[0], 3, 2); },
            {leaf({2, 7, 5, 3})});
  gradcheck("adaptive_avg_pool2d global", [](const Inputs& v) { return adaptive_avg_pool2d(v[0], 1, 1); },
            {leaf({2, 4, 4, 3})});
}

// ------------------------------------------------------------------ normalisation
TEST(Gradcheck, BatchNorm) {
  for (const Shape& s : {Shape{6, 4}, Shape{2, 3, 3, 5}}) {
    const int64_t c = s.back();
    const Tensor rm = Tensor::zeros({c}, DType::F64), rv = Tensor::ones({c}, DType::F64);
    gradcheck("batch_norm train " + shape_str(s),
              [&](const Inputs& v) { return batch_norm(v[0], v[1], v[2], v[3], v[4], true, 0.1, 1e-5); },
              {leaf(s, DType::F64, 2), leaf({c}), leaf({c}), rm, rv});
    gradcheck("batch_norm train, no affine " + shape_str(s),
              [&](const Inputs& v) { return batch_norm(v[0], Tensor(), Tensor(), Tensor(), Tensor(), true); },
              {leaf(s, DType::F64, 2)});
    const Tensor rm2 = randn({c}), rv2 = uniform({c}, 0.5, 2.0);
    gradcheck("batch_norm eval " + shape_str(s),
              [&](const Inputs& v) { return batch_norm(v[0], v[1], v[2], v[3], v[4], false); },
              {leaf(s), leaf({c}), leaf({c}), rm2, rv2});
  }
}

TEST(Gradcheck, LayerNorm) {
  gradcheck("layer_norm", [](const Inputs& v) { return layer_norm(v[0], v[1], v[2]); },
            {leaf({3, 4, 6}, DType::F64, 2), leaf({6}), leaf({6})});
  gradcheck("layer_norm, no affine", [](const Inputs& v) { return layer_norm(v[0], Tensor(), Tensor()); },
            {leaf({5, 7})});
}

// ------------------------------------------------------------------ softmax and losses
TEST(Gradcheck, Softmax) {
  gradcheck("softmax last", [](const Inputs& v) { return softmax(v[0], -1); }, {leaf({3, 5}, DType::F64, 2)});
  gradcheck("softmax middle", [](const Inputs& v) { return softmax(v[0], 1); }, {leaf({2, 4, 3}, DType::F64, 2)});
  gradcheck("log_softmax last", [](const Inputs& v) { return log_softmax(v[0], -1); }, {leaf({3, 5}, DType::F64, 2)});
  gradcheck("log_softmax first", [](const Inputs& v) { return log_softmax(v[0], 0); }, {leaf({4, 3}, DType::F64, 2)});
}

TEST(Gradcheck, CrossEntropy) {
  const Tensor target = Tensor::from_vector<int64_t>({2, 0, 4, 4, 1}, {5});
  for (double ls : {0.0, 0.1})
    gradcheck(fmt::format("cross_entropy smoothing {}", ls),
              [&](const Inputs& v) { return cross_entropy(v[0], v[1], ls); }, {leaf({5, 5}, DType::F64, 2), target});
}

TEST(Gradcheck, KlDiv) {
  auto probs = [](const Shape& s) {
    NoGradGuard g;
    Tensor p = softmax(randn(s), -1).detach().contiguous();
    p.set_requires_grad(true);
    return p;
  };
  auto logprobs = [](const Shape& s) {
    NoGradGuard g;
    Tensor p = log_softmax(randn(s), -1).detach().contiguous();
    p.set_requires_grad(true);
    return p;
  };
  gradcheck("kl_div", [](const Inputs& v) { return kl_div(v[0], v[1]); }, {logprobs({4, 5}), probs({4, 5})});
  gradcheck("kl_div log_target", [](const Inputs& v) { return kl_div(v[0], v[1], true); },
            {logprobs({4, 5}), logprobs({4, 5})});
  // The composition S2HPruner uses: KL(softmax(s) || softmax(h)) w.r.t. both logits.
  gradcheck("kl_div of softmaxes", [](const Inputs& v) { return kl_div(log_softmax(v[1], -1), softmax(v[0], -1)); },
            {leaf({3, 6}), leaf({3, 6})});
}

TEST(Gradcheck, Dropout) {
  // The same seed in every evaluation gives the same mask.
  gradcheck("dropout p=0.3", [](const Inputs& v) {
    Generator gen(1234);
    return dropout(v[0], 0.3, true, &gen);
  }, {leaf({6, 7})});
  gradcheck("dropout eval", [](const Inputs& v) { return dropout(v[0], 0.3, false); }, {leaf({4})});
}

TEST(Gradcheck, DtypeConversion) {
  // The f32 round trip is a staircase at the scale of f32 rounding (~1e-7), so
  // the step is 1e-3 and the tolerance 1e-3.
  gradcheck("to f32 and back", [](const Inputs& v) { return v[0].to(DType::F32).to(v[0].dtype()) * v[0]; },
            {leaf({5})}, {1e-3, 1e-3, 1e-6, 1e-4});
}

}  // namespace
}  // namespace s2h::test
