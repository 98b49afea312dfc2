// Batch norm (channels last) and layer norm.
#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <memory>

#include "engine/ops_util.h"
#include "kernels/cpu/norm.h"
#if S2H_HAVE_CUDA
#include "kernels/cuda/norm.h"
#include "kernels/cuda/runtime.h"
#endif

namespace s2h {

using detail::data_of;

namespace {
void check_channel_param(const Tensor& p, const Tensor& x, int64_t c, const char* op, const char* what) {
  if (!p.defined()) return;
  detail::check_compute(p, op, what);
  detail::check_same_device(x, p, op);
  if (x.device().is_cuda()) {
    // Mixed precision: bf16 activations with f32 parameters (norms compute in fp32).
    S2H_CHECK(p.dtype() == DType::F32 || p.dtype() == x.dtype(),
              "{}: {} has dtype {} (expected f32 or {}, the input's)", op, what, dtype_name(p.dtype()),
              dtype_name(x.dtype()));
  } else {
    detail::check_same_dtype(x, p, op);
  }
  S2H_CHECK(p.dim() == 1 && p.size(0) == c, "{}: {} has shape {}, expected [{}]", op, what, shape_str(p.shape()), c);
}

#if S2H_HAVE_CUDA
// The one dtype of the defined parameters (f32 when there are none).
DType param_dtype(std::initializer_list<Tensor> params, const char* op) {
  DType dt = DType::F32;
  bool seen = false;
  for (const Tensor& p : params) {
    if (!p.defined()) continue;
    S2H_CHECK(!seen || p.dtype() == dt, "{}: parameters and running statistics must share one dtype ({} and {})", op,
              dtype_name(dt), dtype_name(p.dtype()));
    dt = p.dtype();
    seen = true;
  }
  return dt;
}

const void* ptr_or_null(const Tensor& t) { return t.defined() ? t.raw_data() : nullptr; }
void* mut_ptr_or_null(const Tensor& t) { return t.defined() ? t.raw_data() : nullptr; }

// The incoming gradient in the output's dtype (a no-op unless a consumer sent another).
Tensor grad_as(const Tensor& g, DType dtype) { return g.dtype() == dtype ? g : g.to(dtype); }

// Batch norm on the GPU (checks done by the caller). One node, hand-written
// backward; the statistics used (batch or running) are saved as f32.
Tensor batch_norm_cuda(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                       const Tensor& running_var, bool training, double momentum, double eps) {
  const Device dev = x.device();
  const int64_t c = x.size(-1), rows = x.numel() / std::max<int64_t>(c, 1);
  const DType xdt = x.dtype(), pdt = param_dtype({weight, bias, running_mean, running_var}, "batch_norm");
  if (running_mean.defined())
    S2H_CHECK(running_mean.is_contiguous() && running_var.is_contiguous(),
              "batch_norm: running statistics must be contiguous");
  Tensor xd = data_of(x), wd = weight.defined() ? data_of(weight) : Tensor(),
         bd = bias.defined() ? data_of(bias) : Tensor();
  Tensor out = Tensor::empty(x.shape(), xdt, dev);
  Tensor save_mean = Tensor::empty({c}, DType::F32, dev), save_invstd = Tensor::empty({c}, DType::F32, dev);
  {
    Tensor scratch = Tensor::empty({cuda::batch_norm_scratch_floats(rows, c)}, DType::F32, dev);
    cuda::batch_norm_forward(xd.raw_data(), xdt, rows, c, ptr_or_null(wd), ptr_or_null(bd),
                             mut_ptr_or_null(running_mean), mut_ptr_or_null(running_var), pdt, training, momentum,
                             eps, out.raw_data(), save_mean.data<float>(), save_invstd.data<float>(),
                             scratch.data<float>(), cuda::stream(dev.index));
  }
  if (!any_requires_grad({x, weight, bias})) return out;
  const bool gx = detail::wants_grad(x), gw = detail::wants_grad(weight), gb = detail::wants_grad(bias);
  return record(out, "batch_norm", {x, weight, bias}, [=](const Tensor& gy) {
    Tensor g = grad_as(gy, xdt);
    Tensor dx = gx ? Tensor::empty(xd.shape(), xdt, dev) : Tensor();
    Tensor dw = gw ? Tensor::empty({c}, pdt, dev) : Tensor();
    Tensor db = gb ? Tensor::empty({c}, pdt, dev) : Tensor();
    Tensor scratch = Tensor::empty({cuda::batch_norm_scratch_floats(rows, c)}, DType::F32, dev);
    cuda::batch_norm_backward(xd.raw_data(), g.raw_data(), xdt, rows, c, save_mean.data<float>(),
                              save_invstd.data<float>(), ptr_or_null(wd), pdt, training, mut_ptr_or_null(dx),
                              mut_ptr_or_null(dw), mut_ptr_or_null(db), scratch.data<float>(),
                              cuda::stream(dev.index));
    return std::vector<Tensor>{dx, dw, db};
  });
}

Tensor layer_norm_cuda(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  const Device dev = x.device();
  const int64_t c = x.size(-1), rows = x.numel() / std::max<int64_t>(c, 1);
  const DType xdt = x.dtype(), pdt = param_dtype({weight, bias}, "layer_norm");
  Tensor xd = data_of(x), wd = weight.defined() ? data_of(weight) : Tensor(),
         bd = bias.defined() ? data_of(bias) : Tensor();
  Tensor out = Tensor::empty(x.shape(), xdt, dev);
  Tensor mean = Tensor::empty({rows}, DType::F32, dev), rstd = Tensor::empty({rows}, DType::F32, dev);
  cuda::layer_norm_forward(xd.raw_data(), xdt, rows, c, ptr_or_null(wd), ptr_or_null(bd), pdt, eps, out.raw_data(),
                           mean.data<float>(), rstd.data<float>(), cuda::stream(dev.index));
  if (!any_requires_grad({x, weight, bias})) return out;
  const bool gx = detail::wants_grad(x), gw = detail::wants_grad(weight), gb = detail::wants_grad(bias);
  return record(out, "layer_norm", {x, weight, bias}, [=](const Tensor& gy) {
    Tensor g = grad_as(gy, xdt);
    Tensor dx = gx ? Tensor::empty(xd.shape(), xdt, dev) : Tensor();
    Tensor dw = gw ? Tensor::empty({c}, pdt, dev) : Tensor();
    Tensor db = gb ? Tensor::empty({c}, pdt, dev) : Tensor();
    Tensor scratch = Tensor::empty({std::max<int64_t>(1, cuda::layer_norm_scratch_floats(rows, c))}, DType::F32, dev);
    cuda::layer_norm_backward(xd.raw_data(), g.raw_data(), xdt, rows, c, mean.data<float>(), rstd.data<float>(),
                              ptr_or_null(wd), pdt, mut_ptr_or_null(dx), mut_ptr_or_null(dw), mut_ptr_or_null(db),
                              scratch.data<float>(), cuda::stream(dev.index));
    return std::vector<Tensor>{dx, dw, db};
  });
}
#endif

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
#if S2H_HAVE_CUDA
  if (x.device().is_cuda()) {
    S2H_CHECK(training || running_mean.defined(), "batch_norm: evaluation mode needs running statistics");
    S2H_CHECK(!training || rows > 1, "batch_norm: training needs more than one value per channel, got input {}",
              shape_str(x.shape()));
    return batch_norm_cuda(x, weight, bias, running_mean, running_var, training, momentum, eps);
  }
#endif

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
#if S2H_HAVE_CUDA
  if (x.device().is_cuda()) return layer_norm_cuda(x, weight, bias, eps);
#endif
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
