// Batch norm (channels last) and layer norm.
#include <cmath>
#include <memory>

#include "engine/ops_util.h"
#include "kernels/cpu/norm.h"

namespace s2h {

using detail::data_of;

namespace {
void check_channel_param(const Tensor& p, const Tensor& x, int64_t c, const char* op, const char* what) {
  if (!p.defined()) return;
  detail::check_compute(p, op, what);
  detail::check_same_dtype(x, p, op);
  S2H_CHECK(p.dim() == 1 && p.size(0) == c, "{}: {} has shape {}, expected [{}]", op, what, shape_str(p.shape()), c);
}
}  // namespace

Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                  const Tensor& running_var, bool training, double momentum, double eps) {
  detail::check_compute(x, "batch_norm", "input");
  S2H_CHECK(x.dim() >= 2, "batch_norm: input must be [N,C] or [N,H,W,C], got {}", shape_str(x.shape()));
  const int64_t c = x.size(-1), rows = x.numel() / std::max<int64_t>(c, 1);
  check_channel_param(weight, x, c, "batch_norm", "weight");
  check_channel_param(bias, x, c, "batch_norm", "bias");
  check_channel_param(running_mean, x, c, "batch_norm", "running_mean");
  check_channel_param(running_var, x, c, "batch_norm", "running_var");
  S2H_CHECK(running_mean.defined() == running_var.defined(), "batch_norm: running_mean and running_var go together");

  if (!training) {
    // Evaluation: a per-channel affine map built from differentiable ops.
    S2H_CHECK(running_mean.defined(), "batch_norm: evaluation mode needs running statistics");
    Tensor invstd = rdiv_scalar(sqrt(add_scalar(running_var.detach(), eps)), 1.0);
    Tensor scale = weight.defined() ? mul(weight, invstd) : invstd;
    Tensor shift = neg(mul(running_mean.detach(), scale));
    if (bias.defined()) shift = add(shift, bias);
    return add(mul(x, scale), shift);
  }

  S2H_CHECK(rows > 1, "batch_norm: training needs more than one value per channel, got input {}", shape_str(x.shape()));
  Tensor xd = data_of(x), wd = weight.defined() ? data_of(weight) : Tensor(),
         bd = bias.defined() ? data_of(bias) : Tensor();
  auto mean = std::make_shared<std::vector<double>>(static_cast<size_t>(c));
  auto invstd = std::make_shared<std::vector<double>>(static_cast<size_t>(c));
  std::vector<double> var(static_cast<size_t>(c));
  Tensor out = Tensor::empty(x.shape(), x.dtype());
  dispatch_float(x.dtype(), "batch_norm", [&]<typename T>() {
    const T* xp = xd.data<T>();
    cpu::channel_mean_var<T>(xp, rows, c, mean->data(), var.data());
    // y = x * scale + shift with scale = w * invstd, shift = b - mean * scale.
    std::vector<T> scale(static_cast<size_t>(c)), shift(static_cast<size_t>(c));
    for (int64_t j = 0; j < c; ++j) {
      (*invstd)[j] = 1.0 / std::sqrt(var[j] + eps);
      const double s = (wd.defined() ? static_cast<double>(wd.data<T>()[j]) : 1.0) * (*invstd)[j];
      scale[j] = static_cast<T>(s);
      shift[j] = static_cast<T>((bd.defined() ? static_cast<double>(bd.data<T>()[j]) : 0.0) - (*mean)[j] * s);
    }
    cpu::channel_affine<T>(xp, rows, c, scale.data(), shift.data(), out.data<T>());
    if (running_mean.defined()) {
      S2H_CHECK(running_mean.is_contiguous() && running_var.is_contiguous(),
                "batch_norm: running statistics must be contiguous");
      T* rm = running_mean.data<T>();
      T* rv = running_var.data<T>();
      const double unbias = static_cast<double>(rows) / static_cast<double>(rows - 1);
      for (int64_t j = 0; j < c; ++j) {
        rm[j] = static_cast<T>((1 - momentum) * rm[j] + momentum * (*mean)[j]);
        rv[j] = static_cast<T>((1 - momentum) * rv[j] + momentum * var[j] * unbias);
      }
    }
  });
  if (!any_requires_grad({x, weight, bias})) return out;
  const bool gx = detail::wants_grad(x), gw = detail::wants_grad(weight), gb = detail::wants_grad(bias);
  return record(out, "batch_norm", {x, weight, bias}, [=](const Tensor& gy) {
    Tensor dx = gx ? Tensor::empty(xd.shape(), gy.dtype()) : Tensor();
    Tensor dw = gw ? Tensor::empty({c}, gy.dtype()) : Tensor();
    Tensor db = gb ? Tensor::empty({c}, gy.dtype()) : Tensor();
    dispatch_float(gy.dtype(), "batch_norm backward", [&]<typename T>() {
      cpu::batch_norm_backward<T>(xd.data<T>(), gy.data<T>(), rows, c, mean->data(), invstd->data(),
                                  wd.defined() ? wd.data<T>() : nullptr, gx ? dx.data<T>() : nullptr,
                                  gw ? dw.data<T>() : nullptr, gb ? db.data<T>() : nullptr);
    });
    return std::vector<Tensor>{dx, dw, db};
  });
}

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  detail::check_compute(x, "layer_norm", "input");
  S2H_CHECK(x.dim() >= 1, "layer_norm: input must have at least one dimension");
  const int64_t c = x.size(-1), rows = x.numel() / std::max<int64_t>(c, 1);
  check_channel_param(weight, x, c, "layer_norm", "weight");
  check_channel_param(bias, x, c, "layer_norm", "bias");
  Tensor xd = data_of(x), wd = weight.defined() ? data_of(weight) : Tensor(), bd = bias.defined() ? data_of(bias) : Tensor();
  Tensor out = Tensor::empty(x.shape(), x.dtype());
  Tensor mean = Tensor::empty({rows}, x.dtype()), rstd = Tensor::empty({rows}, x.dtype());
  dispatch_float(x.dtype(), "layer_norm", [&]<typename T>() {
    cpu::layer_norm_forward<T>(xd.data<T>(), rows, c, wd.defined() ? wd.data<T>() : nullptr,
                               bd.defined() ? bd.data<T>() : nullptr, eps, out.data<T>(), mean.data<T>(),
                               rstd.data<T>());
  });
  if (!any_requires_grad({x, weight, bias})) return out;
  const bool gx = detail::wants_grad(x), gw = detail::wants_grad(weight), gb = detail::wants_grad(bias);
  return record(out, "layer_norm", {x, weight, bias}, [=](const Tensor& gy) {
    Tensor dx = gx ? Tensor::empty(xd.shape(), gy.dtype()) : Tensor();
    Tensor dw = gw ? Tensor::empty({c}, gy.dtype()) : Tensor();
    Tensor db = gb ? Tensor::empty({c}, gy.dtype()) : Tensor();
    dispatch_float(gy.dtype(), "layer_norm backward", [&]<typename T>() {
      cpu::layer_norm_backward<T>(xd.data<T>(), gy.data<T>(), rows, c, mean.data<T>(), rstd.data<T>(),
                                  wd.defined() ? wd.data<T>() : nullptr, gx ? dx.data<T>() : nullptr,
                                  gw ? dw.data<T>() : nullptr, gb ? db.data<T>() : nullptr);
    });
    return std::vector<Tensor>{dx, dw, db};
  });
}

}  // namespace s2h
