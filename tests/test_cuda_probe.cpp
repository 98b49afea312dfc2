// The CUDA toolchain probe: with a GPU, the probe kernel must match the CPU;
// without one (or in a CPU-only build) the test is reported as skipped.
#include "kernels/cuda/probe.h"
#include "tests/test_util.h"

namespace s2h::test {
namespace {

TEST(CudaProbe, SaxpyMatchesCpu) {
  std::string why;
  if (cuda::device_count(&why) == 0) GTEST_SKIP() << "no usable GPU: " << why;
  const int n = 1000 + static_cast<int>(test_generator().below(1000));
  std::vector<float> x(static_cast<size_t>(n)), y(static_cast<size_t>(n)), ref(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    x[static_cast<size_t>(i)] = static_cast<float>(test_generator().normal());
    y[static_cast<size_t>(i)] = static_cast<float>(test_generator().normal());
    ref[static_cast<size_t>(i)] = 2.5f * x[static_cast<size_t>(i)] + y[static_cast<size_t>(i)];
  }
  cuda::saxpy(n, 2.5f, x.data(), y.data());
  for (int i = 0; i < n; ++i) EXPECT_FLOAT_EQ(y[static_cast<size_t>(i)], ref[static_cast<size_t>(i)]) << i;
}

TEST(CudaProbe, ReportsWhetherCompiled) {
  std::string why;
  const int n = cuda::device_count(&why);
  if (!cuda::compiled()) {
    EXPECT_EQ(n, 0);
    EXPECT_NE(why.find("no CUDA backend"), std::string::npos) << why;
  } else if (n == 0) {
    EXPECT_FALSE(why.empty()) << "a failed device query must say why";
  }
}

}  // namespace
}  // namespace s2h::test
