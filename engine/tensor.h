// Tensor: a strided view of a shared storage, with autograd metadata.
//
// A Tensor is a cheap handle (shared_ptr). Copies share data; clone() copies
// data. Views (reshape of a contiguous tensor, slice, permute, transpose)
// share storage with their source. Autograd is define-by-run: an op whose
// inputs require grad records a Node (see autograd.h) in its output.
#pragma once

#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/dtype.h"
#include "engine/error.h"
#include "engine/shape.h"
#include "engine/storage.h"

namespace s2h {

struct AutogradMeta;
class Generator;

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;       // in elements
  int64_t offset = 0;  // in elements
  DType dtype = DType::F32;
  std::shared_ptr<AutogradMeta> autograd;  // null while no gradient is involved
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ------------------------------------------------------------ creation
  // pinned: page-locked host memory (CPU only; needs the CUDA backend), from
  // which copies to a GPU are asynchronous.
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu(),
                      bool pinned = false);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor ones(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::F32,
                     Device device = Device::cpu());
  // Copies `values` (row-major) into a new tensor of `shape`.
  template <class T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape);
  static Tensor scalar(double value, DType dtype = DType::F32);
  static Tensor arange(int64_t n, DType dtype = DType::I64);
  // N(0,1) and U(lo,hi) samples; the global generator when gen is null.
  static Tensor randn(const Shape& shape, DType dtype = DType::F32, Generator* gen = nullptr);
  static Tensor uniform(const Shape& shape, double lo, double hi, DType dtype = DType::F32,
                        Generator* gen = nullptr);

  // ------------------------------------------------------------ properties
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  const Shape& strides() const { return impl().strides; }
  int64_t offset() const { return impl().offset; }
  int64_t dim() const { return static_cast<int64_t>(impl().shape.size()); }
  int64_t size(int64_t axis) const;  // negative axes count from the end
  int64_t numel() const { return shape_numel(impl().shape); }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device(); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return impl().storage; }
  std::string str() const;  // "Tensor[f32 [2, 3] cpu]"
  TensorImpl& impl() const;
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

  // Pointer to the first element. Checks the element type.
  template <class T> T* data() const;
  void* raw_data() const;

  // ------------------------------------------------------------ conversion
  Tensor contiguous() const;        // itself when already contiguous (autograd-aware)
  Tensor clone() const;             // a contiguous copy (autograd-aware)
  Tensor to(DType dtype) const;     // itself when the dtype matches (autograd-aware for floats)
  Tensor to(Device device) const;   // itself when already there; else a contiguous copy (autograd-aware)
  Tensor cpu() const { return to(Device::cpu()); }
  // Moves a leaf (a parameter or buffer) to `device` in place: every handle
  // sharing this tensor sees the new storage; its gradient moves too.
  void move_to_(Device device);
  double item() const;              // the value of a one-element tensor
  template <class T> std::vector<T> to_vector() const;  // contiguous row-major copy

  // ------------------------------------------------------------ views
  Tensor reshape(const Shape& shape) const;  // -1 infers one size
  Tensor view(const Shape& shape) const;     // like reshape, but never copies
  Tensor permute(const Shape& order) const;
  Tensor transpose(int64_t a, int64_t b) const;
  Tensor slice(int64_t axis, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor flatten(int64_t start = 0, int64_t end = -1) const;

  // ------------------------------------------------------------ autograd
  bool requires_grad() const;
  // Marks a leaf as requiring grad (creates its gradient slot). Throws on non-leaves.
  Tensor& set_requires_grad(bool on = true);
  bool is_leaf() const;
  Tensor grad() const;  // accumulated gradient of a leaf (undefined until a backward)
  void set_grad(const Tensor& g) const;
  void zero_grad() const;  // drops the accumulated gradient
  Tensor detach() const;   // same data, no history, no grad
  // Backpropagates from this tensor. `gradient` defaults to 1 for a scalar.
  // With `inputs` non-empty, gradients accumulate into those leaves only
  // (others are left untouched), like torch.autograd.backward(inputs=...).
  void backward(const Tensor& gradient = {}, const std::vector<Tensor>& inputs = {}) const;

  // ------------------------------------------------------------ in place, no autograd
  // These change data without recording history; they refuse tensors that
  // take part in autograd while grad mode is on.
  Tensor& fill_(double value);
  Tensor& copy_(const Tensor& src);        // same shape; converts dtype
  Tensor& add_(const Tensor& other, double alpha = 1.0);  // this += alpha * other (any strides)
  Tensor& mul_(double value);
  Tensor& zero_() { return fill_(0.0); }

  bool same_storage(const Tensor& other) const { return storage() == other.storage(); }

 private:
  void check_inplace(const char* op) const;
  std::shared_ptr<TensorImpl> impl_;
};

// Arithmetic operators (autograd-aware, broadcasting); defined in ops.
Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator+(const Tensor& a, double b);
Tensor operator-(const Tensor& a, double b);
Tensor operator*(const Tensor& a, double b);
Tensor operator/(const Tensor& a, double b);
Tensor operator*(double a, const Tensor& b);
Tensor operator-(const Tensor& a);

// ------------------------------------------------------------------ dispatch
// Calls fn.template operator()<T>() with T the C++ type of a floating dtype
// that the CPU computes in (f32, f64). Other dtypes throw naming the op.
template <class Fn>
decltype(auto) dispatch_float(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::F32: return fn.template operator()<float>();
    case DType::F64: return fn.template operator()<double>();
    default: break;
  }
  S2H_FAIL("{}: dtype {} is not supported on the CPU (expected f32 or f64)", op, dtype_name(dtype));
}

template <class Fn>
decltype(auto) dispatch_all(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::F32: return fn.template operator()<float>();
    case DType::F64: return fn.template operator()<double>();
    case DType::BF16: return fn.template operator()<bf16>();
    case DType::I64: return fn.template operator()<int64_t>();
    case DType::U8: return fn.template operator()<uint8_t>();
  }
  S2H_FAIL("unknown dtype");
}

// ------------------------------------------------------------------ templates
template <class T>
T* Tensor::data() const {
  S2H_CHECK(dtype() == dtype_of<T>, "tensor has dtype {}, accessed as {}", dtype_name(dtype()),
            dtype_name(dtype_of<T>));
  return static_cast<T*>(raw_data());
}

template <class T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape) {
  S2H_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape),
            "from_vector: {} values for shape {}", values.size(), shape_str(shape));
  Tensor t = empty(shape, dtype_of<T>);
  std::copy(values.begin(), values.end(), t.data<T>());
  return t;
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  Tensor c = detach().contiguous();
  if (!c.device().is_cpu()) c = c.to(Device::cpu());
  if (c.dtype() != dtype_of<T>) c = c.to(dtype_of<T>);
  const T* p = c.data<T>();
  return std::vector<T>(p, p + c.numel());
}

}  // namespace s2h
