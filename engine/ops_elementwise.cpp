// Elementwise arithmetic, math functions and activations.
#include <cmath>
#include <numbers>

#include "engine/ops_util.h"
#include "kernels/cpu/elementwise.h"

namespace s2h {

namespace detail {

void check_compute(const Tensor& t, const char* op, const char* what) {
  S2H_CHECK(t.defined(), "{}: {} is undefined", op, what);
  if (t.device().is_cpu()) {
    S2H_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F64,
              "{}: {} has dtype {} (expected f32 or f64 on the CPU)", op, what, dtype_name(t.dtype()));
  } else {
    S2H_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::BF16,
              "{}: {} has dtype {} (expected f32 or bf16 on {})", op, what, dtype_name(t.dtype()),
              t.device().str());
  }
}

void check_same_device(const Tensor& a, const Tensor& b, const char* op) {
  S2H_CHECK(a.device() == b.device(), "{}: operands are on different devices ({} and {}); move one with .to()", op,
            a.device().str(), b.device().str());
}

void check_same_dtype(const Tensor& a, const Tensor& b, const char* op) {
  S2H_CHECK(a.dtype() == b.dtype(), "{}: dtypes differ ({} and {})", op, dtype_name(a.dtype()),
            dtype_name(b.dtype()));
}

Shape broadcast_strides(const Shape& shape, const Shape& out_shape) {
  const Shape st = contiguous_strides(shape);
  Shape out(out_shape.size(), 0);
  const size_t off = out_shape.size() - shape.size();
  for (size_t i = 0; i < shape.size(); ++i) out[off + i] = shape[i] == 1 ? 0 : st[i];
  return out;
}

}  // namespace detail

using detail::data_of;

namespace {

// out = f(a, b) with broadcasting.
template <class F>
Tensor broadcast_map(const Tensor& a, const Tensor& b, const char* name, F f) {
  detail::check_compute(a, name, "first operand");
  detail::check_compute(b, name, "second operand");
  detail::check_same_dtype(a, b, name);
  const Shape out_shape = broadcast_shapes(a.shape(), b.shape(), name);
  Tensor ad = data_of(a), bd = data_of(b);
  Tensor out = Tensor::empty(out_shape, a.dtype());
  const Shape sa = detail::broadcast_strides(a.shape(), out_shape), sb = detail::broadcast_strides(b.shape(), out_shape);
  dispatch_float(a.dtype(), name, [&]<typename T>() {
    cpu::broadcast2<T>(ad.data<T>(), sa.data(), bd.data<T>(), sb.data(), out.data<T>(), out_shape.data(),
                       static_cast<int>(out_shape.size()), f);
  });
  return out;
}

// An elementwise unary op y = fwd(x) with dx = bwd(x, y, dy).
template <class Fwd, class Bwd>
Tensor unary(const Tensor& x, const char* name, Fwd fwd, Bwd bwd) {
  detail::check_compute(x, name, "input");
  Tensor xd = data_of(x);
  Tensor out = Tensor::empty(x.shape(), x.dtype());
  dispatch_float(x.dtype(), name, [&]<typename T>() { cpu::map1<T>(xd.data<T>(), out.data<T>(), xd.numel(), fwd); });
  if (!detail::wants_grad(x)) return out;
  Tensor yd = out.detach();
  return record(out, name, {x}, [xd, yd, bwd, name](const Tensor& g) {
    Tensor gx = Tensor::empty(xd.shape(), xd.dtype());
    dispatch_float(xd.dtype(), name, [&]<typename T>() {
      cpu::map3<T>(xd.data<T>(), yd.data<T>(), g.data<T>(), gx.data<T>(), xd.numel(), bwd);
    });
    return std::vector<Tensor>{gx};
  });
}

}  // namespace

// ------------------------------------------------------------------ binary
Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = broadcast_map(a, b, "add", [](auto x, auto y) { return x + y; });
  const Shape sa = a.shape(), sb = b.shape();
  return record(out, "add", {a, b}, [sa, sb](const Tensor& g) {
    return std::vector<Tensor>{sum_to(g, sa), sum_to(g, sb)};
  });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = broadcast_map(a, b, "sub", [](auto x, auto y) { return x - y; });
  const Shape sa = a.shape(), sb = b.shape();
  return record(out, "sub", {a, b}, [sa, sb](const Tensor& g) {
    return std::vector<Tensor>{sum_to(g, sa), sum_to(neg(g), sb)};
  });
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = broadcast_map(a, b, "mul", [](auto x, auto y) { return x * y; });
  if (!any_requires_grad({a, b})) return out;
  Tensor ad = a.detach(), bd = b.detach();
  const bool ga = detail::wants_grad(a), gb = detail::wants_grad(b);
  return record(out, "mul", {a, b}, [ad, bd, ga, gb](const Tensor& g) {
    return std::vector<Tensor>{ga ? sum_to(mul(g, bd), ad.shape()) : Tensor(),
                               gb ? sum_to(mul(g, ad), bd.shape()) : Tensor()};
  });
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = broadcast_map(a, b, "div", [](auto x, auto y) { return x / y; });
  if (!any_requires_grad({a, b})) return out;
  Tensor ad = a.detach(), bd = b.detach(), yd = out.detach();
  const bool ga = detail::wants_grad(a), gb = detail::wants_grad(b);
  return record(out, "div", {a, b}, [ad, bd, yd, ga, gb](const Tensor& g) {
    Tensor gdb = div(g, bd);
    return std::vector<Tensor>{ga ? sum_to(gdb, ad.shape()) : Tensor(),
                               gb ? sum_to(neg(mul(gdb, yd)), bd.shape()) : Tensor()};
  });
}

// ------------------------------------------------------------------ scalar
Tensor add_scalar(const Tensor& a, double s) {
  return unary(
      a, "add_scalar", [s](auto x) { return x + static_cast<decltype(x)>(s); },
      [](auto, auto, auto g) { return g; });
}

Tensor mul_scalar(const Tensor& a, double s) {
  return unary(
      a, "mul_scalar", [s](auto x) { return x * static_cast<decltype(x)>(s); },
      [s](auto, auto, auto g) { return g * static_cast<decltype(g)>(s); });
}

Tensor rsub_scalar(const Tensor& a, double s) {
  return unary(
      a, "rsub_scalar", [s](auto x) { return static_cast<decltype(x)>(s) - x; },
      [](auto, auto, auto g) { return -g; });
}

Tensor rdiv_scalar(const Tensor& a, double s) {
  return unary(
      a, "rdiv_scalar", [s](auto x) { return static_cast<decltype(x)>(s) / x; },
      [](auto x, auto y, auto g) { return -g * y / x; });
}

Tensor pow_scalar(const Tensor& a, double p) {
  return unary(
      a, "pow_scalar", [p](auto x) { return static_cast<decltype(x)>(std::pow(x, static_cast<decltype(x)>(p))); },
      [p](auto x, auto, auto g) {
        using T = decltype(x);
        return g * static_cast<T>(p) * static_cast<T>(std::pow(x, static_cast<T>(p - 1)));
      });
}

Tensor neg(const Tensor& a) {
  return unary(a, "neg", [](auto x) { return -x; }, [](auto, auto, auto g) { return -g; });
}

Tensor exp(const Tensor& a) {
  return unary(a, "exp", [](auto x) { return std::exp(x); }, [](auto, auto y, auto g) { return g * y; });
}

Tensor log(const Tensor& a) {
  return unary(a, "log", [](auto x) { return std::log(x); }, [](auto x, auto, auto g) { return g / x; });
}

Tensor sqrt(const Tensor& a) {
  return unary(
      a, "sqrt", [](auto x) { return std::sqrt(x); },
      [](auto, auto y, auto g) { return g / (static_cast<decltype(y)>(2) * y); });
}

Tensor square(const Tensor& a) {
  return unary(
      a, "square", [](auto x) { return x * x; },
      [](auto x, auto, auto g) { return static_cast<decltype(x)>(2) * x * g; });
}

Tensor abs(const Tensor& a) {
  return unary(
      a, "abs", [](auto x) { return std::abs(x); },
      [](auto x, auto, auto g) {
        using T = decltype(x);
        return x > T(0) ? g : (x < T(0) ? -g : T(0));
      });
}

// ------------------------------------------------------------------ activations
Tensor relu(const Tensor& x) {
  return unary(
      x, "relu", [](auto v) { return v > decltype(v)(0) ? v : decltype(v)(0); },
      [](auto v, auto, auto g) { return v > decltype(v)(0) ? g : decltype(v)(0); });
}

Tensor relu6(const Tensor& x) {
  return unary(
      x, "relu6", [](auto v) { return std::min(std::max(v, decltype(v)(0)), decltype(v)(6)); },
      [](auto v, auto, auto g) {
        using T = decltype(v);
        return (v > T(0) && v < T(6)) ? g : T(0);
      });
}

Tensor hardsigmoid(const Tensor& x) {
  return unary(
      x, "hardsigmoid",
      [](auto v) {
        using T = decltype(v);
        return std::min(std::max(v + T(3), T(0)), T(6)) / T(6);
      },
      [](auto v, auto, auto g) {
        using T = decltype(v);
        return (v > T(-3) && v < T(3)) ? g / T(6) : T(0);
      });
}

Tensor hardswish(const Tensor& x) {
  return unary(
      x, "hardswish",
      [](auto v) {
        using T = decltype(v);
        return v * std::min(std::max(v + T(3), T(0)), T(6)) / T(6);
      },
      [](auto v, auto, auto g) {
        using T = decltype(v);
        if (v < T(-3)) return T(0);
        if (v <= T(3)) return g * (v / T(3) + T(0.5));
        return g;
      });
}

Tensor gelu(const Tensor& x, bool approximate) {
  if (!approximate) {
    return unary(
        x, "gelu",
        [](auto v) {
          using T = decltype(v);
          return T(0.5) * v * (T(1) + std::erf(v * T(std::numbers::sqrt2 / 2)));
        },
        [](auto v, auto, auto g) {
          using T = decltype(v);
          const T cdf = T(0.5) * (T(1) + std::erf(v * T(std::numbers::sqrt2 / 2)));
          const T pdf = std::exp(T(-0.5) * v * v) * T(std::numbers::inv_sqrtpi / std::numbers::sqrt2);
          return g * (cdf + v * pdf);
        });
  }
  return unary(
      x, "gelu_tanh",
      [](auto v) {
        using T = decltype(v);
        const T k = T(std::numbers::sqrt2 * std::numbers::inv_sqrtpi);  // sqrt(2/pi)
        return T(0.5) * v * (T(1) + std::tanh(k * (v + T(0.044715) * v * v * v)));
      },
      [](auto v, auto, auto g) {
        using T = decltype(v);
        const T k = T(std::numbers::sqrt2 * std::numbers::inv_sqrtpi);
        const T t = std::tanh(k * (v + T(0.044715) * v * v * v));
        return g * (T(0.5) * (T(1) + t) + T(0.5) * v * (T(1) - t * t) * k * (T(1) + T(3 * 0.044715) * v * v));
      });
}

Tensor sigmoid(const Tensor& x) {
  return unary(
      x, "sigmoid", [](auto v) { return decltype(v)(1) / (decltype(v)(1) + std::exp(-v)); },
      [](auto, auto y, auto g) { return g * y * (decltype(y)(1) - y); });
}

Tensor tanh(const Tensor& x) {
  return unary(
      x, "tanh", [](auto v) { return std::tanh(v); },
      [](auto, auto y, auto g) { return g * (decltype(y)(1) - y * y); });
}

// ------------------------------------------------------------------ operators
Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator+(const Tensor& a, double b) { return add_scalar(a, b); }
Tensor operator-(const Tensor& a, double b) { return add_scalar(a, -b); }
Tensor operator*(const Tensor& a, double b) { return mul_scalar(a, b); }
Tensor operator/(const Tensor& a, double b) { return mul_scalar(a, 1.0 / b); }
Tensor operator*(double a, const Tensor& b) { return mul_scalar(b, a); }
Tensor operator-(const Tensor& a) { return neg(a); }

}  // namespace s2h
