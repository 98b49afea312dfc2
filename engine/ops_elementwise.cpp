// Elementwise arithmetic, math functions and activations.
#include <cmath>
#include <numbers>

#include "engine/ops_util.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cuda/elementwise.h"
#if S2H_HAVE_CUDA
#include "kernels/cuda/runtime.h"
#endif

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
using cuda::BinaryOp;
using cuda::UnaryOp;

namespace {

// CUDA tensors are computed by kernels; a CUDA tensor cannot exist in a build
// without the backend, so this never fires there.
[[noreturn]] [[maybe_unused]] void no_cuda(const char* op) {
  S2H_FAIL("{}: this build has no CUDA backend", op);
}

// On CUDA, bf16 with f32 computes in f32: the bf16 operand is cast (the cast
// is an autograd op, so its gradient comes back as bf16). The CPU keeps its
// same-dtype rule (broadcast_map checks it).
void promote_mixed(Tensor& a, Tensor& b) {
  if (!a.defined() || !b.defined() || a.dtype() == b.dtype()) return;
  if (!a.device().is_cuda() || !b.device().is_cuda()) return;
  auto gpu_float = [](DType t) { return t == DType::F32 || t == DType::BF16; };
  if (!gpu_float(a.dtype()) || !gpu_float(b.dtype())) return;  // check_compute names the bad one
  if (a.dtype() != DType::F32) a = a.to(DType::F32);
  if (b.dtype() != DType::F32) b = b.to(DType::F32);
}

// out = f(a, b) with broadcasting (`op` names f for the CUDA kernel).
template <class F>
Tensor broadcast_map(const Tensor& a, const Tensor& b, const char* name, BinaryOp op, F f) {
  detail::check_compute(a, name, "first operand");
  detail::check_compute(b, name, "second operand");
  detail::check_same_device(a, b, name);
  detail::check_same_dtype(a, b, name);
  const Shape out_shape = broadcast_shapes(a.shape(), b.shape(), name);
  Tensor ad = data_of(a), bd = data_of(b);
  Tensor out = Tensor::empty(out_shape, a.dtype(), a.device());
  const Shape sa = detail::broadcast_strides(a.shape(), out_shape);
  const Shape sb = detail::broadcast_strides(b.shape(), out_shape);
  if (a.device().is_cuda()) {
#if S2H_HAVE_CUDA
    cuda::binary(op, ad.raw_data(), sa.data(), bd.raw_data(), sb.data(), out.raw_data(), a.dtype(), out_shape.data(),
                 static_cast<int>(out_shape.size()), cuda::stream(a.device().index));
    return out;
#else
    no_cuda(name);
#endif
  }
  dispatch_float(a.dtype(), name, [&]<typename T>() {
    cpu::broadcast2<T>(ad.data<T>(), sa.data(), bd.data<T>(), sb.data(), out.data<T>(), out_shape.data(),
                       static_cast<int>(out_shape.size()), f);
  });
  return out;
}

// An elementwise unary op y = fwd(x) with dx = bwd(x, y, dy). The CPU runs
// the lambdas; CUDA runs the kernel of `op` (with the scalar `param`), whose
// formulas are the same.
template <class Fwd, class Bwd>
Tensor unary(const Tensor& x, const char* name, UnaryOp op, double param, Fwd fwd, Bwd bwd) {
  detail::check_compute(x, name, "input");
  Tensor xd = data_of(x);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.device().is_cuda()) {
#if S2H_HAVE_CUDA
    cuda::unary_forward(op, param, xd.raw_data(), out.raw_data(), x.dtype(), xd.numel(),
                        cuda::stream(x.device().index));
#else
    no_cuda(name);
#endif
  } else {
    dispatch_float(x.dtype(), name, [&]<typename T>() { cpu::map1<T>(xd.data<T>(), out.data<T>(), xd.numel(), fwd); });
  }
  if (!detail::wants_grad(x)) return out;
  Tensor yd = out.detach();
  return record(out, name, {x}, [xd, yd, bwd, name, op, param](const Tensor& g) {
    Tensor gx = Tensor::empty(xd.shape(), xd.dtype(), xd.device());
    if (xd.device().is_cuda()) {
#if S2H_HAVE_CUDA
      // The gradient of a bf16 output may come back in f32 (e.g. after a mixed add): x's dtype it is.
      Tensor gd = g.dtype() == xd.dtype() ? g : g.to(xd.dtype()).contiguous();
      cuda::unary_backward(op, param, xd.raw_data(), yd.raw_data(), gd.raw_data(), gx.raw_data(), xd.dtype(),
                           xd.numel(), cuda::stream(xd.device().index));
#else
      no_cuda(name);
#endif
      return std::vector<Tensor>{gx};
    }
    dispatch_float(xd.dtype(), name, [&]<typename T>() {
      cpu::map3<T>(xd.data<T>(), yd.data<T>(), g.data<T>(), gx.data<T>(), xd.numel(), bwd);
    });
    return std::vector<Tensor>{gx};
  });
}

}  // namespace

// ------------------------------------------------------------------ binary
Tensor add(const Tensor& a_in, const Tensor& b_in) {
  Tensor a = a_in, b = b_in;
  promote_mixed(a, b);
  Tensor out = broadcast_map(a, b, "add", BinaryOp::Add, [](auto x, auto y) { return x + y; });
  const Shape sa = a.shape(), sb = b.shape();
  return record(out, "add", {a, b}, [sa, sb](const Tensor& g) {
    return std::vector<Tensor>{sum_to(g, sa), sum_to(g, sb)};
  });
}

Tensor sub(const Tensor& a_in, const Tensor& b_in) {
  Tensor a = a_in, b = b_in;
  promote_mixed(a, b);
  Tensor out = broadcast_map(a, b, "sub", BinaryOp::Sub, [](auto x, auto y) { return x - y; });
  const Shape sa = a.shape(), sb = b.shape();
  return record(out, "sub", {a, b}, [sa, sb](const Tensor& g) {
    return std::vector<Tensor>{sum_to(g, sa), sum_to(neg(g), sb)};
  });
}

Tensor mul(const Tensor& a_in, const Tensor& b_in) {
  Tensor a = a_in, b = b_in;
  promote_mixed(a, b);
  Tensor out = broadcast_map(a, b, "mul", BinaryOp::Mul, [](auto x, auto y) { return x * y; });
  if (!any_requires_grad({a, b})) return out;
  Tensor ad = a.detach(), bd = b.detach();
  const bool ga = detail::wants_grad(a), gb = detail::wants_grad(b);
  return record(out, "mul", {a, b}, [ad, bd, ga, gb](const Tensor& g) {
    return std::vector<Tensor>{ga ? sum_to(mul(g, bd), ad.shape()) : Tensor(),
                               gb ? sum_to(mul(g, ad), bd.shape()) : Tensor()};
  });
}

Tensor div(const Tensor& a_in, const Tensor& b_in) {
  Tensor a = a_in, b = b_in;
  promote_mixed(a, b);
  Tensor out = broadcast_map(a, b, "div", BinaryOp::Div, [](auto x, auto y) { return x / y; });
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
      a, "add_scalar", UnaryOp::AddScalar, s, [s](auto x) { return x + static_cast<decltype(x)>(s); },
      [](auto, auto, auto g) { return g; });
}

Tensor mul_scalar(const Tensor& a, double s) {
  return unary(
      a, "mul_scalar", UnaryOp::MulScalar, s, [s](auto x) { return x * static_cast<decltype(x)>(s); },
      [s](auto, auto, auto g) { return g * static_cast<decltype(g)>(s); });
}

Tensor rsub_scalar(const Tensor& a, double s) {
  return unary(
      a, "rsub_scalar", UnaryOp::RsubScalar, s, [s](auto x) { return static_cast<decltype(x)>(s) - x; },
      [](auto, auto, auto g) { return -g; });
}

Tensor rdiv_scalar(const Tensor& a, double s) {
  return unary(
      a, "rdiv_scalar", UnaryOp::RdivScalar, s, [s](auto x) { return static_cast<decltype(x)>(s) / x; },
      [](auto x, auto y, auto g) { return -g * y / x; });
}

Tensor pow_scalar(const Tensor& a, double p) {
  return unary(
      a, "pow_scalar", UnaryOp::PowScalar, p,
      [p](auto x) { return static_cast<decltype(x)>(std::pow(x, static_cast<decltype(x)>(p))); },
      [p](auto x, auto, auto g) {
        using T = decltype(x);
        return g * static_cast<T>(p) * static_cast<T>(std::pow(x, static_cast<T>(p - 1)));
      });
}

Tensor neg(const Tensor& a) {
  return unary(
      a, "neg", UnaryOp::Neg, 0.0, [](auto x) { return -x; }, [](auto, auto, auto g) { return -g; });
}

Tensor exp(const Tensor& a) {
  return unary(
      a, "exp", UnaryOp::Exp, 0.0, [](auto x) { return std::exp(x); }, [](auto, auto y, auto g) { return g * y; });
}

Tensor log(const Tensor& a) {
  return unary(
      a, "log", UnaryOp::Log, 0.0, [](auto x) { return std::log(x); }, [](auto x, auto, auto g) { return g / x; });
}

Tensor sqrt(const Tensor& a) {
  return unary(
      a, "sqrt", UnaryOp::Sqrt, 0.0, [](auto x) { return std::sqrt(x); },
      [](auto, auto y, auto g) { return g / (static_cast<decltype(y)>(2) * y); });
}

Tensor square(const Tensor& a) {
  return unary(
      a, "square", UnaryOp::Square, 0.0, [](auto x) { return x * x; },
      [](auto x, auto, auto g) { return static_cast<decltype(x)>(2) * x * g; });
}

Tensor abs(const Tensor& a) {
  return unary(
      a, "abs", UnaryOp::Abs, 0.0, [](auto x) { return std::abs(x); },
      [](auto x, auto, auto g) {
        using T = decltype(x);
        return x > T(0) ? g : (x < T(0) ? -g : T(0));
      });
}

// ------------------------------------------------------------------ activations
Tensor relu(const Tensor& x) {
  return unary(
      x, "relu", UnaryOp::Relu, 0.0, [](auto v) { return v > decltype(v)(0) ? v : decltype(v)(0); },
      [](auto v, auto, auto g) { return v > decltype(v)(0) ? g : decltype(v)(0); });
}

Tensor relu6(const Tensor& x) {
  return unary(
      x, "relu6", UnaryOp::Relu6, 0.0, [](auto v) { return std::min(std::max(v, decltype(v)(0)), decltype(v)(6)); },
      [](auto v, auto, auto g) {
        using T = decltype(v);
        return (v > T(0) && v < T(6)) ? g : T(0);
      });
}

Tensor hardsigmoid(const Tensor& x) {
  return unary(
      x, "hardsigmoid", UnaryOp::Hardsigmoid, 0.0,
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
      x, "hardswish", UnaryOp::Hardswish, 0.0,
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
        x, "gelu", UnaryOp::Gelu, 0.0,
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
      x, "gelu_tanh", UnaryOp::GeluTanh, 0.0,
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
      x, "sigmoid", UnaryOp::Sigmoid, 0.0, [](auto v) { return decltype(v)(1) / (decltype(v)(1) + std::exp(-v)); },
      [](auto, auto y, auto g) { return g * y * (decltype(y)(1) - y); });
}

Tensor tanh(const Tensor& x) {
  return unary(
      x, "tanh", UnaryOp::Tanh, 0.0, [](auto v) { return std::tanh(v); },
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
