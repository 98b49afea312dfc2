// cuBLAS and cuDNN on the emulated device: the library calls of
// kernels/cuda/blas.h (gemm) and conv.h (conv2d), computed by the CPU
// backend's kernels in fp32 on float copies of the operands. These are
// stand-ins for the libraries, not emulations of their kernels: they let the
// engine's CUDA path (and the "library kernels" baselines of the fused ops)
// run in an S2H_EMU build, with the same dtypes and precision policy: bf16
// operands are exact in float and the result is rounded to bf16; TF32, when
// allowed, rounds both operands to 10 mantissa bits first, as tensor cores do.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/conv.h"
#include "kernels/cuda/blas.h"
#include "kernels/cuda/conv.h"
#include "kernels/cuda/copy.h"

namespace s2h::cuda {

namespace {

// Round to the nearest TF32 value (10 mantissa bits), ties to even.
float tf32(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu;
  std::memcpy(&f, &u, 4);
  return f;
}

float load(const void* p, DType dtype, int64_t i) {
  if (dtype == DType::BF16) return static_cast<float>(static_cast<const bf16*>(p)[i]);
  return static_cast<const float*>(p)[i];
}
void store(void* p, DType dtype, int64_t i, float v) {
  if (dtype == DType::BF16)
    static_cast<bf16*>(p)[i] = bf16(v);
  else
    static_cast<float*>(p)[i] = v;
}

// Element i as a float, TF32-rounded when asked.
float value(const void* p, DType dtype, int64_t i, bool round_tf32) {
  const float v = load(p, dtype, i);
  return round_tf32 ? tf32(v) : v;
}

// n contiguous elements of `dtype` as floats (TF32-rounded when asked); zeros when p is null.
std::vector<float> floats(const void* p, DType dtype, int64_t n, bool round_tf32) {
  std::vector<float> v(static_cast<size_t>(n), 0.f);
  if (!p) return v;
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = value(p, dtype, i, round_tf32);
  return v;
}
void write(void* p, DType dtype, const std::vector<float>& v) {
  for (size_t i = 0; i < v.size(); ++i) store(p, dtype, static_cast<int64_t>(i), v[i]);
}

void check_dtype(DType dtype, const std::string& what) {
  if (dtype != DType::F32 && dtype != DType::BF16)
    throw CudaError(what + ": dtype not supported on CUDA (expected f32 or bf16)");
}

std::string gemm_text(int64_t batch, int64_t m, int64_t n, int64_t k) {
  return fmt::format("gemm (batch {}, m {}, n {}, k {})", batch, m, n, k);
}

cpu::ConvGeom geom_of(const ConvGeometry& g) {
  cpu::ConvGeom c{};
  c.n = g.n, c.h = g.h, c.w = g.w, c.c = g.c, c.o = g.o, c.kh = g.kh, c.kw = g.kw;
  c.sh = g.sh, c.sw = g.sw, c.ph = g.ph, c.pw = g.pw, c.dh = g.dh, c.dw = g.dw;
  c.groups = g.groups, c.ho = g.ho, c.wo = g.wo;
  return c;
}

std::string conv_text(const ConvGeometry& g) {
  return fmt::format("conv2d x [{},{},{},{}] w [{},{},{},{}] groups {}", g.n, g.h, g.w, g.c, g.o, g.kh, g.kw,
                     g.groups > 0 ? g.c / g.groups : 0, g.groups);
}

void check_conv(const ConvGeometry& g, DType dtype) {
  check_dtype(dtype, conv_text(g));
  if (g.groups < 1 || g.c % g.groups != 0 || g.o % g.groups != 0)
    throw CudaError(conv_text(g) + ": channels not divisible by groups");
}

}  // namespace

void gemm(int64_t batch, int64_t m, int64_t n, int64_t k, float alpha, const GemmOperand& a, const GemmOperand& b,
          float beta, void* c, int64_t ldc, int64_t stride_c, DType dtype, bool allow_tf32, int device) {
  if (batch < 0 || m < 0 || n < 0 || k < 0) throw CudaError(gemm_text(batch, m, n, k) + ": negative size");
  check_dtype(dtype, gemm_text(batch, m, n, k));
  (void)device;
  if (batch == 0 || m == 0 || n == 0) return;
  const bool round = allow_tf32 && dtype == DType::F32;
  for (int64_t bi = 0; bi < batch; ++bi) {
    // op(o) of this batch, rows x cols, as dense row-major floats.
    const auto dense = [&](const GemmOperand& o, int64_t rows, int64_t cols) {
      std::vector<float> v(static_cast<size_t>(rows * cols));
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j)
          v[static_cast<size_t>(i * cols + j)] =
              value(o.data, dtype, bi * o.batch_stride + (o.trans ? j * o.ld + i : i * o.ld + j), round);
      return v;
    };
    const std::vector<float> A = dense(a, m, k), B = dense(b, k, n);
    std::vector<float> C(static_cast<size_t>(m * n));
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j)
        C[static_cast<size_t>(i * n + j)] = beta == 0.f ? 0.f : load(c, dtype, bi * stride_c + i * ldc + j);
    if (k > 0)
      cpu::gemm<float>(false, false, m, n, k, alpha, A.data(), k, B.data(), n, beta, C.data(), n);
    else
      for (float& v : C) v *= beta;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) store(c, dtype, bi * stride_c + i * ldc + j, C[static_cast<size_t>(i * n + j)]);
  }
}

void conv2d_forward(const ConvGeometry& g, DType dtype, bool allow_tf32, const void* x, const void* w, void* y,
                    const WorkspaceFn&, int) {
  check_conv(g, dtype);
  const bool round = allow_tf32 && dtype == DType::F32;
  const std::vector<float> xf = floats(x, dtype, g.n * g.h * g.w * g.c, round);
  const std::vector<float> wf = floats(w, dtype, g.o * g.kh * g.kw * (g.c / g.groups), round);
  std::vector<float> yf(static_cast<size_t>(g.n * g.ho * g.wo * g.o));
  cpu::conv2d_forward<float>(geom_of(g), xf.data(), wf.data(), nullptr, yf.data());
  write(y, dtype, yf);
}

void conv2d_backward_data(const ConvGeometry& g, DType dtype, bool allow_tf32, const void* w, const void* dy, void* dx,
                          const WorkspaceFn&, int) {
  check_conv(g, dtype);
  const bool round = allow_tf32 && dtype == DType::F32;
  const std::vector<float> wf = floats(w, dtype, g.o * g.kh * g.kw * (g.c / g.groups), round);
  const std::vector<float> dyf = floats(dy, dtype, g.n * g.ho * g.wo * g.o, round);
  const std::vector<float> xf(static_cast<size_t>(g.n * g.h * g.w * g.c), 0.f);
  std::vector<float> dxf(xf.size());
  cpu::conv2d_backward<float>(geom_of(g), xf.data(), wf.data(), dyf.data(), dxf.data(), nullptr, nullptr);
  write(dx, dtype, dxf);
}

void conv2d_backward_filter(const ConvGeometry& g, DType dtype, bool allow_tf32, const void* x, const void* dy,
                            void* dw, const WorkspaceFn&, int) {
  check_conv(g, dtype);
  const bool round = allow_tf32 && dtype == DType::F32;
  const std::vector<float> xf = floats(x, dtype, g.n * g.h * g.w * g.c, round);
  const std::vector<float> dyf = floats(dy, dtype, g.n * g.ho * g.wo * g.o, round);
  const std::vector<float> wf(static_cast<size_t>(g.o * g.kh * g.kw * (g.c / g.groups)), 0.f);
  std::vector<float> dwf(wf.size());
  cpu::conv2d_backward<float>(geom_of(g), xf.data(), wf.data(), dyf.data(), nullptr, dwf.data(), nullptr);
  write(dw, dtype, dwf);
}

void conv2d_clear_cache() {}

}  // namespace s2h::cuda
