// Pooling on NHWC activations.
#include <memory>

#include "engine/ops_util.h"
#include "kernels/cpu/pool.h"

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

}  // namespace

Tensor max_pool2d(const Tensor& x, const Pool2dOptions& opt) {
  const cpu::PoolGeom g = pool_geom(x, opt, "max_pool2d");
  S2H_CHECK(g.h * g.w <= INT32_MAX, "max_pool2d: input plane too large");
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
