#include "tests/test_util.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>

namespace s2h::test {

uint64_t run_seed() {
  static const uint64_t seed = [] {
    if (const char* s = std::getenv("S2H_TEST_SEED")) return static_cast<uint64_t>(std::strtoull(s, nullptr, 10));
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }();
  return seed;
}

namespace {
// Prints the seed once per failing test.
class SeedReporter : public ::testing::EmptyTestEventListener {
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed())
      std::printf("[ seed     ] replay with S2H_TEST_SEED=%llu\n", static_cast<unsigned long long>(run_seed()));
  }
};
const bool registered = [] {
  ::testing::UnitTest::GetInstance()->listeners().Append(new SeedReporter);
  return true;
}();
}  // namespace

Generator& test_generator() {
  static std::string current;
  static Generator gen;
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "none";
  if (name != current) {
    current = name;
    gen.seed(run_seed() ^ std::hash<std::string>{}(name));
  }
  return gen;
}

Tensor randn(const Shape& shape, DType dtype, double scale) {
  Tensor t = Tensor::randn(shape, DType::F64, &test_generator());
  if (scale != 1.0) t.mul_(scale);
  return t.to(dtype);
}

Tensor uniform(const Shape& shape, double lo, double hi, DType dtype) {
  return Tensor::uniform(shape, lo, hi, dtype, &test_generator());
}

Tensor leaf(const Shape& shape, DType dtype, double scale) {
  Tensor t = randn(shape, dtype, scale);
  t.set_requires_grad(true);
  return t;
}

Tensor leaf_uniform(const Shape& shape, double lo, double hi, DType dtype) {
  Tensor t = uniform(shape, lo, hi, dtype);
  t.set_requires_grad(true);
  return t;
}

std::vector<double> values(const Tensor& t) { return t.to_vector<double>(); }

double scaled_error(const Tensor& a, const Tensor& ref, double floor) {
  const std::vector<double> va = values(a), vr = values(ref);
  if (va.size() != vr.size()) return INFINITY;
  double scale = floor, err = 0;
  for (double v : vr) scale = std::max(scale, std::abs(v));
  for (size_t i = 0; i < va.size(); ++i) {
    if (std::isnan(va[i]) != std::isnan(vr[i])) return INFINITY;
    err = std::max(err, std::abs(va[i] - vr[i]));
  }
  return err / scale;
}

double rel_error(const Tensor& a, const Tensor& ref) {
  const std::vector<double> va = values(a), vr = values(ref);
  if (va.size() != vr.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    if (!std::isfinite(va[i])) return INFINITY;
    num += (va[i] - vr[i]) * (va[i] - vr[i]);
    den += vr[i] * vr[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

void expect_close(const Tensor& a, const Tensor& ref, double rtol, double atol, const std::string& what) {
  ASSERT_TRUE(a.defined()) << what << ": result is undefined";
  ASSERT_TRUE(ref.defined()) << what << ": reference is undefined";
  ASSERT_EQ(a.shape(), ref.shape()) << what << ": shape " << shape_str(a.shape()) << " vs reference "
                                    << shape_str(ref.shape());
  const std::vector<double> va = values(a), vr = values(ref);
  int reported = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    const bool ok = !std::isnan(va[i]) && std::abs(va[i] - vr[i]) <= atol + rtol * std::abs(vr[i]);
    if (!ok && reported++ < 5)
      ADD_FAILURE() << what << ": element " << i << " is " << va[i] << ", reference " << vr[i] << " (|diff| "
                    << std::abs(va[i] - vr[i]) << ")";
  }
  if (reported > 5) ADD_FAILURE() << what << ": " << reported << " elements differ in all";
}

void gradcheck(const std::string& name, const std::function<Tensor(const std::vector<Tensor>&)>& fn,
               const std::vector<Tensor>& inputs, const GradcheckOptions& opt) {
  SCOPED_TRACE("gradcheck " + name);
  for (const Tensor& t : inputs) ASSERT_TRUE(!t.defined() || t.dtype() == DType::F64 || !t.requires_grad()) << "inputs must be f64";
  for (const Tensor& t : inputs)
    if (t.defined()) t.zero_grad();
  Tensor out = fn(inputs);
  ASSERT_EQ(out.dtype(), DType::F64);
  const Tensor weights = randn(out.shape());
  auto loss_of = [&](const Tensor& o) { return sum(mul(o, weights)); };
  Tensor loss = loss_of(out);
  ASSERT_TRUE(loss.requires_grad()) << name << ": the output does not depend on any input that requires grad";
  loss.backward();

  for (size_t k = 0; k < inputs.size(); ++k) {
    const Tensor& in = inputs[k];
    if (!in.defined() || !in.requires_grad()) continue;
    const Tensor analytic = in.grad();
    ASSERT_TRUE(analytic.defined()) << name << ": no gradient reached input " << k;
    ASSERT_EQ(analytic.shape(), in.shape());
    ASSERT_TRUE(in.is_contiguous());
    const std::vector<double> a = values(analytic);
    double* p = in.data<double>();
    int reported = 0;
    for (int64_t i = 0; i < in.numel(); ++i) {
      const double saved = p[i];
      double lp, lm;
      {
        NoGradGuard guard;
        p[i] = saved + opt.eps;
        lp = loss_of(fn(inputs)).item();
        p[i] = saved - opt.eps;
        lm = loss_of(fn(inputs)).item();
        p[i] = saved;
      }
      const double numeric = (lp - lm) / (2 * opt.eps);
      if (!(std::abs(a[i] - numeric) <= opt.atol + opt.rtol * std::abs(numeric)) && reported++ < 5)
        ADD_FAILURE() << name << ": d/d input" << k << "[" << i << "] analytic " << a[i] << ", numeric " << numeric;
    }
  }

  if (opt.f32_tol <= 0) return;
  // The same computation in f32 against the f64 result.
  std::vector<Tensor> in32;
  for (const Tensor& t : inputs) {
    if (!t.defined()) {
      in32.emplace_back();
      continue;
    }
    Tensor c = t.detach().to(t.dtype() == DType::F64 ? DType::F32 : t.dtype()).clone();
    if (t.requires_grad()) c.set_requires_grad(true);
    in32.push_back(c);
  }
  Tensor out32 = fn(in32);
  ASSERT_EQ(out32.dtype(), DType::F32) << name << ": the f32 run did not compute in f32";
  EXPECT_LE(scaled_error(out32, out), opt.f32_tol) << name << ": f32 output differs from f64";
  sum(mul(out32, weights.to(DType::F32))).backward();
  for (size_t k = 0; k < inputs.size(); ++k) {
    if (!inputs[k].defined() || !inputs[k].requires_grad()) continue;
    EXPECT_LE(scaled_error(in32[k].grad(), inputs[k].grad()), opt.f32_tol)
        << name << ": f32 gradient of input " << k << " differs from f64";
  }
}

std::string source_dir() { return S2H_TEST_SOURCE_DIR; }

TempDir::TempDir() {
  static std::atomic<int> counter{0};
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::string test = info ? std::string(info->test_suite_name()) + "_" + info->name() : "none";
  std::random_device rd;
  path_ = std::filesystem::temp_directory_path() /
          fmt::format("s2h_{}_{}_{}_{:08x}", test, ::getpid(), counter++, static_cast<unsigned>(rd()));
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::vector<std::string> TempDir::entries() const {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(path_)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << "could not write " << path;
}

void expect_words(const std::string& msg, const std::string& words, const char* stmt) {
  size_t start = 0;
  while (start <= words.size()) {
    const size_t end = std::min(words.find('|', start), words.size());
    const std::string w = words.substr(start, end - start);
    EXPECT_NE(msg.find(w), std::string::npos) << stmt << ": message \"" << msg << "\" does not contain \"" << w << "\"";
    start = end + 1;
  }
}

}  // namespace s2h::test
