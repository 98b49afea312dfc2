// Matrix products: matmul, bmm, linear (GEMM through kernels/cpu/blas).
#include "engine/ops_util.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/reduce.h"

namespace s2h {

using detail::data_of;

Tensor bmm(const Tensor& a, const Tensor& b) {
  detail::check_compute(a, "bmm", "first operand");
  detail::check_compute(b, "bmm", "second operand");
  detail::check_same_dtype(a, b, "bmm");
  S2H_CHECK(a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0) && a.size(2) == b.size(1),
            "bmm: expected [B,M,K] x [B,K,N], got {} x {}", shape_str(a.shape()), shape_str(b.shape()));
  const int64_t B = a.size(0), M = a.size(1), K = a.size(2), N = b.size(2);
  Tensor ad = data_of(a), bd = data_of(b);
  Tensor out = Tensor::empty({B, M, N}, a.dtype());
  dispatch_float(a.dtype(), "bmm", [&]<typename T>() {
    for (int64_t i = 0; i < B; ++i)
      cpu::gemm<T>(false, false, M, N, K, T(1), ad.data<T>() + i * M * K, K, bd.data<T>() + i * K * N, N, T(0),
                   out.data<T>() + i * M * N, N);
  });
  if (!any_requires_grad({a, b})) return out;
  const bool ga = detail::wants_grad(a), gb = detail::wants_grad(b);
  return record(out, "bmm", {a, b}, [ad, bd, ga, gb, B, M, K, N](const Tensor& g) {
    Tensor da, db;
    dispatch_float(g.dtype(), "bmm backward", [&]<typename T>() {
      if (ga) {
        da = Tensor::empty({B, M, K}, g.dtype());
        for (int64_t i = 0; i < B; ++i)  // dA = dC B^T
          cpu::gemm<T>(false, true, M, K, N, T(1), g.data<T>() + i * M * N, N, bd.data<T>() + i * K * N, N, T(0),
                       da.data<T>() + i * M * K, K);
      }
      if (gb) {
        db = Tensor::empty({B, K, N}, g.dtype());
        for (int64_t i = 0; i < B; ++i)  // dB = A^T dC
          cpu::gemm<T>(true, false, K, N, M, T(1), ad.data<T>() + i * M * K, K, g.data<T>() + i * M * N, N, T(0),
                       db.data<T>() + i * K * N, N);
      }
    });
    return std::vector<Tensor>{da, db};
  });
}

Tensor matmul(const Tensor& a, const Tensor& b) {
  S2H_CHECK(a.defined() && b.defined() && a.dim() >= 2 && b.dim() >= 2,
            "matmul: both operands need at least 2 dimensions, got {} and {}", a.defined() ? shape_str(a.shape()) : "undefined",
            b.defined() ? shape_str(b.shape()) : "undefined");
  const int64_t K = a.size(-1);
  S2H_CHECK(b.size(-2) == K, "matmul: inner sizes differ: {} x {}", shape_str(a.shape()), shape_str(b.shape()));
  const int64_t M = a.size(-2), N = b.size(-1);
  Shape batch(a.shape().begin(), a.shape().end() - 2);
  if (b.dim() == 2) {
    // [..., M, K] x [K, N]: one GEMM over all rows.
    Shape out_shape = batch;
    out_shape.push_back(M);
    out_shape.push_back(N);
    Tensor a2 = a.reshape({-1, K});
    Tensor out2 = bmm(a2.reshape({1, a2.size(0), K}), b.reshape({1, K, N}));
    return out2.reshape(out_shape);
  }
  Shape bbatch(b.shape().begin(), b.shape().end() - 2);
  S2H_CHECK(batch == bbatch, "matmul: batch shapes differ: {} x {} (batch broadcasting is not supported)",
            shape_str(a.shape()), shape_str(b.shape()));
  Shape out_shape = batch;
  out_shape.push_back(M);
  out_shape.push_back(N);
  return bmm(a.reshape({-1, M, K}), b.reshape({-1, K, N})).reshape(out_shape);
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  detail::check_compute(x, "linear", "input");
  detail::check_compute(weight, "linear", "weight");
  detail::check_same_dtype(x, weight, "linear");
  S2H_CHECK(weight.dim() == 2, "linear: weight must be [out, in], got {}", shape_str(weight.shape()));
  S2H_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "linear: input {} does not match weight {} (in = {})",
            shape_str(x.shape()), shape_str(weight.shape()), weight.size(1));
  const int64_t in = weight.size(1), out_f = weight.size(0), M = x.numel() / std::max<int64_t>(in, 1);
  if (bias.defined()) {
    detail::check_same_dtype(x, bias, "linear");
    S2H_CHECK(bias.dim() == 1 && bias.size(0) == out_f, "linear: bias {} for {} outputs", shape_str(bias.shape()),
              out_f);
  }
  Tensor xd = data_of(x), wd = data_of(weight), bd = bias.defined() ? data_of(bias) : Tensor();
  Shape out_shape = x.shape();
  out_shape.back() = out_f;
  Tensor out = Tensor::empty(out_shape, x.dtype());
  dispatch_float(x.dtype(), "linear", [&]<typename T>() {
    T* y = out.data<T>();
    if (bd.defined()) {
      const T* bp = bd.data<T>();
      for (int64_t r = 0; r < M; ++r) std::copy(bp, bp + out_f, y + r * out_f);
    }
    cpu::gemm<T>(false, true, M, out_f, in, T(1), xd.data<T>(), in, wd.data<T>(), in, bd.defined() ? T(1) : T(0), y,
                 out_f);
  });
  if (!any_requires_grad({x, weight, bias})) return out;
  const bool gx = detail::wants_grad(x), gw = detail::wants_grad(weight), gbias = detail::wants_grad(bias);
  const Shape x_shape = x.shape();
  return record(out, "linear", {x, weight, bias}, [=](const Tensor& g) {
    Tensor dx, dw, db;
    dispatch_float(g.dtype(), "linear backward", [&]<typename T>() {
      if (gx) {
        dx = Tensor::empty(x_shape, g.dtype());
        cpu::gemm<T>(false, false, M, in, out_f, T(1), g.data<T>(), out_f, wd.data<T>(), in, T(0), dx.data<T>(), in);
      }
      if (gw) {
        dw = Tensor::empty({out_f, in}, g.dtype());
        cpu::gemm<T>(true, false, out_f, in, M, T(1), g.data<T>(), out_f, xd.data<T>(), in, T(0), dw.data<T>(), in);
      }
      if (gbias) {
        db = Tensor::empty({out_f}, g.dtype());
        cpu::sum_middle<T>(g.data<T>(), 1, M, out_f, db.data<T>());
      }
    });
    return std::vector<Tensor>{dx, dw, db};
  });
}

}  // namespace s2h
