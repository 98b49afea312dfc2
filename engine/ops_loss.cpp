// Softmax, log-softmax, cross-entropy, KL divergence and dropout.
#include <cmath>

#include "engine/ops_util.h"
#include "engine/random.h"
#include "kernels/cpu/softmax.h"
#if S2H_HAVE_CUDA
#include "kernels/cuda/runtime.h"
#include "kernels/cuda/softmax.h"
#endif

namespace s2h {

using detail::data_of;

namespace {

#if S2H_HAVE_CUDA
// The incoming gradient in the output's dtype (a no-op unless a consumer sent another).
Tensor grad_as(const Tensor& g, DType dtype) { return g.dtype() == dtype ? g : g.to(dtype); }
#endif

// Softmax-like op over the last axis, with y saved for the backward. `log`
// picks the CUDA kernel (the CPU one comes as fwd / bwd).
template <class Fwd, class Bwd>
Tensor lastdim_op(const Tensor& x, const char* name, bool log, Fwd fwd, Bwd bwd) {
  detail::check_compute(x, name, "input");
  S2H_CHECK(x.dim() >= 1, "{}: input must have at least one dimension", name);
  const int64_t c = x.size(-1), rows = x.numel() / std::max<int64_t>(c, 1);
  Tensor xd = data_of(x);
#if S2H_HAVE_CUDA
  if (x.device().is_cuda()) {
    Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
    cuda::softmax_forward(xd.raw_data(), out.raw_data(), x.dtype(), rows, c, log, cuda::stream(x.device().index));
    if (!detail::wants_grad(x)) return out;
    Tensor yd = out.detach();
    return record(out, name, {x}, [yd, rows, c, log](const Tensor& g) {
      const Device dev = yd.device();
      Tensor gd = grad_as(g, yd.dtype());
      Tensor dx = Tensor::empty(yd.shape(), yd.dtype(), dev);
      cuda::softmax_backward(yd.raw_data(), gd.raw_data(), dx.raw_data(), yd.dtype(), rows, c, log,
                             cuda::stream(dev.index));
      return std::vector<Tensor>{dx};
    });
  }
#endif
  Tensor out = Tensor::empty(x.shape(), x.dtype());
  dispatch_float(x.dtype(), name, [&]<typename T>() { fwd(xd.data<T>(), rows, c, out.data<T>()); });
  if (!detail::wants_grad(x)) return out;
  Tensor yd = out.detach();
  return record(out, name, {x}, [yd, rows, c, bwd, name](const Tensor& g) {
    Tensor dx = Tensor::empty(yd.shape(), g.dtype());
    dispatch_float(g.dtype(), name, [&]<typename T>() { bwd(yd.data<T>(), g.data<T>(), rows, c, dx.data<T>()); });
    return std::vector<Tensor>{dx};
  });
}

// Applies a last-axis op along `axis` by moving that axis last and back.
template <class Op>
Tensor along_axis(const Tensor& x, int64_t axis, Op op) {
  const int64_t nd = x.dim();
  S2H_CHECK(nd >= 1, "softmax: input must have at least one dimension");
  const int64_t a = normalize_axis(axis, nd, "softmax axis");
  if (a == nd - 1) return op(x);
  return transpose(op(transpose(x, a, nd - 1).contiguous()), a, nd - 1);
}

#if S2H_HAVE_CUDA
// Cross-entropy on the GPU: the logits are cast to f32 (an autograd op, so
// bf16 logits get a bf16 gradient) and the loss is an f32 scalar on the
// device. Targets on the host are checked there before they move (the usual
// case: labels from the data loader); targets already on the device cannot be
// checked without waiting for the GPU, so a bad one makes the loss (and that
// row's gradient) NaN instead of being read through.
Tensor cross_entropy_cuda(const Tensor& logits, const Tensor& target, double label_smoothing) {
  const Device dev = logits.device();
  const int64_t n = logits.size(0), c = logits.size(1);
  S2H_CHECK(c > 0, "cross_entropy: logits {} have no classes", shape_str(logits.shape()));
  Tensor td;
  if (target.device().is_cpu()) {
    Tensor th = data_of(target);
    const int64_t* t = th.data<int64_t>();
    for (int64_t i = 0; i < n; ++i)
      S2H_CHECK(t[i] >= 0 && t[i] < c, "cross_entropy: target {} at position {} is outside [0, {})", t[i], i, c);
    td = th.to(dev);
  } else {
    detail::check_same_device(logits, target, "cross_entropy");
    td = data_of(target);
  }
  const Tensor xf = logits.to(DType::F32);
  const Tensor xd = data_of(xf);
  Tensor lse = Tensor::empty({n}, DType::F32, dev);
  Tensor out = Tensor::empty({}, DType::F32, dev);
  {
    Tensor scratch = Tensor::empty({cuda::cross_entropy_scratch_floats(n)}, DType::F32, dev);
    cuda::cross_entropy_forward(xd.data<float>(), td.data<int64_t>(), n, c, label_smoothing, lse.data<float>(),
                                out.data<float>(), scratch.data<float>(), cuda::stream(dev.index));
  }
  return record(out, "cross_entropy", {xf}, [xd, td, lse, n, c, label_smoothing](const Tensor& g) {
    const Device d = xd.device();
    Tensor gf = grad_as(g, DType::F32);
    Tensor dx = Tensor::empty({n, c}, DType::F32, d);
    cuda::cross_entropy_backward(xd.data<float>(), td.data<int64_t>(), lse.data<float>(), gf.data<float>(), n, c,
                                 label_smoothing, dx.data<float>(), cuda::stream(d.index));
    return std::vector<Tensor>{dx};
  });
}

// KL divergence on the GPU: both sides cast to f32 (autograd ops), an f32 scalar on the device.
Tensor kl_div_cuda(const Tensor& input, const Tensor& target, bool log_target) {
  const Device dev = input.device();
  const int64_t n = input.size(0), total = input.numel();
  const Tensor qf = input.to(DType::F32), pf = target.to(DType::F32);
  const Tensor qd = data_of(qf), pd = data_of(pf);
  Tensor out = Tensor::empty({}, DType::F32, dev);
  {
    Tensor scratch = Tensor::empty({cuda::kl_div_scratch_floats(total)}, DType::F32, dev);
    cuda::kl_div_forward(qd.data<float>(), pd.data<float>(), total, n, log_target, out.data<float>(),
                         scratch.data<float>(), cuda::stream(dev.index));
  }
  if (!any_requires_grad({qf, pf})) return out;
  const bool gq = detail::wants_grad(qf), gp = detail::wants_grad(pf);
  return record(out, "kl_div", {qf, pf}, [qd, pd, n, total, log_target, gq, gp](const Tensor& g) {
    const Device d = qd.device();
    Tensor gf = grad_as(g, DType::F32);
    Tensor dq = gq ? Tensor::empty(qd.shape(), DType::F32, d) : Tensor();
    Tensor dp = gp ? Tensor::empty(pd.shape(), DType::F32, d) : Tensor();
    cuda::kl_div_backward(qd.data<float>(), pd.data<float>(), gf.data<float>(), total, n, log_target,
                          gq ? dq.data<float>() : nullptr, gp ? dp.data<float>() : nullptr, cuda::stream(d.index));
    return std::vector<Tensor>{dq, dp};
  });
}

// Dropout on the GPU: the mask is a counter-based hash of (seed, element
// index), drawn on the device; the backward regenerates it from the seed, so
// nothing but the seed is kept.
Tensor dropout_cuda(const Tensor& x, double p, uint64_t seed) {
  const Device dev = x.device();
  const DType dt = x.dtype();
  const int64_t n = x.numel();
  Tensor xd = data_of(x);
  Tensor out = Tensor::empty(x.shape(), dt, dev);
  cuda::dropout(xd.raw_data(), out.raw_data(), dt, n, p, seed, cuda::stream(dev.index));
  if (!detail::wants_grad(x)) return out;
  return record(out, "dropout", {x}, [dev, dt, n, p, seed, shape = x.shape()](const Tensor& g) {
    Tensor gd = grad_as(g, dt);
    Tensor dx = Tensor::empty(shape, dt, dev);
    cuda::dropout(gd.raw_data(), dx.raw_data(), dt, n, p, seed, cuda::stream(dev.index));
    return std::vector<Tensor>{dx};
  });
}
#endif

}  // namespace

Tensor softmax(const Tensor& x, int64_t axis) {
  return along_axis(x, axis, [](const Tensor& t) {
    return lastdim_op(
        t, "softmax", false, [](auto* xp, int64_t r, int64_t c, auto* yp) { cpu::softmax_forward(xp, r, c, yp); },
        [](auto* yp, auto* gp, int64_t r, int64_t c, auto* dp) { cpu::softmax_backward(yp, gp, r, c, dp); });
  });
}

Tensor log_softmax(const Tensor& x, int64_t axis) {
  return along_axis(x, axis, [](const Tensor& t) {
    return lastdim_op(
        t, "log_softmax", true,
        [](auto* xp, int64_t r, int64_t c, auto* yp) { cpu::log_softmax_forward(xp, r, c, yp); },
        [](auto* yp, auto* gp, int64_t r, int64_t c, auto* dp) { cpu::log_softmax_backward(yp, gp, r, c, dp); });
  });
}

Tensor cross_entropy(const Tensor& logits, const Tensor& target, double label_smoothing) {
  detail::check_compute(logits, "cross_entropy", "logits");
  S2H_CHECK(logits.dim() == 2, "cross_entropy: logits must be [N, C], got {}", shape_str(logits.shape()));
  S2H_CHECK(target.defined() && target.dtype() == DType::I64 && target.dim() == 1 && target.size(0) == logits.size(0),
            "cross_entropy: target must be i64 [{}], got {}", logits.size(0), target.defined() ? target.str() : "undefined");
  S2H_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0, "cross_entropy: label_smoothing {} is outside [0, 1]",
            label_smoothing);
  const int64_t n = logits.size(0), c = logits.size(1);
  S2H_CHECK(n > 0, "cross_entropy: empty batch");
#if S2H_HAVE_CUDA
  if (logits.device().is_cuda()) return cross_entropy_cuda(logits, target, label_smoothing);
#endif
  Tensor xd = data_of(logits), td = data_of(target);
  const int64_t* t = td.data<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    S2H_CHECK(t[i] >= 0 && t[i] < c, "cross_entropy: target {} at position {} is outside [0, {})", t[i], i, c);
  Tensor lp = Tensor::empty({n, c}, logits.dtype());
  const double eps = label_smoothing;
  double loss = 0;
  dispatch_float(logits.dtype(), "cross_entropy", [&]<typename T>() {
    cpu::log_softmax_forward<T>(xd.data<T>(), n, c, lp.data<T>());
    const T* p = lp.data<T>();
    for (int64_t i = 0; i < n; ++i) {
      double row = 0;
      if (eps > 0)
        for (int64_t j = 0; j < c; ++j) row += p[i * c + j];
      loss -= (1 - eps) * p[i * c + t[i]] + eps / static_cast<double>(c) * row;
    }
  });
  Tensor out = Tensor::scalar(loss / static_cast<double>(n), logits.dtype());
  return record(out, "cross_entropy", {logits}, [lp, td, n, c, eps](const Tensor& g) {
    Tensor dx = Tensor::empty({n, c}, g.dtype());
    dispatch_float(g.dtype(), "cross_entropy backward", [&]<typename T>() {
      const T* p = lp.data<T>();
      const int64_t* t = td.data<int64_t>();
      T* d = dx.data<T>();
      const T scale = g.data<T>()[0] / static_cast<T>(n);
      const T smooth = static_cast<T>(eps / static_cast<double>(c));
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < c; ++j) d[i * c + j] = scale * (std::exp(p[i * c + j]) - smooth);
        d[i * c + t[i]] -= scale * static_cast<T>(1 - eps);
      }
    });
    return std::vector<Tensor>{dx};
  });
}

Tensor kl_div(const Tensor& input, const Tensor& target, bool log_target) {
  detail::check_compute(input, "kl_div", "input");
  detail::check_compute(target, "kl_div", "target");
  detail::check_same_dtype(input, target, "kl_div");
  S2H_CHECK(input.shape() == target.shape() && input.dim() >= 1, "kl_div: input {} and target {} must have one shape",
            shape_str(input.shape()), shape_str(target.shape()));
  const int64_t n = input.size(0), total = input.numel();
  S2H_CHECK(n > 0, "kl_div: empty batch");
#if S2H_HAVE_CUDA
  detail::check_same_device(input, target, "kl_div");
  if (input.device().is_cuda()) return kl_div_cuda(input, target, log_target);
#endif
  Tensor qd = data_of(input), pd = data_of(target);
  double loss = 0;
  dispatch_float(input.dtype(), "kl_div", [&]<typename T>() {
    const T* q = qd.data<T>();
    const T* p = pd.data<T>();
    for (int64_t i = 0; i < total; ++i) {
      if (log_target) {
        loss += std::exp(static_cast<double>(p[i])) * (p[i] - q[i]);
      } else if (p[i] > 0) {  // 0 * log 0 = 0
        loss += p[i] * (std::log(static_cast<double>(p[i])) - q[i]);
      }
    }
  });
  Tensor out = Tensor::scalar(loss / static_cast<double>(n), input.dtype());
  if (!any_requires_grad({input, target})) return out;
  const bool gq = detail::wants_grad(input), gp = detail::wants_grad(target);
  return record(out, "kl_div", {input, target}, [qd, pd, n, total, log_target, gq, gp](const Tensor& g) {
    Tensor dq = gq ? Tensor::empty(qd.shape(), g.dtype()) : Tensor();
    Tensor dp = gp ? Tensor::empty(pd.shape(), g.dtype()) : Tensor();
    dispatch_float(g.dtype(), "kl_div backward", [&]<typename T>() {
      const T* q = qd.data<T>();
      const T* p = pd.data<T>();
      const T s = g.data<T>()[0] / static_cast<T>(n);
      for (int64_t i = 0; i < total; ++i) {
        if (log_target) {
          const T e = std::exp(p[i]);
          if (gq) dq.data<T>()[i] = -s * e;
          if (gp) dp.data<T>()[i] = s * e * (p[i] - q[i] + T(1));
        } else {
          if (gq) dq.data<T>()[i] = -s * p[i];
          if (gp) dp.data<T>()[i] = p[i] > T(0) ? s * (std::log(p[i]) + T(1) - q[i]) : T(0);
        }
      }
    });
    return std::vector<Tensor>{dq, dp};
  });
}

Tensor dropout(const Tensor& x, double p, bool training, Generator* gen) {
  S2H_CHECK(p >= 0.0 && p <= 1.0, "dropout: probability {} is outside [0, 1]", p);
  if (!training || p == 0.0) return x;
  detail::check_compute(x, "dropout", "input");
  Generator& g = gen ? *gen : default_generator();
#if S2H_HAVE_CUDA
  if (x.device().is_cuda()) return dropout_cuda(x, p, g.next_u64());
#endif
  Tensor mask = Tensor::empty(x.shape(), x.dtype());
  const double keep_scale = p < 1.0 ? 1.0 / (1.0 - p) : 0.0;
  dispatch_float(x.dtype(), "dropout", [&]<typename T>() {
    T* m = mask.data<T>();
    for (int64_t i = 0; i < mask.numel(); ++i) m[i] = g.uniform() < p ? T(0) : static_cast<T>(keep_scale);
  });
  return mul(x, mask);
}

}  // namespace s2h
