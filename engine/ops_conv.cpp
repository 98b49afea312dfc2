// Convolution on NHWC activations (kernels/cpu/conv on the CPU, cuDNN on CUDA
// under the precision policy of engine/precision.h).
#include <algorithm>
#include <memory>
#include <vector>

#include "engine/ops_util.h"
#include "engine/precision.h"
#include "kernels/cpu/conv.h"
#if S2H_HAVE_CUDA
#include "kernels/cuda/blas.h"
#include "kernels/cuda/conv.h"
#include "kernels/cuda/runtime.h"
#endif

namespace s2h {

using detail::data_of;

#if S2H_HAVE_CUDA
namespace {

// Device scratch for the cuDNN launchers: every request becomes a byte tensor
// on the device, kept until this object dies (after the launcher returned;
// the memory goes back to the stream-ordered pool behind the queued work).
class Scratch {
 public:
  explicit Scratch(Device device) : device_(device) {}
  cuda::WorkspaceFn fn() {
    return [this](size_t nbytes) {
      keep_.push_back(Tensor::empty({static_cast<int64_t>(std::max<size_t>(nbytes, 1))}, DType::U8, device_));
      return keep_.back().raw_data();
    };
  }

 private:
  Device device_;
  std::vector<Tensor> keep_;
};

Tensor conv2d_cuda(const Tensor& x, const Tensor& weight, const Tensor& bias, const cpu::ConvGeom& geom) {
  // The policy's dtype for each operand, promoted to f32 when they differ.
  const DType dx_t = gemm_dtype(x.device(), x.dtype()), dw_t = gemm_dtype(weight.device(), weight.dtype());
  const DType ct = dx_t == dw_t ? dx_t : DType::F32;
  // Autograd-aware casts: fp32 master weights get fp32 gradients. The bias is
  // not cast: the bias kernels read it in its own dtype.
  const Tensor xc = x.to(ct), wc = weight.to(ct);
  const Device dev = x.device();
  const bool tf32 = allow_tf32();
  const cuda::ConvGeometry g{geom.n, geom.h, geom.w, geom.c, geom.o, geom.kh, geom.kw, geom.ho, geom.wo,
                             geom.sh, geom.sw, geom.ph, geom.pw, geom.dh, geom.dw, geom.groups};
  const Tensor xd = data_of(xc), wd = data_of(wc), bd = bias.defined() ? data_of(bias) : Tensor();
  Tensor out = Tensor::empty({g.n, g.ho, g.wo, g.o}, ct, dev);
  {
    Scratch scratch(dev);
    cuda::conv2d_forward(g, ct, tf32, xd.raw_data(), wd.raw_data(), out.raw_data(), scratch.fn(), dev.index);
  }
  if (bd.defined())
    cuda::bias_add_rows(out.raw_data(), ct, bd.raw_data(), bd.dtype(), g.n * g.ho * g.wo, g.o,
                        cuda::stream(dev.index));
  if (!any_requires_grad({xc, wc, bias})) return out;
  const bool gx = detail::wants_grad(xc), gw = detail::wants_grad(wc), gb = detail::wants_grad(bias);
  // The data gradient needs only the weights, the weight gradient only the input.
  const Tensor xs = gw ? xd : Tensor(), ws = gx ? wd : Tensor();
  const Shape x_shape = x.shape(), w_shape = weight.shape();
  const DType bias_dtype = bias.defined() ? bias.dtype() : ct;
  return record(out, "conv2d", {xc, wc, bias}, [=](const Tensor& gy_in) {
    S2H_CHECK(gy_in.device() == dev, "conv2d backward: the gradient is on {}, the op ran on {}", gy_in.device().str(),
              dev.str());
    const Tensor gy = gy_in.dtype() == ct ? gy_in : gy_in.to(ct).contiguous();
    Tensor dx, dw, db;
    Scratch scratch(dev);
    if (gx) {
      dx = Tensor::empty(x_shape, ct, dev);
      cuda::conv2d_backward_data(g, ct, tf32, ws.raw_data(), gy.raw_data(), dx.raw_data(), scratch.fn(), dev.index);
    }
    if (gw) {
      dw = Tensor::empty(w_shape, ct, dev);
      cuda::conv2d_backward_filter(g, ct, tf32, xs.raw_data(), gy.raw_data(), dw.raw_data(), scratch.fn(),
                                   dev.index);
    }
    if (gb) {
      const int64_t rows = g.n * g.ho * g.wo;
      db = Tensor::empty({g.o}, bias_dtype, dev);
      Tensor partial = Tensor::empty({cuda::bias_grad_splits(rows, g.o) * g.o}, DType::F32, dev);
      cuda::bias_grad_rows(gy.raw_data(), ct, rows, g.o, db.raw_data(), bias_dtype, partial.data<float>(),
                           cuda::stream(dev.index));
    }
    return std::vector<Tensor>{dx, dw, db};
  });
}

}  // namespace
#endif

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
  detail::check_same_device(x, weight, "conv2d");
  const bool cpu = x.device().is_cpu();
  if (cpu) detail::check_same_dtype(x, weight, "conv2d");  // CUDA promotes mixed f32 / bf16
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
    detail::check_same_device(x, bias, "conv2d");
    if (cpu) {
      detail::check_same_dtype(x, bias, "conv2d");
    } else {
      detail::check_compute(bias, "conv2d", "bias");
    }
    S2H_CHECK(bias.dim() == 1 && bias.size(0) == g.o, "conv2d: bias {} for {} output channels", shape_str(bias.shape()),
              g.o);
  }
  g.ho = detail::conv_out_size(g.h, g.kh, g.sh, g.ph, g.dh, "conv2d", "height");
  g.wo = detail::conv_out_size(g.w, g.kw, g.sw, g.pw, g.dw, "conv2d", "width");
#if S2H_HAVE_CUDA
  if (!cpu) return conv2d_cuda(x, weight, bias, g);
#endif
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
