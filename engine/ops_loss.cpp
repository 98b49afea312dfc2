// Softmax, log-softmax, cross-entropy, KL divergence and dropout.
#include <cmath>

#include "engine/ops_util.h"
#include "engine/random.h"
#include "kernels/cpu/softmax.h"

namespace s2h {

using detail::data_of;

namespace {

// Softmax-like op over the last axis, with y saved for the backward.
template <class Fwd, class Bwd>
Tensor lastdim_op(const Tensor& x, const char* name, Fwd fwd, Bwd bwd) {
  detail::check_compute(x, name, "input");
  S2H_CHECK(x.dim() >= 1, "{}: input must have at least one dimension", name);
  const int64_t c = x.size(-1), rows = x.numel() / std::max<int64_t>(c, 1);
  Tensor xd = data_of(x);
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

}  // namespace

Tensor softmax(const Tensor& x, int64_t axis) {
  return along_axis(x, axis, [](const Tensor& t) {
    return lastdim_op(
        t, "softmax", [](auto* xp, int64_t r, int64_t c, auto* yp) { cpu::softmax_forward(xp, r, c, yp); },
        [](auto* yp, auto* gp, int64_t r, int64_t c, auto* dp) { cpu::softmax_backward(yp, gp, r, c, dp); });
  });
}

Tensor log_softmax(const Tensor& x, int64_t axis) {
  return along_axis(x, axis, [](const Tensor& t) {
    return lastdim_op(
        t, "log_softmax", [](auto* xp, int64_t r, int64_t c, auto* yp) { cpu::log_softmax_forward(xp, r, c, yp); },
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
  Tensor mask = Tensor::empty(x.shape(), x.dtype());
  const double keep_scale = p < 1.0 ? 1.0 / (1.0 - p) : 0.0;
  dispatch_float(x.dtype(), "dropout", [&]<typename T>() {
    T* m = mask.data<T>();
    for (int64_t i = 0; i < mask.numel(); ++i) m[i] = g.uniform() < p ? T(0) : static_cast<T>(keep_scale);
  });
  return mul(x, mask);
}

}  // namespace s2h
