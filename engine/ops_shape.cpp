// Views and data movement: reshape, permute, slice, concat, index_select, expand.
#include <algorithm>

#include "engine/ops_util.h"
#include "kernels/cpu/copy.h"
#include "kernels/cuda/index.h"
#if S2H_HAVE_CUDA
#include "kernels/cuda/runtime.h"
#endif

namespace s2h {

using detail::data_of;

namespace {

// A view of x's storage with the given geometry and no history.
Tensor make_view(const Tensor& x, Shape shape, Shape strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = x.storage();
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = x.dtype();
  return Tensor(impl);
}

Shape infer_shape(const Shape& requested, int64_t numel, const Shape& from) {
  Shape out = requested;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == -1) {
      S2H_CHECK(infer < 0, "reshape: more than one -1 in {}", shape_str(requested));
      infer = static_cast<int64_t>(i);
    } else {
      S2H_CHECK(out[i] >= 0, "reshape: invalid size in {}", shape_str(requested));
      known *= out[i];
    }
  }
  if (infer >= 0) {
    S2H_CHECK(known > 0 && numel % known == 0, "reshape: cannot reshape {} into {}", shape_str(from),
              shape_str(requested));
    out[infer] = numel / known;
  }
  S2H_CHECK(shape_numel(out) == numel, "reshape: cannot reshape {} ({} elements) into {}", shape_str(from), numel,
            shape_str(requested));
  return out;
}

// Copies src (any strides, no history) into the strided destination view dst.
void copy_into(const Tensor& dst, const Tensor& src) {
  NoGradGuard guard;
  Tensor d = dst.detach();
  d.copy_(src.detach());
}

}  // namespace

Tensor contiguous(const Tensor& x) {
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  copy_into(out, x);
  if (!is_floating(x.dtype())) return out;
  return record(out, "contiguous", {x}, [](const Tensor& g) { return std::vector<Tensor>{g}; });
}

Tensor reshape(const Tensor& x, const Shape& shape) {
  const Shape target = infer_shape(shape, x.numel(), x.shape());
  Tensor src = x.is_contiguous() ? x : contiguous(x);
  Tensor out = make_view(src, target, contiguous_strides(target), src.offset());
  const Shape in_shape = x.shape();
  return record(out, "reshape", {src}, [in_shape](const Tensor& g) {
    return std::vector<Tensor>{g.reshape(in_shape)};
  });
}

Tensor permute(const Tensor& x, const Shape& order) {
  const int64_t nd = x.dim();
  S2H_CHECK(static_cast<int64_t>(order.size()) == nd, "permute: order {} for a tensor of {} dimensions",
            shape_str(order), nd);
  Shape seen(static_cast<size_t>(nd), 0), shape(static_cast<size_t>(nd)), strides(static_cast<size_t>(nd)),
      inverse(static_cast<size_t>(nd));
  for (int64_t i = 0; i < nd; ++i) {
    const int64_t a = normalize_axis(order[i], nd, "permute axis");
    S2H_CHECK(!seen[a]++, "permute: axis {} repeated in {}", a, shape_str(order));
    shape[i] = x.shape()[a];
    strides[i] = x.strides()[a];
    inverse[a] = i;
  }
  Tensor out = make_view(x, shape, strides, x.offset());
  return record(out, "permute", {x}, [inverse](const Tensor& g) {
    return std::vector<Tensor>{permute(g, inverse)};
  });
}

Tensor transpose(const Tensor& x, int64_t a, int64_t b) {
  const int64_t nd = x.dim();
  Shape order(static_cast<size_t>(nd));
  for (int64_t i = 0; i < nd; ++i) order[i] = i;
  std::swap(order[normalize_axis(a, nd, "transpose axis")], order[normalize_axis(b, nd, "transpose axis")]);
  return permute(x, order);
}

Tensor slice(const Tensor& x, int64_t axis, int64_t start, int64_t end, int64_t step) {
  const int64_t a = normalize_axis(axis, x.dim(), "slice axis");
  S2H_CHECK(step > 0, "slice: step must be positive, got {}", step);
  const int64_t n = x.shape()[a];
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape shape = x.shape(), strides = x.strides();
  shape[a] = (end - start + step - 1) / step;
  strides[a] *= step;
  Tensor out = make_view(x, shape, strides, x.offset() + start * x.strides()[a]);
  const Shape in_shape = x.shape();
  return record(out, "slice", {x}, [in_shape, a, start, end, step](const Tensor& g) {
    Tensor gx = Tensor::zeros(in_shape, g.dtype(), g.device());
    copy_into(gx.slice(a, start, end, step), g);
    return std::vector<Tensor>{gx};
  });
}

Tensor concat(const std::vector<Tensor>& xs, int64_t axis) {
  S2H_CHECK(!xs.empty(), "concat: no tensors given");
  const int64_t nd = xs[0].dim();
  const int64_t a = normalize_axis(axis, nd, "concat axis");
  Shape shape = xs[0].shape();
  shape[a] = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& t = xs[i];
    S2H_CHECK(t.dtype() == xs[0].dtype(), "concat: tensor {} has dtype {}, tensor 0 has {}", i,
              dtype_name(t.dtype()), dtype_name(xs[0].dtype()));
    S2H_CHECK(t.device() == xs[0].device(), "concat: tensor {} is on {}, tensor 0 on {}", i, t.device().str(),
              xs[0].device().str());
    S2H_CHECK(t.dim() == nd, "concat: tensor {} has {} dimensions, tensor 0 has {}", i, t.dim(), nd);
    for (int64_t d = 0; d < nd; ++d)
      S2H_CHECK(d == a || t.shape()[d] == xs[0].shape()[d], "concat: tensor {} has shape {}, tensor 0 has {}", i,
                shape_str(t.shape()), shape_str(xs[0].shape()));
    shape[a] += t.shape()[a];
  }
  Tensor out = Tensor::empty(shape, xs[0].dtype(), xs[0].device());
  std::vector<int64_t> bounds{0};
  for (const Tensor& t : xs) {
    copy_into(out.slice(a, bounds.back(), bounds.back() + t.shape()[a]), t);
    bounds.push_back(bounds.back() + t.shape()[a]);
  }
  if (!is_floating(out.dtype())) return out;
  return record(out, "concat", xs, [bounds, a](const Tensor& g) {
    std::vector<Tensor> grads;
    for (size_t i = 0; i + 1 < bounds.size(); ++i) grads.push_back(g.slice(a, bounds[i], bounds[i + 1]).contiguous());
    return grads;
  });
}

Tensor index_select(const Tensor& x, int64_t axis, const Tensor& index) {
  const int64_t a = normalize_axis(axis, x.dim(), "index_select axis");
  S2H_CHECK(index.dtype() == DType::I64 && index.dim() == 1, "index_select: index must be a 1-D i64 tensor, got {}",
            index.str());
  Tensor xd = data_of(x), idx = data_of(index);
  const int64_t n = x.shape()[a], k = index.numel();
  // The index goes to x's device. Indices read on the host are checked there;
  // a GPU index for a GPU tensor is not (that would wait for the GPU): the
  // kernel poisons the rows of a bad index instead (see kernels/cuda/index.h).
  if (x.device().is_cpu() && !idx.device().is_cpu()) idx = idx.to(Device::cpu());
  if (idx.device().is_cpu()) {
    const int64_t* ip = idx.data<int64_t>();
    for (int64_t i = 0; i < k; ++i)
      S2H_CHECK(ip[i] >= 0 && ip[i] < n, "index_select: index {} is out of range for axis {} of size {}", ip[i], a,
                n);
  }
  if (idx.device() != x.device()) idx = idx.to(x.device());
  int64_t outer = 1, inner = 1;
  for (int64_t i = 0; i < a; ++i) outer *= x.shape()[i];
  for (int64_t i = a + 1; i < x.dim(); ++i) inner *= x.shape()[i];
  Shape shape = x.shape();
  shape[a] = k;
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  const size_t esz = dtype_size(x.dtype());
  if (x.device().is_cuda()) {
#if S2H_HAVE_CUDA
    cuda::index_select(xd.raw_data(), out.raw_data(), esz, idx.data<int64_t>(), outer, n, k, inner,
                       cuda::stream(x.device().index));
#else
    S2H_FAIL("index_select: this build has no CUDA backend");
#endif
  } else {
    const int64_t* ip = idx.data<int64_t>();
    const char* src = static_cast<const char*>(xd.raw_data());
    char* dst = static_cast<char*>(out.raw_data());
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t j = 0; j < k; ++j)
        std::memcpy(dst + (o * k + j) * inner * esz, src + (o * n + ip[j]) * inner * esz, inner * esz);
  }
  if (!is_floating(x.dtype())) return out;
  const Shape in_shape = x.shape();
  const DType x_dtype = x.dtype();
  return record(out, "index_select", {x}, [in_shape, idx, outer, inner, n, k, x_dtype](const Tensor& g) {
    if (g.device().is_cuda()) {
#if S2H_HAVE_CUDA
      // Scatter-add with fp32 atomics into an fp32 buffer (repeated indices
      // add up in fp32 even for bf16), then x's dtype.
      Tensor acc = Tensor::zeros(in_shape, DType::F32, g.device());
      cuda::index_add(acc.data<float>(), g.raw_data(), g.dtype(), idx.data<int64_t>(), outer, n, k, inner,
                      cuda::stream(g.device().index));
      return std::vector<Tensor>{acc.to(x_dtype)};
#else
      S2H_FAIL("index_select backward: this build has no CUDA backend");
#endif
    }
    Tensor gx = Tensor::zeros(in_shape, g.dtype());
    const int64_t* ip = idx.data<int64_t>();
    dispatch_float(g.dtype(), "index_select backward", [&]<typename T>() {
      const T* gp = g.data<T>();
      T* dp = gx.data<T>();
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t j = 0; j < k; ++j) {
          const T* s = gp + (o * k + j) * inner;
          T* d = dp + (o * n + ip[j]) * inner;
          for (int64_t i = 0; i < inner; ++i) d[i] += s[i];
        }
    });
    return std::vector<Tensor>{gx};
  });
}

Tensor expand(const Tensor& x, const Shape& shape) {
  const Shape b = broadcast_shapes(x.shape(), shape, "expand");
  S2H_CHECK(b == shape, "expand: shape {} cannot be expanded to {}", shape_str(x.shape()), shape_str(shape));
  Tensor xd = data_of(x);
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  const Shape st = detail::broadcast_strides(x.shape(), shape);
  copy_into(out, make_view(xd, shape, st, xd.offset()));
  if (!is_floating(x.dtype())) return out;
  const Shape in_shape = x.shape();
  return record(out, "expand", {x}, [in_shape](const Tensor& g) { return std::vector<Tensor>{sum_to(g, in_shape)}; });
}

}  // namespace s2h
