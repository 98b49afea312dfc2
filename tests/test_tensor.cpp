// Tensor unit tests: creation, geometry, views, conversions, in-place ops and
// error messages; then forward values of ops against hand-computed results or
// naive f64 loops (convolution, pooling, reductions, softmax, losses).
#include <cmath>
#include <cstring>
#include <limits>

#include "tests/test_util.h"

namespace s2h::test {
namespace {

// ------------------------------------------------------------------ helpers
Tensor f64(std::vector<double> v, const Shape& s) { return Tensor::from_vector<double>(v, s); }

void expect_values(const Tensor& t, const std::vector<double>& want, const std::string& what, double tol = 0) {
  const std::vector<double> got = values(t);
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << what << " at " << i;
}

// Row-major flat index of a multi-index.
int64_t flat(const Shape& shape, std::initializer_list<int64_t> idx) {
  int64_t f = 0;
  size_t d = 0;
  for (int64_t i : idx) f = f * shape[d++] + i;
  return f;
}

uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ================================================================== creation
TEST(TensorCreate, ZerosOnesFull) {
  Tensor z = Tensor::zeros({2, 3});
  EXPECT_EQ(z.dtype(), DType::F32);
  EXPECT_EQ(z.shape(), (Shape{2, 3}));
  EXPECT_EQ(z.numel(), 6);
  EXPECT_EQ(z.dim(), 2);
  EXPECT_TRUE(z.device().is_cpu());
  expect_values(z, std::vector<double>(6, 0.0), "zeros");

  Tensor o = Tensor::ones({4}, DType::F64);
  EXPECT_EQ(o.dtype(), DType::F64);
  expect_values(o, std::vector<double>(4, 1.0), "ones");

  for (DType dt : {DType::F32, DType::F64, DType::BF16}) {
    Tensor f = Tensor::full({2, 2}, -2.5, dt);
    EXPECT_EQ(f.dtype(), dt);
    expect_values(f, std::vector<double>(4, -2.5), std::string("full ") + dtype_name(dt));
  }
  expect_values(Tensor::full({3}, 7, DType::I64), {7, 7, 7}, "full i64");
  expect_values(Tensor::full({3}, 200, DType::U8), {200, 200, 200}, "full u8");
  EXPECT_EQ(Tensor::full({3}, 200, DType::U8).to_vector<uint8_t>(), (std::vector<uint8_t>{200, 200, 200}));

  // Empty tensors are fine.
  Tensor e = Tensor::zeros({0, 3});
  EXPECT_EQ(e.numel(), 0);
  EXPECT_EQ(e.shape(), (Shape{0, 3}));
  EXPECT_TRUE(values(e).empty());
}

TEST(TensorCreate, FromVector) {
  Tensor t = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  EXPECT_EQ(t.dtype(), DType::F32);
  EXPECT_EQ(t.shape(), (Shape{2, 3}));
  EXPECT_EQ(t.to_vector<float>(), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(t.data<float>()[4], 5.0f);

  Tensor i = Tensor::from_vector<int64_t>({-3, 0, 9}, {3});
  EXPECT_EQ(i.dtype(), DType::I64);
  EXPECT_EQ(i.to_vector<int64_t>(), (std::vector<int64_t>{-3, 0, 9}));

  Tensor u = Tensor::from_vector<uint8_t>({0, 128, 255}, {3, 1});
  EXPECT_EQ(u.dtype(), DType::U8);
  EXPECT_EQ(u.shape(), (Shape{3, 1}));

  EXPECT_ERROR("from_vector|5|[2, 3]", Tensor::from_vector<float>({1, 2, 3, 4, 5}, {2, 3}));
}

TEST(TensorCreate, ArangeAndScalar) {
  Tensor a = Tensor::arange(5);
  EXPECT_EQ(a.dtype(), DType::I64);
  EXPECT_EQ(a.to_vector<int64_t>(), (std::vector<int64_t>{0, 1, 2, 3, 4}));
  Tensor af = Tensor::arange(4, DType::F32);
  EXPECT_EQ(af.dtype(), DType::F32);
  EXPECT_EQ(af.to_vector<float>(), (std::vector<float>{0, 1, 2, 3}));
  EXPECT_EQ(Tensor::arange(0).numel(), 0);

  Tensor s = Tensor::scalar(3.5);
  EXPECT_EQ(s.dim(), 0);
  EXPECT_TRUE(s.shape().empty());
  EXPECT_TRUE(s.strides().empty());
  EXPECT_EQ(s.numel(), 1);
  EXPECT_EQ(s.dtype(), DType::F32);
  EXPECT_TRUE(s.is_contiguous());
  EXPECT_DOUBLE_EQ(s.item(), 3.5);
  EXPECT_DOUBLE_EQ(Tensor::scalar(-4, DType::I64).item(), -4.0);
  EXPECT_DOUBLE_EQ(Tensor::scalar(0.1, DType::F64).item(), 0.1);
}

TEST(TensorCreate, RandnIsSeededAndStandardNormal) {
  const uint64_t seed = test_generator().next_u64();
  Generator g1(seed), g2(seed), g3(seed + 1);
  Tensor a = Tensor::randn({100}, DType::F64, &g1);
  Tensor b = Tensor::randn({100}, DType::F64, &g2);
  Tensor c = Tensor::randn({100}, DType::F64, &g3);
  EXPECT_EQ(values(a), values(b)) << "the same seed must give the same samples";
  EXPECT_NE(values(a), values(c)) << "different seeds must give different samples";
  EXPECT_EQ(Tensor::randn({3, 4}, DType::F32, &g1).dtype(), DType::F32);

  const int64_t n = 40000;
  const std::vector<double> v = values(Tensor::randn({n}, DType::F64, &test_generator()));
  double m = 0, m2 = 0;
  for (double x : v) m += x;
  m /= n;
  for (double x : v) m2 += (x - m) * (x - m);
  m2 /= n;
  // Standard errors: 0.005 for the mean, 0.007 for the variance; these bounds are > 8 sigma.
  EXPECT_LT(std::abs(m), 0.04);
  EXPECT_LT(std::abs(m2 - 1.0), 0.06);
}

TEST(TensorCreate, UniformRangeAndMean) {
  const int64_t n = 40000;
  Tensor u = Tensor::uniform({n}, -2.0, 3.0, DType::F64, &test_generator());
  const std::vector<double> v = values(u);
  double lo = 1e9, hi = -1e9, m = 0;
  for (double x : v) {
    lo = std::min(lo, x);
    hi = std::max(hi, x);
    m += x;
  }
  m /= n;
  EXPECT_GE(lo, -2.0);
  EXPECT_LT(hi, 3.0);
  EXPECT_LT(lo, -1.9);
  EXPECT_GT(hi, 2.9);
  EXPECT_NEAR(m, 0.5, 0.1);  // std error 1.44/sqrt(n) = 0.007
  const uint64_t seed = test_generator().next_u64();
  Generator g1(seed), g2(seed);
  EXPECT_EQ(values(Tensor::uniform({10}, 0, 1, DType::F32, &g1)), values(Tensor::uniform({10}, 0, 1, DType::F32, &g2)));
}

TEST(TensorCreate, NegativeShapeIsAnError) {
  EXPECT_ERROR("negative|[2, -1]", Tensor::zeros({2, -1}));
  EXPECT_ERROR("negative", Tensor::empty({-3}));
  EXPECT_ERROR("negative", Tensor::full({4, -2}, 1.0, DType::F64));
}

// ================================================================== geometry
TEST(TensorGeometry, StridesSizesContiguity) {
  Tensor t = Tensor::zeros({2, 3, 4});
  EXPECT_EQ(t.strides(), (Shape{12, 4, 1}));
  EXPECT_EQ(t.offset(), 0);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.size(0), 2);
  EXPECT_EQ(t.size(-1), 4);
  EXPECT_EQ(t.size(-3), 2);
  EXPECT_ERROR("3|out of range", t.size(3));
  EXPECT_ERROR("-4|out of range", t.size(-4));
  EXPECT_EQ(t.str(), "Tensor[f32 [2, 3, 4] cpu]");
  EXPECT_EQ(Tensor().str(), "Tensor[undefined]");

  // Size-1 axes do not break contiguity, whatever their stride.
  Tensor row = Tensor::zeros({3, 4}).slice(0, 1, 2);
  EXPECT_EQ(row.shape(), (Shape{1, 4}));
  EXPECT_TRUE(row.is_contiguous());
  EXPECT_EQ(row.offset(), 4);
  Tensor col = Tensor::zeros({3, 4}).slice(1, 2, 3);
  EXPECT_EQ(col.shape(), (Shape{3, 1}));
  EXPECT_FALSE(col.is_contiguous());
}

// ================================================================== views
TEST(TensorViews, ReshapeOfContiguousSharesStorage) {
  Tensor x = randn({2, 3, 4});
  Tensor r = x.reshape({4, -1});
  EXPECT_EQ(r.shape(), (Shape{4, 6}));
  EXPECT_TRUE(r.same_storage(x));
  EXPECT_TRUE(r.is_contiguous());
  EXPECT_EQ(values(r), values(x));
  // A write through the view is seen by the source.
  r.data<double>()[flat({4, 6}, {2, 5})] = 123.0;
  EXPECT_EQ(values(x)[17], 123.0);
  EXPECT_EQ(x.reshape({24}).shape(), (Shape{24}));
  EXPECT_EQ(x.reshape({-1}).shape(), (Shape{24}));
  EXPECT_EQ(x.reshape({2, 1, 12}).shape(), (Shape{2, 1, 12}));
  EXPECT_EQ(Tensor::scalar(2.0).reshape({1, 1}).shape(), (Shape{1, 1}));
}

TEST(TensorViews, ReshapeErrors) {
  Tensor x = randn({2, 3});
  EXPECT_ERROR("reshape|[2, 3]|[4]", x.reshape({4}));
  EXPECT_ERROR("reshape|[2, 3]", x.reshape({4, -1}));
  EXPECT_ERROR("reshape|-1", x.reshape({-1, -1}));
  EXPECT_ERROR("cannot reshape", x.reshape({7}));
}

TEST(TensorViews, SliceWithStepAndNegativeBounds) {
  Tensor a = Tensor::arange(10, DType::F64);
  Tensor s = a.slice(0, -7, -1, 2);  // elements 3, 5, 7
  EXPECT_EQ(s.shape(), (Shape{3}));
  EXPECT_EQ(s.strides(), (Shape{2}));
  EXPECT_EQ(s.offset(), 3);
  EXPECT_TRUE(s.same_storage(a));
  EXPECT_FALSE(s.is_contiguous());
  expect_values(s, {3, 5, 7}, "slice(-7, -1, 2)");
  expect_values(a.slice(0, 2, 100), {2, 3, 4, 5, 6, 7, 8, 9}, "slice end clamps");
  expect_values(a.slice(0, -100, 2), {0, 1}, "slice start clamps");
  EXPECT_EQ(a.slice(0, 6, 3).numel(), 0);
  expect_values(a.slice(0, 0, 10, 3), {0, 3, 6, 9}, "step 3");
  expect_values(a.slice(0, 1, 10, 4), {1, 5, 9}, "step 4");

  Tensor m = Tensor::arange(18, DType::F64).reshape({3, 6});
  Tensor v = m.slice(1, 1, 5, 2);  // columns 1, 3
  EXPECT_EQ(v.shape(), (Shape{3, 2}));
  EXPECT_EQ(v.strides(), (Shape{6, 2}));
  EXPECT_EQ(v.offset(), 1);
  expect_values(v, {1, 3, 7, 9, 13, 15}, "column slice");
  Tensor vv = v.slice(0, -2, 3);  // rows 1, 2 of the column slice
  EXPECT_EQ(vv.offset(), 7);
  expect_values(vv, {7, 9, 13, 15}, "slice of a slice");
  // Writes through the view reach the source.
  v.fill_(-1);
  expect_values(m, {0, -1, 2, -1, 4, 5, 6, -1, 8, -1, 10, 11, 12, -1, 14, -1, 16, 17}, "after fill_ of view");

  EXPECT_ERROR("slice|step", a.slice(0, 0, 5, 0));
  EXPECT_ERROR("axis|out of range", a.slice(1, 0, 5));
}

TEST(TensorViews, PermuteAndTranspose) {
  Tensor x = randn({2, 3, 4});
  Tensor p = x.permute({2, 0, 1});
  EXPECT_EQ(p.shape(), (Shape{4, 2, 3}));
  EXPECT_EQ(p.strides(), (Shape{1, 12, 4}));
  EXPECT_TRUE(p.same_storage(x));
  EXPECT_FALSE(p.is_contiguous());
  const std::vector<double> xv = values(x), pv = values(p);
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t k = 0; k < 4; ++k)
        EXPECT_EQ(pv[flat({4, 2, 3}, {k, i, j})], xv[flat({2, 3, 4}, {i, j, k})]);

  Tensor t = x.transpose(-1, 0);
  EXPECT_EQ(t.shape(), (Shape{4, 3, 2}));
  EXPECT_TRUE(t.same_storage(x));
  const std::vector<double> tv = values(t);
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t k = 0; k < 4; ++k) EXPECT_EQ(tv[flat({4, 3, 2}, {k, j, i})], xv[flat({2, 3, 4}, {i, j, k})]);
  // Permuting back gives the original geometry.
  Tensor back = p.permute({1, 2, 0});
  EXPECT_EQ(back.strides(), x.strides());
  EXPECT_TRUE(back.is_contiguous());
  EXPECT_EQ(values(back), xv);

  EXPECT_ERROR("permute", x.permute({0, 1}));
  EXPECT_ERROR("permute|repeated", x.permute({0, 1, 1}));
}

TEST(TensorViews, Flatten) {
  Tensor x = randn({2, 3, 4});
  EXPECT_EQ(x.flatten().shape(), (Shape{24}));
  EXPECT_EQ(x.flatten(1).shape(), (Shape{2, 12}));
  EXPECT_EQ(x.flatten(0, 1).shape(), (Shape{6, 4}));
  EXPECT_EQ(x.flatten(-2, -1).shape(), (Shape{2, 12}));
  EXPECT_TRUE(x.flatten(1).same_storage(x));
  EXPECT_EQ(values(x.flatten()), values(x));
  EXPECT_EQ(Tensor::scalar(1.0).flatten().shape(), (Shape{1}));
  // A non-contiguous tensor is flattened into a copy in row-major order of its view.
  Tensor t = x.transpose(0, 2);
  Tensor f = t.flatten();
  EXPECT_FALSE(f.same_storage(x));
  EXPECT_EQ(values(f), values(t));
  EXPECT_ERROR("flatten", x.flatten(2, 1));
}

TEST(TensorViews, ViewRefusesNonContiguous) {
  Tensor x = randn({3, 2});
  Tensor v = x.view({2, 3});
  EXPECT_TRUE(v.same_storage(x));
  EXPECT_EQ(values(v), values(x));
  EXPECT_ERROR("view|contiguous", x.transpose(0, 1).view({6}));
  EXPECT_ERROR("view|contiguous", Tensor::zeros({4, 4}).slice(1, 0, 4, 2).view({8}));
  // reshape of the same tensor copies instead.
  Tensor r = x.transpose(0, 1).reshape({6});
  EXPECT_FALSE(r.same_storage(x));
  EXPECT_EQ(values(r), values(x.transpose(0, 1)));
}

TEST(TensorViews, ContiguousCopiesOnlyWhenNeeded) {
  Tensor x = randn({3, 4});
  Tensor same = x.contiguous();
  EXPECT_EQ(same.impl_ptr(), x.impl_ptr()) << "contiguous() of a contiguous tensor is the tensor itself";
  Tensor t = x.transpose(0, 1);
  Tensor c = t.contiguous();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_FALSE(c.same_storage(x));
  EXPECT_EQ(c.shape(), (Shape{4, 3}));
  EXPECT_EQ(c.strides(), (Shape{3, 1}));
  EXPECT_EQ(values(c), values(t));
  const std::vector<double> before = values(x);
  c.fill_(0.0);
  EXPECT_EQ(values(x), before) << "the contiguous copy must not alias the source";
  // A contiguous view with an offset is contiguous too.
  Tensor row = x.slice(0, 1, 3);
  EXPECT_TRUE(row.is_contiguous());
  EXPECT_EQ(row.contiguous().impl_ptr(), row.impl_ptr());
}

TEST(TensorViews, CloneIsIndependent) {
  Tensor x = randn({2, 5});
  Tensor c = x.clone();
  EXPECT_FALSE(c.same_storage(x));
  EXPECT_EQ(values(c), values(x));
  const std::vector<double> before = values(x);
  c.fill_(3.0);
  EXPECT_EQ(values(x), before);
  x.fill_(-1.0);
  expect_values(c, std::vector<double>(10, 3.0), "clone after source change");
  // Cloning a strided view gives a contiguous copy of just the view.
  Tensor v = Tensor::arange(12, DType::F32).reshape({3, 4}).slice(1, 1, 4, 2);
  Tensor vc = v.clone();
  EXPECT_TRUE(vc.is_contiguous());
  EXPECT_EQ(vc.offset(), 0);
  expect_values(vc, {1, 3, 5, 7, 9, 11}, "clone of strided view");
  // Copies of the handle share data.
  Tensor h = x;
  h.fill_(9.0);
  expect_values(x, std::vector<double>(10, 9.0), "handle copy shares data");
}

// ================================================================== dtypes
TEST(TensorDtype, FloatRoundTrips) {
  Tensor x = randn({50}, DType::F32);
  EXPECT_EQ(x.dtype(), DType::F32);
  Tensor back = x.to(DType::F64).to(DType::F32);
  EXPECT_EQ(back.to_vector<float>(), x.to_vector<float>()) << "f32 -> f64 -> f32 is exact";
  EXPECT_EQ(x.to(DType::F32).impl_ptr(), x.impl_ptr()) << "to() of the same dtype is the tensor itself";

  // bf16 keeps 8 significant bits: relative error at most 2^-9 after rounding.
  const std::vector<float> xv = x.to_vector<float>();
  const std::vector<float> bv = x.to(DType::BF16).to(DType::F32).to_vector<float>();
  for (size_t i = 0; i < xv.size(); ++i) EXPECT_LE(std::abs(bv[i] - xv[i]), std::abs(xv[i]) * (1.0 / 256)) << i;
  // Values with at most 8 significant bits round-trip exactly.
  Tensor exact = Tensor::from_vector<float>({1.5f, -2.0f, 0.0078125f, 255.0f, -0.0f, 3.0f * 1024}, {6});
  EXPECT_EQ(exact.to(DType::BF16).to(DType::F32).to_vector<float>(), exact.to_vector<float>());
  EXPECT_EQ(exact.to(DType::BF16).to(DType::F64).to_vector<double>(), exact.to_vector<double>());
  EXPECT_DOUBLE_EQ(Tensor::scalar(1.5, DType::BF16).item(), 1.5);
}

TEST(TensorDtype, IntegerRoundTrips) {
  std::vector<int64_t> iv = {0, 1, -1, 1234567, -98765, int64_t{1} << 40, -(int64_t{1} << 52)};
  Tensor i = Tensor::from_vector<int64_t>(iv, {7});
  EXPECT_EQ(i.to(DType::F64).to(DType::I64).to_vector<int64_t>(), iv);
  std::vector<int64_t> small = {0, 5, -7, 1 << 20};
  EXPECT_EQ(Tensor::from_vector<int64_t>(small, {4}).to(DType::F32).to(DType::I64).to_vector<int64_t>(), small);

  std::vector<uint8_t> uv(256);
  for (int k = 0; k < 256; ++k) uv[k] = static_cast<uint8_t>(k);
  Tensor u = Tensor::from_vector<uint8_t>(uv, {256});
  EXPECT_EQ(u.to(DType::F32).to(DType::U8).to_vector<uint8_t>(), uv);
  EXPECT_EQ(u.to(DType::I64).to(DType::U8).to_vector<uint8_t>(), uv);
  EXPECT_EQ(u.to(DType::BF16).to(DType::U8).to_vector<uint8_t>(), uv) << "bf16 holds every integer up to 256";
  EXPECT_DOUBLE_EQ(u.slice(0, 200, 201).item(), 200.0);

  // Float to integer truncates toward zero (C++ and PyTorch semantics).
  EXPECT_EQ(f64({2.7, -2.7, 0.4, -0.4, 5.0}, {5}).to(DType::I64).to_vector<int64_t>(),
            (std::vector<int64_t>{2, -2, 0, 0, 5}));
  // Integer tensors convert to floats exactly when representable.
  expect_values(Tensor::arange(5).to(DType::F32), {0, 1, 2, 3, 4}, "arange to f32");
}

TEST(TensorDtype, Bf16RoundsToNearestEvenAndKeepsNaN) {
  struct Case {
    uint32_t f32;
    uint16_t bf16;
    const char* what;
  };
  const std::vector<Case> cases = {
      {0x3f800000u, 0x3f80, "1.0 exact"},
      {0x3f808000u, 0x3f80, "tie between even 0x3f80 and odd 0x3f81 -> even (down)"},
      {0x3f818000u, 0x3f82, "tie between odd 0x3f81 and even 0x3f82 -> even (up)"},
      {0x3f807fffu, 0x3f80, "just below the tie -> down"},
      {0x3f808001u, 0x3f81, "just above the tie -> up"},
      {0xbf818000u, 0xbf82, "negative tie -> even magnitude"},
      {0xbf808000u, 0xbf80, "negative tie, even below"},
      {0x3fffffffu, 0x4000, "rounding carries into the exponent"},
      {0x00018000u, 0x0002, "subnormal tie -> even"},
      {0x00008000u, 0x0000, "smallest tie rounds to zero (even)"},
      {0x80000000u, 0x8000, "-0 keeps its sign"},
      {0x7f800000u, 0x7f80, "+inf"},
      {0xff800000u, 0xff80, "-inf"},
      {0x7f7fffffu, 0x7f80, "FLT_MAX rounds to +inf"},
      {0x7f7f7fffu, 0x7f7f, "largest value below the bf16 max tie stays finite"},
  };
  std::vector<float> in;
  for (const Case& c : cases) in.push_back(bits_float(c.f32));
  Tensor t = Tensor::from_vector<float>(in, {static_cast<int64_t>(in.size())}).to(DType::BF16);
  ASSERT_EQ(t.dtype(), DType::BF16);
  const bf16* p = t.data<bf16>();
  for (size_t i = 0; i < cases.size(); ++i)
    EXPECT_EQ(p[i].bits, cases[i].bf16) << cases[i].what << std::hex << ": f32 0x" << cases[i].f32 << " gave 0x"
                                        << p[i].bits;
  // bf16 -> f32 is exact (the upper half of the float).
  const std::vector<float> back = t.to_vector<float>();
  for (size_t i = 0; i < cases.size(); ++i) EXPECT_EQ(float_bits(back[i]), uint32_t{cases[i].bf16} << 16) << cases[i].what;

  // NaNs stay NaN, including a signalling NaN whose payload lies only in the
  // low 16 bits (truncating or rounding it naively would give inf).
  const std::vector<uint32_t> nans = {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u, 0x7f80ffffu, 0x7fffffffu};
  std::vector<float> nv;
  for (uint32_t u : nans) nv.push_back(bits_float(u));
  Tensor n = Tensor::from_vector<float>(nv, {static_cast<int64_t>(nv.size())}).to(DType::BF16);
  const std::vector<float> nb = n.to_vector<float>();
  for (size_t i = 0; i < nans.size(); ++i) {
    EXPECT_TRUE(std::isnan(nb[i])) << std::hex << "0x" << nans[i] << " became 0x" << n.data<bf16>()[i].bits;
    EXPECT_EQ(n.data<bf16>()[i].bits & 0x8000, (nans[i] >> 16) & 0x8000) << "NaN sign kept";
  }
  EXPECT_TRUE(std::isnan(Tensor::scalar(std::nan(""), DType::BF16).item()));
}

TEST(TensorDtype, DataAccessChecksTheType) {
  Tensor t = Tensor::zeros({3});
  EXPECT_NO_THROW(t.data<float>());
  EXPECT_ERROR("f32|f64", t.data<double>());
  EXPECT_ERROR("i64|f32", Tensor::arange(3).data<float>());
  EXPECT_ERROR("u8|i64", Tensor::zeros({2}, DType::U8).data<int64_t>());
  // raw_data honours the offset of a view.
  Tensor a = Tensor::arange(6, DType::F64);
  EXPECT_EQ(static_cast<double*>(a.slice(0, 4, 6).raw_data())[0], 4.0);
  EXPECT_EQ(a.slice(0, 2, 6).data<double>()[1], 3.0);
}

TEST(TensorDtype, ItemNeedsOneElement) {
  EXPECT_DOUBLE_EQ(Tensor::full({1, 1, 1}, 2.25).item(), 2.25);
  EXPECT_DOUBLE_EQ(Tensor::arange(5).slice(0, 3, 4).item(), 3.0);
  EXPECT_ERROR("item|one element|[2]", Tensor::zeros({2}).item());
  EXPECT_ERROR("item|[0]", Tensor::zeros({0}).item());
  EXPECT_ERROR("item|[2, 3]", Tensor::zeros({2, 3}).item());
}

TEST(TensorDtype, UndefinedTensorUse) {
  Tensor u;
  EXPECT_FALSE(u.defined());
  EXPECT_FALSE(u.requires_grad());
  EXPECT_ERROR("undefined", u.shape());
  EXPECT_ERROR("undefined", u.numel());
  EXPECT_ERROR("undefined", u.item());
  EXPECT_ERROR("undefined", u.clone());
  EXPECT_ERROR("undefined", u.fill_(1.0));
  EXPECT_ERROR("add|undefined", add(u, Tensor::ones({2})));
  EXPECT_ERROR("relu|undefined", relu(u));
  EXPECT_ERROR("matmul|undefined", matmul(u, Tensor::ones({2, 2})));
}

// ================================================================== in place
TEST(TensorInPlace, FillOnStridedViews) {
  Tensor m = Tensor::zeros({3, 4}, DType::F64);
  m.slice(1, 0, 4, 3).fill_(1.0);  // columns 0 and 3
  m.slice(0, 2, 3).fill_(2.0);     // last row
  expect_values(m, {1, 0, 0, 1, 1, 0, 0, 1, 2, 2, 2, 2}, "fill_ of views");
  Tensor p = Tensor::zeros({2, 3}, DType::F32);
  p.transpose(0, 1).slice(0, 1, 2).fill_(5.0);  // column 1 via a transposed view
  expect_values(p, {0, 5, 0, 0, 5, 0}, "fill_ of a transposed slice");
  Tensor i = Tensor::zeros({4}, DType::I64);
  i.slice(0, 1, 4, 2).fill_(7);
  EXPECT_EQ(i.to_vector<int64_t>(), (std::vector<int64_t>{0, 7, 0, 7}));
  Tensor s = Tensor::scalar(0.0);
  s.fill_(4.0);
  EXPECT_EQ(s.item(), 4.0);
  Tensor z = randn({5});
  z.zero_();
  expect_values(z, std::vector<double>(5, 0.0), "zero_");
}

TEST(TensorInPlace, CopyIntoAndFromStridedViews) {
  Tensor m = Tensor::zeros({3, 4}, DType::F32);
  Tensor src = f64({1, 2, 3, 4, 5, 6}, {3, 2});
  m.slice(1, 1, 4, 2).copy_(src);  // columns 1 and 3, converting f64 -> f32
  expect_values(m, {0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6}, "copy_ into a column view");
  // From a transposed (strided) source into a contiguous destination.
  Tensor d = Tensor::zeros({2, 3}, DType::F64);
  d.copy_(src.transpose(0, 1));
  expect_values(d, {1, 3, 5, 2, 4, 6}, "copy_ from a transposed view");
  // Between two strided views of one storage that do not overlap.
  Tensor a = Tensor::arange(8, DType::F64);
  a.slice(0, 1, 8, 2).copy_(a.slice(0, 0, 8, 2));
  expect_values(a, {0, 0, 2, 2, 4, 4, 6, 6}, "copy_ between interleaved views");
  // Integer conversions.
  Tensor u = Tensor::zeros({3}, DType::U8);
  u.copy_(Tensor::from_vector<int64_t>({1, 100, 255}, {3}));
  EXPECT_EQ(u.to_vector<uint8_t>(), (std::vector<uint8_t>{1, 100, 255}));
  EXPECT_ERROR("copy|[3, 2]|[2, 3]", d.copy_(Tensor::zeros({3, 2}, DType::F64)));
}

TEST(TensorInPlace, AddAndMulContiguous) {
  Tensor a = f64({1, 2, 3, 4}, {2, 2});
  a.add_(f64({10, 20, 30, 40}, {2, 2}), 0.5);
  expect_values(a, {6, 12, 18, 24}, "add_ alpha 0.5");
  a.add_(f64({1, 1, 1, 1}, {2, 2}));
  expect_values(a, {7, 13, 19, 25}, "add_ alpha 1");
  a.mul_(-2.0);
  expect_values(a, {-14, -26, -38, -50}, "mul_");
  // `other` may be strided.
  Tensor b = f64({1, 2, 3, 4}, {2, 2});
  b.add_(f64({1, 2, 3, 4}, {2, 2}).transpose(0, 1));
  expect_values(b, {2, 5, 5, 8}, "add_ of a transposed other");
  // A contiguous view with an offset: only its elements change.
  Tensor m = Tensor::arange(12, DType::F32).reshape({3, 4});
  Tensor row = m.slice(0, 1, 2);
  row.add_(Tensor::ones({1, 4}), 100.0);
  m.slice(0, 2, 3).mul_(10.0);
  expect_values(m, {0, 1, 2, 3, 104, 105, 106, 107, 80, 90, 100, 110}, "add_/mul_ of row views");

  EXPECT_ERROR("add_|[4]|[2, 2]", a.add_(Tensor::ones({4}, DType::F64)));
  EXPECT_ERROR("add_|f32|f64", a.add_(Tensor::ones({2, 2}, DType::F32)));
  EXPECT_ERROR("mul_|i64", Tensor::arange(3).mul_(2.0));
}

// Regression test: Tensor::add_ and Tensor::mul_ once refused strided
// destination views (fill_ and copy_ accept them). Writing into a channel slice
// of an NHWC weight (a non-contiguous view) is exactly the pruning use case.
TEST(TensorInPlace, AddOnStridedView) {
  Tensor m = Tensor::arange(12, DType::F64).reshape({3, 4});
  Tensor cols = m.slice(1, 0, 4, 2);  // columns 0 and 2: strided
  ASSERT_FALSE(cols.is_contiguous());
  ASSERT_NO_THROW(cols.add_(f64({1, 2, 3, 4, 5, 6}, {3, 2}), 10.0));
  expect_values(m, {10, 1, 22, 3, 34, 5, 46, 7, 58, 9, 70, 11}, "add_ into a column view");
}

// ENGINE GAP (reported), as above for mul_.
TEST(TensorInPlace, MulOnStridedView) {
  Tensor t = Tensor::arange(6, DType::F64).reshape({2, 3});
  ASSERT_NO_THROW(t.transpose(0, 1).mul_(3.0));
  expect_values(t, {0, 3, 6, 9, 12, 15}, "mul_ of a transposed view");
  Tensor m = Tensor::arange(8, DType::F32).reshape({2, 4});
  ASSERT_NO_THROW(m.slice(1, 1, 4, 2).mul_(-1.0));  // columns 1 and 3
  expect_values(m, {0, -1, 2, -3, 4, -5, 6, -7}, "mul_ of a column view");
}

TEST(TensorInPlace, RefusedOnRequiresGradWhileGradOn) {
  Tensor x = leaf({3});
  EXPECT_ERROR("fill_|requires grad", x.fill_(0));
  EXPECT_ERROR("copy_|requires grad", x.copy_(randn({3})));
  EXPECT_ERROR("add_|requires grad", x.add_(randn({3})));
  EXPECT_ERROR("mul_|requires grad", x.mul_(2.0));
  {
    NoGradGuard guard;
    EXPECT_NO_THROW(x.fill_(2.0));
  }
  expect_values(x, {2, 2, 2}, "fill_ under NoGradGuard");
  EXPECT_NO_THROW(x.detach().mul_(3.0));
  expect_values(x, {6, 6, 6}, "mul_ of detach() shares data");
}

// ================================================================== op values: convolution
Tensor naive_conv2d(const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dOptions& o) {
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const int64_t O = w.size(0), KH = w.size(1), KW = w.size(2), CG = w.size(3), G = o.groups, OG = O / G;
  EXPECT_EQ(CG * G, C);
  const int64_t HO = (H + 2 * o.padding[0] - o.dilation[0] * (KH - 1) - 1) / o.stride[0] + 1;
  const int64_t WO = (W + 2 * o.padding[1] - o.dilation[1] * (KW - 1) - 1) / o.stride[1] + 1;
  const std::vector<double> xv = values(x), wv = values(w), bv = b.defined() ? values(b) : std::vector<double>(O, 0.0);
  std::vector<double> out(static_cast<size_t>(N * HO * WO * O));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t oh = 0; oh < HO; ++oh)
      for (int64_t ow = 0; ow < WO; ++ow)
        for (int64_t oc = 0; oc < O; ++oc) {
          const int64_t g = oc / OG;
          double acc = bv[oc];
          for (int64_t kh = 0; kh < KH; ++kh)
            for (int64_t kw = 0; kw < KW; ++kw)
              for (int64_t ci = 0; ci < CG; ++ci) {
                const int64_t ih = oh * o.stride[0] - o.padding[0] + kh * o.dilation[0];
                const int64_t iw = ow * o.stride[1] - o.padding[1] + kw * o.dilation[1];
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                acc += xv[((n * H + ih) * W + iw) * C + g * CG + ci] * wv[((oc * KH + kh) * KW + kw) * CG + ci];
              }
          out[((n * HO + oh) * WO + ow) * O + oc] = acc;
        }
  return f64(out, {N, HO, WO, O});
}

Conv2dOptions conv_opt(std::array<int64_t, 2> s, std::array<int64_t, 2> p, std::array<int64_t, 2> d = {1, 1},
                       int64_t g = 1) {
  Conv2dOptions o;
  o.stride = s;
  o.padding = p;
  o.dilation = d;
  o.groups = g;
  return o;
}

struct ConvCase {
  const char* name;
  Shape x, w;
  Conv2dOptions opt;
  bool bias;
};

TEST(OpValues, Conv2dMatchesNaiveLoops) {
  const std::vector<ConvCase> cases = {
      {"3x3 s1 p1", {2, 5, 5, 3}, {4, 3, 3, 3}, conv_opt({1, 1}, {1, 1}), true},
      {"3x3 s2 p0", {2, 7, 7, 3}, {5, 3, 3, 3}, conv_opt({2, 2}, {0, 0}), true},
      {"3x3 s2 p1 even input", {1, 8, 6, 2}, {3, 3, 3, 2}, conv_opt({2, 2}, {1, 1}), false},
      {"dilation 2 p2", {1, 7, 7, 2}, {3, 3, 3, 2}, conv_opt({1, 1}, {2, 2}, {2, 2}), true},
      {"asymmetric stride/padding/dilation", {2, 6, 8, 2}, {3, 3, 3, 2}, conv_opt({2, 1}, {1, 2}, {1, 2}), true},
      {"rectangular kernel 2x4", {1, 5, 7, 3}, {2, 2, 4, 3}, conv_opt({1, 2}, {1, 0}), true},
      {"rectangular input 7x11, 5x5", {1, 7, 11, 2}, {3, 5, 5, 2}, conv_opt({1, 1}, {2, 2}), true},
      {"groups 2", {2, 5, 5, 4}, {6, 3, 3, 2}, conv_opt({1, 1}, {1, 1}, {1, 1}, 2), true},
      {"groups 3, two outputs per group", {1, 5, 6, 6}, {6, 3, 3, 2}, conv_opt({2, 1}, {1, 1}, {1, 1}, 3), false},
      {"depthwise", {2, 6, 6, 4}, {4, 3, 3, 1}, conv_opt({1, 1}, {1, 1}, {1, 1}, 4), true},
      {"depthwise multiplier 2, s2", {2, 6, 6, 3}, {6, 3, 3, 1}, conv_opt({2, 2}, {1, 1}, {1, 1}, 3), true},
      {"depthwise multiplier 3, dilated, no bias", {1, 7, 5, 2}, {6, 3, 3, 1}, conv_opt({1, 1}, {2, 2}, {2, 2}, 2), false},
      {"1x1", {2, 4, 4, 5}, {3, 1, 1, 5}, conv_opt({1, 1}, {0, 0}), true},
      {"1x1 stride 2", {2, 5, 5, 3}, {4, 1, 1, 3}, conv_opt({2, 2}, {0, 0}), false},
      {"1x1 padding 1 (border = bias)", {1, 3, 4, 2}, {3, 1, 1, 2}, conv_opt({1, 1}, {1, 1}), true},
      {"kernel covers the input", {3, 3, 3, 4}, {5, 3, 3, 4}, conv_opt({1, 1}, {0, 0}), true},
      {"wider channels (GEMM path)", {2, 8, 8, 16}, {32, 3, 3, 16}, conv_opt({1, 1}, {1, 1}), true},
      {"single pixel", {4, 1, 1, 3}, {2, 1, 1, 3}, conv_opt({1, 1}, {0, 0}), true},
  };
  for (const ConvCase& c : cases) {
    SCOPED_TRACE(c.name);
    const Tensor x = randn(c.x), w = randn(c.w), b = c.bias ? randn({c.w[0]}) : Tensor();
    const Tensor ref = naive_conv2d(x, w, b, c.opt);
    const Tensor y = conv2d(x, w, b, c.opt);
    ASSERT_EQ(y.shape(), ref.shape());
    EXPECT_LT(scaled_error(y, ref), 1e-12) << "f64";
    const Tensor y32 = conv2d(x.to(DType::F32), w.to(DType::F32), c.bias ? b.to(DType::F32) : Tensor(), c.opt);
    EXPECT_EQ(y32.dtype(), DType::F32);
    EXPECT_LT(scaled_error(y32, ref), 1e-5) << "f32";
  }
}

TEST(OpValues, Conv2dAcceptsStridedInput) {
  // An NCHW tensor permuted to an NHWC view.
  const Tensor nchw = randn({2, 3, 5, 6});
  const Tensor x = nchw.permute({0, 2, 3, 1});
  ASSERT_FALSE(x.is_contiguous());
  const Tensor w = randn({4, 3, 3, 3}), b = randn({4});
  const Conv2dOptions o = conv_opt({1, 1}, {1, 1});
  EXPECT_LT(scaled_error(conv2d(x, w, b, o), naive_conv2d(x.contiguous(), w, b, o)), 1e-12);
  // A channel-prefix view of the weights (non-contiguous).
  const Tensor wide = randn({4, 3, 3, 5});
  const Tensor wp = wide.slice(3, 0, 3);
  ASSERT_FALSE(wp.is_contiguous());
  EXPECT_LT(scaled_error(conv2d(x, wp, b, o), naive_conv2d(x.contiguous(), wp.contiguous(), b, o)), 1e-12);
}

TEST(OpValues, Conv2dHandComputed) {
  // 1 image 3x3, one channel, 2x2 kernel of ones: sums of 2x2 windows.
  const Tensor x = f64({1, 2, 3, 4, 5, 6, 7, 8, 9}, {1, 3, 3, 1});
  const Tensor w = Tensor::ones({1, 2, 2, 1}, DType::F64);
  expect_values(conv2d(x, w), {12, 16, 24, 28}, "2x2 ones");
  expect_values(conv2d(x, w, f64({0.5}, {1})), {12.5, 16.5, 24.5, 28.5}, "2x2 ones + bias");
  // Padding 1, stride 2: corner windows.
  expect_values(conv2d(x, w, {}, conv_opt({2, 2}, {1, 1})), {1, 5, 11, 28}, "pad 1 stride 2");
}

// ================================================================== op values: pooling
enum class PoolKind { Max, Avg };

Tensor naive_pool(const Tensor& x, const Pool2dOptions& o, PoolKind kind) {
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const int64_t HO = (H + 2 * o.padding[0] - o.kernel[0]) / o.stride[0] + 1;
  const int64_t WO = (W + 2 * o.padding[1] - o.kernel[1]) / o.stride[1] + 1;
  const std::vector<double> xv = values(x);
  std::vector<double> out;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t oh = 0; oh < HO; ++oh)
      for (int64_t ow = 0; ow < WO; ++ow)
        for (int64_t c = 0; c < C; ++c) {
          double mx = -std::numeric_limits<double>::infinity(), sum = 0;
          int64_t inside = 0;
          for (int64_t kh = 0; kh < o.kernel[0]; ++kh)
            for (int64_t kw = 0; kw < o.kernel[1]; ++kw) {
              const int64_t ih = oh * o.stride[0] - o.padding[0] + kh, iw = ow * o.stride[1] - o.padding[1] + kw;
              if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
              const double v = xv[((n * H + ih) * W + iw) * C + c];
              mx = std::max(mx, v);
              sum += v;
              ++inside;
            }
          if (kind == PoolKind::Max)
            out.push_back(mx);
          else
            out.push_back(sum / static_cast<double>(o.count_include_pad ? o.kernel[0] * o.kernel[1] : inside));
        }
  return f64(out, {N, HO, WO, C});
}

Tensor naive_adaptive_avg(const Tensor& x, int64_t OH, int64_t OW) {
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const std::vector<double> xv = values(x);
  std::vector<double> out;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow)
        for (int64_t c = 0; c < C; ++c) {
          // PyTorch: start = floor(i*in/out), end = ceil((i+1)*in/out).
          const int64_t h0 = (oh * H) / OH, h1 = ((oh + 1) * H + OH - 1) / OH;
          const int64_t w0 = (ow * W) / OW, w1 = ((ow + 1) * W + OW - 1) / OW;
          double s = 0;
          for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w) s += xv[((n * H + h) * W + w) * C + c];
          out.push_back(s / static_cast<double>((h1 - h0) * (w1 - w0)));
        }
  return f64(out, {N, OH, OW, C});
}

Pool2dOptions pool_opt(std::array<int64_t, 2> k, std::array<int64_t, 2> s, std::array<int64_t, 2> p, bool cip = true) {
  Pool2dOptions o;
  o.kernel = k;
  o.stride = s;
  o.padding = p;
  o.count_include_pad = cip;
  return o;
}

TEST(OpValues, PoolingMatchesNaiveLoops) {
  struct Case {
    const char* name;
    Shape x;
    Pool2dOptions o;
  };
  const std::vector<Case> cases = {
      {"2x2 s2", {2, 4, 6, 3}, pool_opt({2, 2}, {2, 2}, {0, 0})},
      {"2x2 s2 odd input", {1, 5, 7, 2}, pool_opt({2, 2}, {2, 2}, {0, 0})},
      {"3x3 s2 p1", {2, 5, 5, 2}, pool_opt({3, 3}, {2, 2}, {1, 1})},
      {"3x3 s1 p1", {1, 4, 5, 3}, pool_opt({3, 3}, {1, 1}, {1, 1})},
      {"3x3 s2 p1, no pad count", {2, 6, 5, 2}, pool_opt({3, 3}, {2, 2}, {1, 1}, false)},
      {"2x3 s(1,2) p(1,1)", {1, 5, 7, 2}, pool_opt({2, 3}, {1, 2}, {1, 1})},
      {"2x3 s(1,2) p(1,1), no pad count", {1, 5, 7, 2}, pool_opt({2, 3}, {1, 2}, {1, 1}, false)},
      {"global 4x4", {3, 4, 4, 5}, pool_opt({4, 4}, {1, 1}, {0, 0})},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const Tensor x = randn(c.x);
    EXPECT_LT(scaled_error(max_pool2d(x, c.o), naive_pool(x, c.o, PoolKind::Max)), 1e-15) << "max";
    EXPECT_LT(scaled_error(avg_pool2d(x, c.o), naive_pool(x, c.o, PoolKind::Avg)), 1e-14) << "avg";
    EXPECT_LT(scaled_error(max_pool2d(x.to(DType::F32), c.o), naive_pool(x, c.o, PoolKind::Max)), 1e-6) << "max f32";
    EXPECT_LT(scaled_error(avg_pool2d(x.to(DType::F32), c.o), naive_pool(x, c.o, PoolKind::Avg)), 1e-6) << "avg f32";
  }
  // Max pooling with an all-negative window next to the padding: padding is never the maximum.
  const Tensor neg = Tensor::full({1, 3, 3, 1}, -5.0, DType::F64);
  expect_values(max_pool2d(neg, pool_opt({3, 3}, {2, 2}, {1, 1})), {-5, -5, -5, -5}, "max ignores padding");
  expect_values(avg_pool2d(neg, pool_opt({3, 3}, {2, 2}, {1, 1})), {-5.0 * 4 / 9, -5.0 * 4 / 9, -5.0 * 4 / 9, -5.0 * 4 / 9},
                "avg counts padding", 1e-14);
  expect_values(avg_pool2d(neg, pool_opt({3, 3}, {2, 2}, {1, 1}, false)), {-5, -5, -5, -5}, "avg without pad count",
                1e-14);
}

TEST(OpValues, AdaptiveAvgPoolMatchesNaiveLoops) {
  struct Case {
    Shape x;
    int64_t oh, ow;
  };
  const std::vector<Case> cases = {{{2, 7, 5, 3}, 3, 2}, {{1, 5, 5, 2}, 5, 5}, {{2, 4, 4, 3}, 1, 1},
                                   {{1, 6, 4, 2}, 4, 3}, {{1, 3, 3, 2}, 5, 4}, {{2, 8, 8, 1}, 2, 4}};
  for (const Case& c : cases) {
    SCOPED_TRACE(shape_str(c.x) + fmt::format(" -> {}x{}", c.oh, c.ow));
    const Tensor x = randn(c.x);
    const Tensor y = adaptive_avg_pool2d(x, c.oh, c.ow);
    EXPECT_LT(scaled_error(y, naive_adaptive_avg(x, c.oh, c.ow)), 1e-14);
  }
  // Global pooling is the mean over H and W.
  const Tensor x = randn({2, 3, 5, 4});
  EXPECT_LT(scaled_error(adaptive_avg_pool2d(x, 1, 1).reshape({2, 4}), mean(x, {1, 2})), 1e-14);
}

TEST(OpValues, PoolingErrors) {
  EXPECT_ERROR("max_pool2d|NHWC", max_pool2d(randn({4, 4, 3}), pool_opt({2, 2}, {2, 2}, {0, 0})));
  EXPECT_ERROR("avg_pool2d|padding", avg_pool2d(randn({1, 4, 4, 1}), pool_opt({2, 2}, {2, 2}, {2, 2})));
  EXPECT_ERROR("max_pool2d|kernel", max_pool2d(randn({1, 2, 2, 1}), pool_opt({3, 3}, {1, 1}, {0, 0})));
  EXPECT_ERROR("adaptive_avg_pool2d", adaptive_avg_pool2d(randn({1, 2, 2, 1}), 0, 1));
}

// ================================================================== op values: shape ops, reductions
TEST(OpValues, Concat) {
  const Tensor a = f64({1, 2}, {2, 1}), b = f64({3, 4, 5, 6}, {2, 2}), c = f64({7, 8}, {2, 1});
  expect_values(concat({a, b, c}, 1), {1, 3, 4, 7, 2, 5, 6, 8}, "concat axis 1");
  EXPECT_EQ(concat({a, b, c}, -1).shape(), (Shape{2, 4}));
  const Tensor r = concat({b, f64({9, 10}, {1, 2})}, 0);
  EXPECT_EQ(r.shape(), (Shape{3, 2}));
  expect_values(r, {3, 4, 5, 6, 9, 10}, "concat axis 0");
  // Strided inputs.
  expect_values(concat({b.transpose(0, 1), b}, 0), {3, 5, 4, 6, 3, 4, 5, 6}, "concat of a transposed input");
  // Random 3-D along the middle axis against slices.
  const Tensor x = randn({2, 3, 4}), y = randn({2, 2, 4});
  const Tensor xy = concat({x, y}, 1);
  EXPECT_EQ(values(xy.slice(1, 0, 3)), values(x));
  EXPECT_EQ(values(xy.slice(1, 3, 5)), values(y));
  // Integer tensors.
  EXPECT_EQ(concat({Tensor::arange(2), Tensor::arange(3)}, 0).to_vector<int64_t>(), (std::vector<int64_t>{0, 1, 0, 1, 2}));

  EXPECT_ERROR("concat|[3, 1]|[2, 1]", concat({a, f64({1, 2, 3}, {3, 1})}, 1));
  EXPECT_ERROR("concat|dtype", concat({a, a.to(DType::F32)}, 0));
  EXPECT_ERROR("concat", concat({}, 0));
}

TEST(OpValues, IndexSelect) {
  const Tensor x = Tensor::arange(24, DType::F64).reshape({2, 3, 4});
  const Tensor idx = Tensor::from_vector<int64_t>({2, 0, 2}, {3});
  const Tensor y = index_select(x, 1, idx);
  EXPECT_EQ(y.shape(), (Shape{2, 3, 4}));
  expect_values(y, {8, 9, 10, 11, 0, 1, 2, 3, 8, 9, 10, 11, 20, 21, 22, 23, 12, 13, 14, 15, 20, 21, 22, 23},
                "index_select axis 1");
  expect_values(index_select(x, -1, Tensor::from_vector<int64_t>({3, 1}, {2})).reshape({-1}),
                {3, 1, 7, 5, 11, 9, 15, 13, 19, 17, 23, 21}, "index_select last axis");
  expect_values(index_select(x, 0, Tensor::from_vector<int64_t>({1}, {1})), values(x.slice(0, 1, 2)),
                "index_select axis 0");
  EXPECT_EQ(index_select(x, 1, Tensor::zeros({0}, DType::I64)).shape(), (Shape{2, 0, 4}));

  EXPECT_ERROR("index_select|3|out of range", index_select(x, 1, Tensor::from_vector<int64_t>({3}, {1})));
  EXPECT_ERROR("index_select|-1", index_select(x, 1, Tensor::from_vector<int64_t>({-1}, {1})));
  EXPECT_ERROR("index_select|i64", index_select(x, 1, Tensor::zeros({2}, DType::F32)));
}

TEST(OpValues, Expand) {
  const Tensor x = f64({1, 2, 3}, {3, 1});
  const Tensor y = expand(x, {2, 3, 4});
  EXPECT_EQ(y.shape(), (Shape{2, 3, 4}));
  std::vector<double> want;
  for (int r = 0; r < 2; ++r)
    for (double v : {1.0, 2.0, 3.0})
      for (int k = 0; k < 4; ++k) want.push_back(v);
  expect_values(y, want, "expand [3,1] -> [2,3,4]");
  expect_values(expand(Tensor::scalar(7.0, DType::F64), {2, 2}), {7, 7, 7, 7}, "expand scalar");
  expect_values(expand(f64({1, 2}, {2}), {2, 2}), {1, 2, 1, 2}, "expand row");
  EXPECT_FALSE(y.same_storage(x)) << "expand materialises";
  EXPECT_ERROR("expand", expand(x, {3, 2, 2}));
  EXPECT_ERROR("expand", expand(x, {3}));
}

TEST(OpValues, SumAndMeanMatchNaiveLoops) {
  const Shape s{2, 3, 4, 5};
  const Tensor x = randn(s);
  const std::vector<double> xv = values(x);
  const std::vector<std::vector<int64_t>> axes_list = {{0}, {1}, {3}, {1, 2}, {0, 2}, {-1, 0}, {0, 1, 2, 3}, {}};
  for (const auto& axes : axes_list)
    for (bool keep : {false, true}) {
      SCOPED_TRACE(fmt::format("axes {} keepdim {}", shape_str(axes), keep));
      std::vector<bool> red(4, false);
      for (int64_t a : axes) red[(a + 4) % 4] = true;
      Shape kept = s, dropped;
      int64_t count = 1;
      for (int d = 0; d < 4; ++d) {
        if (red[d]) {
          kept[d] = 1;
          count *= s[d];
        } else {
          dropped.push_back(s[d]);
        }
      }
      std::vector<double> want(static_cast<size_t>(shape_numel(kept)), 0.0);
      for (int64_t i = 0; i < 2; ++i)
        for (int64_t j = 0; j < 3; ++j)
          for (int64_t k = 0; k < 4; ++k)
            for (int64_t l = 0; l < 5; ++l) {
              const int64_t o = flat(kept, {red[0] ? 0 : i, red[1] ? 0 : j, red[2] ? 0 : k, red[3] ? 0 : l});
              want[o] += xv[flat(s, {i, j, k, l})];
            }
      const Tensor sm = sum(x, axes, keep), mn = mean(x, axes, keep);
      EXPECT_EQ(sm.shape(), keep ? kept : dropped);
      EXPECT_EQ(mn.shape(), keep ? kept : dropped);
      const std::vector<double> sv = values(sm), mv = values(mn);
      ASSERT_EQ(sv.size(), want.size());
      for (size_t q = 0; q < want.size(); ++q) {
        EXPECT_NEAR(sv[q], want[q], 1e-12);
        EXPECT_NEAR(mv[q], want[q] / count, 1e-12);
      }
    }
  double total = 0;
  for (double v : xv) total += v;
  EXPECT_NEAR(sum(x).item(), total, 1e-12);
  EXPECT_EQ(sum(x).dim(), 0);
  EXPECT_NEAR(mean(x).item(), total / 120, 1e-13);
  // On a strided view.
  const Tensor t = x.transpose(1, 3);
  EXPECT_LT(scaled_error(sum(t, {1}), sum(x, {3}).transpose(1, 2)), 1e-14);
  // Hand values.
  const Tensor h = f64({1, 2, 3, 4, 5, 6}, {2, 3});
  expect_values(sum(h, {0}), {5, 7, 9}, "sum axis 0");
  expect_values(sum(h, {1}), {6, 15}, "sum axis 1");
  expect_values(mean(h, {1}, true), {2, 5}, "mean axis 1");
  EXPECT_EQ(mean(h, {1}, true).shape(), (Shape{2, 1}));
  expect_values(sum_to(h, {1, 3}), {5, 7, 9}, "sum_to");
  EXPECT_ERROR("2|out of range", sum(h, {2}));
  EXPECT_ERROR("sum|repeated", sum(h, {0, -2}));
}

TEST(OpValues, ArgmaxFirstWinsOnTies) {
  const Tensor x = f64({1, 3, 3, 5, 5, 5, 2, 1, 2, -1, -1, -2}, {4, 3});
  const Tensor a1 = argmax(x, 1);
  EXPECT_EQ(a1.dtype(), DType::I64);
  EXPECT_EQ(a1.shape(), (Shape{4}));
  EXPECT_EQ(a1.to_vector<int64_t>(), (std::vector<int64_t>{1, 0, 0, 0}));
  EXPECT_EQ(argmax(x, 0).to_vector<int64_t>(), (std::vector<int64_t>{1, 1, 1}));
  EXPECT_EQ(argmax(x, -1).to_vector<int64_t>(), a1.to_vector<int64_t>());
  EXPECT_EQ(argmax(f64({7, 7, 7, 7}, {2, 2}), 0).to_vector<int64_t>(), (std::vector<int64_t>{0, 0}));
  EXPECT_EQ(argmax(Tensor::from_vector<float>({0.5f, 2.f, 2.f}, {3}), 0).item(), 1.0);

  // Random 3-D, middle axis, against a naive loop (inner size > 1); ties made likely by rounding.
  const Tensor r = randn({3, 6, 4}, DType::F64, 2.0);
  std::vector<double> rv = values(r);
  for (double& v : rv) v = std::round(v);
  const Tensor rr = f64(rv, {3, 6, 4});
  const std::vector<int64_t> got = argmax(rr, 1).to_vector<int64_t>();
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t k = 0; k < 4; ++k) {
      int64_t best = 0;
      for (int64_t j = 1; j < 6; ++j)
        if (rv[flat({3, 6, 4}, {i, j, k})] > rv[flat({3, 6, 4}, {i, best, k})]) best = j;
      EXPECT_EQ(got[flat({3, 4}, {i, k})], best) << i << "," << k;
    }
}

// ================================================================== op values: softmax and losses
TEST(OpValues, SoftmaxRowsSumToOne) {
  const Tensor x = randn({5, 7}, DType::F64, 3.0);
  const Tensor y = softmax(x, -1);
  const std::vector<double> xv = values(x), yv = values(y);
  for (int64_t i = 0; i < 5; ++i) {
    double m = -1e300, z = 0, s = 0;
    for (int64_t j = 0; j < 7; ++j) m = std::max(m, xv[i * 7 + j]);
    for (int64_t j = 0; j < 7; ++j) z += std::exp(xv[i * 7 + j] - m);
    for (int64_t j = 0; j < 7; ++j) {
      EXPECT_GT(yv[i * 7 + j], 0.0);
      EXPECT_NEAR(yv[i * 7 + j], std::exp(xv[i * 7 + j] - m) / z, 1e-15);
      s += yv[i * 7 + j];
    }
    EXPECT_NEAR(s, 1.0, 1e-14) << "row " << i;
  }
  // Along axis 0 the columns sum to one.
  expect_values(sum(softmax(x, 0), {0}), std::vector<double>(7, 1.0), "softmax axis 0 columns", 1e-14);
  // log_softmax = log(softmax).
  EXPECT_LT(scaled_error(log_softmax(x, -1), log(y)), 1e-14);
  // Large logits stay finite (max subtraction), in f32 too.
  const Tensor big = add_scalar(x, 1000.0);
  EXPECT_LT(scaled_error(softmax(big, -1), y), 1e-12);
  // (In f32, x + 1000 is rounded to a step of 6e-5: compare with the f64 softmax of the rounded input.)
  const Tensor big32 = big.to(DType::F32);
  EXPECT_LT(scaled_error(softmax(big32, -1), softmax(big32.to(DType::F64), -1)), 1e-5);
  expect_values(softmax(f64({0, 0, 0, 0}, {1, 4}), -1), {0.25, 0.25, 0.25, 0.25}, "uniform", 1e-16);
}

TEST(OpValues, CrossEntropyByHand) {
  const Tensor logits = f64({1, 2, 3, 1, 1, 1}, {2, 3});
  const Tensor target = Tensor::from_vector<int64_t>({2, 0}, {2});
  const double z0 = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  const double l0 = -(3.0 - std::log(z0)), l1 = std::log(3.0);
  const Tensor loss = cross_entropy(logits, target);
  EXPECT_EQ(loss.dim(), 0);
  EXPECT_NEAR(loss.item(), (l0 + l1) / 2, 1e-14);
  // Label smoothing: target (1-eps) one-hot + eps/C.
  const double eps = 0.2;
  const double lp0[3] = {1 - std::log(z0), 2 - std::log(z0), 3 - std::log(z0)};
  const double lp1 = -std::log(3.0);
  const double s0 = -((1 - eps) * lp0[2] + eps / 3 * (lp0[0] + lp0[1] + lp0[2]));
  const double s1 = -((1 - eps) * lp1 + eps / 3 * (3 * lp1));
  EXPECT_NEAR(cross_entropy(logits, target, eps).item(), (s0 + s1) / 2, 1e-14);
  // f32 and a random batch against log_softmax.
  EXPECT_NEAR(cross_entropy(logits.to(DType::F32), target).item(), (l0 + l1) / 2, 1e-6);
  const Tensor r = randn({6, 5}, DType::F64, 2.0);
  const Tensor t = Tensor::from_vector<int64_t>({0, 4, 2, 2, 1, 3}, {6});
  const std::vector<double> lp = values(log_softmax(r, -1));
  double want = 0;
  for (int64_t i = 0; i < 6; ++i) want -= lp[i * 5 + t.to_vector<int64_t>()[i]];
  EXPECT_NEAR(cross_entropy(r, t).item(), want / 6, 1e-13);
}

// ================================================================== op values: matrix products
TEST(OpValues, MatmulAndLinearMatchNaiveLoops) {
  const Tensor a = randn({2, 3, 4}), b = randn({4, 5}), bb = randn({2, 4, 5});
  const std::vector<double> av = values(a), bv = values(b), bbv = values(bb);
  std::vector<double> want(2 * 3 * 5, 0.0), want_b(2 * 3 * 5, 0.0);
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t j = 0; j < 5; ++j)
        for (int64_t k = 0; k < 4; ++k) {
          want[flat({2, 3, 5}, {n, i, j})] += av[flat({2, 3, 4}, {n, i, k})] * bv[flat({4, 5}, {k, j})];
          want_b[flat({2, 3, 5}, {n, i, j})] += av[flat({2, 3, 4}, {n, i, k})] * bbv[flat({2, 4, 5}, {n, k, j})];
        }
  EXPECT_LT(scaled_error(matmul(a, b), f64(want, {2, 3, 5})), 1e-14);
  EXPECT_LT(scaled_error(matmul(a, bb), f64(want_b, {2, 3, 5})), 1e-14);
  EXPECT_LT(scaled_error(bmm(a, bb), f64(want_b, {2, 3, 5})), 1e-14);
  // linear(x, W, b) = x W^T + b with W = b^T.
  const Tensor w = b.transpose(0, 1).contiguous(), bias = randn({5});
  const std::vector<double> biv = values(bias);
  std::vector<double> want_l = want;
  for (size_t i = 0; i < want_l.size(); ++i) want_l[i] += biv[i % 5];
  EXPECT_LT(scaled_error(linear(a, w, bias), f64(want_l, {2, 3, 5})), 1e-14);
  EXPECT_LT(scaled_error(linear(a, w), f64(want, {2, 3, 5})), 1e-14);
  // Strided operands.
  EXPECT_LT(scaled_error(matmul(a, w.transpose(0, 1)), f64(want, {2, 3, 5})), 1e-14);
}

// ================================================================== op errors
TEST(OpErrors, ClearMessagesForBadShapes) {
  // conv2d
  EXPECT_ERROR("conv2d|channels|[4, 3, 3, 2]", conv2d(randn({1, 5, 5, 3}), randn({4, 3, 3, 2})));
  EXPECT_ERROR("conv2d|groups", conv2d(randn({1, 5, 5, 4}), randn({4, 3, 3, 2}), {}, conv_opt({1, 1}, {0, 0}, {1, 1}, 3)));
  EXPECT_ERROR("conv2d|NHWC|[5, 5, 3]", conv2d(randn({5, 5, 3}), randn({4, 3, 3, 3})));
  EXPECT_ERROR("conv2d|bias|[5]", conv2d(randn({1, 5, 5, 3}), randn({4, 3, 3, 3}), randn({5})));
  EXPECT_ERROR("conv2d|kernel", conv2d(randn({1, 2, 2, 3}), randn({4, 3, 3, 3})));
  EXPECT_ERROR("conv2d|f64|f32", conv2d(randn({1, 5, 5, 3}), randn({4, 3, 3, 3}, DType::F32)));
  EXPECT_ERROR("conv2d|stride", conv2d(randn({1, 5, 5, 3}), randn({4, 3, 3, 3}), {}, conv_opt({0, 1}, {0, 0})));
  // matmul / linear
  EXPECT_ERROR("matmul|inner|[2, 3]|[4, 5]", matmul(randn({2, 3}), randn({4, 5})));
  EXPECT_ERROR("matmul|2 dimensions", matmul(randn({3}), randn({3, 2})));
  EXPECT_ERROR("bmm|[2, 3, 4]|[3, 4, 5]", bmm(randn({2, 3, 4}), randn({3, 4, 5})));
  EXPECT_ERROR("linear|[2, 3]|[4, 5]", linear(randn({2, 3}), randn({4, 5})));
  // cross_entropy
  const Tensor logits = randn({3, 5});
  EXPECT_ERROR("cross_entropy|5|outside", cross_entropy(logits, Tensor::from_vector<int64_t>({0, 5, 1}, {3})));
  EXPECT_ERROR("cross_entropy|-1", cross_entropy(logits, Tensor::from_vector<int64_t>({0, 1, -1}, {3})));
  EXPECT_ERROR("cross_entropy|target", cross_entropy(logits, Tensor::from_vector<int64_t>({0, 1}, {2})));
  EXPECT_ERROR("cross_entropy|i64", cross_entropy(logits, Tensor::zeros({3}, DType::F32)));
  EXPECT_ERROR("cross_entropy|[N, C]", cross_entropy(randn({3, 5, 2}), Tensor::zeros({3}, DType::I64)));
  // elementwise
  EXPECT_ERROR("add|[2, 3]|[4]|broadcast", add(randn({2, 3}), randn({4})));
  EXPECT_ERROR("mul|f64|f32", mul(randn({2}), randn({2}, DType::F32)));
  EXPECT_ERROR("relu|i64", relu(Tensor::zeros({2}, DType::I64)));
  EXPECT_ERROR("softmax|out of range", softmax(randn({2, 3}), 2));
}

}  // namespace
}  // namespace s2h::test
