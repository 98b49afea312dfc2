// Pooling on NHWC activations.
#include <memory>

#include "engine/ops_util.h"
#include "kernels/cpu/pool.h"
#if S2H_HAVE_CUDA
#include "kernels/cuda/pool.h"
#include "kernels/cuda/runtime.h"
#endif

namespace s2h {

using detail::data_of;

namespace {

cpu::PoolGeom pool_geom(const Tensor& x, const Pool2dOptions& o, const char* op) {
  detail::check_nhwc(x, op);
  S2H_CHECK(o.padding[0] * 2 <= o.kernel[0] && o.padding[1] * 2 <= o.kernel[1],
            "{}: padding {}x{} must be at most half the kernel {}x{}", op, o.padding[0], o.padding[1], o.kernel[0],
            o.kernel[1]);
  cpu::PoolGeom g{x.size(0), x.size(1), x.size(2), x.size(3), o.kernel[0], o.kernel[1], o.stride[0], o.stride[1],
                  o.padding[0], o.padding[1], 0, 0};
  g.ho = detail::conv_out_size(g.h, g.kh, g.sh, g.ph, 1, op, "height");
  g.wo = detail::conv_out_size(g.w, g.kw, g.sw, g.pw, 1, op, "width");
  return g;
}

#if S2H_HAVE_CUDA
// The incoming gradient in the output's dtype (a no-op unless a consumer sent another).
Tensor grad_as(const Tensor& g, DType dtype) { return g.dtype() == dtype ? g : g.to(dtype); }

// Max pooling on the GPU; the argmax (int32, one per output) stays on the device
// in a byte tensor for the backward.
Tensor max_pool2d_cuda(const Tensor& x, const cpu::PoolGeom& g) {
  const Device dev = x.device();
  const DType dt = x.dtype();
  Tensor xd = data_of(x);
  Tensor out = Tensor::empty({g.n, g.ho, g.wo, g.c}, dt, dev);
  Tensor argmax = Tensor::empty({out.numel() * static_cast<int64_t>(sizeof(int32_t))}, DType::U8, dev);
  cuda::max_pool2d_forward(g, xd.raw_data(), out.raw_data(), static_cast<int32_t*>(argmax.raw_data()), dt,
                           cuda::stream(dev.index));
  return record(out, "max_pool2d", {x}, [g, argmax, dt, dev](const Tensor& gy) {
    Tensor gd = grad_as(gy, dt);
    Tensor dx = Tensor::empty({g.n, g.h, g.w, g.c}, dt, dev);
    cuda::max_pool2d_backward(g, gd.raw_data(), static_cast<const int32_t*>(argmax.raw_data()), dx.raw_data(), dt,
                              cuda::stream(dev.index));
    return std::vector<Tensor>{dx};
  });
}

Tensor avg_pool2d_cuda(const Tensor& x, const cpu::PoolGeom& g, bool cip) {
  const Device dev = x.device();
  const DType dt = x.dtype();
  Tensor xd = data_of(x);
  Tensor out = Tensor::empty({g.n, g.ho, g.wo, g.c}, dt, dev);
  cuda::avg_pool2d_forward(g, cip, xd.raw_data(), out.raw_data(), dt, cuda::stream(dev.index));
  return record(out, "avg_pool2d", {x}, [g, cip, dt, dev](const Tensor& gy) {
    Tensor gd = grad_as(gy, dt);
    Tensor dx = Tensor::empty({g.n, g.h, g.w, g.c}, dt, dev);
    cuda::avg_pool2d_backward(g, cip, gd.raw_data(), dx.raw_data(), dt, cuda::stream(dev.index));
    return std::vector<Tensor>{dx};
  });
}

Tensor adaptive_avg_pool2d_cuda(const Tensor& x, int64_t out_h, int64_t out_w) {
  const Device dev = x.device();
  const DType dt = x.dtype();
  const int64_t n = x.size(0), h = x.size(1), w = x.size(2), c = x.size(3);
  Tensor xd = data_of(x);
  Tensor out = Tensor::empty({n, out_h, out_w, c}, dt, dev);
  cuda::adaptive_avg_pool2d_forward(n, h, w, c, out_h, out_w, xd.raw_data(), out.raw_data(), dt,
                                    cuda::stream(dev.index));
  return record(out, "adaptive_avg_pool2d", {x}, [=](const Tensor& gy) {
    Tensor gd = grad_as(gy, dt);
    Tensor dx = Tensor::empty({n, h, w, c}, dt, dev);
    cuda::adaptive_avg_pool2d_backward(n, h, w, c, out_h, out_w, gd.raw_data(), dx.raw_data(), dt,
                                       cuda::stream(dev.index));
    return std::vector<Tensor>{dx};
  });
}
#endif

}  // namespace

Tensor max_pool2d(const Tensor& x, const Pool2dOptions& opt) {
  const cpu::PoolGeom g = pool_geom(x, opt, "max_pool2d");
  S2H_CHECK(g.h * g.w <= INT32_MAX, "max_pool2d: input plane too large");
#if S2H_HAVE_CUDA
  if (x.device().is_cuda()) return max_pool2d_cuda(x, g);
#endif
  Tensor xd = data_of(x);
  Tensor out = Tensor::empty({g.n, g.ho, g.wo, g.c}, x.dtype());
  auto argmax = std::make_shared<std::vector<int32_t>>(static_cast<size_t>(out.numel()));
  dispatch_float(x.dtype(), "max_pool2d", [&]<typename T>() {
    cpu::max_pool2d_forward<T>(g, xd.data<T>(), out.data<T>(), argmax->data());
  });
  return record(out, "max_pool2d", {x}, [g, argmax](const Tensor& gy) {
    Tensor dx = Tensor::empty({g.n, g.h, g.w, g.c}, gy.dtype());
    dispatch_float(gy.dtype(), "max_pool2d backward", [&]<typename T>() {
      cpu::max_pool2d_backward<T>(g, gy.data<T>(), argmax->data(), dx.data<T>());
    });
    return std::vector<Tensor>{dx};
  });
}

Tensor avg_pool2d(const Tensor& x, const Pool2dOptions& opt) {
  const cpu::PoolGeom g = pool_geom(x, opt, "avg_pool2d");
  const bool cip = opt.count_include_pad;
#if S2H_HAVE_CUDA
  if (x.device().is_cuda()) return avg_pool2d_cuda(x, g, cip);
#endif
  Tensor xd = data_of(x);
  Tensor out = Tensor::empty({g.n, g.ho, g.wo, g.c}, x.dtype());
  dispatch_float(x.dtype(), "avg_pool2d", [&]<typename T>() {
    cpu::avg_pool2d_forward<T>(g, cip, xd.data<T>(), out.data<T>());
  });
  return record(out, "avg_pool2d", {x}, [g, cip](const Tensor& gy) {
    Tensor dx = Tensor::empty({g.n, g.h, g.w, g.c}, gy.dtype());
    dispatch_float(gy.dtype(), "avg_pool2d backward", [&]<typename T>() {
      cpu::avg_pool2d_backward<T>(g, cip, gy.data<T>(), dx.data<T>());
    });
    return std::vector<Tensor>{dx};
  });
}

Tensor adaptive_avg_pool2d(const Tensor& x, int64_t out_h, int64_t out_w) {
  detail::check_nhwc(x, "adaptive_avg_pool2d");
  S2H_CHECK(out_h > 0 && out_w > 0, "adaptive_avg_pool2d: output size {}x{} must be positive", out_h, out_w);
  const int64_t n = x.size(0), h = x.size(1), w = x.size(2), c = x.size(3);
  S2H_CHECK(h > 0 && w > 0, "adaptive_avg_pool2d: empty input {}", shape_str(x.shape()));
#if S2H_HAVE_CUDA
  if (x.device().is_cuda()) return adaptive_avg_pool2d_cuda(x, out_h, out_w);
#endif
  Tensor xd = data_of(x);
  Tensor out = Tensor::empty({n, out_h, out_w, c}, x.dtype());
  dispatch_float(x.dtype(), "adaptive_avg_pool2d", [&]<typename T>() {
    cpu::adaptive_avg_pool2d_forward<T>(n, h, w, c, out_h, out_w, xd.data<T>(), out.data<T>());
  });
  return record(out, "adaptive_avg_pool2d", {x}, [=](const Tensor& gy) {
    Tensor dx = Tensor::empty({n, h, w, c}, gy.dtype());
    dispatch_float(gy.dtype(), "adaptive_avg_pool2d backward", [&]<typename T>() {
      cpu::adaptive_avg_pool2d_backward<T>(n, h, w, c, out_h, out_w, gy.data<T>(), dx.data<T>());
    });
    return std::vector<Tensor>{dx};
  });
}

}  // namespace s2h
