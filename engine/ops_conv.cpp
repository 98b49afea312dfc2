// Convolution on NHWC activations.
#include <memory>

#include "engine/ops_util.h"
#include "kernels/cpu/conv.h"

namespace s2h {

using detail::data_of;

namespace detail {

int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, const char* op, const char* axis) {
  S2H_CHECK(s > 0 && d > 0 && p >= 0 && k > 0, "{}: stride and dilation must be positive, padding non-negative", op);
  const int64_t span = d * (k - 1) + 1;
  S2H_CHECK(in + 2 * p >= span, "{}: input {} of {} (padding {}) is smaller than the kernel extent {}", op, axis, in,
            p, span);
  return (in + 2 * p - span) / s + 1;
}

void check_nhwc(const Tensor& x, const char* op) {
  check_compute(x, op, "input");
  S2H_CHECK(x.dim() == 4, "{}: input must be NHWC [N,H,W,C], got {}", op, shape_str(x.shape()));
}

}  // namespace detail

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dOptions& opt) {
  detail::check_nhwc(x, "conv2d");
  detail::check_compute(weight, "conv2d", "weight");
  detail::check_same_dtype(x, weight, "conv2d");
  S2H_CHECK(weight.dim() == 4, "conv2d: weight must be [O,KH,KW,C/groups], got {}", shape_str(weight.shape()));
  const int64_t groups = opt.groups;
  S2H_CHECK(groups >= 1, "conv2d: groups must be >= 1, got {}", groups);
  cpu::ConvGeom g{x.size(0), x.size(1), x.size(2), x.size(3), weight.size(0), weight.size(1), weight.size(2),
                  opt.stride[0], opt.stride[1], opt.padding[0], opt.padding[1], opt.dilation[0], opt.dilation[1],
                  groups, 0, 0};
  S2H_CHECK(g.c % groups == 0 && g.o % groups == 0, "conv2d: {} input and {} output channels are not divisible by {} groups",
            g.c, g.o, groups);
  S2H_CHECK(weight.size(3) == g.c / groups, "conv2d: weight {} expects {} input channels per group, input has {} ({} groups)",
            shape_str(weight.shape()), weight.size(3), g.c / groups, groups);
  if (bias.defined()) {
    detail::check_same_dtype(x, bias, "conv2d");
    S2H_CHECK(bias.dim() == 1 && bias.size(0) == g.o, "conv2d: bias {} for {} output channels", shape_str(bias.shape()),
              g.o);
  }
  g.ho = detail::conv_out_size(g.h, g.kh, g.sh, g.ph, g.dh, "conv2d", "height");
  g.wo = detail::conv_out_size(g.w, g.kw, g.sw, g.pw, g.dw, "conv2d", "width");
  Tensor xd = data_of(x), wd = data_of(weight), bd = bias.defined() ? data_of(bias) : Tensor();
  Tensor out = Tensor::empty({g.n, g.ho, g.wo, g.o}, x.dtype());
  dispatch_float(x.dtype(), "conv2d", [&]<typename T>() {
    cpu::conv2d_forward<T>(g, xd.data<T>(), wd.data<T>(), bd.defined() ? bd.data<T>() : nullptr, out.data<T>());
  });
  if (!any_requires_grad({x, weight, bias})) return out;
  const bool gx = detail::wants_grad(x), gw = detail::wants_grad(weight), gb = detail::wants_grad(bias);
  // The data gradient needs only the weights, the weight gradient only the input.
  const Tensor xs = gw ? xd : Tensor(), ws = gx ? wd : Tensor();
  const Shape x_shape = x.shape(), w_shape = weight.shape();
  return record(out, "conv2d", {x, weight, bias}, [=](const Tensor& gy) {
    Tensor dx = gx ? Tensor::empty(x_shape, gy.dtype()) : Tensor();
    Tensor dw = gw ? Tensor::empty(w_shape, gy.dtype()) : Tensor();
    Tensor db = gb ? Tensor::empty({g.o}, gy.dtype()) : Tensor();
    dispatch_float(gy.dtype(), "conv2d backward", [&]<typename T>() {
      cpu::conv2d_backward<T>(g, gw ? xs.data<T>() : nullptr, gx ? ws.data<T>() : nullptr, gy.data<T>(),
                              gx ? dx.data<T>() : nullptr,
                              gw ? dw.data<T>() : nullptr, gb ? db.data<T>() : nullptr);
    });
    return std::vector<Tensor>{dx, dw, db};
  });
}

}  // namespace s2h
