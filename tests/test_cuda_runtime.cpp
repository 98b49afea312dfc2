// The CUDA runtime and device storage as the engine sees them: host <-> device
// round trips of every dtype and of strided tensors, pinned host memory,
// Module::to moving parameters, buffers and gradients, the memory pool's
// statistics, poisoned allocations, and clear errors. Tests that need a GPU
// are reported as SKIPPED (with the reason) without one; the error tests for
// a machine or build without a GPU run there, on the CPU.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <sys/wait.h>

#include "engine/precision.h"
#include "kernels/cuda/runtime.h"
#include "tests/test_util.h"

namespace s2h::test {
namespace {

#define SKIP_WITHOUT_GPU()                                                  \
  do {                                                                      \
    std::string why_;                                                       \
    if (cuda::device_count(&why_) == 0) GTEST_SKIP() << "no usable GPU: " << why_; \
  } while (0)

const DType kAllDtypes[] = {DType::F32, DType::F64, DType::BF16, DType::I64, DType::U8};

// Random values of `dtype` (small integers for the integer types).
Tensor random_of(const Shape& s, DType dtype) {
  if (dtype == DType::I64 || dtype == DType::U8) {
    Tensor t = uniform(s, 0, 250).to(DType::I64);  // truncates to 0..249
    return t.to(dtype);
  }
  return randn(s, DType::F64, 3.0).to(dtype);
}

// Runs fn and expects an exception (s2h::Error or cuda::CudaError) whose message holds every word.
template <class Fn>
void expect_throw_with(Fn&& fn, const std::vector<std::string>& words, const std::string& what) {
  try {
    fn();
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    for (const std::string& w : words)
      EXPECT_NE(msg.find(w), std::string::npos) << what << ": the message \"" << msg << "\" lacks \"" << w << "\"";
    return;
  }
  ADD_FAILURE() << what << ": did not throw";
}

// ------------------------------------------------------------------ without a GPU (runs on the CPU)
TEST(CudaRuntime, NoGpuGivesAClearError) {
  std::string why;
  const int n = cuda::device_count(&why);
  if (n > 0) {
    // With a GPU: a device index that does not exist is the error to check.
    expect_throw_with([&] { Tensor::empty({4}, DType::F32, Device::cuda(n + 6)); },
                      {fmt::format("cuda:{}", n + 6)}, "a device that does not exist");
    return;
  }
  EXPECT_FALSE(why.empty()) << "device_count must say why there is no GPU";
  EXPECT_FALSE(cuda::available());
  // Every way onto the GPU fails with a message naming the device.
  expect_throw_with([] { Tensor::empty({4}, DType::F32, Device::cuda()); }, {"cuda", "not available"},
                    "Tensor::empty on cuda");
  expect_throw_with([] { Tensor::zeros({4}, DType::F32, Device::cuda()); }, {"cuda", "not available"},
                    "Tensor::zeros on cuda");
  expect_throw_with([] { Tensor::ones({2, 3}).to(Device::cuda()); }, {"cuda", "not available"}, "Tensor::to(cuda)");
  // Module::to fails before changing anything: the module stays usable on the CPU.
  Linear lin(4, 3);
  const std::vector<double> before = values(lin.weight);
  expect_throw_with([&] { lin.to(Device::cuda()); }, {"cuda"}, "Module::to(cuda)");
  EXPECT_TRUE(lin.device().is_cpu());
  EXPECT_TRUE(lin.weight.device().is_cpu());
  EXPECT_EQ(values(lin.weight), before);
  EXPECT_EQ(lin(Tensor::ones({2, 4})).shape(), (Shape{2, 3}));
}

TEST(CudaRuntime, CliRefusesCudaWithoutAGpu) {
  std::string why;
  if (cuda::device_count(&why) > 0) GTEST_SKIP() << "this machine has a GPU; the refusal is tested without one";
  TempDir dir;
  const std::string out = dir.file("stdout.txt"), err = dir.file("stderr.txt");
  const std::string cmd =
      fmt::format("cd '{}' && '{}' train --device cuda --model cnn-small --data fashion-mnist --data-root '{}' "
                  "--epochs 1 --quiet > '{}' 2> '{}'",
                  dir.str(), S2H_BINARY, dir.file("no-such-data"), out, err);
  const int status = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_NE(WEXITSTATUS(status), 0) << "s2h train --device cuda must fail without a GPU";
  const std::string msg = read_bytes(err);
  EXPECT_NE(msg.find("cuda"), std::string::npos) << "the error must name the device; stderr: " << msg;
  EXPECT_EQ(std::count(msg.begin(), msg.end(), '\n'), 1) << "one line on stderr: " << msg;
  EXPECT_FALSE(std::filesystem::exists(dir.file("runs"))) << "nothing must be written";
}

TEST(CudaRuntime, DeviceNames) {
  EXPECT_EQ(Device::parse("cuda"), Device::cuda(0));
  EXPECT_EQ(Device::parse("cuda:1"), Device::cuda(1));
  EXPECT_EQ(Device::cuda(1).str(), "cuda:1");
  EXPECT_EQ(Device::cuda().str(), "cuda");
  EXPECT_ERROR("gpu|expected cpu, cuda or cuda:N", Device::parse("gpu"));
  EXPECT_ERROR("cuda:x", Device::parse("cuda:x"));
}

TEST(CudaRuntime, PoisonedCpuAllocations) {
  set_poison_allocations(true);
  const Tensor f = Tensor::empty({7}, DType::F32);
  const Tensor i = Tensor::empty({3}, DType::I64);
  set_poison_allocations(false);
  for (double v : values(f)) EXPECT_TRUE(std::isnan(v));
  for (double v : values(i)) EXPECT_EQ(v, -1.0);
}

// ------------------------------------------------------------------ with a GPU
TEST(CudaRuntime, DeviceQuery) {
  SKIP_WITHOUT_GPU();
  EXPECT_TRUE(cuda::compiled());
  EXPECT_TRUE(cuda::available());
  EXPECT_FALSE(cuda::device_name(0).empty());
  EXPECT_NE(cuda::stream(0), nullptr) << "the compute stream is a created (non-default) stream";
  EXPECT_EQ(cuda::stream(0), cuda::stream(0)) << "one stream per device";
  std::printf("[ device   ] %s, %d GPU(s)\n", cuda::device_name(0).c_str(), cuda::device_count());
}

TEST(CudaRuntime, RoundTripEveryDtype) {
  SKIP_WITHOUT_GPU();
  for (DType dt : kAllDtypes) {
    for (const Shape& s : {Shape{}, Shape{1}, Shape{1000003}, Shape{3, 5, 7}, Shape{0, 4}}) {
      SCOPED_TRACE(fmt::format("{} {}", dtype_name(dt), shape_str(s)));
      const Tensor h = random_of(s, dt);
      const Tensor d = h.to(Device::cuda());
      EXPECT_EQ(d.device(), Device::cuda());
      EXPECT_EQ(d.dtype(), dt);
      EXPECT_EQ(d.shape(), s);
      const Tensor back = d.to(Device::cpu());
      EXPECT_TRUE(back.device().is_cpu());
      EXPECT_EQ(back.dtype(), dt);
      EXPECT_EQ(values(back), values(h));
      if (s.empty()) {
        EXPECT_EQ(d.item(), h.item());
      }
    }
  }
}

TEST(CudaRuntime, RoundTripStridedTensors) {
  SKIP_WITHOUT_GPU();
  for (DType dt : kAllDtypes) {
    SCOPED_TRACE(dtype_name(dt));
    const Tensor h = random_of({6, 9, 10}, dt);
    // CPU views to the device.
    for (const Tensor& v : {h.transpose(0, 2), h.slice(1, 1, 8, 3), h.permute({1, 2, 0}).slice(2, 0, 6, 2)}) {
      ASSERT_FALSE(v.is_contiguous());
      const Tensor d = v.to(Device::cuda());
      EXPECT_EQ(d.shape(), v.shape());
      EXPECT_EQ(values(d), values(v));
    }
    // Device views back to the CPU, and a device copy of a device view.
    const Tensor d = h.to(Device::cuda());
    const std::pair<Tensor, Tensor> views[] = {
        {d.transpose(0, 1), h.transpose(0, 1)},
        {d.slice(2, 2, 9, 3).slice(0, 1, 5, 2), h.slice(2, 2, 9, 3).slice(0, 1, 5, 2)},
        {d.permute({2, 0, 1}), h.permute({2, 0, 1})}};
    for (const auto& [dv, hv] : views) {
      EXPECT_EQ(values(dv.to(Device::cpu())), values(hv));
      const Tensor c = dv.contiguous();
      EXPECT_EQ(c.device(), Device::cuda());
      EXPECT_TRUE(c.is_contiguous());
      EXPECT_EQ(values(c), values(hv));
    }
  }
}

TEST(CudaRuntime, CopyIntoStridedDeviceViews) {
  SKIP_WITHOUT_GPU();
  Tensor d = Tensor::zeros({8, 6}, DType::F32, Device::cuda());
  Tensor h = Tensor::zeros({8, 6});
  const Tensor src = randn({3, 6}, DType::F32);
  {
    NoGradGuard g;
    d.slice(0, 1, 7, 2).copy_(src);  // host -> strided device view
    h.slice(0, 1, 7, 2).copy_(src);
    d.transpose(0, 1).slice(0, 0, 1).fill_(2.5);  // fill of a strided device view
    h.transpose(0, 1).slice(0, 0, 1).fill_(2.5);
  }
  EXPECT_EQ(values(d), values(h));
}

TEST(CudaRuntime, DeviceDtypeConversionsMatchTheCpu) {
  SKIP_WITHOUT_GPU();
  // Includes halfway cases of the bf16 rounding, NaN and infinities.
  Tensor h = randn({4099}, DType::F64, 10.0).to(DType::F32);
  {
    float* p = h.data<float>();
    const float special[] = {1.00390625f, 1.01171875f, -1.00390625f, INFINITY, -INFINITY, NAN, 0.0f, -0.0f, 3.0e38f};
    for (size_t i = 0; i < std::size(special); ++i) p[i] = special[i];
  }
  const Tensor d = h.to(Device::cuda());
  for (DType dt : kAllDtypes) {
    if (dt == DType::I64 || dt == DType::U8) continue;  // float -> int of NaN/inf is undefined; tested below
    SCOPED_TRACE(dtype_name(dt));
    const std::vector<double> on_gpu = values(d.to(dt)), on_cpu = values(h.to(dt));
    ASSERT_EQ(on_gpu.size(), on_cpu.size());
    for (size_t i = 0; i < on_cpu.size(); ++i) {
      if (std::isnan(on_cpu[i])) {
        EXPECT_TRUE(std::isnan(on_gpu[i])) << i;
      } else {
        EXPECT_EQ(on_gpu[i], on_cpu[i]) << i << " from " << h.data<float>()[i];
      }
    }
  }
  const Tensor ints = uniform({100}, -50, 50).to(DType::I64);
  EXPECT_EQ(values(ints.to(Device::cuda()).to(DType::F32)), values(ints.to(DType::F32)));
  EXPECT_EQ(values(ints.to(Device::cuda()).to(DType::BF16).to(DType::F32)), values(ints.to(DType::BF16)));
}

TEST(CudaRuntime, FillItemAndInPlaceOnDevice) {
  SKIP_WITHOUT_GPU();
  for (DType dt : {DType::F32, DType::BF16, DType::I64}) {
    SCOPED_TRACE(dtype_name(dt));
    const Tensor z = Tensor::zeros({5, 3}, dt, Device::cuda()), o = Tensor::ones({5, 3}, dt, Device::cuda());
    const Tensor f = Tensor::full({2, 2}, -3.0, dt, Device::cuda());
    for (double v : values(z)) EXPECT_EQ(v, 0.0);
    for (double v : values(o)) EXPECT_EQ(v, 1.0);
    for (double v : values(f)) EXPECT_EQ(v, -3.0);
    EXPECT_EQ(f.slice(0, 1, 2).slice(1, 0, 1).item(), -3.0);
  }
  Tensor a = randn({1000}, DType::F32).to(Device::cuda());
  const Tensor b = randn({1000}, DType::F32).to(Device::cuda());
  const std::vector<double> va = values(a), vb = values(b);
  {
    NoGradGuard g;
    a.add_(b, 0.5);
    a.mul_(2.0);
  }
  const std::vector<double> r = values(a);
  for (size_t i = 0; i < r.size(); ++i)
    EXPECT_NEAR(r[i], 2.0 * static_cast<double>(static_cast<float>(va[i] + 0.5 * vb[i])), 1e-5 * (1 + std::abs(r[i])));
}

TEST(CudaRuntime, PinnedHostTensors) {
  SKIP_WITHOUT_GPU();
  Tensor p = Tensor::empty({256, 1024}, DType::F32, Device::cpu(), /*pinned=*/true);
  EXPECT_TRUE(p.storage()->pinned());
  EXPECT_TRUE(p.device().is_cpu());
  const Tensor src = randn({256, 1024}, DType::F32);
  {
    NoGradGuard g;
    p.copy_(src);
  }
  const Tensor d = p.to(Device::cuda());
  EXPECT_EQ(values(d), values(src));
  // A pinned source may be released right after the copy is queued: the copy keeps it alive.
  Tensor d2;
  {
    Tensor q = Tensor::empty({4096}, DType::F32, Device::cpu(), true);
    NoGradGuard g;
    q.fill_(7.0);
    d2 = q.to(Device::cuda());
  }
  for (double v : values(d2)) EXPECT_EQ(v, 7.0);
  // Pinned blocks are reused: many batches of one size do not grow without bound.
  for (int i = 0; i < 50; ++i) {
    Tensor q = Tensor::empty({1 << 16}, DType::U8, Device::cpu(), true);
    q.to(Device::cuda());
  }
  EXPECT_ERROR("pinned", Tensor::empty({4}, DType::F32, Device::cuda(), true));
}

TEST(CudaRuntime, ModuleToMovesParametersBuffersAndGradients) {
  SKIP_WITHOUT_GPU();
  auto conv = std::make_shared<Conv2d>(3, 8, 3);
  auto bn = std::make_shared<BatchNorm>(8);
  auto fc = std::make_shared<Linear>(8, 5);
  Sequential net({conv, bn, std::make_shared<Activation>(ActKind::ReLU), std::make_shared<AdaptiveAvgPool2d>(1, 1),
                  std::make_shared<Flatten>(), fc});
  const NamedTensors before = net.state_dict();
  std::vector<std::vector<double>> before_values;
  for (const auto& [name, t] : before) before_values.push_back(values(t));
  const std::vector<double> fc_bias = values(fc->bias);
  // A gradient that exists before the move moves with its parameter.
  fc->weight.set_grad(Tensor::full(fc->weight.shape(), 0.25));
  const Tensor weight_handle = conv->weight;  // a handle taken before the move

  net.to(Device::cuda());
  EXPECT_EQ(net.device(), Device::cuda());
  for (const auto& [name, t] : net.named_parameters()) EXPECT_EQ(t.device(), Device::cuda()) << name;
  for (const auto& [name, t] : net.named_buffers()) EXPECT_EQ(t.device(), Device::cuda()) << name;
  EXPECT_EQ(conv->weight.device(), Device::cuda()) << "the layer's own handle sees the move";
  EXPECT_EQ(weight_handle.device(), Device::cuda()) << "a handle taken before the move sees it";
  EXPECT_EQ(bn->num_batches_tracked.device(), Device::cuda());
  EXPECT_EQ(bn->num_batches_tracked.dtype(), DType::I64);
  EXPECT_TRUE(conv->weight.requires_grad());
  EXPECT_TRUE(conv->weight.is_leaf());
  ASSERT_TRUE(fc->weight.grad().defined());
  EXPECT_EQ(fc->weight.grad().device(), Device::cuda());
  for (double v : values(fc->weight.grad())) EXPECT_EQ(v, 0.25);
  const NamedTensors after = net.state_dict();
  ASSERT_EQ(after.size(), before.size());
  for (size_t i = 0; i < after.size(); ++i) EXPECT_EQ(values(after[i].second), before_values[i]) << after[i].first;

  // It trains there: a forward/backward gives gradients on the device.
  Tensor x = randn({2, 6, 6, 3}, DType::F32).to(Device::cuda());
  Tensor y = net(x);
  EXPECT_EQ(y.device(), Device::cuda());
  sum(y).backward();
  EXPECT_EQ(conv->weight.grad().device(), Device::cuda());
  EXPECT_EQ(bn->num_batches_tracked.item(), 1.0);

  // And back.
  net.to(Device::cpu());
  for (const auto& [name, t] : net.named_parameters()) EXPECT_TRUE(t.device().is_cpu()) << name;
  for (const auto& [name, t] : net.named_buffers()) EXPECT_TRUE(t.device().is_cpu()) << name;
  EXPECT_EQ(values(fc->bias), fc_bias) << "no optimiser step ran: values survive the round trip";
}

TEST(CudaRuntime, MixingDevicesIsAClearError) {
  SKIP_WITHOUT_GPU();
  const Tensor a = Tensor::ones({3});
  const Tensor b = Tensor::ones({3}, DType::F32, Device::cuda());
  EXPECT_ERROR("different devices|cpu|cuda", add(a, b));
  EXPECT_ERROR("cpu|cuda", matmul(Tensor::ones({2, 3}), Tensor::ones({3, 2}, DType::F32, Device::cuda())));
}

TEST(CudaRuntime, PoolStatistics) {
  SKIP_WITHOUT_GPU();
  cuda::synchronize(0);
  const cuda::PoolStats s0 = cuda::pool_stats(0);
  const size_t bytes = size_t{64} << 20;
  {
    Tensor t = Tensor::empty({static_cast<int64_t>(bytes / 4)}, DType::F32, Device::cuda());
    cuda::synchronize(0);
    const cuda::PoolStats s1 = cuda::pool_stats(0);
    EXPECT_GE(s1.used, s0.used + bytes);
    EXPECT_GE(s1.reserved, s1.used);
    EXPECT_GE(s1.used_high, s1.used);
    EXPECT_GE(s1.reserved_high, s1.reserved);
  }
  cuda::synchronize(0);
  const cuda::PoolStats s2 = cuda::pool_stats(0);
  EXPECT_EQ(s2.used, s0.used) << "the freed tensor went back to the pool";
  EXPECT_GE(s2.reserved, bytes) << "the pool keeps freed memory (release threshold: keep all)";
  // The same size again is served from the pool without growing it.
  {
    Tensor t = Tensor::empty({static_cast<int64_t>(bytes / 4)}, DType::F32, Device::cuda());
    cuda::synchronize(0);
    EXPECT_EQ(cuda::pool_stats(0).reserved, s2.reserved);
  }
}

TEST(CudaRuntime, NoLeakOverATrainingStep) {
  SKIP_WITHOUT_GPU();
  Linear lin(64, 10);
  lin.to(Device::cuda());
  SGDOptions so;
  so.momentum = 0.9;
  SGD opt(lin.parameters(), so);
  auto step = [&] {
    Tensor x = randn({32, 64}, DType::F32).to(Device::cuda());
    Tensor y = Tensor::from_vector<int64_t>(std::vector<int64_t>(32, 3), {32}).to(Device::cuda());
    Tensor loss = cross_entropy(lin(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
  };
  step();
  step();  // momentum buffers exist from here on
  cuda::synchronize(0);
  const size_t used = cuda::pool_stats(0).used;
  for (int i = 0; i < 5; ++i) step();
  opt.zero_grad();
  step();
  cuda::synchronize(0);
  EXPECT_EQ(cuda::pool_stats(0).used, used) << "device memory in use grew over training steps";
}

TEST(CudaRuntime, PoisonedDeviceAllocations) {
  SKIP_WITHOUT_GPU();
  set_poison_allocations(true);
  const Tensor f = Tensor::empty({1001}, DType::F32, Device::cuda());
  const Tensor b = Tensor::empty({33}, DType::BF16, Device::cuda());
  const Tensor i = Tensor::empty({5}, DType::I64, Device::cuda());
  set_poison_allocations(false);
  for (double v : values(f)) EXPECT_TRUE(std::isnan(v));
  for (double v : values(b)) EXPECT_TRUE(std::isnan(v));
  for (double v : values(i)) EXPECT_EQ(v, -1.0);
}

TEST(CudaRuntime, OutOfMemoryIsAClearError) {
  SKIP_WITHOUT_GPU();
  // 4 TiB: more than any GPU has.
  expect_throw_with([] { Tensor::empty({int64_t{1} << 40}, DType::F32, Device::cuda()); },
                    {"out of GPU memory", "cuda:0"}, "a 4 TiB tensor");
  // The device is still usable afterwards.
  EXPECT_EQ(Tensor::full({3}, 2.0, DType::F32, Device::cuda()).to(Device::cpu()).to_vector<float>(),
            (std::vector<float>{2, 2, 2}));
}

}  // namespace
}  // namespace s2h::test
