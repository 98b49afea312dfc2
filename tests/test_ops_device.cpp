// The op test-suite on every backend: one test body per op, run once per
// (device, precision) case. The reference is always the CPU path in f64
// (forward, and the gradient of every input through backward with a random
// upstream gradient); the candidate is the same op on the case's device and
// dtype, with every new allocation poisoned (NaN) so that an unwritten element
// fails. Inputs are drawn fresh for every test (seeded from S2H_TEST_SEED and
// the test's full name, printed on failure) and rounded to the candidate's
// dtype first, so that the reference sees exactly the candidate's inputs and
// the error measures the op, not the input rounding.
//
// Cases: cpu_fp32 (CPU f32 against CPU f64: runs everywhere, CI included),
// cuda_fp32, cuda_tf32 and cuda_bf16. Without a usable GPU (or in a build
// without CUDA) the cuda cases are reported as SKIPPED with the reason; the
// emulated build of this file (test_ops_device_emu) runs them on the CUDA
// emulator (kernels/cuda/emu), in CI.
//
// Error measure: ||candidate - reference||_2 / ||reference||_2 over all
// elements (absolute when the reference is zero); NaN or Inf never passes.
//
// Tolerances (relative L2 error), one row per op family:
//
//   family     ops                                                 fp32   tf32   bf16
//   kMove      reshape/permute/slice/concat/index_select/expand,   1e-5   1e-5   5e-3
//              contiguous, clone, dtype casts, max pooling
//   kPointwise elementwise arithmetic, scalar ops, math functions,  1e-5   1e-5   1e-2
//              activations, dropout
//   kReduce    sum, mean, sum_to, avg / adaptive pooling           1e-5   1e-5   1e-2
//   kGemm      matmul, bmm, linear                                 1e-5   2e-3   1e-2
//   kConv      conv2d (TF32 must be off under fp32)                5e-5   2e-3   1e-2
//   kNorm      batch_norm (output, grads, running stats), layer_norm 1e-5 1e-5   1e-2
//   kSoftmax   softmax, log_softmax, cross_entropy, kl_div         1e-5   1e-5   1e-2
//   kOptim     SGD, AdamW (parameter change and state, fp32 master) 1e-4  1e-4   1e-4
//
// Why these numbers: fp32 arithmetic lands far below 1e-6 per element; 1e-5
// leaves room for the device's fast math functions and reordered sums. TF32
// rounds products to 10 mantissa bits (~5e-4), so fp32 GEMM/conv at 5e-5 also
// proves that TF32 is off under the fp32 policy. bf16 outputs carry 8 bits
// (rounding error up to 2^-9 = 2e-3 per element), so 1e-2 passes correct
// kernels and fails wrong indexing, which gives errors of order 1. The
// optimisers get 1e-4: hyper-parameters rounded to f32 alone move AdamW's
// second moment by 1.3e-5 (1 - 0.999f). Under bf16, activations are bf16 and
// parameters (weights, norm affine, running statistics, optimiser state) stay
// f32. Measured on the CPU f32 path (20 seeds): worst errors about 3e-7.
// S2H_OPS_PRINT_ERRORS=1 prints every measured error.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <optional>
#include <random>

#include "engine/precision.h"
#include "kernels/cuda/runtime.h"
#include "tests/test_util.h"

namespace s2h::test {
namespace {

// ------------------------------------------------------------------ tolerances
enum class Family { Move, Pointwise, Reduce, Gemm, Conv, Norm, Softmax, Optim };

struct Tol {
  double fp32, tf32, bf16;
};

Tol tolerance(Family f) {
  switch (f) {
    case Family::Move: return {1e-5, 1e-5, 5e-3};
    case Family::Pointwise: return {1e-5, 1e-5, 1e-2};
    case Family::Reduce: return {1e-5, 1e-5, 1e-2};
    case Family::Gemm: return {1e-5, 2e-3, 1e-2};
    case Family::Conv: return {5e-5, 2e-3, 1e-2};
    case Family::Norm: return {1e-5, 1e-5, 1e-2};
    case Family::Softmax: return {1e-5, 1e-5, 1e-2};
    case Family::Optim: return {1e-4, 1e-4, 1e-4};
  }
  return {0, 0, 0};
}

// ------------------------------------------------------------------ cases
struct Backend {
  const char* name;
  Device device;
  Precision precision;
  DType act;  // dtype of activations under this case; parameters are always f32
};

std::string backend_name(const ::testing::TestParamInfo<Backend>& info) { return info.param.name; }
void PrintTo(const Backend& b, std::ostream* os) { *os << b.name; }


// S2H_OPS_PRINT_ERRORS=1 prints every measured error (for calibrating tolerances).
bool print_errors() {
  static const bool on = std::getenv("S2H_OPS_PRINT_ERRORS") != nullptr;
  return on;
}


// ------------------------------------------------------------------ inputs
// How an input is handed to the candidate: an activation takes the case's
// activation dtype, a parameter stays f32, an index (i64) is only moved.
enum class Kind { Act, Param, Index };

struct In {
  Tensor v;  // f64 values on the CPU (i64 for indices)
  Kind kind = Kind::Act;
  bool grad = true;
};

In act(const Shape& s, double scale = 1.0) { return {randn(s, DType::F64, scale), Kind::Act, true}; }
In act_uniform(const Shape& s, double lo, double hi) { return {uniform(s, lo, hi), Kind::Act, true}; }
In act_of(Tensor v, bool grad = true) { return {std::move(v), Kind::Act, grad}; }
In param(const Shape& s, double scale = 1.0) { return {randn(s, DType::F64, scale), Kind::Param, true}; }
In param_of(Tensor v, bool grad) { return {std::move(v), Kind::Param, grad}; }
In index(Tensor v) { return {std::move(v), Kind::Index, false}; }
In none() { return {Tensor(), Kind::Act, false}; }

// Moves values away from the kinks of piecewise functions (relu at 0, relu6
// at 6, hard* at +-3) by more than a bf16 step, so that both sides take the
// same branch after rounding.
Tensor away_from(Tensor t, const std::vector<double>& kinks, double margin = 0.06) {
  double* p = t.data<double>();
  for (int64_t i = 0; i < t.numel(); ++i)
    for (double k : kinks)
      if (std::abs(p[i] - k) < margin) p[i] = k + (p[i] < k ? -2 * margin : 2 * margin);
  return t;
}

// NHWC values distinct inside every window of up to 3x3 (exact in bf16), so
// that max pooling has one winner per window whatever the dtype:
// v = (perm[(3h + w + offset[n,c]) mod 256] - 128) / 32.
Tensor window_distinct(const Shape& s) {
  Generator& g = test_generator();
  std::vector<int> perm(256);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), g.engine());
  const int64_t n = s[0], h = s[1], w = s[2], c = s[3];
  Tensor t = Tensor::empty(s, DType::F64);
  double* p = t.data<double>();
  for (int64_t a = 0; a < n; ++a)
    for (int64_t ch = 0; ch < c; ++ch) {
      const int64_t off = static_cast<int64_t>(g.below(256));
      for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x)
          p[((a * h + y) * w + x) * c + ch] = (perm[static_cast<size_t>((3 * y + x + off) % 256)] - 128) / 32.0;
    }
  return t;
}

// Rows of `rows` x `len` where each row is a random permutation of
// (0..len-1 - len/2) / 8: distinct and exact in bf16 for len <= 256.
Tensor distinct_rows(int64_t rows, int64_t len) {
  Tensor t = Tensor::empty({rows, len}, DType::F64);
  double* p = t.data<double>();
  std::vector<int64_t> perm(static_cast<size_t>(len));
  for (int64_t r = 0; r < rows; ++r) {
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), test_generator().engine());
    for (int64_t j = 0; j < len; ++j) p[r * len + j] = static_cast<double>(perm[static_cast<size_t>(j)] - len / 2) / 8;
  }
  return t;
}

Tensor random_labels(int64_t n, int64_t classes) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<int64_t>(test_generator().below(static_cast<uint64_t>(classes)));
  return Tensor::from_vector(v, {n});
}

// Operand shapes of the binary elementwise tests.
const std::vector<std::pair<Shape, Shape>> kBroadcastShapes = {
    {{37, 129}, {37, 129}},         // same shape, odd sizes
    {{2, 3, 40}, {40}},             // a row vector
    {{2, 1, 40}, {3, 1}},           // both sides broadcast
    {{50}, {}},                     // a 0-d tensor
    {{2, 3, 1, 20}, {1, 3, 17, 1}}, // interleaved broadcast axes
    {{1, 129}, {37, 1}},            // outer product shape
};

// ------------------------------------------------------------------ the fixture
using Inputs = std::vector<Tensor>;
using OpFn = std::function<Tensor(const Inputs&)>;

// What dtype the candidate's output must have: the activation dtype (bf16
// under the bf16 case), f32 (losses), or i64 (argmax).
enum class Out { Act, F32, I64 };

struct Outcome {
  std::vector<Tensor> ref_in, cand_in;
  Tensor ref_out, cand_out;
};

class OpsDevice : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    const Backend& b = GetParam();
    if (b.device.is_cuda()) {
      std::string why;
      if (cuda::device_count(&why) == 0) GTEST_SKIP() << "no usable GPU for case " << b.name << ": " << why;
    }
  }

  const Backend& backend() const { return GetParam(); }
  Device device() const { return backend().device; }
  bool bf16() const { return backend().act == DType::BF16; }
  double tol(Family f) const {
    const Tol t = tolerance(f);
    switch (backend().precision) {
      case Precision::FP32: return t.fp32;
      case Precision::TF32: return t.tf32;
      case Precision::BF16: return t.bf16;
    }
    return 0;
  }
  DType dtype_of_kind(Kind k) const { return k == Kind::Act ? backend().act : DType::F32; }

  // The f64 values the candidate will actually see (rounded to its dtype).
  Tensor rounded(const In& in) const {
    if (!in.v.defined() || in.kind == Kind::Index) return in.v;
    return in.v.to(dtype_of_kind(in.kind)).to(DType::F64);
  }

  // Runs fn on the f64 reference and on the candidate, forward and (when the
  // output requires grad) backward with one random upstream gradient.
  // g_offset shifts the upstream gradient's mean (see check_binary).
  Outcome run(const OpFn& fn, const std::vector<In>& ins, Out expect = Out::Act, double g_offset = 0.0) {
    Outcome o;
    for (const In& in : ins) {
      const Tensor r = rounded(in);
      if (!r.defined()) {
        o.ref_in.emplace_back();
        o.cand_in.emplace_back();
        continue;
      }
      Tensor ref = r.clone();
      Tensor cand = in.kind == Kind::Index ? r.to(device()) : r.to(dtype_of_kind(in.kind)).to(device());
      if (cand.same_storage(r)) cand = cand.clone();  // never share storage with the reference
      if (in.grad) {
        ref.set_requires_grad(true);
        cand.set_requires_grad(true);
      }
      o.ref_in.push_back(ref);
      o.cand_in.push_back(cand);
    }
    o.ref_out = fn(o.ref_in);
    {
      PrecisionGuard precision(backend().precision);
      PoisonGuard poison(true);
      o.cand_out = fn(o.cand_in);
    }
    if (!o.cand_out.defined() || !o.ref_out.defined()) {
      ADD_FAILURE() << "the op returned an undefined tensor";
      return o;
    }
    const DType want = expect == Out::I64 ? DType::I64 : expect == Out::F32 ? DType::F32 : backend().act;
    EXPECT_EQ(o.cand_out.dtype(), want) << "output dtype: " << o.cand_out.str();
    EXPECT_EQ(o.cand_out.device(), device()) << "output device: " << o.cand_out.str();
    EXPECT_EQ(o.cand_out.shape(), o.ref_out.shape()) << "output shape";
    if (o.ref_out.requires_grad()) {
      EXPECT_TRUE(o.cand_out.requires_grad()) << "the candidate recorded no gradient";
      if (!o.cand_out.requires_grad() || o.cand_out.shape() != o.ref_out.shape()) return o;
      // The upstream gradient, rounded to the candidate output's dtype.
      const Tensor g = add_scalar(randn(o.ref_out.shape()), g_offset).to(o.cand_out.dtype()).to(DType::F64);
      o.ref_out.backward(g.to(o.ref_out.dtype()));  // f64, or f32 for an op that casts
      const Tensor gc = g.to(o.cand_out.dtype()).to(device());
      PrecisionGuard precision(backend().precision);
      PoisonGuard poison(true);
      o.cand_out.backward(gc);
    }
    return o;
  }

  // Compares the outputs and the gradient of every input that requires grad.
  void compare(const Outcome& o, double t, const std::string& what) {
    SCOPED_TRACE(what);
    if (!o.cand_out.defined() || !o.ref_out.defined()) return;
    if (o.cand_out.dtype() == DType::I64) {
      EXPECT_EQ(o.cand_out.to_vector<int64_t>(), o.ref_out.to_vector<int64_t>()) << what << ": integer output";
    } else {
      const double e = rel_error(o.cand_out, o.ref_out);
      if (print_errors())
        std::printf("[ error    ] %s %s: output %.3g (tolerance %.3g)\n", backend().name, what.c_str(), e, t);
      EXPECT_LE(e, t) << what << ": output error " << e << " (tolerance " << t << ", case " << backend().name << ")";
    }
    for (size_t i = 0; i < o.ref_in.size(); ++i) {
      const Tensor& r = o.ref_in[i];
      if (!r.defined() || !r.requires_grad()) continue;
      const Tensor& c = o.cand_in[i];
      const Tensor rg = r.grad(), cg = c.grad();
      if (!rg.defined()) continue;  // the op does not depend on this input
      ASSERT_TRUE(cg.defined()) << what << ": no gradient reached input " << i;
      EXPECT_EQ(cg.device(), device()) << what << ": gradient of input " << i << " is " << cg.str();
      EXPECT_EQ(cg.dtype(), c.dtype()) << what << ": gradient of input " << i << " is " << cg.str() << ", input "
                                       << c.str();
      ASSERT_EQ(cg.shape(), rg.shape()) << what << ": gradient shape of input " << i;
      const double e = rel_error(cg, rg);
      if (print_errors())
        std::printf("[ error    ] %s %s: gradient %zu %.3g (tolerance %.3g)\n", backend().name, what.c_str(), i, e, t);
      EXPECT_LE(e, t) << what << ": gradient of input " << i << " error " << e << " (tolerance " << t << ", case "
                      << backend().name << ")";
    }
  }

  void check(const std::string& what, const OpFn& fn, const std::vector<In>& ins, Family fam, Out expect = Out::Act,
             double g_offset = 0.0) {
    compare(run(fn, ins, expect, g_offset), tol(fam), what);
  }

  // A binary op over every broadcast case. The gradient of a broadcast
  // operand is a sum over the axes it is broadcast along (over all elements
  // for a 0-d one); terms of one sign (operands in [0.5, 2], upstream gradient
  // around 2) keep that sum away from cancellation, where a relative error
  // means nothing (with zero-mean values, the bf16 gradient of the [3, 1]
  // divisor of a [2, 1, 40] tensor, 3 sums of 80 terms, failed the 1e-2
  // tolerance in about 1 run in 30).
  void check_binary(const std::string& name, const OpFn& fn, bool positive_rhs) {
    for (const auto& [sa, sb] : kBroadcastShapes) {
      const bool broadcast = sa != sb;
      check(name + " " + shape_str(sa) + ", " + shape_str(sb), fn,
            {broadcast ? act_uniform(sa, 0.5, 2) : act(sa),
             positive_rhs || broadcast ? act_uniform(sb, 0.5, 2) : act(sb)},
            Family::Pointwise, Out::Act, broadcast ? 2.0 : 0.0);
    }
  }
};

// ------------------------------------------------------------------ elementwise

TEST_P(OpsDevice, Add) {
  check_binary("add", [](const Inputs& v) { return add(v[0], v[1]); }, false);
  check("add, one side constant", [](const Inputs& v) { return add(v[0], v[1]); },
        {act({5, 64}), act_of(randn({64}), false)}, Family::Pointwise);
  check("add of strided views", [](const Inputs& v) { return add(transpose(v[0], 0, 1), v[1]); },
        {act({40, 37}), act({37, 40})}, Family::Pointwise);
}

TEST_P(OpsDevice, Sub) {
  check_binary("sub", [](const Inputs& v) { return sub(v[0], v[1]); }, false);
}

TEST_P(OpsDevice, Mul) {
  check_binary("mul", [](const Inputs& v) { return mul(v[0], v[1]); }, false);
  check("mul x*x (one input twice)", [](const Inputs& v) { return mul(v[0], v[0]); }, {act({33, 17})},
        Family::Pointwise);
}

TEST_P(OpsDevice, Div) {
  check_binary("div", [](const Inputs& v) { return div(v[0], v[1]); }, true);
}

TEST_P(OpsDevice, ScalarOps) {
  const Shape s{61, 67};
  check("add_scalar", [](const Inputs& v) { return add_scalar(v[0], 1.5); }, {act(s)}, Family::Pointwise);
  check("mul_scalar", [](const Inputs& v) { return mul_scalar(v[0], -2.5); }, {act(s)}, Family::Pointwise);
  check("rsub_scalar", [](const Inputs& v) { return rsub_scalar(v[0], 3.0); }, {act(s)}, Family::Pointwise);
  check("rdiv_scalar", [](const Inputs& v) { return rdiv_scalar(v[0], 2.0); }, {act_uniform(s, 0.5, 2)},
        Family::Pointwise);
  check("pow_scalar 2.5", [](const Inputs& v) { return pow_scalar(v[0], 2.5); }, {act_uniform(s, 0.5, 2)},
        Family::Pointwise);
  check("pow_scalar -1.5", [](const Inputs& v) { return pow_scalar(v[0], -1.5); }, {act_uniform(s, 0.5, 2)},
        Family::Pointwise);
  check("operators", [](const Inputs& v) { return (v[0] * 2.0 - v[1]) / 3.0 + 1.0 - (-v[0]) * v[1]; },
        {act({20, 30}), act({30})}, Family::Pointwise);
}

TEST_P(OpsDevice, MathFunctions) {
  const Shape s{45, 91};
  check("neg", [](const Inputs& v) { return neg(v[0]); }, {act(s)}, Family::Pointwise);
  check("exp", [](const Inputs& v) { return exp(v[0]); }, {act(s, 2.0)}, Family::Pointwise);
  check("log", [](const Inputs& v) { return log(v[0]); }, {act_uniform(s, 0.2, 3)}, Family::Pointwise);
  check("sqrt", [](const Inputs& v) { return sqrt(v[0]); }, {act_uniform(s, 0.2, 3)}, Family::Pointwise);
  check("square", [](const Inputs& v) { return square(v[0]); }, {act(s)}, Family::Pointwise);
  check("abs", [](const Inputs& v) { return abs(v[0]); }, {act_of(away_from(randn(s), {0.0}))}, Family::Pointwise);
}

TEST_P(OpsDevice, Activations) {
  const Shape s{33, 257};
  check("relu", [](const Inputs& v) { return relu(v[0]); }, {act_of(away_from(randn(s, DType::F64, 2), {0}))},
        Family::Pointwise);
  check("relu6", [](const Inputs& v) { return relu6(v[0]); }, {act_of(away_from(randn(s, DType::F64, 4), {0, 6}))},
        Family::Pointwise);
  check("hardswish", [](const Inputs& v) { return hardswish(v[0]); },
        {act_of(away_from(randn(s, DType::F64, 3), {-3, 3}))}, Family::Pointwise);
  check("hardsigmoid", [](const Inputs& v) { return hardsigmoid(v[0]); },
        {act_of(away_from(randn(s, DType::F64, 3), {-3, 3}))}, Family::Pointwise);
  check("gelu", [](const Inputs& v) { return gelu(v[0]); }, {act(s, 2)}, Family::Pointwise);
  check("gelu tanh", [](const Inputs& v) { return gelu(v[0], true); }, {act(s, 2)}, Family::Pointwise);
  check("sigmoid", [](const Inputs& v) { return sigmoid(v[0]); }, {act(s, 3)}, Family::Pointwise);
  check("tanh", [](const Inputs& v) { return tanh(v[0]); }, {act(s, 2)}, Family::Pointwise);
}

// Ops applied to non-contiguous views (a transpose, a strided slice).
TEST_P(OpsDevice, StridedInputs) {
  check("exp of a transpose", [](const Inputs& v) { return exp(transpose(v[0], 0, 1)); }, {act({31, 45})},
        Family::Pointwise);
  check("relu of a strided slice", [](const Inputs& v) { return relu(slice(v[0], 1, 1, 60, 3)); },
        {act_of(away_from(randn({17, 64}), {0}))}, Family::Pointwise);
  check("mul of two permuted views", [](const Inputs& v) { return mul(permute(v[0], {2, 0, 1}), v[1]); },
        {act({6, 7, 8}), act({8, 6, 7})}, Family::Pointwise);
  check("sum of a permuted view", [](const Inputs& v) { return sum(permute(v[0], {1, 0, 2}), {0, 2}); },
        {act({9, 10, 11})}, Family::Reduce);
}

// ------------------------------------------------------------------ reductions
const std::vector<std::vector<int64_t>> kAxisSets = {{0}, {3}, {1, 2}, {0, 2}, {-1, 0}, {0, 1, 2}, {0, 1, 2, 3}};

// Reductions take inputs with a positive mean (uniform in [-1, 2)): a sum near
// zero would make any relative error meaningless (with zero-mean inputs the
// full sum over [4, 6, 33, 17] came out 500x closer to zero than usual in one
// draw, and its fp32 error 1.6e-5 relative to it).
TEST_P(OpsDevice, Sum) {
  const Shape s{4, 6, 33, 17};
  for (const auto& ax : kAxisSets)
    for (bool keep : {false, true})
      check(fmt::format("sum axes {} keepdim {}", shape_str(ax), keep),
            [&](const Inputs& v) { return sum(v[0], ax, keep); }, {act_uniform(s, -1, 2)}, Family::Reduce);
  check("sum all", [](const Inputs& v) { return sum(v[0]); }, {act_uniform({37, 129}, -1, 2)}, Family::Reduce);
  check("sum all of 100003 (several blocks)", [](const Inputs& v) { return sum(v[0]); },
        {act_uniform({100003}, -1, 2)}, Family::Reduce);
  check("sum of a long middle axis", [](const Inputs& v) { return sum(v[0], {1}); },
        {act_uniform({3, 5000, 4}, -1, 2)}, Family::Reduce);
}

TEST_P(OpsDevice, Mean) {
  const Shape s{4, 6, 33, 17};
  for (const auto& ax : kAxisSets)
    for (bool keep : {false, true})
      check(fmt::format("mean axes {} keepdim {}", shape_str(ax), keep),
            [&](const Inputs& v) { return mean(v[0], ax, keep); }, {act_uniform(s, -1, 2)}, Family::Reduce);
  check("mean all", [](const Inputs& v) { return mean(v[0]); }, {act_uniform({37, 129}, -1, 2)}, Family::Reduce);
  check("global average pool (mean over H, W)", [](const Inputs& v) { return mean(v[0], {1, 2}); },
        {act({8, 8, 8, 256})}, Family::Reduce);
}

TEST_P(OpsDevice, SumTo) {
  check("sum_to [3,1]", [](const Inputs& v) { return sum_to(v[0], {3, 1}); }, {act({2, 3, 40})}, Family::Reduce);
  check("sum_to [40]", [](const Inputs& v) { return sum_to(v[0], {40}); }, {act({5, 3, 40})}, Family::Reduce);
  check("sum_to []", [](const Inputs& v) { return sum_to(v[0], {}); }, {act_uniform({5, 7}, -1, 2)}, Family::Reduce);
}

TEST_P(OpsDevice, Argmax) {
  const Tensor rows = distinct_rows(37, 200);
  check("argmax last axis", [](const Inputs& v) { return argmax(v[0], -1); }, {act_of(rows, false)},
        Family::Move, Out::I64);
  check("argmax axis 0", [](const Inputs& v) { return argmax(v[0], 0); },
        {act_of(transpose(rows, 0, 1).contiguous(), false)}, Family::Move, Out::I64);
  const Tensor r3 = reshape(distinct_rows(12, 50), {3, 4, 50});
  check("argmax middle axis", [](const Inputs& v) { return argmax(v[0], 1); },
        {act_of(permute(r3, {0, 2, 1}).contiguous(), false)}, Family::Move, Out::I64);
  // Ties: the first maximum wins (PyTorch's and the CPU's rule).
  const Tensor ties = Tensor::from_vector<double>({1, 3, 3, 0, 2, 2, 2, 2, -1, 5, 4, 5}, {3, 4});
  check("argmax ties", [](const Inputs& v) { return argmax(v[0], 1); }, {act_of(ties, false)}, Family::Move, Out::I64);
}

// ------------------------------------------------------------------ shape
TEST_P(OpsDevice, ShapeOps) {
  check("reshape", [](const Inputs& v) { return reshape(v[0], {4, -1}); }, {act({2, 6, 4})}, Family::Move);
  check("permute + contiguous", [](const Inputs& v) { return contiguous(permute(v[0], {2, 0, 3, 1})); },
        {act({3, 5, 7, 9})}, Family::Move);
  check("NHWC -> NCHW -> NHWC",
        [](const Inputs& v) { return permute(permute(v[0], {0, 3, 1, 2}).contiguous(), {0, 2, 3, 1}).contiguous(); },
        {act({2, 5, 6, 7})}, Family::Move);
  check("transpose", [](const Inputs& v) { return transpose(v[0], 0, 2).contiguous(); }, {act({6, 3, 10})},
        Family::Move);
  check("permute then reshape (copy)", [](const Inputs& v) { return reshape(permute(v[0], {1, 0, 2}), {-1}); },
        {act({7, 9, 11})}, Family::Move);
  check("slice with step", [](const Inputs& v) { return slice(v[0], 1, 1, 50, 3).contiguous(); }, {act({13, 64})},
        Family::Move);
  check("slice negative bounds", [](const Inputs& v) { return slice(v[0], -1, -30, 64); }, {act({13, 64})},
        Family::Move);
  check("flatten", [](const Inputs& v) { return v[0].flatten(1); }, {act({4, 3, 5, 6})}, Family::Move);
  check("clone of a strided view", [](const Inputs& v) { return v[0].transpose(0, 1).clone(); }, {act({30, 41})},
        Family::Move);
  check("expand", [](const Inputs& v) { return expand(v[0], {6, 30, 40}); }, {act({30, 1})}, Family::Move);
  // The gradient of a 0-d tensor is one sum: an upstream gradient around 2 keeps it from cancelling.
  check("expand a 0-d tensor", [](const Inputs& v) { return expand(v[0], {7, 9}); }, {act({})}, Family::Move, Out::Act,
        2.0);
}

TEST_P(OpsDevice, Concat) {
  check("concat axis 1", [](const Inputs& v) { return concat({v[0], v[1], v[2]}, 1); },
        {act({4, 1, 33}), act({4, 17, 33}), act({4, 2, 33})}, Family::Move);
  check("concat axis 0", [](const Inputs& v) { return concat({v[0], v[1]}, 0); }, {act({5, 37}), act({9, 37})},
        Family::Move);
  check("concat last axis (channels)", [](const Inputs& v) { return concat({v[0], v[1]}, -1); },
        {act({2, 5, 5, 16}), act({2, 5, 5, 48})}, Family::Move);
  check("concat of strided views", [](const Inputs& v) { return concat({transpose(v[0], 0, 1), v[1]}, 0); },
        {act({20, 6}), act({3, 20})}, Family::Move);
}

TEST_P(OpsDevice, IndexSelect) {
  const Tensor idx = Tensor::from_vector<int64_t>({3, 0, 3, 1, 9, 9, 9, 2}, {8});
  check("index_select middle axis (repeats)", [](const Inputs& v) { return index_select(v[0], 1, v[1]); },
        {act({2, 10, 33}), index(idx)}, Family::Move);
  check("index_select axis 0", [](const Inputs& v) { return index_select(v[0], 0, v[1]); },
        {act({10, 65}), index(idx)}, Family::Move);
  check("index_select last axis", [](const Inputs& v) { return index_select(v[0], -1, v[1]); },
        {act({7, 10}), index(idx)}, Family::Move);
  check("index_select of many rows (embedding lookup)", [](const Inputs& v) { return index_select(v[0], 0, v[1]); },
        {act({100, 64}), index(random_labels(500, 100))}, Family::Move);
}

TEST_P(OpsDevice, DtypeCast) {
  // f32 -> bf16 -> f32 rounds; the gradient flows back through both casts.
  check("to bf16 and back to f32", [](const Inputs& v) { return v[0].to(DType::BF16).to(DType::F32); },
        {act({33, 65}, 3.0)}, Family::Move, Out::F32);
  check("to f32", [](const Inputs& v) { return v[0].to(DType::F32); }, {act({33, 65})}, Family::Move, Out::F32);
}

// ------------------------------------------------------------------ linear algebra
TEST_P(OpsDevice, Matmul) {
  check("matmul 2d", [](const Inputs& v) { return matmul(v[0], v[1]); }, {act({33, 65}), act({65, 17})},
        Family::Gemm);
  check("matmul 2d large", [](const Inputs& v) { return matmul(v[0], v[1]); }, {act({128, 256}), act({256, 192})},
        Family::Gemm);
  check("matmul nd x 2d", [](const Inputs& v) { return matmul(v[0], v[1]); },
        {act({2, 3, 20, 16}), act({16, 24})}, Family::Gemm);
  check("matmul batched", [](const Inputs& v) { return matmul(v[0], v[1]); },
        {act({2, 3, 16, 20}), act({2, 3, 20, 12})}, Family::Gemm);
  check("matmul of a transposed operand", [](const Inputs& v) { return matmul(v[0], transpose(v[1], 0, 1)); },
        {act({31, 40}), act({25, 40})}, Family::Gemm);
}

TEST_P(OpsDevice, Bmm) {
  check("bmm", [](const Inputs& v) { return bmm(v[0], v[1]); }, {act({4, 31, 40}), act({4, 40, 23})}, Family::Gemm);
  check("bmm (attention-like)", [](const Inputs& v) { return bmm(v[0], v[1]); },
        {act({12, 64, 32}), act({12, 32, 64})}, Family::Gemm);
}

TEST_P(OpsDevice, Linear) {
  check("linear with bias", [](const Inputs& v) { return linear(v[0], v[1], v[2]); },
        {act({64, 128}), param({96, 128}, 0.1), param({96})}, Family::Gemm);
  check("linear 3d, no bias", [](const Inputs& v) { return linear(v[0], v[1]); },
        {act({2, 13, 40}), param({24, 40}, 0.2)}, Family::Gemm);
  check("linear classifier (odd sizes)", [](const Inputs& v) { return linear(v[0], v[1], v[2]); },
        {act({37, 200}), param({10, 200}, 0.1), param({10})}, Family::Gemm);
}

// ------------------------------------------------------------------ convolution
Conv2dOptions conv_opt(int64_t s, int64_t p, int64_t d = 1, int64_t g = 1) {
  Conv2dOptions o;
  o.stride = {s, s};
  o.padding = {p, p};
  o.dilation = {d, d};
  o.groups = g;
  return o;
}

TEST_P(OpsDevice, Conv2d) {
  struct ConvCase {
    const char* name;
    Shape x, w;
    Conv2dOptions opt;
    bool bias;
  };
  Conv2dOptions asym = conv_opt(1, 0);
  asym.stride = {2, 1};
  asym.padding = {1, 0};
  const std::vector<ConvCase> cases = {
      {"3x3 s1 p1", {2, 9, 9, 8}, {16, 3, 3, 8}, conv_opt(1, 1), true},
      {"3x3 s2 p1", {2, 10, 9, 8}, {16, 3, 3, 8}, conv_opt(2, 1), false},
      {"3x3 dilation 2", {2, 11, 11, 4}, {8, 3, 3, 4}, conv_opt(1, 2, 2), true},
      {"1x1 pointwise", {4, 8, 8, 64}, {96, 1, 1, 64}, conv_opt(1, 0), false},
      {"1x1 stride 2 (downsample)", {2, 9, 9, 32}, {64, 1, 1, 32}, conv_opt(2, 0), false},
      {"groups 2", {2, 7, 7, 8}, {12, 3, 3, 4}, conv_opt(1, 1, 1, 2), true},
      {"depthwise", {2, 12, 12, 32}, {32, 3, 3, 1}, conv_opt(1, 1, 1, 32), true},
      {"depthwise s2 multiplier 2", {2, 10, 10, 8}, {16, 3, 3, 1}, conv_opt(2, 1, 1, 8), false},
      {"5x5 rectangular input", {2, 9, 13, 4}, {6, 5, 5, 4}, conv_opt(1, 2), true},
      {"asymmetric stride and padding", {2, 8, 7, 4}, {6, 3, 2, 4}, asym, true},
      {"3 input channels (stem)", {4, 16, 16, 3}, {16, 3, 3, 3}, conv_opt(1, 1), false},
      {"7x7 s2 p3 (ImageNet stem)", {2, 24, 24, 3}, {16, 7, 7, 3}, conv_opt(2, 3), false},
      {"ResNet 3x3, 64 channels", {4, 16, 16, 64}, {64, 3, 3, 64}, conv_opt(1, 1), false},
  };
  for (const ConvCase& c : cases) {
    const Conv2dOptions opt = c.opt;
    // Weights at the Kaiming scale keep outputs of order 1.
    const double ws = std::sqrt(2.0 / static_cast<double>(c.w[1] * c.w[2] * c.w[3]));
    check(std::string("conv2d ") + c.name, [opt](const Inputs& v) { return conv2d(v[0], v[1], v[2], opt); },
          {act(c.x), param(c.w, ws), c.bias ? param({c.w[0]}) : none()}, Family::Conv);
  }
  check("conv2d of a strided (sliced) input",
        [](const Inputs& v) { return conv2d(slice(v[0], 3, 0, 16, 2), v[1], Tensor(), conv_opt(1, 1)); },
        {act({2, 6, 6, 16}), param({8, 3, 3, 8}, 0.2)}, Family::Conv);
}

// ------------------------------------------------------------------ pooling
TEST_P(OpsDevice, MaxPool2d) {
  Pool2dOptions p2;  // 2x2 stride 2
  Pool2dOptions p3;
  p3.kernel = {3, 3};
  p3.stride = {2, 2};
  p3.padding = {1, 1};
  Pool2dOptions p3s1 = p3;
  p3s1.stride = {1, 1};
  check("max_pool2d 2x2", [p2](const Inputs& v) { return max_pool2d(v[0], p2); },
        {act_of(window_distinct({2, 8, 12, 3}))}, Family::Move);
  check("max_pool2d 3x3 s2 p1", [p3](const Inputs& v) { return max_pool2d(v[0], p3); },
        {act_of(window_distinct({2, 9, 9, 5}))}, Family::Move);
  check("max_pool2d 3x3 s1 p1 (overlapping)", [p3s1](const Inputs& v) { return max_pool2d(v[0], p3s1); },
        {act_of(window_distinct({2, 7, 6, 33}))}, Family::Move);
  check("max_pool2d 3x3 s2 p1, 64 channels", [p3](const Inputs& v) { return max_pool2d(v[0], p3); },
        {act_of(window_distinct({4, 16, 16, 64}))}, Family::Move);
}

TEST_P(OpsDevice, AvgPool2d) {
  Pool2dOptions p3;
  p3.kernel = {3, 3};
  p3.stride = {2, 2};
  p3.padding = {1, 1};
  Pool2dOptions p3x = p3;
  p3x.count_include_pad = false;
  Pool2dOptions p2;
  check("avg_pool2d 2x2", [p2](const Inputs& v) { return avg_pool2d(v[0], p2); }, {act({2, 8, 10, 7})},
        Family::Reduce);
  check("avg_pool2d 3x3 s2 p1", [p3](const Inputs& v) { return avg_pool2d(v[0], p3); }, {act({2, 9, 9, 5})},
        Family::Reduce);
  check("avg_pool2d 3x3 s2 p1, padding not counted", [p3x](const Inputs& v) { return avg_pool2d(v[0], p3x); },
        {act({2, 9, 10, 6})}, Family::Reduce);
}

TEST_P(OpsDevice, AdaptiveAvgPool2d) {
  check("adaptive_avg_pool2d 7x5 -> 3x2", [](const Inputs& v) { return adaptive_avg_pool2d(v[0], 3, 2); },
        {act({2, 7, 5, 3})}, Family::Reduce);
  check("adaptive_avg_pool2d global", [](const Inputs& v) { return adaptive_avg_pool2d(v[0], 1, 1); },
        {act({4, 8, 8, 64})}, Family::Reduce);
  check("adaptive_avg_pool2d 9x9 -> 4x4", [](const Inputs& v) { return adaptive_avg_pool2d(v[0], 4, 4); },
        {act({2, 9, 9, 16})}, Family::Reduce);
}

// ------------------------------------------------------------------ normalisation
TEST_P(OpsDevice, BatchNormTrain) {
  for (const Shape& s : {Shape{64, 40}, Shape{4, 9, 9, 32}, Shape{2, 3, 3, 5}}) {
    const int64_t c = s.back();
    SCOPED_TRACE("batch_norm train " + shape_str(s));
    const Tensor rm0 = randn({c}, DType::F64, 0.1), rv0 = uniform({c}, 0.5, 2.0);
    const double momentum = 0.1;
    // Inputs with a per-channel offset and scale, as after a convolution.
    const Tensor x = add(mul(randn(s), uniform({c}, 0.5, 3.0)), randn({c}));
    Outcome o = run(
        [momentum](const Inputs& v) { return batch_norm(v[0], v[1], v[2], v[3], v[4], true, momentum, 1e-5); },
        {act_of(x), param({c}), param({c}), param_of(rm0, false), param_of(rv0, false)});
    compare(o, tol(Family::Norm), "batch_norm train " + shape_str(s));
    // The running statistics were updated in place on both sides: compare the updates.
    for (int k : {3, 4}) {
      const char* name = k == 3 ? "running_mean" : "running_var";
      ASSERT_TRUE(o.cand_in[static_cast<size_t>(k)].defined());
      EXPECT_EQ(o.cand_in[static_cast<size_t>(k)].dtype(), DType::F32) << name << " must stay f32";
      const Tensor start = k == 3 ? rm0.to(DType::F32).to(DType::F64) : rv0.to(DType::F32).to(DType::F64);
      const Tensor dref = sub(o.ref_in[static_cast<size_t>(k)], start);
      const Tensor dcand = sub(o.cand_in[static_cast<size_t>(k)].cpu().to(DType::F64), start);
      const double e = rel_error(dcand, dref);
      EXPECT_LE(e, tol(Family::Norm)) << name << " update error " << e;
    }
  }
  check("batch_norm train, no affine, no running stats",
        [](const Inputs& v) { return batch_norm(v[0], Tensor(), Tensor(), Tensor(), Tensor(), true); },
        {act({4, 6, 6, 24}, 2.0)}, Family::Norm);
}

TEST_P(OpsDevice, BatchNormEval) {
  for (const Shape& s : {Shape{64, 40}, Shape{4, 9, 9, 32}}) {
    const int64_t c = s.back();
    check("batch_norm eval " + shape_str(s),
          [](const Inputs& v) { return batch_norm(v[0], v[1], v[2], v[3], v[4], false); },
          {act(s), param({c}), param({c}), param_of(randn({c}), false), param_of(uniform({c}, 0.5, 2.0), false)},
          Family::Norm);
  }
}

TEST_P(OpsDevice, BatchNormModule) {
  // The module path: buffers on the device, num_batches_tracked (i64) counted there.
  BatchNorm bn(24);
  bn.to(device());
  bn.train();
  Tensor x = randn({4, 5, 5, 24}).to(backend().act).to(device());
  PrecisionGuard precision(backend().precision);
  Tensor y = bn(x);
  y = bn(x);
  EXPECT_EQ(y.device(), device());
  EXPECT_EQ(bn.num_batches_tracked.device(), device());
  EXPECT_EQ(bn.num_batches_tracked.item(), 2.0);
  EXPECT_EQ(bn.running_mean.device(), device());
  EXPECT_EQ(bn.running_mean.dtype(), DType::F32);
  const std::vector<double> rm = values(bn.running_mean);
  EXPECT_TRUE(std::any_of(rm.begin(), rm.end(), [](double v) { return v != 0.0; })) << "running_mean not updated";
}

TEST_P(OpsDevice, LayerNorm) {
  check("layer_norm", [](const Inputs& v) { return layer_norm(v[0], v[1], v[2]); },
        {act({3, 4, 6}, 2.0), param({6}), param({6})}, Family::Norm);
  check("layer_norm, wide rows", [](const Inputs& v) { return layer_norm(v[0], v[1], v[2]); },
        {act_of(add_scalar(randn({64, 768}, DType::F64, 2.0), 3.0)), param({768}), param({768})}, Family::Norm);
  check("layer_norm, odd width", [](const Inputs& v) { return layer_norm(v[0], v[1], v[2]); },
        {act({17, 1029}), param({1029}), param({1029})}, Family::Norm);
  check("layer_norm, no affine", [](const Inputs& v) { return layer_norm(v[0], Tensor(), Tensor()); },
        {act({5, 7})}, Family::Norm);
}

// ------------------------------------------------------------------ softmax and losses
TEST_P(OpsDevice, Softmax) {
  // 33 rows of 5: the bf16 gradient of a softmax row cancels (it sums to zero), so with 3 rows (15 elements) its
  // relative error passed 1e-2 in about 1 run in 20; over 165 elements it stays near its mean (3e-3).
  check("softmax last", [](const Inputs& v) { return softmax(v[0], -1); }, {act({33, 5}, 2)}, Family::Softmax);
  check("softmax last, 1000 classes", [](const Inputs& v) { return softmax(v[0], -1); }, {act({64, 1000}, 3)},
        Family::Softmax);
  // Rows longer than 1024 take the block-per-row kernels (reductions across warps through shared memory).
  check("softmax last, 3000 classes", [](const Inputs& v) { return softmax(v[0], -1); }, {act({5, 3000}, 3)},
        Family::Softmax);
  check("softmax middle axis", [](const Inputs& v) { return softmax(v[0], 1); }, {act({2, 40, 3}, 2)},
        Family::Softmax);
  check("softmax first axis", [](const Inputs& v) { return softmax(v[0], 0); }, {act({37, 9}, 2)}, Family::Softmax);
}

TEST_P(OpsDevice, LogSoftmax) {
  check("log_softmax last", [](const Inputs& v) { return log_softmax(v[0], -1); }, {act({3, 5}, 2)},
        Family::Softmax);
  check("log_softmax last, 1000 classes", [](const Inputs& v) { return log_softmax(v[0], -1); },
        {act({64, 1000}, 3)}, Family::Softmax);
  check("log_softmax last, 3000 classes", [](const Inputs& v) { return log_softmax(v[0], -1); },
        {act({5, 3000}, 3)}, Family::Softmax);
  check("log_softmax first axis", [](const Inputs& v) { return log_softmax(v[0], 0); }, {act({40, 3}, 2)},
        Family::Softmax);
  check("log_softmax middle axis", [](const Inputs& v) { return log_softmax(v[0], 1); }, {act({4, 33, 5}, 2)},
        Family::Softmax);
}

TEST_P(OpsDevice, CrossEntropy) {
  for (double ls : {0.0, 0.1}) {
    const std::string tag = fmt::format(" label smoothing {}", ls);
    check("cross_entropy 5x5" + tag, [ls](const Inputs& v) { return cross_entropy(v[0], v[1], ls); },
          {act({5, 5}, 2), index(random_labels(5, 5))}, Family::Softmax, Out::F32);
    check("cross_entropy 37x10" + tag, [ls](const Inputs& v) { return cross_entropy(v[0], v[1], ls); },
          {act({37, 10}, 2), index(random_labels(37, 10))}, Family::Softmax, Out::F32);
    check("cross_entropy 256x1000" + tag, [ls](const Inputs& v) { return cross_entropy(v[0], v[1], ls); },
          {act({256, 1000}, 3), index(random_labels(256, 1000))}, Family::Softmax, Out::F32);
    check("cross_entropy 6x2500 (block per row)" + tag, [ls](const Inputs& v) { return cross_entropy(v[0], v[1], ls); },
          {act({6, 2500}, 3), index(random_labels(6, 2500))}, Family::Softmax, Out::F32);
  }
}

TEST_P(OpsDevice, KlDiv) {
  auto probs = [](const Shape& s) {
    NoGradGuard g;
    return softmax(randn(s, DType::F64, 2), -1).detach().contiguous();
  };
  auto logprobs = [](const Shape& s) {
    NoGradGuard g;
    return log_softmax(randn(s, DType::F64, 2), -1).detach().contiguous();
  };
  for (const Shape& s : {Shape{4, 5}, Shape{32, 1000}}) {
    check("kl_div " + shape_str(s), [](const Inputs& v) { return kl_div(v[0], v[1]); },
          {act_of(logprobs(s)), act_of(probs(s))}, Family::Softmax, Out::F32);
    check("kl_div log_target " + shape_str(s), [](const Inputs& v) { return kl_div(v[0], v[1], true); },
          {act_of(logprobs(s)), act_of(logprobs(s))}, Family::Softmax, Out::F32);
  }
  // The composition S2HPruner uses: KL(softmax(s) || softmax(h)) w.r.t. both logits.
  check("kl_div of softmaxes", [](const Inputs& v) { return kl_div(log_softmax(v[1], -1), softmax(v[0], -1)); },
        {act({16, 100}, 2), act({16, 100}, 2)}, Family::Softmax, Out::F32);
}

TEST_P(OpsDevice, Dropout) {
  const double p = 0.3;
  const int64_t rows = 64, cols = 1031;  // 65984 elements: the keep fraction is known to +-0.9% (5 sigma)
  const Tensor x64 = uniform({rows, cols}, 0.5, 2.0).to(backend().act).to(DType::F64);
  const Tensor g64 = randn({rows, cols}).to(backend().act).to(DType::F64);
  Tensor x = x64.to(backend().act).to(device());
  x.set_requires_grad(true);
  Generator gen(test_generator().next_u64());
  Tensor y;
  {
    PrecisionGuard precision(backend().precision);
    PoisonGuard poison(true);
    y = dropout(x, p, true, &gen);
    y.backward(g64.to(backend().act).to(device()));
  }
  ASSERT_EQ(y.dtype(), backend().act);
  ASSERT_EQ(y.device(), device());
  const std::vector<double> xv = values(x64), yv = values(y), gv = values(g64), dx = values(x.grad());
  const double scale = 1.0 / (1.0 - p);
  // A kept element is x / (1 - p) rounded to the output dtype; its gradient g / (1 - p).
  const double rel = bf16() ? 1.0 / 128 : 1e-6;
  int64_t kept = 0, bad_value = 0, bad_grad = 0;
  for (size_t i = 0; i < xv.size(); ++i) {
    if (!std::isfinite(yv[i]) || !std::isfinite(dx[i])) {
      ++bad_value;
      continue;
    }
    if (yv[i] != 0.0) {
      ++kept;
      if (std::abs(yv[i] - xv[i] * scale) > rel * std::abs(xv[i] * scale)) ++bad_value;
      if (std::abs(dx[i] - gv[i] * scale) > rel * std::abs(gv[i] * scale) + 1e-30) ++bad_grad;
    } else if (dx[i] != 0.0) {
      ++bad_grad;  // the backward must use the forward's mask
    }
  }
  const double n = static_cast<double>(xv.size()), frac = static_cast<double>(kept) / n;
  const double sigma = std::sqrt(p * (1 - p) / n);
  EXPECT_NEAR(frac, 1 - p, 5 * sigma) << "keep fraction";
  EXPECT_EQ(bad_value, 0) << "kept elements not scaled by 1/(1-p) (or NaN)";
  EXPECT_EQ(bad_grad, 0) << "gradient elements not following the forward mask";

  // A second call draws a new mask; evaluation mode and p = 0 are the identity; p = 1 drops all.
  Tensor y2 = dropout(x.detach(), p, true, &gen);
  const std::vector<double> y2v = values(y2);
  int64_t differ = 0;
  for (size_t i = 0; i < yv.size(); ++i) differ += (yv[i] == 0.0) != (y2v[i] == 0.0);
  EXPECT_GT(differ, static_cast<int64_t>(n * 0.1)) << "two calls gave (nearly) the same mask";
  EXPECT_EQ(values(dropout(x.detach(), p, false, &gen)), values(x64)) << "eval mode must be the identity";
  EXPECT_EQ(values(dropout(x.detach(), 0.0, true, &gen)), values(x64)) << "p = 0 must be the identity";
  const std::vector<double> all = values(dropout(x.detach(), 1.0, true, &gen));
  EXPECT_TRUE(std::all_of(all.begin(), all.end(), [](double v) { return v == 0.0; })) << "p = 1 must drop everything";
}

// ------------------------------------------------------------------ optimisers
// A few steps of an optimiser on the case's device (f32 master weights under
// every precision) against the same optimiser on f64 CPU copies, from the same
// start with the same gradients. Compares the change of every parameter and
// every state tensor.
template <class Opt, class Options>
void check_optimizer(const std::string& what, const Options& opt, Device device, double tol) {
  SCOPED_TRACE(what);
  const std::vector<Shape> shapes = {{17}, {33, 9}, {4, 3, 3, 8}, {1000}, {5}, {3, 7}};
  std::vector<Tensor> start, ref, cand;
  for (const Shape& s : shapes) {
    start.push_back(randn(s).to(DType::F32).to(DType::F64));
    ref.push_back(start.back().clone().set_requires_grad(true));
    cand.push_back(start.back().to(DType::F32).to(device).set_requires_grad(true));
  }
  // Two groups: the second with its own weight decay and a halved lr; parameter 2 never gets a gradient.
  auto groups = [](const std::vector<Tensor>& p) {
    return std::vector<ParamGroup>{ParamGroup{{p[0], p[1], p[2]}, std::nullopt, 1.0},
                                   ParamGroup{{p[3], p[4], p[5]}, 0.0, 0.5}};
  };
  Opt ref_opt(groups(ref), opt), cand_opt(groups(cand), opt);
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i < shapes.size(); ++i) {
      if (i == 2) continue;
      const Tensor g = randn(shapes[i]).to(DType::F32).to(DType::F64);
      ref[i].set_grad(g);
      cand[i].set_grad(g.to(DType::F32).to(device));
    }
    ref_opt.step();
    {
      PoisonGuard poison(true);
      cand_opt.step();
    }
  }
  for (size_t i = 0; i < shapes.size(); ++i) {
    ASSERT_EQ(cand[i].device(), device);
    ASSERT_EQ(cand[i].dtype(), DType::F32);
    const Tensor dref = sub(ref[i].detach(), start[i]);
    const Tensor dcand = sub(cand[i].detach().cpu().to(DType::F64), start[i]);
    if (i == 2) {
      EXPECT_EQ(values(dcand), values(dref)) << "a parameter without gradient must not move";
      continue;
    }
    const double e = rel_error(dcand, dref);
    EXPECT_LE(e, tol) << "parameter " << i << " change error " << e;
  }
  const NamedTensors rs = ref_opt.state_dict(), cs = cand_opt.state_dict();
  ASSERT_EQ(rs.size(), cs.size()) << "state tensors";
  for (size_t k = 0; k < rs.size(); ++k) {
    ASSERT_EQ(rs[k].first, cs[k].first);
    if (rs[k].second.dtype() == DType::I64) {
      EXPECT_EQ(values(cs[k].second), values(rs[k].second)) << rs[k].first;
      continue;
    }
    const double e = rel_error(cs[k].second, rs[k].second);
    EXPECT_LE(e, tol) << "state " << rs[k].first << " error " << e;
  }
}

TEST_P(OpsDevice, SGD) {
  const double t = tol(Family::Optim);
  SGDOptions a;
  a.lr = 0.1;
  a.momentum = 0.9;
  a.nesterov = true;
  a.weight_decay = 5e-4;
  check_optimizer<SGD>("SGD momentum 0.9 nesterov wd 5e-4", a, device(), t);
  SGDOptions b;
  b.lr = 0.2;
  b.momentum = 0.8;
  b.dampening = 0.1;
  b.weight_decay = 1e-2;
  check_optimizer<SGD>("SGD momentum 0.8 dampening 0.1 wd 1e-2", b, device(), t);
  SGDOptions c;
  c.lr = 0.3;
  c.weight_decay = 1e-3;
  check_optimizer<SGD>("SGD plain, wd 1e-3", c, device(), t);
}

TEST_P(OpsDevice, AdamW) {
  const double t = tol(Family::Optim);
  AdamWOptions a;
  a.lr = 0.05;
  a.weight_decay = 0.05;
  check_optimizer<AdamW>("AdamW lr 0.05 wd 0.05", a, device(), t);
  AdamWOptions b;
  b.lr = 0.02;
  b.beta1 = 0.8;
  b.beta2 = 0.99;
  b.eps = 1e-6;
  b.weight_decay = 0.0;
  check_optimizer<AdamW>("AdamW betas 0.8/0.99 eps 1e-6 no wd", b, device(), t);
}

// ------------------------------------------------------------------ the precision policy
// Under bf16 a GEMM-class op on CUDA returns bf16 for f32 inputs, and the f32
// weights get f32 gradients; on the CPU the policy changes nothing. Values are
// compared with the f64 reference at the bf16 tolerance (the op rounds its
// inputs itself here).
TEST_P(OpsDevice, PrecisionPolicy) {
  const bool gpu = device().is_cuda();
  EXPECT_EQ(gemm_dtype(device(), DType::F32), DType::F32) << "fp32 is the default policy";
  {
    PrecisionGuard g(Precision::BF16);
    EXPECT_EQ(gemm_dtype(device(), DType::F32), gpu ? DType::BF16 : DType::F32);
    EXPECT_EQ(gemm_dtype(Device::cpu(), DType::F32), DType::F32);
    EXPECT_FALSE(allow_tf32());
  }
  {
    PrecisionGuard g(Precision::TF32);
    EXPECT_TRUE(allow_tf32());
    EXPECT_EQ(gemm_dtype(device(), DType::F32), DType::F32);
  }
  const double t = tolerance(Family::Gemm).bf16;
  const DType want = gpu ? DType::BF16 : DType::F32;
  struct Op {
    const char* name;
    std::function<Tensor(const Inputs&)> fn;
    std::vector<Shape> shapes;  // x, then weights
  };
  const std::vector<Op> ops = {
      {"linear", [](const Inputs& v) { return linear(v[0], v[1], v[2]); }, {{32, 64}, {48, 64}, {48}}},
      {"conv2d", [](const Inputs& v) { return conv2d(v[0], v[1], v[2], conv_opt(1, 1)); },
       {{2, 8, 8, 16}, {24, 3, 3, 16}, {24}}},
      {"matmul", [](const Inputs& v) { return matmul(v[0], v[1]); }, {{20, 30}, {30, 40}}},
      {"bmm", [](const Inputs& v) { return bmm(v[0], v[1]); }, {{3, 20, 30}, {3, 30, 10}}},
  };
  for (const Op& op : ops) {
    SCOPED_TRACE(op.name);
    std::vector<Tensor> ref, cand;
    for (const Shape& s : op.shapes) {
      const Tensor v = randn(s, DType::F64, 0.3).to(DType::F32).to(DType::F64);
      ref.push_back(v.clone().set_requires_grad(true));
      cand.push_back(v.to(DType::F32).to(device()).set_requires_grad(true));
    }
    Tensor out;
    const Tensor r = op.fn(ref);
    const Tensor g = randn(r.shape()).to(DType::BF16).to(DType::F64);
    r.backward(g);
    {
      PrecisionGuard pg(Precision::BF16);
      PoisonGuard poison(true);
      out = op.fn(cand);
      ASSERT_EQ(out.dtype(), want) << op.name << " under the bf16 policy returned " << out.str();
      out.backward(g.to(want).to(device()));
    }
    EXPECT_LE(rel_error(out, r), t) << op.name << " output";
    for (size_t i = 0; i < cand.size(); ++i) {
      const Tensor cg = cand[i].grad();
      ASSERT_TRUE(cg.defined()) << op.name << ": no gradient for input " << i;
      EXPECT_EQ(cg.dtype(), DType::F32) << op.name << ": gradient of f32 input " << i << " must be f32, is "
                                        << cg.str();
      EXPECT_LE(rel_error(cg, ref[i].grad()), t) << op.name << " gradient of input " << i;
    }
    // The fp32 policy keeps f32.
    PrecisionGuard pg(Precision::FP32);
    EXPECT_EQ(op.fn(cand).dtype(), DType::F32) << op.name << " under the fp32 policy";
  }
}

// ------------------------------------------------------------------ the cases
INSTANTIATE_TEST_SUITE_P(Backends, OpsDevice,
                         ::testing::Values(Backend{"cpu_fp32", Device::cpu(), Precision::FP32, DType::F32},
                                           Backend{"cuda_fp32", Device::cuda(0), Precision::FP32, DType::F32},
                                           Backend{"cuda_tf32", Device::cuda(0), Precision::TF32, DType::F32},
                                           Backend{"cuda_bf16", Device::cuda(0), Precision::BF16, DType::BF16}),
                         backend_name);

}  // namespace
}  // namespace s2h::test
