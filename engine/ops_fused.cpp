// The fused S2HPruner ops of ops.h: masked_conv2d (soft / hard conv),
// dual_conv2d (the soft and the hard conv of one layer) and attention.
//
// Two paths compute the same thing:
// - the reference path composes existing ops (index_select, mul, conv2d,
//   bmm, softmax, ...), so its gradients come from autograd. It is the CPU
//   path (and the f64 gradient-check reference) and, on CUDA, the "library
//   kernels only" path (cuDNN / cuBLAS plus elementwise kernels);
// - the fused path (CUDA, bf16 policy, fused_kernels() on, a shape the kernels
//   handle): one autograd node per op whose forward and backward call the
//   handwritten kernels of kernels/cuda/masked_conv.h and attention.h.
// Anything the fused path does not handle falls back to the reference path
// silently: the results agree up to bf16 rounding.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "engine/ops_util.h"
#include "engine/precision.h"
#include "kernels/cuda/masked_conv.h"
#if S2H_HAVE_CUDA
#include "kernels/cuda/attention.h"
#include "kernels/cuda/runtime.h"
#endif

namespace s2h {

using detail::data_of;

namespace {

// The additive logit of a padded key. The same value as models/transformer.h's
// kMaskedLogit (the engine cannot include models/) and as the CUDA kernel's.
constexpr double kMaskedLogit = -1e9;

// ------------------------------------------------------------------ checks
// Throws unless `t` (a float tensor the op computes with) lives on x's device.
void check_device_of(const Tensor& t, const Tensor& x, const char* op, const char* what, const char* x_name) {
  S2H_CHECK(t.device() == x.device(), "{}: {} is on {} but {} is on {}; move it with .to()", op, what,
            t.device().str(), x_name, x.device().str());
}

// Checks a channel index list (i64 [len], values in [0, limit), no repeats)
// on the host: a bad index must fail here with a message, not inside a kernel.
void check_index(const Tensor& index, int64_t len, int64_t limit, const char* op, const char* what,
                 const char* len_what) {
  S2H_CHECK(index.dtype() == DType::I64 && index.dim() == 1, "{}: {} must be a 1-D i64 tensor, got {}", op, what,
            index.str());
  S2H_CHECK(index.numel() == len, "{}: {} has {} entries but {} is {}", op, what, index.numel(), len_what, len);
  const std::vector<int64_t> v = index.to_vector<int64_t>();
  std::vector<bool> seen(static_cast<size_t>(limit), false);
  for (size_t i = 0; i < v.size(); ++i) {
    S2H_CHECK(v[i] >= 0 && v[i] < limit, "{}: {}[{}] = {} is out of range [0, {})", op, what, i, v[i], limit);
    // The CUDA weight gradient writes each selected row / column once; a
    // repeated one would be a write race there, so it is refused everywhere.
    S2H_CHECK(!seen[static_cast<size_t>(v[i])], "{}: {} repeats channel {} (entry {})", op, what, v[i], i);
    seen[static_cast<size_t>(v[i])] = true;
  }
}

// Checks a per-channel scale: a float tensor [len] on the device of x (named x_name).
void check_scale(const Tensor& scale, int64_t len, const Tensor& x, const char* x_name, const char* op,
                 const char* what, const char* len_what) {
  detail::check_compute(scale, op, what);
  check_device_of(scale, x, op, what, x_name);
  S2H_CHECK(scale.dim() == 1 && scale.size(0) == len, "{}: {} must be [{}] ({}), got {}", op, what, len, len_what,
            shape_str(scale.shape()));
}

// ------------------------------------------------------------------ masked conv geometry
// One masked conv after its inputs were checked: the kernels' shape struct
// (plain sizes; kernels/cuda/masked_conv.h needs no CUDA header).
using ConvPlan = cuda::MaskedConvShape;

// Checks x, weight and opt for one masked conv (`op` names it in messages;
// `x_name` names x) and returns its geometry.
ConvPlan plan_conv(const Tensor& x, const Tensor& weight, const MaskedConvOptions& opt, const char* op,
                   const char* x_name) {
  detail::check_compute(x, op, x_name);
  S2H_CHECK(x.dim() == 4, "{}: {} must be NHWC [N,H,W,C], got {}", op, x_name, shape_str(x.shape()));
  detail::check_compute(weight, op, "weight");
  check_device_of(weight, x, op, "weight", x_name);
  if (x.device().is_cpu())
    S2H_CHECK(weight.dtype() == x.dtype(), "{}: weight has dtype {} but {} has {} (the CPU needs one dtype)", op,
              dtype_name(weight.dtype()), x_name, dtype_name(x.dtype()));
  S2H_CHECK(weight.dim() == 4 && weight.size(1) == weight.size(2),
            "{}: weight must be [O,K,K,C] (square kernel), got {}", op, shape_str(weight.shape()));
  ConvPlan p;
  p.n = x.size(0);
  p.h = x.size(1);
  p.w = x.size(2);
  p.c = x.size(3);
  p.k = weight.size(1);
  p.w_rows = weight.size(0);
  p.w_cols = weight.size(3);
  p.stride = opt.stride;
  p.pad = opt.padding;
  S2H_CHECK(p.stride >= 1 && p.pad >= 0, "{}: stride must be >= 1 and padding >= 0, got stride {}, padding {}", op,
            p.stride, p.pad);
  S2H_CHECK(p.c >= 1, "{}: {} has no channels ({})", op, x_name, shape_str(x.shape()));
  // Input side: an index list of x's c channels, or the prefix of c columns.
  if (opt.in_index.defined()) {
    check_index(opt.in_index, p.c, p.w_cols, op, "in_index", "the channel count of x");
  } else {
    S2H_CHECK(p.c <= p.w_cols, "{}: {} has {} channels but the weight {} has only {} input columns", op, x_name, p.c,
              shape_str(weight.shape()), p.w_cols);
  }
  // Output side: an index list, or the prefix of out_channels rows (all by default).
  if (opt.out_index.defined()) {
    S2H_CHECK(opt.out_index.dtype() == DType::I64 && opt.out_index.dim() == 1,
              "{}: out_index must be a 1-D i64 tensor, got {}", op, opt.out_index.str());
    p.o = opt.out_index.numel();
    S2H_CHECK(opt.out_channels == -1 || opt.out_channels == p.o,
              "{}: out_channels is {} but out_index has {} entries (set one of them)", op, opt.out_channels, p.o);
    check_index(opt.out_index, p.o, p.w_rows, op, "out_index", "the output channel count");
  } else {
    p.o = opt.out_channels == -1 ? p.w_rows : opt.out_channels;
    S2H_CHECK(p.o >= 1 && p.o <= p.w_rows,
              "{}: out_channels must be -1 (all) or in [1, {}] (the weight's rows), got {}", op, p.w_rows,
              opt.out_channels);
  }
  S2H_CHECK(p.o >= 1, "{}: out_index is empty", op);
  if (opt.in_scale.defined()) check_scale(opt.in_scale, p.c, x, x_name, op, "in_scale", "the channel count of x");
  if (opt.out_scale.defined()) check_scale(opt.out_scale, p.o, x, x_name, op, "out_scale", "the output channel count");
  p.ho = detail::conv_out_size(p.h, p.k, p.stride, p.pad, 1, op, "height");
  p.wo = detail::conv_out_size(p.w, p.k, p.stride, p.pad, 1, op, "width");
  return p;
}

// ------------------------------------------------------------------ reference paths
// masked_conv2d composed of index_select / slice, mul and conv2d.
Tensor masked_conv_reference(const Tensor& x, const Tensor& weight, const MaskedConvOptions& opt, const ConvPlan& p) {
  Tensor w = weight;
  if (opt.out_index.defined()) {
    w = index_select(w, 0, opt.out_index.to(w.device()));
  } else if (p.o < p.w_rows) {
    w = slice(w, 0, 0, p.o);
  }
  if (opt.in_index.defined()) {
    w = index_select(w, 3, opt.in_index.to(w.device()));
  } else if (p.c < p.w_cols) {
    w = slice(w, 3, 0, p.c);
  }
  // The scales are [c] / [o]: they broadcast over the last (channel) axis.
  // Cast to the activation's dtype so that a bf16 activation stays bf16.
  const Tensor xs = opt.in_scale.defined() ? mul(x, opt.in_scale.to(x.dtype())) : x;
  Conv2dOptions co;
  co.stride = {p.stride, p.stride};
  co.padding = {p.pad, p.pad};
  Tensor y = conv2d(xs, w, Tensor(), co);
  if (opt.out_scale.defined()) y = mul(y, opt.out_scale.to(y.dtype()));
  return y;
}

// head_keep as 0/1 values (nonzero = kept) of dtype `dtype` on `device`.
Tensor keep_as_float(const Tensor& head_keep, DType dtype, Device device) {
  const std::vector<uint8_t> keep = head_keep.to_vector<uint8_t>();
  std::vector<double> v(keep.size());
  for (size_t i = 0; i < keep.size(); ++i) v[i] = keep[i] ? 1.0 : 0.0;
  return Tensor::from_vector(v, {static_cast<int64_t>(v.size())}).to(dtype).to(device);
}

// The math of models/transformer.cpp's MultiheadSelfAttention::forward on
// [B, L, H, D] inputs, with the per-head factor head_scale * head_keep.
Tensor attention_reference(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opt) {
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2), D = q.size(3);
  auto heads = [&](const Tensor& t) { return reshape(permute(t, {0, 2, 1, 3}), {B * H, L, D}); };
  // q is scaled before the product (as the transformer does).
  const Tensor qh = heads(mul_scalar(q, opt.softmax_scale));
  const Tensor kt = reshape(permute(k, {0, 2, 3, 1}), {B * H, D, L});
  const Tensor vh = heads(v);
  Tensor logits = bmm(qh, kt);  // [B*H, L(query), L(key)]
  if (opt.key_padding.defined()) {
    const std::vector<uint8_t> pad = opt.key_padding.to_vector<uint8_t>();
    std::vector<double> bias(pad.size());
    for (size_t i = 0; i < pad.size(); ++i) bias[i] = pad[i] ? kMaskedLogit : 0.0;
    const Tensor b = Tensor::from_vector(bias, {B, 1, 1, L}).to(logits.dtype()).to(logits.device());
    logits = reshape(add(reshape(logits, {B, H, L, L}), b), {B * H, L, L});
  }
  Tensor out = bmm(softmax(logits, -1), vh);                      // [B*H, L, D]
  out = permute(reshape(out, {B, H, L, D}), {0, 2, 1, 3});        // [B, L, H, D]
  if (!opt.head_scale.defined() && !opt.head_keep.defined()) return contiguous(out);
  Tensor factor = opt.head_scale;
  if (opt.head_keep.defined()) {
    const DType ft = factor.defined() ? factor.dtype() : out.dtype();
    const Tensor keep = keep_as_float(opt.head_keep, ft, out.device());
    factor = factor.defined() ? mul(factor, keep) : keep;
  }
  return mul(out, reshape(factor.to(out.dtype()), {H, 1}));  // broadcast over [B, L] and D
}

// ------------------------------------------------------------------ fused paths
#if S2H_HAVE_CUDA
bool conv_fusable(const Tensor& x, const ConvPlan& p) {
  return fused_kernels_on(x.device()) && (p.k == 1 || p.k == 3) &&
         (p.stride == 1 || p.stride == 2);
}

// The kernel-side form of a layer's indexes and scales: contiguous i64 / f32
// tensors on the device without history, kept alive by whoever holds this.
struct ConvDeviceArgs {
  Tensor in_index, out_index, in_scale, out_scale;

  ConvDeviceArgs() = default;
  ConvDeviceArgs(const MaskedConvOptions& opt, Device dev) {
    auto index = [&](const Tensor& t) { return t.defined() ? t.detach().to(dev).contiguous() : Tensor(); };
    auto scale = [&](const Tensor& t) {
      return t.defined() ? t.detach().to(DType::F32).to(dev).contiguous() : Tensor();
    };
    in_index = index(opt.in_index);
    out_index = index(opt.out_index);
    in_scale = scale(opt.in_scale);
    out_scale = scale(opt.out_scale);
  }

  cuda::MaskedConvArgs args() const {
    cuda::MaskedConvArgs a;
    a.in_index = in_index.defined() ? in_index.data<int64_t>() : nullptr;
    a.out_index = out_index.defined() ? out_index.data<int64_t>() : nullptr;
    a.in_scale = in_scale.defined() ? in_scale.data<float>() : nullptr;
    a.out_scale = out_scale.defined() ? out_scale.data<float>() : nullptr;
    return a;
  }
};

// Records the backward of one fused masked conv y (bf16) computed from
// xb (x cast to bf16; xd: its contiguous data), weight (wd: its contiguous
// data) and the scales. The backward computes only the
// gradients that are wanted: the data kernel for dx and din_scale, the weight
// kernel for dweight and dout_scale.
Tensor record_masked_conv(Tensor y, const char* name, const cuda::MaskedConvShape& s, const Tensor& xb,
                          const Tensor& xd, const Tensor& weight, const Tensor& wd, const Tensor& in_scale,
                          const Tensor& out_scale, const ConvDeviceArgs& dargs) {
  if (!any_requires_grad({xb, weight, in_scale, out_scale})) return y;
  const bool gx = detail::wants_grad(xb), gw = detail::wants_grad(weight);
  const bool gis = detail::wants_grad(in_scale), gos = detail::wants_grad(out_scale);
  const bool data_pass = gx || gis, weight_pass = gw || gos;
  // x feeds the weight gradient and the input-scale gradient; the weight feeds
  // the data gradient and the output-scale gradient (dout_scale = sum W * G).
  const Tensor xs = weight_pass || gis ? xd : Tensor();
  const Tensor ws = data_pass || weight_pass ? wd : Tensor();
  const Device dev = xb.device();
  const DType w_dtype = weight.dtype();
  const DType is_dtype = in_scale.defined() ? in_scale.dtype() : DType::F32;
  const DType os_dtype = out_scale.defined() ? out_scale.dtype() : DType::F32;
  const Shape x_shape = xb.shape(), w_shape = weight.shape();
  // A hard layer's weight gradient covers part of the weight only: the rest must be zeros.
  const bool partial_weight = s.o < s.w_rows || s.c < s.w_cols;
  const std::string op = name;
  return record(y, name, {xb, weight, in_scale, out_scale}, [=](const Tensor& gy_in) {
    S2H_CHECK(gy_in.device() == dev, "{} backward: the gradient is on {}, the op ran on {}", op, gy_in.device().str(),
              dev.str());
    const Tensor gy = gy_in.dtype() == DType::BF16 ? gy_in.contiguous() : gy_in.to(DType::BF16).contiguous();
    const cuda::Stream stream = cuda::stream(dev.index);
    const cuda::MaskedConvArgs a = dargs.args();
    const void* xp = xs.defined() ? xs.raw_data() : nullptr;
    Tensor dx, dw, dis, dos;
    if (data_pass) {
      Tensor dxb = Tensor::empty(x_shape, DType::BF16, dev);
      Tensor partial;
      if (gis) partial = Tensor::empty({cuda::masked_conv_dgrad_partial_blocks(s), s.c}, DType::F32, dev);
      cuda::masked_conv_backward_data(s, a, xp, gy.raw_data(), ws.raw_data(), w_dtype, dxb.raw_data(),
                                      gis ? partial.data<float>() : nullptr, stream);
      if (gx) dx = dxb;
      if (gis) dis = sum(partial, {0}).to(is_dtype);
    }
    if (weight_pass) {
      Tensor dwt = partial_weight ? Tensor::zeros(w_shape, w_dtype, dev) : Tensor::empty(w_shape, w_dtype, dev);
      Tensor dos32 = gos ? Tensor::empty({s.o}, DType::F32, dev) : Tensor();
      // At least one byte: the launcher wants a non-null workspace even when it needs none.
      const size_t bytes = cuda::masked_conv_wgrad_workspace_bytes(s);
      const Tensor workspace = Tensor::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))}, DType::U8, dev);
      cuda::masked_conv_backward_weight(s, a, xp, gy.raw_data(), ws.raw_data(), w_dtype, dwt.raw_data(),
                                        gos ? dos32.data<float>() : nullptr, workspace.raw_data(), bytes, stream);
      if (gw) dw = dwt;
      if (gos) dos = dos32.to(os_dtype);
    }
    return std::vector<Tensor>{dx, dw, dis, dos};
  });
}

Tensor masked_conv_fused(const Tensor& x, const Tensor& weight, const MaskedConvOptions& opt, const ConvPlan& p) {
  const Device dev = x.device();
  const cuda::MaskedConvShape& s = p;
  cuda::masked_conv_check(s, weight.dtype(), "masked_conv2d");
  const Tensor xb = x.to(DType::BF16);  // autograd cast: x's gradient comes back in x's dtype
  const ConvDeviceArgs dargs(opt, dev);
  const Tensor xd = data_of(xb), wd = data_of(weight);
  Tensor y = Tensor::empty({p.n, p.ho, p.wo, p.o}, DType::BF16, dev);
  cuda::masked_conv_forward(s, dargs.args(), xd.raw_data(), wd.raw_data(), weight.dtype(), y.raw_data(),
                            cuda::stream(dev.index));
  return record_masked_conv(y, "masked_conv2d", s, xb, xd, weight, wd, opt.in_scale, opt.out_scale, dargs);
}

std::pair<Tensor, Tensor> dual_conv_fused(const Tensor& x_soft, const Tensor& x_hard, const Tensor& weight,
                                          const MaskedConvOptions& soft_opt, const ConvPlan& ps, const ConvPlan& ph) {
  const Device dev = x_soft.device();
  const cuda::MaskedConvShape &ss = ps, &sh = ph;
  cuda::masked_conv_check(ss, weight.dtype(), "dual_conv2d (soft)");
  cuda::masked_conv_check(sh, weight.dtype(), "dual_conv2d (hard)");
  const Tensor xsb = x_soft.to(DType::BF16), xhb = x_hard.to(DType::BF16);
  const ConvDeviceArgs dsoft(soft_opt, dev), dhard;
  const Tensor xsd = data_of(xsb), xhd = data_of(xhb), wd = data_of(weight);
  Tensor ys = Tensor::empty({ps.n, ps.ho, ps.wo, ps.o}, DType::BF16, dev);
  Tensor yh = Tensor::empty({ph.n, ph.ho, ph.wo, ph.o}, DType::BF16, dev);
  const cuda::MaskedConvArgs a = dsoft.args();
  cuda::masked_conv_dual_forward(ss, sh, a.out_scale, a.in_scale, xsd.raw_data(), xhd.raw_data(), wd.raw_data(),
                                 weight.dtype(), ys.raw_data(), yh.raw_data(), cuda::stream(dev.index));
  // One forward launch, two autograd nodes (record() gives one output a
  // node): each output's backward is the masked conv backward of its half.
  ys = record_masked_conv(ys, "dual_conv2d (soft)", ss, xsb, xsd, weight, wd, soft_opt.in_scale, soft_opt.out_scale,
                          dsoft);
  yh = record_masked_conv(yh, "dual_conv2d (hard)", sh, xhb, xhd, weight, wd, Tensor(), Tensor(), dhard);
  return {ys, yh};
}

// The kernel-side form of attention's masks: contiguous u8 / f32 tensors on
// the device without history. The backward closure must hold this (not only
// the raw pointers of AttentionMasks): a lambda captures only what its body
// names, and a mask freed after the forward would be reused memory by the time
// the backward kernels read it.
struct AttentionDeviceMasks {
  Tensor key_padding, head_keep, head_scale;

  AttentionDeviceMasks(const AttentionOptions& opt, Device dev) {
    if (opt.key_padding.defined()) key_padding = opt.key_padding.to(dev).contiguous();
    if (opt.head_keep.defined()) head_keep = opt.head_keep.to(dev).contiguous();
    if (opt.head_scale.defined()) head_scale = opt.head_scale.detach().to(DType::F32).to(dev).contiguous();
  }

  cuda::AttentionMasks masks() const {
    cuda::AttentionMasks m;
    m.key_padding = key_padding.defined() ? key_padding.data<uint8_t>() : nullptr;
    m.head_keep = head_keep.defined() ? head_keep.data<uint8_t>() : nullptr;
    m.head_scale = head_scale.defined() ? head_scale.data<float>() : nullptr;
    return m;
  }
};

// The kernels read q, k, v with unit stride on d and one set of (b, s, h)
// strides for all three; the alignment test keeps 16-byte vector loads legal.
bool attention_layout_ok(const Tensor& q, const Tensor& k, const Tensor& v) {
  auto aligned = [](const Tensor& t) {
    return t.strides()[3] == 1 && t.strides()[0] % 8 == 0 && t.strides()[1] % 8 == 0 && t.strides()[2] % 8 == 0 &&
           reinterpret_cast<uintptr_t>(t.raw_data()) % 16 == 0;
  };
  return aligned(q) && aligned(k) && aligned(v) && q.strides() == k.strides() && q.strides() == v.strides();
}

Tensor attention_fused(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opt) {
  const Device dev = q.device();
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2), D = q.size(3);
  // Autograd casts (no-ops for bf16 inputs): the gradients come back in the inputs' dtypes.
  Tensor qb = q.to(DType::BF16), kb = k.to(DType::BF16), vb = v.to(DType::BF16);
  if (!attention_layout_ok(qb, kb, vb)) {
    qb = contiguous(qb);
    kb = contiguous(kb);
    vb = contiguous(vb);
  }
  const Tensor qd = qb.detach(), kd = kb.detach(), vd = vb.detach();  // strided views, no history
  cuda::AttentionShape s;
  s.b = B;
  s.s = L;
  s.h = H;
  s.d = D;
  s.stride_b = qd.strides()[0];
  s.stride_s = qd.strides()[1];
  s.stride_h = qd.strides()[2];
  s.softmax_scale = static_cast<float>(opt.softmax_scale);
  cuda::attention_check(s, "attention");
  const AttentionDeviceMasks dmasks(opt, dev);
  const bool scaled = dmasks.head_scale.defined();

  Tensor out = Tensor::empty({B, L, H, D}, DType::BF16, dev);
  // The backward needs the output before the head scale; without a scale that is the output itself.
  const Tensor unscaled = scaled ? Tensor::empty({B, L, H, D}, DType::BF16, dev) : out.detach();
  const Tensor lse = Tensor::empty({B, H, L}, DType::F32, dev);
  cuda::attention_forward(s, dmasks.masks(), qd.raw_data(), kd.raw_data(), vd.raw_data(), out.raw_data(),
                          scaled ? unscaled.raw_data() : nullptr, lse.data<float>(), cuda::stream(dev.index));
  const Tensor head_scale = opt.head_scale;
  if (!any_requires_grad({qb, kb, vb, head_scale})) return out;
  const bool gq = detail::wants_grad(qb), gk = detail::wants_grad(kb), gv = detail::wants_grad(vb);
  const bool ghs = detail::wants_grad(head_scale);
  const DType hs_dtype = head_scale.defined() ? head_scale.dtype() : DType::F32;
  return record(out, "attention", {qb, kb, vb, head_scale}, [=](const Tensor& g_in) {
    S2H_CHECK(g_in.device() == dev, "attention backward: the gradient is on {}, the op ran on {}", g_in.device().str(),
              dev.str());
    const Tensor g = g_in.dtype() == DType::BF16 ? g_in.contiguous() : g_in.to(DType::BF16).contiguous();
    Tensor dq = Tensor::empty({B, L, H, D}, DType::BF16, dev);
    Tensor dk = Tensor::empty({B, L, H, D}, DType::BF16, dev);
    Tensor dv = Tensor::empty({B, L, H, D}, DType::BF16, dev);
    Tensor delta = Tensor::empty({B * H * L}, DType::F32, dev);
    // Every row is written (zeros for a skipped head), so the head-scale gradient is their sum.
    Tensor rows = ghs ? Tensor::empty({B, H, L}, DType::F32, dev) : Tensor();
    // dmasks is named here, so the closure holds the mask tensors alive.
    cuda::attention_backward(s, dmasks.masks(), qd.raw_data(), kd.raw_data(), vd.raw_data(), unscaled.raw_data(),
                             g.raw_data(), lse.data<float>(), dq.raw_data(), dk.raw_data(), dv.raw_data(),
                             delta.data<float>(), ghs ? rows.data<float>() : nullptr, cuda::stream(dev.index));
    Tensor dhs = ghs ? sum(rows, {0, 2}).to(hs_dtype) : Tensor();
    return std::vector<Tensor>{gq ? dq : Tensor(), gk ? dk : Tensor(), gv ? dv : Tensor(), dhs};
  });
}
#endif

// A scale that lives elsewhere (the pruner keeps its masks on the host) moves
// to `dev` through the autograd copy, so its gradient flows back to it.
Tensor scale_on(const Tensor& scale, Device dev) {
  return scale.defined() && scale.device() != dev ? scale.to(dev) : scale;
}

MaskedConvOptions scales_on(MaskedConvOptions opt, Device dev) {
  opt.in_scale = scale_on(opt.in_scale, dev);
  opt.out_scale = scale_on(opt.out_scale, dev);
  return opt;
}

}  // namespace

// ------------------------------------------------------------------ public ops
Tensor masked_conv2d(const Tensor& x, const Tensor& weight, const MaskedConvOptions& opt_in) {
  const MaskedConvOptions opt = scales_on(opt_in, x.device());
  const ConvPlan p = plan_conv(x, weight, opt, "masked_conv2d", "x");
#if S2H_HAVE_CUDA
  if (conv_fusable(x, p)) return masked_conv_fused(x, weight, opt, p);
#endif
  return masked_conv_reference(x, weight, opt, p);
}

std::pair<Tensor, Tensor> dual_conv2d(const Tensor& x_soft, const Tensor& x_hard, const Tensor& weight,
                                      const MaskedConvOptions& soft_opt_in, int64_t hard_out) {
  const char* op = "dual_conv2d";
  const MaskedConvOptions soft_opt = scales_on(soft_opt_in, x_soft.device());
  S2H_CHECK(!soft_opt.in_index.defined() && !soft_opt.out_index.defined(),
            "{}: the soft options must not have in_index / out_index (the soft conv uses full widths; the hard "
            "conv's widths are x_hard's channels and hard_out)",
            op);
  const ConvPlan ps = plan_conv(x_soft, weight, soft_opt, op, "x_soft");
  detail::check_compute(x_hard, op, "x_hard");
  check_device_of(x_hard, x_soft, op, "x_hard", "x_soft");
  S2H_CHECK(x_hard.dim() == 4, "{}: x_hard must be NHWC [N,H,W,C], got {}", op, shape_str(x_hard.shape()));
  S2H_CHECK(x_hard.size(3) <= weight.size(3), "{}: x_hard has {} channels but the weight {} has only {} input columns",
            op, x_hard.size(3), shape_str(weight.shape()), weight.size(3));
  S2H_CHECK(hard_out >= 1 && hard_out <= weight.size(0), "{}: hard_out must be in [1, {}] (the weight's rows), got {}",
            op, weight.size(0), hard_out);
  MaskedConvOptions hard_opt;
  hard_opt.stride = soft_opt.stride;
  hard_opt.padding = soft_opt.padding;
  hard_opt.out_channels = hard_out;
  const ConvPlan ph = plan_conv(x_hard, weight, hard_opt, op, "x_hard");
#if S2H_HAVE_CUDA
  // The dual kernel needs one batch and image size and the hard widths inside
  // the soft ones; other cases run as two masked convs.
  if (conv_fusable(x_soft, ps) && ph.n == ps.n && ph.h == ps.h && ph.w == ps.w && ph.o <= ps.o && ph.c <= ps.c)
    return dual_conv_fused(x_soft, x_hard, weight, soft_opt, ps, ph);
  if (conv_fusable(x_soft, ps))
    return {masked_conv_fused(x_soft, weight, soft_opt, ps), masked_conv_fused(x_hard, weight, hard_opt, ph)};
#endif
  return {masked_conv_reference(x_soft, weight, soft_opt, ps), masked_conv_reference(x_hard, weight, hard_opt, ph)};
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opt_in) {
  const char* op = "attention";
  AttentionOptions opt = opt_in;
  opt.head_scale = scale_on(opt.head_scale, q.device());
  detail::check_compute(q, op, "q");
  detail::check_compute(k, op, "k");
  detail::check_compute(v, op, "v");
  S2H_CHECK(q.dim() == 4, "{}: q must be [B, L, H, D], got {}", op, shape_str(q.shape()));
  S2H_CHECK(k.shape() == q.shape() && v.shape() == q.shape(), "{}: q, k and v must have one shape, got {}, {}, {}", op,
            shape_str(q.shape()), shape_str(k.shape()), shape_str(v.shape()));
  check_device_of(k, q, op, "k", "q");
  check_device_of(v, q, op, "v", "q");
  S2H_CHECK(k.dtype() == q.dtype() && v.dtype() == q.dtype(), "{}: q, k and v must have one dtype, got {}, {}, {}", op,
            dtype_name(q.dtype()), dtype_name(k.dtype()), dtype_name(v.dtype()));
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2), D = q.size(3);
  S2H_CHECK(B >= 1 && L >= 1 && H >= 1 && D >= 1, "{}: q {} has an empty axis", op, shape_str(q.shape()));
  S2H_CHECK(std::isfinite(opt.softmax_scale), "{}: softmax_scale must be finite, got {}", op, opt.softmax_scale);
  // The u8 masks may live on any device (they are small); the float head
  // scale was moved to q's device above (an autograd copy).
  if (opt.key_padding.defined())
    S2H_CHECK(opt.key_padding.dtype() == DType::U8 && opt.key_padding.dim() == 2 && opt.key_padding.size(0) == B &&
                  opt.key_padding.size(1) == L,
              "{}: key_padding must be u8 [{}, {}] (B, L), got {}", op, B, L, opt.key_padding.str());
  if (opt.head_keep.defined())
    S2H_CHECK(opt.head_keep.dtype() == DType::U8 && opt.head_keep.dim() == 1 && opt.head_keep.size(0) == H,
              "{}: head_keep must be u8 [{}] (H), got {}", op, H, opt.head_keep.str());
  if (opt.head_scale.defined()) check_scale(opt.head_scale, H, q, "q", op, "head_scale", "the head count H");
#if S2H_HAVE_CUDA
  if (fused_kernels_on(q.device()) && (D == 64 || D == 128))
    return attention_fused(q, k, v, opt);
#endif
  return attention_reference(q, k, v, opt);
}

}  // namespace s2h
