// Sums, means and argmax over axes.
#include <algorithm>
#include <numeric>

#include "engine/ops_util.h"
#include "kernels/cpu/reduce.h"
#include "kernels/cuda/reduce.h"
#if S2H_HAVE_CUDA
#include "kernels/cuda/runtime.h"
#endif

namespace s2h {

using detail::data_of;

namespace {

std::vector<int64_t> normalized_axes(const std::vector<int64_t>& axes, int64_t nd, const char* op) {
  std::vector<int64_t> out;
  for (int64_t a : axes) out.push_back(normalize_axis(a, nd, op));
  std::sort(out.begin(), out.end());
  S2H_CHECK(std::adjacent_find(out.begin(), out.end()) == out.end(), "{}: an axis is repeated", op);
  return out;
}

#if S2H_HAVE_CUDA
// out[o, i] = sum_m x[o, m, i] over the contiguous [outer, mid, inner] data
// of x, on x's GPU (scratch for a split middle axis allocated here).
void cuda_sum_middle(const Tensor& x, const Tensor& out, int64_t outer, int64_t mid, int64_t inner) {
  const size_t scratch_bytes = cuda::sum_middle_scratch_bytes(outer, mid, inner);
  Tensor scratch;
  if (scratch_bytes > 0)
    scratch = Tensor::empty({static_cast<int64_t>((scratch_bytes + sizeof(float) - 1) / sizeof(float))}, DType::F32,
                            x.device());
  cuda::sum_middle(x.raw_data(), x.dtype(), out.raw_data(), out.dtype(), outer, mid, inner,
                   scratch.defined() ? scratch.raw_data() : nullptr, cuda::stream(x.device().index));
}

// The CUDA side of sum_keepdim_data: no permuting copy. Size-1 axes are
// dropped and neighbouring axes that are all kept or all reduced merge, which
// leaves alternating kept / reduced extents; each reduced extent is one
// [outer, mid, inner] pass, the last one first. Passes before the final one
// write fp32 (a bf16 input is rounded once, at the end).
Tensor cuda_sum_keepdim(const Tensor& x, const std::vector<int64_t>& axes, const Shape& kept_shape) {
  std::vector<int64_t> extent;
  std::vector<bool> reduced;
  for (int64_t d = 0; d < x.dim(); ++d) {
    const int64_t s = x.shape()[d];
    if (s == 1) continue;
    const bool r = std::binary_search(axes.begin(), axes.end(), d);
    if (!extent.empty() && reduced.back() == r) {
      extent.back() *= s;
    } else {
      extent.push_back(s);
      reduced.push_back(r);
    }
  }
  Tensor cur = data_of(x);
  Tensor out = Tensor::empty(kept_shape, x.dtype(), x.device());
  int64_t last = -1;  // the last reduced extent
  for (size_t k = 0; k < extent.size(); ++k)
    if (reduced[k]) last = static_cast<int64_t>(k);
  if (last < 0) {  // nothing to add up: every reduced axis has size 1
    out.copy_(cur.reshape(kept_shape));
    return out;
  }
  while (last >= 0) {
    int64_t outer = 1, inner = 1;
    for (int64_t k = 0; k < last; ++k) outer *= extent[k];
    for (size_t k = static_cast<size_t>(last) + 1; k < extent.size(); ++k) inner *= extent[k];
    const int64_t mid = extent[last];
    // Drop the extent just reduced; the kept ones around it become one.
    extent.erase(extent.begin() + last);
    reduced.erase(reduced.begin() + last);
    if (last > 0 && static_cast<size_t>(last) < extent.size() && !reduced[last - 1] && !reduced[last]) {
      extent[last - 1] *= extent[last];
      extent.erase(extent.begin() + last);
      reduced.erase(reduced.begin() + last);
    }
    int64_t next = -1;
    for (int64_t k = static_cast<int64_t>(reduced.size()) - 1; k >= 0 && next < 0; --k)
      if (reduced[k]) next = k;
    Tensor dst = next < 0 ? out : Tensor::empty({outer * inner}, DType::F32, x.device());
    cuda_sum_middle(cur, dst, outer, mid, inner);
    cur = dst;
    last = next;
  }
  return out;
}
#endif

// Sum without history over sorted, unique axes; the result keeps the reduced axes as 1.
Tensor sum_keepdim_data(const Tensor& x, const std::vector<int64_t>& axes) {
  const Shape& sh = x.shape();
  const int64_t nd = x.dim();
  Shape kept_shape = sh;
  for (int64_t a : axes) kept_shape[a] = 1;
  if (x.device().is_cuda()) {
#if S2H_HAVE_CUDA
    return cuda_sum_keepdim(x, axes, kept_shape);
#else
    S2H_FAIL("sum: this build has no CUDA backend");
#endif
  }
  Tensor out = Tensor::empty(kept_shape, x.dtype());
  if (axes.empty()) {
    out.copy_(x.detach());
    return out;
  }
  const bool block = axes.back() - axes.front() + 1 == static_cast<int64_t>(axes.size());
  Tensor src;
  int64_t outer = 1, mid = 1, inner = 1;
  if (block) {
    src = data_of(x);
    for (int64_t i = 0; i < axes.front(); ++i) outer *= sh[i];
    for (int64_t a : axes) mid *= sh[a];
    for (int64_t i = axes.back() + 1; i < nd; ++i) inner *= sh[i];
  } else {
    // Move the kept axes first, the reduced ones last.
    Shape order;
    for (int64_t i = 0; i < nd; ++i)
      if (!std::binary_search(axes.begin(), axes.end(), i)) order.push_back(i);
    for (int64_t a : axes) order.push_back(a);
    src = x.detach().permute(order).contiguous();
    for (int64_t i = 0; i < nd; ++i) (std::binary_search(axes.begin(), axes.end(), i) ? mid : outer) *= sh[i];
  }
  dispatch_float(x.dtype(), "sum", [&]<typename T>() {
    cpu::sum_middle<T>(src.data<T>(), outer, mid, inner, out.data<T>());
  });
  return out;
}

Shape drop_axes(const Shape& sh, const std::vector<int64_t>& axes) {
  Shape out;
  for (int64_t i = 0; i < static_cast<int64_t>(sh.size()); ++i)
    if (!std::binary_search(axes.begin(), axes.end(), i)) out.push_back(sh[i]);
  return out;
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<int64_t>& axes_in, bool keepdim) {
  detail::check_compute(x, "sum", "input");
  const std::vector<int64_t> axes = normalized_axes(axes_in, x.dim(), "sum");
  Tensor out = sum_keepdim_data(x, axes);
  if (!keepdim) out = out.detach().reshape(drop_axes(x.shape(), axes));
  const Shape in_shape = x.shape();
  Shape kept = in_shape;
  for (int64_t a : axes) kept[a] = 1;
  return record(out, "sum", {x}, [in_shape, kept](const Tensor& g) {
    return std::vector<Tensor>{expand(g.reshape(kept), in_shape)};
  });
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& axes_in, bool keepdim) {
  const std::vector<int64_t> axes = normalized_axes(axes_in, x.dim(), "mean");
  int64_t count = 1;
  for (int64_t a : axes) count *= x.shape()[a];
  return mul_scalar(sum(x, axes, keepdim), count > 0 ? 1.0 / static_cast<double>(count) : 0.0);
}

Tensor sum(const Tensor& x) {
  std::vector<int64_t> all(static_cast<size_t>(x.dim()));
  std::iota(all.begin(), all.end(), 0);
  return sum(x, all, false);
}

Tensor mean(const Tensor& x) {
  std::vector<int64_t> all(static_cast<size_t>(x.dim()));
  std::iota(all.begin(), all.end(), 0);
  return mean(x, all, false);
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  const int64_t nd = x.dim(), lead = nd - static_cast<int64_t>(shape.size());
  S2H_CHECK(lead >= 0, "sum_to: cannot reduce shape {} to {}", shape_str(x.shape()), shape_str(shape));
  std::vector<int64_t> axes;
  for (int64_t i = 0; i < nd; ++i) {
    if (i < lead) {
      axes.push_back(i);
    } else if (shape[i - lead] == 1 && x.shape()[i] != 1) {
      axes.push_back(i);
    } else {
      S2H_CHECK(shape[i - lead] == x.shape()[i], "sum_to: cannot reduce shape {} to {}", shape_str(x.shape()),
                shape_str(shape));
    }
  }
  return sum(x, axes, true).reshape(shape);
}

Tensor argmax(const Tensor& x, int64_t axis) {
  detail::check_compute(x, "argmax", "input");
  const int64_t a = normalize_axis(axis, x.dim(), "argmax axis");
  Tensor xd = data_of(x);
  int64_t outer = 1, inner = 1;
  for (int64_t i = 0; i < a; ++i) outer *= x.shape()[i];
  for (int64_t i = a + 1; i < x.dim(); ++i) inner *= x.shape()[i];
  Shape out_shape = x.shape();
  out_shape.erase(out_shape.begin() + a);
  Tensor out = Tensor::empty(out_shape, DType::I64, x.device());
  S2H_CHECK(x.shape()[a] > 0, "argmax: axis {} is empty", axis);
  if (x.device().is_cuda()) {
#if S2H_HAVE_CUDA
    cuda::argmax_middle(xd.raw_data(), x.dtype(), out.data<int64_t>(), outer, x.shape()[a], inner,
                        cuda::stream(x.device().index));
    return out;
#else
    S2H_FAIL("argmax: this build has no CUDA backend");
#endif
  }
  dispatch_float(x.dtype(), "argmax", [&]<typename T>() {
    cpu::argmax_middle<T>(xd.data<T>(), outer, x.shape()[a], inner, out.data<int64_t>());
  });
  return out;
}

}  // namespace s2h
