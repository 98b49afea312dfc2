#include <malloc.h>

#include <cstdlib>
#include <cstring>
#include <new>

#include "engine/device.h"
#include "engine/dtype.h"
#include "engine/error.h"
#include "engine/precision.h"
#include "engine/storage.h"
#include "kernels/cuda/runtime.h"

namespace s2h {

namespace detail {
void fail(const char* file, int line, std::string message) {
  throw Error(std::move(message), fmt::format("{}:{}", file, line));
}
}  // namespace detail

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F64: return "f64";
    case DType::BF16: return "bf16";
    case DType::I64: return "i64";
    case DType::U8: return "u8";
  }
  return "?";
}

const char* dtype_safetensors_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::BF16: return "BF16";
    case DType::I64: return "I64";
    case DType::U8: return "U8";
  }
  return "?";
}

DType dtype_from_safetensors_name(std::string_view name) {
  for (DType t : {DType::F32, DType::F64, DType::BF16, DType::I64, DType::U8})
    if (name == dtype_safetensors_name(t)) return t;
  S2H_FAIL("unsupported dtype '{}' (supported: F32, F64, BF16, I64, U8)", name);
}

DType dtype_from_name(std::string_view name) {
  for (DType t : {DType::F32, DType::F64, DType::BF16, DType::I64, DType::U8})
    if (name == dtype_name(t)) return t;
  S2H_FAIL("unknown dtype '{}' (expected f32, f64, bf16, i64 or u8)", name);
}

std::string Device::str() const {
  if (type == DeviceType::CPU) return "cpu";
  return index == 0 ? "cuda" : fmt::format("cuda:{}", index);
}

Device Device::parse(std::string_view text) {
  if (text == "cpu") return cpu();
  if (text == "cuda") return cuda(0);
  if (text.starts_with("cuda:")) {
    std::string rest(text.substr(5));
    char* end = nullptr;
    long i = std::strtol(rest.c_str(), &end, 10);
    if (!rest.empty() && *end == '\0' && i >= 0) return cuda(static_cast<int>(i));
  }
  S2H_FAIL("unknown device '{}' (expected cpu, cuda or cuda:N)", text);
}

namespace {
// Training allocates and frees the same large activation buffers every step.
// glibc returns blocks above its mmap threshold to the kernel at once, so
// each step would fault in (and zero) fresh pages. Keep them in the heap
// instead, unless the user tuned malloc through its environment variables.
void tune_malloc_once() {
  static const bool done = [] {
    if (!std::getenv("MALLOC_MMAP_THRESHOLD_")) mallopt(M_MMAP_THRESHOLD, 32 << 20);
    if (!std::getenv("MALLOC_TRIM_THRESHOLD_")) mallopt(M_TRIM_THRESHOLD, 1 << 30);
    if (!std::getenv("MALLOC_TOP_PAD_")) mallopt(M_TOP_PAD, 64 << 20);
    return true;
  }();
  (void)done;
}
}  // namespace

namespace {
bool g_poison = false;
}

void set_poison_allocations(bool on) { g_poison = on; }
bool poison_allocations() { return g_poison; }

Storage::Storage(size_t nbytes, Device device, bool pinned) : nbytes_(nbytes), device_(device), pinned_(pinned) {
  if (device.is_cuda()) {
    S2H_CHECK(cuda::compiled(), "device {} is not available: this build has no CUDA backend (nvcc was not found, or "
              "S2H_CUDA=OFF)", device.str());
    data_ = cuda::device_alloc(nbytes, device.index);
    if (g_poison) cuda::fill_bytes(data_, 0xff, nbytes, device.index);
    return;
  }
  if (pinned) {
    data_ = cuda::pinned_alloc(nbytes);
  } else {
    tune_malloc_once();
    size_t rounded = (nbytes + 63) / 64 * 64;
    if (rounded == 0) rounded = 64;
    data_ = std::aligned_alloc(64, rounded);
    if (!data_) throw std::bad_alloc();
  }
  if (g_poison) std::memset(data_, 0xff, nbytes);
}

Storage::~Storage() {
  if (device_.is_cuda()) {
    cuda::device_free(data_, device_.index);
  } else if (pinned_) {
    cuda::pinned_free(data_);
  } else {
    std::free(data_);
  }
}

// ------------------------------------------------------------------ precision
namespace {
Precision g_precision = Precision::FP32;
bool g_fused_kernels = true;
}

Precision precision() { return g_precision; }
void set_precision(Precision p) { g_precision = p; }
bool fused_kernels() { return g_fused_kernels; }
void set_fused_kernels(bool on) { g_fused_kernels = on; }
bool fused_kernels_on(Device device) {
  return device.is_cuda() && g_fused_kernels && g_precision == Precision::BF16;
}

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::FP32: return "fp32";
    case Precision::TF32: return "tf32";
    case Precision::BF16: return "bf16";
  }
  return "?";
}

Precision parse_precision(std::string_view text) {
  for (Precision p : {Precision::FP32, Precision::TF32, Precision::BF16})
    if (text == precision_name(p)) return p;
  S2H_FAIL("unknown precision '{}' (expected fp32, tf32 or bf16)", text);
}

DType gemm_dtype(Device device, DType input) {
  if (device.is_cuda() && g_precision == Precision::BF16 && (input == DType::F32 || input == DType::BF16))
    return DType::BF16;
  return input;
}

bool allow_tf32() { return g_precision == Precision::TF32; }

}  // namespace s2h
