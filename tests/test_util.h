// Helpers shared by the tests: seeds, random tensors, comparisons, gradcheck.
#pragma once

#include <gtest/gtest.h>

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

}  // namespace s2h::test
