#include "engine/tensor.h"

#include <cmath>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "kernels/cpu/copy.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cuda/copy.h"
#include "kernels/cuda/runtime.h"

namespace s2h {

namespace {

std::shared_ptr<TensorImpl> new_impl(const Shape& shape, DType dtype, Device device, bool pinned = false) {
  for (int64_t d : shape) S2H_CHECK(d >= 0, "tensor shape {} has a negative size", shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage =
      std::make_shared<Storage>(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), device, pinned);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return impl;
}

// dst (any strides) <- src (any strides), same shape, any dtypes, any devices.
void copy_strided(const Tensor& dst, const Tensor& src) {
  S2H_CHECK(dst.shape() == src.shape(), "copy: shape {} into shape {}", shape_str(src.shape()),
            shape_str(dst.shape()));
  const Device dd = dst.device(), sd = src.device();
  if (dd.is_cpu() && sd.is_cpu()) {
    dispatch_all(dst.dtype(), [&]<typename D>() {
      dispatch_all(src.dtype(), [&]<typename S>() {
        cpu::strided_copy<D, S>(static_cast<D*>(dst.raw_data()), dst.strides().data(),
                                static_cast<const S*>(src.raw_data()), src.strides().data(), src.shape().data(),
                                static_cast<int>(src.dim()));
      });
    });
    return;
  }
#if S2H_HAVE_CUDA
  if (dd == sd) {  // on one GPU
    cuda::strided_copy(dst.raw_data(), dst.dtype(), dst.strides().data(), src.raw_data(), src.dtype(),
                       src.strides().data(), src.shape().data(), static_cast<int>(src.dim()), cuda::stream(dd.index));
    return;
  }
  if (sd.is_cuda() && dd.is_cuda()) {  // two GPUs: through the host
    copy_strided(dst, src.detach().to(Device::cpu()));
    return;
  }
  // Host <-> GPU: a contiguous block of dst's dtype moves; the conversion and
  // strides of the source are handled on the source's side, those of the
  // destination on the destination's side.
  Tensor block = src;
  if (block.dtype() != dst.dtype() || !block.is_contiguous()) {
    block = Tensor::empty(src.shape(), dst.dtype(), sd, src.storage()->pinned());
    copy_strided(block, src);
  }
  const bool direct = dst.is_contiguous();
  Tensor target = direct ? dst : Tensor::empty(dst.shape(), dst.dtype(), dd);
  const size_t nbytes = static_cast<size_t>(src.numel()) * dtype_size(dst.dtype());
  if (dd.is_cuda()) {
    const bool pinned = block.storage()->pinned();
    cuda::copy_to_device(target.raw_data(), block.raw_data(), nbytes, dd.index, pinned,
                         pinned ? std::shared_ptr<const void>(block.storage()) : nullptr);
  } else {
    cuda::copy_to_host(target.raw_data(), block.raw_data(), nbytes, sd.index);
  }
  if (!direct) copy_strided(dst, target);
#else
  S2H_FAIL("copy from {} to {}: this build has no CUDA backend", sd.str(), dd.str());
#endif
}

}  // namespace

// ------------------------------------------------------------------ creation
Tensor Tensor::empty(const Shape& shape, DType dtype, Device device, bool pinned) {
  S2H_CHECK(!pinned || device.is_cpu(), "empty: pinned memory is host memory (asked for {})", device.str());
  return Tensor(new_impl(shape, dtype, device, pinned));
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  return full(shape, 0.0, dtype, device);
}

Tensor Tensor::ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1.0, dtype, device); }

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

Tensor Tensor::scalar(double value, DType dtype) { return full({}, value, dtype); }

Tensor Tensor::arange(int64_t n, DType dtype) {
  Tensor t = empty({n}, DType::I64);
  int64_t* p = t.data<int64_t>();
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  return dtype == DType::I64 ? t : t.to(dtype);
}

Tensor Tensor::randn(const Shape& shape, DType dtype, Generator* gen) {
  Generator& g = gen ? *gen : default_generator();
  Tensor t = empty(shape, DType::F64);
  double* p = t.data<double>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = g.normal();
  return t.to(dtype);
}

Tensor Tensor::uniform(const Shape& shape, double lo, double hi, DType dtype, Generator* gen) {
  Generator& g = gen ? *gen : default_generator();
  Tensor t = empty(shape, DType::F64);
  double* p = t.data<double>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = lo + (hi - lo) * g.uniform();
  return t.to(dtype);
}

// ------------------------------------------------------------------ properties
TensorImpl& Tensor::impl() const {
  S2H_CHECK(impl_ != nullptr, "use of an undefined tensor");
  return *impl_;
}

int64_t Tensor::size(int64_t axis) const { return shape()[normalize_axis(axis, dim())]; }

bool Tensor::is_contiguous() const {
  if (numel() == 0) return true;
  const Shape& sh = shape();
  const Shape& st = strides();
  int64_t expected = 1;
  for (size_t i = sh.size(); i-- > 0;) {
    if (sh[i] == 1) continue;
    if (st[i] != expected) return false;
    expected *= sh[i];
  }
  return true;
}

std::string Tensor::str() const {
  if (!defined()) return "Tensor[undefined]";
  return fmt::format("Tensor[{} {} {}]", dtype_name(dtype()), shape_str(shape()), device().str());
}

void* Tensor::raw_data() const {
  const TensorImpl& t = impl();
  return static_cast<char*>(t.storage->data()) + t.offset * static_cast<int64_t>(dtype_size(t.dtype));
}

// ------------------------------------------------------------------ conversion
Tensor Tensor::contiguous() const { return is_contiguous() ? *this : s2h::contiguous(*this); }

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype(), device());
  copy_strided(out, *this);
  if (is_floating(dtype()))
    return record(out, "clone", {*this}, [](const Tensor& g) { return std::vector<Tensor>{g}; });
  return out;
}

Tensor Tensor::to(DType target) const {
  if (target == dtype()) return *this;
  Tensor out = empty(shape(), target, device());
  copy_strided(out, *this);
  if (is_floating(dtype()) && is_floating(target)) {
    const DType src = dtype();
    return record(out, "to", {*this}, [src](const Tensor& g) { return std::vector<Tensor>{g.to(src)}; });
  }
  return out;
}

Tensor Tensor::to(Device target) const {
  if (target == device()) return *this;
  Tensor out = empty(shape(), dtype(), target);
  copy_strided(out, *this);
  if (is_floating(dtype())) {
    const Device src = device();
    return record(out, "to_device", {*this}, [src](const Tensor& g) { return std::vector<Tensor>{g.to(src)}; });
  }
  return out;
}

void Tensor::move_to_(Device target) {
  if (target == device()) return;
  S2H_CHECK(is_leaf(), "move_to_: only leaf tensors (parameters, buffers) can change device in place");
  Tensor moved = detach().to(target);  // contiguous on the target
  TensorImpl& t = impl();
  t.storage = moved.storage();
  t.strides = moved.strides();
  t.offset = 0;
  if (t.autograd && t.autograd->grad.defined()) t.autograd->grad = t.autograd->grad.detach().to(target);
}

double Tensor::item() const {
  S2H_CHECK(numel() == 1, "item() needs a tensor with one element, got shape {}", shape_str(shape()));
  if (!device().is_cpu()) return detach().to(Device::cpu()).item();
  return dispatch_all(dtype(), [&]<typename T>() -> double {
    return static_cast<double>(cpu::convert<double>(*static_cast<const T*>(raw_data())));
  });
}

// ------------------------------------------------------------------ views
Tensor Tensor::reshape(const Shape& s) const { return s2h::reshape(*this, s); }
Tensor Tensor::view(const Shape& s) const {
  S2H_CHECK(is_contiguous(), "view: tensor of shape {} is not contiguous (use reshape)", shape_str(shape()));
  return s2h::reshape(*this, s);
}
Tensor Tensor::permute(const Shape& order) const { return s2h::permute(*this, order); }
Tensor Tensor::transpose(int64_t a, int64_t b) const { return s2h::transpose(*this, a, b); }
Tensor Tensor::slice(int64_t axis, int64_t start, int64_t end, int64_t step) const {
  return s2h::slice(*this, axis, start, end, step);
}
Tensor Tensor::flatten(int64_t start, int64_t end) const {
  const int64_t nd = dim();
  if (nd == 0) return reshape({1});
  const int64_t s = normalize_axis(start, nd, "flatten start"), e = normalize_axis(end, nd, "flatten end");
  S2H_CHECK(s <= e, "flatten: start axis {} is after end axis {}", start, end);
  Shape out(shape().begin(), shape().begin() + s);
  int64_t m = 1;
  for (int64_t i = s; i <= e; ++i) m *= shape()[i];
  out.push_back(m);
  out.insert(out.end(), shape().begin() + e + 1, shape().end());
  return reshape(out);
}

// ------------------------------------------------------------------ autograd
bool Tensor::requires_grad() const { return defined() && impl().autograd && impl().autograd->requires_grad; }

Tensor& Tensor::set_requires_grad(bool on) {
  auto& meta = impl().autograd;
  S2H_CHECK(!meta || !meta->grad_fn, "set_requires_grad: only leaf tensors can be marked (this one is the result of '{}')",
            meta ? meta->grad_fn->name : "");
  if (on) S2H_CHECK(is_floating(dtype()), "set_requires_grad: dtype {} cannot require grad", dtype_name(dtype()));
  if (!meta) meta = std::make_shared<AutogradMeta>();
  meta->requires_grad = on;
  return *this;
}

bool Tensor::is_leaf() const { return !impl().autograd || !impl().autograd->grad_fn; }

Tensor Tensor::grad() const {
  const auto& meta = impl().autograd;
  return meta ? meta->grad : Tensor();
}

void Tensor::set_grad(const Tensor& g) const {
  auto& meta = impl().autograd;
  if (!meta) meta = std::make_shared<AutogradMeta>();
  S2H_CHECK(!g.defined() || g.shape() == shape(), "set_grad: gradient shape {} for a tensor of shape {}",
            shape_str(g.shape()), shape_str(shape()));
  meta->grad = g;
}

void Tensor::zero_grad() const {
  if (impl().autograd) impl().autograd->grad = Tensor();
}

Tensor Tensor::detach() const {
  auto impl2 = std::make_shared<TensorImpl>(impl());
  impl2->autograd.reset();
  return Tensor(impl2);
}

// ------------------------------------------------------------------ in place
void Tensor::check_inplace(const char* op) const {
  S2H_CHECK(!(grad_enabled() && requires_grad()),
            "{}: in-place change of a tensor that requires grad while grad mode is on (use NoGradGuard)", op);
}

Tensor& Tensor::fill_(double value) {
  check_inplace("fill_");
  if (device().is_cuda()) {
#if S2H_HAVE_CUDA
    cuda::fill(raw_data(), dtype(), strides().data(), shape().data(), static_cast<int>(dim()), value,
               cuda::stream(device().index));
#endif
    return *this;
  }
  dispatch_all(dtype(), [&]<typename T>() {
    const T v = cpu::convert<T>(value);
    if (is_contiguous()) {
      T* p = data<T>();
      cpu::parallel_for(numel(), 1 << 16, [&](int64_t b, int64_t e) { std::fill(p + b, p + e, v); });
    } else {
      Tensor src = Tensor::empty({}, dtype_of<T>);
      *src.data<T>() = v;
      Shape zero(static_cast<size_t>(dim()), 0);
      cpu::strided_copy<T, T>(data<T>(), strides().data(), src.data<T>(), zero.data(), shape().data(),
                              static_cast<int>(dim()));
    }
  });
  return *this;
}

Tensor& Tensor::copy_(const Tensor& src) {
  check_inplace("copy_");
  copy_strided(*this, src);
  return *this;
}

Tensor& Tensor::add_(const Tensor& other, double alpha) {
  check_inplace("add_");
  S2H_CHECK(other.shape() == shape() && other.dtype() == dtype() && other.device() == device(), "add_: {} into {}",
            other.str(), str());
  Tensor o = other.detach().contiguous();
  if (!is_contiguous()) {  // strided destination: compute contiguously, then scatter back
    NoGradGuard guard;
    return copy_(add(detach().contiguous(), mul_scalar(o, alpha)));
  }
  if (device().is_cuda()) {
#if S2H_HAVE_CUDA
    cuda::axpy(raw_data(), o.raw_data(), dtype(), numel(), alpha, cuda::stream(device().index));
#endif
    return *this;
  }
  dispatch_float(dtype(), "add_", [&]<typename T>() {
    T* p = data<T>();
    const T* q = o.data<T>();
    const T a = static_cast<T>(alpha);
    cpu::parallel_for(numel(), 1 << 15, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) p[i] += a * q[i];
    });
  });
  return *this;
}

Tensor& Tensor::mul_(double value) {
  check_inplace("mul_");
  if (!is_contiguous()) {
    NoGradGuard guard;
    return copy_(mul_scalar(detach().contiguous(), value));
  }
  if (device().is_cuda()) {
#if S2H_HAVE_CUDA
    cuda::scale(raw_data(), dtype(), numel(), value, cuda::stream(device().index));
#endif
    return *this;
  }
  dispatch_float(dtype(), "mul_", [&]<typename T>() {
    T* p = data<T>();
    const T v = static_cast<T>(value);
    cpu::parallel_for(numel(), 1 << 15, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) p[i] *= v;
    });
  });
  return *this;
}

}  // namespace s2h
