// Helpers shared by the tests: seeds, random tensors, comparisons, gradcheck.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "engine/s2h.h"

namespace s2h::test {

// The seed of this test run: S2H_TEST_SEED if set, else fresh from the
// system. Tests print it when they fail so that a failure can be replayed.
uint64_t run_seed();
// A generator for one test, derived from the run seed and the test's name.
Generator& test_generator();

Tensor randn(const Shape& shape, DType dtype = DType::F64, double scale = 1.0);
Tensor uniform(const Shape& shape, double lo, double hi, DType dtype = DType::F64);
// A random leaf that requires grad.
Tensor leaf(const Shape& shape, DType dtype = DType::F64, double scale = 1.0);
Tensor leaf_uniform(const Shape& shape, double lo, double hi, DType dtype = DType::F64);

std::vector<double> values(const Tensor& t);  // as doubles, row-major

// max |a - b| / max(max |b|, floor): a relative error against the reference's scale.
double scaled_error(const Tensor& a, const Tensor& ref, double floor = 1e-12);
// The relative L2 error ||a - ref|| / ||ref|| (||a|| when ref is all zero);
// infinity when a has NaN/Inf or the sizes differ.
double rel_error(const Tensor& a, const Tensor& ref);
// Fails (naming `what`) unless shapes match, nothing is NaN, and every
// element satisfies |a - b| <= atol + rtol * |b|.
void expect_close(const Tensor& a, const Tensor& ref, double rtol, double atol, const std::string& what);

struct GradcheckOptions {
  double eps = 1e-6;   // central-difference step (inputs are f64)
  double rtol = 1e-5;  // per-element tolerance: |analytic - numeric| <= atol + rtol*|numeric|
  double atol = 1e-7;
  // The f32 run of the same op must match the f64 one within this scaled error
  // (outputs and every gradient); 0 skips the f32 comparison.
  double f32_tol = 1e-4;
};

// Finite-difference check of fn's gradient w.r.t. every input that requires
// grad. The inputs must be f64 leaves. The loss is sum(fn(inputs) * R) for a
// fixed random R, so every output element is weighted differently.
void gradcheck(const std::string& name, const std::function<Tensor(const std::vector<Tensor>&)>& fn,
               const std::vector<Tensor>& inputs, const GradcheckOptions& opt = {});

// Folder of the source tree's test data (tests/), set by CMake.
std::string source_dir();

// ------------------------------------------------------------------ files
// A fresh folder under the system temporary directory, removed with everything in it.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }
  std::string str() const { return path_.string(); }
  std::vector<std::string> entries() const;  // names of the entries, sorted

 private:
  std::filesystem::path path_;
};

std::string read_bytes(const std::string& path);
void write_bytes(const std::string& path, const std::string& bytes);

// ------------------------------------------------------------------ errors
// Runs fn and expects an s2h::Error whose message contains every needle.
template <class Fn>
void expect_error(Fn&& fn, const std::vector<std::string>& needles, const std::string& what) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& n : needles)
      EXPECT_NE(msg.find(n), std::string::npos) << what << ": the message \"" << msg << "\" lacks \"" << n << "\"";
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": threw something other than s2h::Error: " << e.what();
    return;
  }
  ADD_FAILURE() << what << ": did not throw";
}

// Splits "w1|w2" and expects each word in msg.
void expect_words(const std::string& msg, const std::string& words, const char* stmt);

}  // namespace s2h::test

// EXPECT_ERROR("word1|word2", statement): the statement throws s2h::Error and
// its message contains every word.
#define EXPECT_ERROR(words, ...)                                                                       \
  do {                                                                                                 \
    std::string msg_;                                                                                  \
    bool threw_ = false;                                                                               \
    try {                                                                                              \
      __VA_ARGS__;                                                                                     \
    } catch (const ::s2h::Error& e_) {                                                                 \
      threw_ = true;                                                                                   \
      msg_ = e_.what();                                                                                \
    }                                                                                                  \
    EXPECT_TRUE(threw_) << #__VA_ARGS__ << ": did not throw s2h::Error";                               \
    if (threw_) ::s2h::test::expect_words(msg_, words, #__VA_ARGS__);                                  \
  } while (0)

namespace s2h::test {

}  // namespace s2h::test
