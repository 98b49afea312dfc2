// Matrix products: matmul, bmm, linear (GEMM through kernels/cpu/blas on the
// CPU, cuBLAS on CUDA under the precision policy of engine/precision.h).
#include <algorithm>

#include "engine/ops_util.h"
#include "engine/precision.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/reduce.h"
#if S2H_HAVE_CUDA
#include "kernels/cuda/blas.h"
#include "kernels/cuda/runtime.h"
#endif

namespace s2h {

using detail::data_of;

#if S2H_HAVE_CUDA
namespace {

// The dtype a GEMM-class op computes in on CUDA: the policy's choice for each
// operand (gemm_dtype), promoted to f32 when they differ (bf16 activations
// meeting f32 weights under the fp32 / tf32 policies).
DType cuda_compute_dtype(const Tensor& a, const Tensor& b) {
  const DType da = gemm_dtype(a.device(), a.dtype()), db = gemm_dtype(b.device(), b.dtype());
  return da == db ? da : DType::F32;
}

// A [B, R, C] tensor as a cuBLAS operand: contiguous matrices and transposed
// views (strides [*, 1, ld]) are used in place; anything else is copied.
struct Operand {
  Tensor t;  // holds the data
  bool trans = false;
  int64_t ld = 0, batch_stride = 0;

  cuda::GemmOperand gemm() const { return {t.raw_data(), trans, ld, batch_stride}; }
  // The same data read as the transposed matrices.
  cuda::GemmOperand gemm_transposed() const { return {t.raw_data(), !trans, ld, batch_stride}; }
};

Operand as_operand(const Tensor& t3) {
  const Tensor t = t3.detach();
  const int64_t nb = t.size(0), r = t.size(1), c = t.size(2);
  const Shape& st = t.strides();
  const int64_t sb = nb == 1 ? 0 : st[0];
  if (nb == 1 || sb > 0) {
    // Row-major [r, c], rows ld apart (a size-1 axis may have any stride).
    if (c == 1 || st[2] == 1) {
      const int64_t ld = r == 1 ? std::max<int64_t>(c, 1) : st[1];
      if (ld >= std::max<int64_t>(c, 1)) return {t, false, ld, sb};
    }
    // Stored transposed: [c, r] row-major, rows ld apart.
    if (r == 1 || st[1] == 1) {
      const int64_t ld = c == 1 ? std::max<int64_t>(r, 1) : st[2];
      if (ld >= std::max<int64_t>(r, 1)) return {t, true, ld, sb};
    }
  }
  const Tensor d = t.contiguous();
  return {d, false, std::max<int64_t>(c, 1), nb == 1 ? 0 : r * c};
}

// The incoming gradient in the op's compute dtype (an upstream op may have
// produced another float dtype).
Tensor grad_as(const Tensor& g, DType dtype, Device device, const char* op) {
  S2H_CHECK(g.device() == device, "{} backward: the gradient is on {}, the op ran on {}", op, g.device().str(),
            device.str());
  return g.dtype() == dtype ? g : g.to(dtype).contiguous();
}

Tensor bmm_cuda(const Tensor& a, const Tensor& b) {
  const DType ct = cuda_compute_dtype(a, b);
  const Tensor ac = a.to(ct), bc = b.to(ct);  // autograd-aware casts: fp32 leaves get fp32 gradients
  const int64_t B = a.size(0), M = a.size(1), K = a.size(2), N = b.size(2);
  const Device dev = a.device();
  const bool tf32 = allow_tf32();
  const Operand oa = as_operand(ac), ob = as_operand(bc);
  Tensor out = Tensor::empty({B, M, N}, ct, dev);
  cuda::gemm(B, M, N, K, 1.f, oa.gemm(), ob.gemm(), 0.f, out.raw_data(), N, M * N, ct, tf32, dev.index);
  if (!any_requires_grad({ac, bc})) return out;
  const bool ga = detail::wants_grad(ac), gb = detail::wants_grad(bc);
  // dA needs only B and dB only A.
  const Operand sa = gb ? oa : Operand{}, sb = ga ? ob : Operand{};
  return record(out, "bmm", {ac, bc}, [sa, sb, ga, gb, B, M, K, N, ct, tf32, dev](const Tensor& g_in) {
    const Tensor g = grad_as(g_in, ct, dev, "bmm");
    const cuda::GemmOperand og{g.raw_data(), false, N, M * N};
    Tensor da, db;
    if (ga) {  // dA = dC B^T
      da = Tensor::empty({B, M, K}, ct, dev);
      cuda::gemm(B, M, K, N, 1.f, og, sb.gemm_transposed(), 0.f, da.raw_data(), K, M * K, ct, tf32, dev.index);
    }
    if (gb) {  // dB = A^T dC
      db = Tensor::empty({B, K, N}, ct, dev);
      cuda::gemm(B, K, N, M, 1.f, sa.gemm_transposed(), og, 0.f, db.raw_data(), N, K * N, ct, tf32, dev.index);
    }
    return std::vector<Tensor>{da, db};
  });
}

// db[j] = sum over rows of g[r, j] into a new tensor of the bias's dtype.
Tensor cuda_bias_grad(const Tensor& g, int64_t rows, int64_t cols, DType bias_dtype) {
  const Device dev = g.device();
  Tensor db = Tensor::empty({cols}, bias_dtype, dev);
  Tensor partial = Tensor::empty({cuda::bias_grad_splits(rows, cols) * cols}, DType::F32, dev);
  cuda::bias_grad_rows(g.raw_data(), g.dtype(), rows, cols, db.raw_data(), bias_dtype, partial.data<float>(),
                       cuda::stream(dev.index));
  return db;
}

Tensor linear_cuda(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const DType ct = cuda_compute_dtype(x, weight);
  // The bias is not cast: the bias kernels read it in its own dtype, so an
  // f32 bias gets its f32 gradient directly.
  const Tensor xc = x.to(ct), wc = weight.to(ct);
  const int64_t in = weight.size(1), out_f = weight.size(0), M = x.numel() / std::max<int64_t>(in, 1);
  const Device dev = x.device();
  const bool tf32 = allow_tf32();
  const Tensor xd = data_of(xc), wd = data_of(wc), bd = bias.defined() ? data_of(bias) : Tensor();
  Shape out_shape = x.shape();
  out_shape.back() = out_f;
  Tensor out = Tensor::empty(out_shape, ct, dev);
  // y = x W^T
  cuda::gemm(1, M, out_f, in, 1.f, {xd.raw_data(), false, in, 0}, {wd.raw_data(), true, in, 0}, 0.f, out.raw_data(),
             out_f, 0, ct, tf32, dev.index);
  if (bd.defined())
    cuda::bias_add_rows(out.raw_data(), ct, bd.raw_data(), bd.dtype(), M, out_f, cuda::stream(dev.index));
  if (!any_requires_grad({xc, wc, bias})) return out;
  const bool gx = detail::wants_grad(xc), gw = detail::wants_grad(wc), gbias = detail::wants_grad(bias);
  const Tensor xs = gw ? xd : Tensor(), ws = gx ? wd : Tensor();
  const Shape x_shape = x.shape();
  const DType bias_dtype = bias.defined() ? bias.dtype() : ct;
  return record(out, "linear", {xc, wc, bias}, [=](const Tensor& g_in) {
    const Tensor g = grad_as(g_in, ct, dev, "linear");
    Tensor dx, dw, db;
    if (gx) {  // dx = g W
      dx = Tensor::empty(x_shape, ct, dev);
      cuda::gemm(1, M, in, out_f, 1.f, {g.raw_data(), false, out_f, 0}, {ws.raw_data(), false, in, 0}, 0.f,
                 dx.raw_data(), in, 0, ct, tf32, dev.index);
    }
    if (gw) {  // dW = g^T x
      dw = Tensor::empty({out_f, in}, ct, dev);
      cuda::gemm(1, out_f, in, M, 1.f, {g.raw_data(), true, out_f, 0}, {xs.raw_data(), false, in, 0}, 0.f,
                 dw.raw_data(), in, 0, ct, tf32, dev.index);
    }
    if (gbias) db = cuda_bias_grad(g, M, out_f, bias_dtype);
    return std::vector<Tensor>{dx, dw, db};
  });
}

}  // namespace
#endif

Tensor bmm(const Tensor& a, const Tensor& b) {
  detail::check_compute(a, "bmm", "first operand");
  detail::check_compute(b, "bmm", "second operand");
  detail::check_same_device(a, b, "bmm");
  if (a.device().is_cpu()) detail::check_same_dtype(a, b, "bmm");  // CUDA promotes mixed f32 / bf16
  S2H_CHECK(a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0) && a.size(2) == b.size(1),
            "bmm: expected [B,M,K] x [B,K,N], got {} x {}", shape_str(a.shape()), shape_str(b.shape()));
#if S2H_HAVE_CUDA
  if (a.device().is_cuda()) return bmm_cuda(a, b);
#endif
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
  detail::check_same_device(x, weight, "linear");
  const bool cpu = x.device().is_cpu();
  if (cpu) detail::check_same_dtype(x, weight, "linear");  // CUDA promotes mixed f32 / bf16
  S2H_CHECK(weight.dim() == 2, "linear: weight must be [out, in], got {}", shape_str(weight.shape()));
  S2H_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "linear: input {} does not match weight {} (in = {})",
            shape_str(x.shape()), shape_str(weight.shape()), weight.size(1));
  const int64_t in = weight.size(1), out_f = weight.size(0), M = x.numel() / std::max<int64_t>(in, 1);
  if (bias.defined()) {
    detail::check_same_device(x, bias, "linear");
    if (cpu) {
      detail::check_same_dtype(x, bias, "linear");
    } else {
      detail::check_compute(bias, "linear", "bias");
    }
    S2H_CHECK(bias.dim() == 1 && bias.size(0) == out_f, "linear: bias {} for {} outputs", shape_str(bias.shape()),
              out_f);
  }
#if S2H_HAVE_CUDA
  if (!cpu) return linear_cuda(x, weight, bias);
#endif
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
