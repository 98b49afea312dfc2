// The measured GEMM ceiling of this GPU: cuBLAS(Lt) C = A B with M = N = K
// (default 8192) on random data (never zeros: they run faster), timed with
// CUDA events one product at a time after a warm-up; reports the median.
// Precisions: bf16 inputs and output with fp32 accumulation (the ceiling the
// ResNet-50 step is measured against), and tf32 / fp32 as references.
// Prints one JSON line per precision.
//
//   bench_gemm_peak [--size 8192] [--repeats 30] [--warmup 5] [--precisions bf16,tf32,fp32]
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#define CHECK_CUDA(x)                                                                                   \
  do {                                                                                                  \
    cudaError_t e_ = (x);                                                                               \
    if (e_ != cudaSuccess) {                                                                            \
      std::fprintf(stderr, "bench_gemm_peak: %s failed: %s (%s:%d)\n", #x, cudaGetErrorString(e_), __FILE__, \
                   __LINE__);                                                                           \
      std::exit(1);                                                                                     \
    }                                                                                                   \
  } while (0)

#define CHECK_CUBLAS(x)                                                                                \
  do {                                                                                                 \
    cublasStatus_t s_ = (x);                                                                           \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                 \
      std::fprintf(stderr, "bench_gemm_peak: %s failed: %s (%s:%d)\n", #x, cublasGetStatusString(s_), \
                   __FILE__, __LINE__);                                                                \
      std::exit(1);                                                                                    \
    }                                                                                                  \
  } while (0)

namespace {

// Uniform values in [-1, 1) from a hash of the index and a seed.
template <class T>
__global__ void fill_random(T* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed ^ static_cast<uint32_t>(i >> 32) * 40503u;
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    h *= 0x846ca68bu;
    h ^= h >> 16;
    const float v = static_cast<float>(h >> 8) * (2.0f / 16777216.0f) - 1.0f;
    if constexpr (std::is_same_v<T, float>) {
      p[i] = v;
    } else {
      p[i] = __float2bfloat16(v);
    }
  }
}

struct Result {
  double median_ms, min_ms, tflops;
};

// Times `repeats` products one by one with events; returns the median.
Result time_gemm(cublasHandle_t h, int n, cudaDataType_t ab_type, cudaDataType_t c_type, cublasComputeType_t compute,
                 const void* a, const void* b, void* c, int warmup, int repeats, cudaStream_t stream) {
  const float alpha = 1.0f, beta = 0.0f;
  auto gemm = [&] {
    CHECK_CUBLAS(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a, ab_type, n, b, ab_type, n, &beta, c,
                              c_type, n, compute, CUBLAS_GEMM_DEFAULT));
  };
  for (int i = 0; i < warmup; ++i) gemm();
  CHECK_CUDA(cudaStreamSynchronize(stream));
  std::vector<cudaEvent_t> ev(static_cast<size_t>(repeats) + 1);
  for (auto& e : ev) CHECK_CUDA(cudaEventCreate(&e));
  CHECK_CUDA(cudaEventRecord(ev[0], stream));
  for (int i = 0; i < repeats; ++i) {
    gemm();
    CHECK_CUDA(cudaEventRecord(ev[static_cast<size_t>(i) + 1], stream));
  }
  CHECK_CUDA(cudaEventSynchronize(ev.back()));
  CHECK_CUDA(cudaGetLastError());
  std::vector<double> ms;
  for (int i = 0; i < repeats; ++i) {
    float t = 0;
    CHECK_CUDA(cudaEventElapsedTime(&t, ev[static_cast<size_t>(i)], ev[static_cast<size_t>(i) + 1]));
    ms.push_back(t);
  }
  for (auto& e : ev) CHECK_CUDA(cudaEventDestroy(e));
  std::sort(ms.begin(), ms.end());
  const double med = ms[ms.size() / 2];
  return {med, ms.front(), 2.0 * n * static_cast<double>(n) * n / (med * 1e-3) / 1e12};
}

}  // namespace

int main(int argc, char** argv) {
  int n = 8192, repeats = 30, warmup = 5;
  std::string precisions = "bf16,tf32,fp32";
  for (int i = 1; i < argc; ++i) {
    auto next = [&](const char* flag) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_gemm_peak: %s needs a value\n", flag);
        std::exit(2);
      }
      return argv[++i];
    };
    if (!std::strcmp(argv[i], "--size")) n = std::atoi(next("--size"));
    else if (!std::strcmp(argv[i], "--repeats")) repeats = std::atoi(next("--repeats"));
    else if (!std::strcmp(argv[i], "--warmup")) warmup = std::atoi(next("--warmup"));
    else if (!std::strcmp(argv[i], "--precisions")) precisions = next("--precisions");
    else {
      std::fprintf(stderr, "bench_gemm_peak: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  if (n <= 0 || repeats <= 0 || warmup < 0) {
    std::fprintf(stderr, "bench_gemm_peak: --size and --repeats must be positive\n");
    return 2;
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::fprintf(stderr, "bench_gemm_peak: no usable GPU\n");
    return 1;
  }
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cublasHandle_t h;
  CHECK_CUBLAS(cublasCreate(&h));
  CHECK_CUBLAS(cublasSetStream(h, stream));
  int cublas_version = 0;
  CHECK_CUBLAS(cublasGetVersion(h, &cublas_version));

  const size_t elems = static_cast<size_t>(n) * n;
  void *a = nullptr, *b = nullptr, *c = nullptr;
  CHECK_CUDA(cudaMalloc(&a, elems * 4));
  CHECK_CUDA(cudaMalloc(&b, elems * 4));
  CHECK_CUDA(cudaMalloc(&c, elems * 4));
  auto fill = [&](void* p, bool bf16, uint32_t seed) {
    if (bf16) {
      fill_random<<<1024, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(p), elems, seed);
    } else {
      fill_random<<<1024, 256, 0, stream>>>(static_cast<float*>(p), elems, seed);
    }
    CHECK_CUDA(cudaGetLastError());
  };

  size_t start = 0;
  while (start <= precisions.size()) {
    const size_t end = std::min(precisions.find(',', start), precisions.size());
    const std::string p = precisions.substr(start, end - start);
    start = end + 1;
    if (p.empty()) continue;
    const bool bf16 = p == "bf16";
    if (!bf16 && p != "tf32" && p != "fp32") {
      std::fprintf(stderr, "bench_gemm_peak: unknown precision %s (bf16, tf32, fp32)\n", p.c_str());
      return 2;
    }
    fill(a, bf16, 1234u);
    fill(b, bf16, 5678u);
    const cudaDataType_t t = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasComputeType_t compute =
        bf16 ? CUBLAS_COMPUTE_32F : (p == "tf32" ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F);
    const Result r = time_gemm(h, n, t, t, compute, a, b, c, warmup, repeats, stream);
    const char* what = bf16 ? "cuBLAS cublasGemmEx bf16 x bf16 -> bf16, fp32 accumulate (CUBLAS_COMPUTE_32F)"
                            : (p == "tf32" ? "cuBLAS cublasGemmEx fp32 with TF32 tensor cores (COMPUTE_32F_FAST_TF32)"
                                           : "cuBLAS cublasGemmEx fp32, no TF32 (CUBLAS_COMPUTE_32F)");
    std::printf(
        "{\"impl\": \"gemm_peak\", \"precision\": \"%s\", \"what\": \"%s\", \"device\": \"%s\", \"sms\": %d, "
        "\"m\": %d, \"n\": %d, \"k\": %d, \"repeats\": %d, \"median_ms\": %.4f, \"min_ms\": %.4f, "
        "\"tflops\": %.1f, \"cublas_version\": %d}\n",
        p.c_str(), what, prop.name, prop.multiProcessorCount, n, n, n, repeats, r.median_ms, r.min_ms, r.tflops,
        cublas_version);
    std::fflush(stdout);
  }
  CHECK_CUDA(cudaFree(a));
  CHECK_CUDA(cudaFree(b));
  CHECK_CUDA(cudaFree(c));
  CHECK_CUBLAS(cublasDestroy(h));
  CHECK_CUDA(cudaStreamDestroy(stream));
  return 0;
}
