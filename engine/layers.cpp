#include "engine/layers.h"

#include <cmath>

#include "engine/autograd.h"
#include "engine/random.h"
#include "kernels/cuda/copy.h"
#include "kernels/cuda/runtime.h"

namespace s2h {

void init_uniform(Tensor& t, double lo, double hi, Generator* gen) {
  NoGradGuard guard;
  t.detach().copy_(Tensor::uniform(t.shape(), lo, hi, t.dtype(), gen));
}

void init_normal(Tensor& t, double mean, double std, Generator* gen) {
  NoGradGuard guard;
  Tensor r = Tensor::randn(t.shape(), DType::F64, gen);
  r.mul_(std);
  r.add_(Tensor::full(r.shape(), mean, DType::F64));
  t.detach().copy_(r);
}

void init_kaiming_normal(Tensor& t, int64_t fan, Generator* gen) {
  S2H_CHECK(fan > 0, "init_kaiming_normal: fan must be positive, got {}", fan);
  init_normal(t, 0.0, std::sqrt(2.0 / static_cast<double>(fan)), gen);
}

// ------------------------------------------------------------------ Conv2d
Conv2d::Conv2d(int64_t in, int64_t out, int64_t kernel, Options opt)
    : in_channels(in), out_channels(out), kernel_size(kernel), options(opt) {
  S2H_CHECK(in > 0 && out > 0 && kernel > 0, "Conv2d: channels and kernel must be positive ({}, {}, {})", in, out,
            kernel);
  S2H_CHECK(opt.groups > 0 && in % opt.groups == 0 && out % opt.groups == 0,
            "Conv2d: {} and {} channels are not divisible by {} groups", in, out, opt.groups);
  const int64_t fan_in = (in / opt.groups) * kernel * kernel;
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  weight = Tensor::empty({out, kernel, kernel, in / opt.groups});
  init_uniform(weight, -bound, bound);
  register_parameter("weight", weight);
  if (opt.bias) {
    bias = Tensor::empty({out});
    init_uniform(bias, -bound, bound);
    register_parameter("bias", bias);
  }
}

Tensor Conv2d::forward(const Tensor& x) {
  if (keep_out.defined() || keep_in.defined() || in_scale.defined()) {
    S2H_CHECK(options.groups == 1 && options.dilation == 1,
              "{}: kept-channel indexes and input scales need groups 1 and dilation 1", describe());
    MaskedConvOptions m;
    m.stride = options.stride;
    m.padding = options.padding;
    m.in_index = keep_in;
    m.out_index = keep_out;
    m.in_scale = in_scale;
    m.out_channels = out_channels;
    Tensor y = masked_conv2d(x, weight, m);
    return bias.defined() ? add(y, bias.to(y.dtype())) : y;
  }
  Conv2dOptions o;
  o.stride = {options.stride, options.stride};
  o.padding = {options.padding, options.padding};
  o.dilation = {options.dilation, options.dilation};
  o.groups = options.groups;
  return conv2d(x, weight, bias, o);
}

int64_t Conv2d::flops(const Tensor& in, const Tensor& out) const {
  (void)in;
  return 2 * (in_channels / options.groups) * kernel_size * kernel_size * out.numel();
}

std::string Conv2d::describe() const {
  return fmt::format("Conv2d({}, {}, k={}, s={}, p={}{}{}{})", in_channels, out_channels, kernel_size,
                     options.stride, options.padding, options.dilation > 1 ? fmt::format(", d={}", options.dilation) : "",
                     options.groups > 1 ? fmt::format(", groups={}", options.groups) : "",
                     options.bias ? "" : ", no bias");
}

// ------------------------------------------------------------------ Linear
Linear::Linear(int64_t in, int64_t out, bool has_bias) : in_features(in), out_features(out) {
  S2H_CHECK(in > 0 && out > 0, "Linear: sizes must be positive ({}, {})", in, out);
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  weight = Tensor::empty({out, in});
  init_uniform(weight, -bound, bound);
  register_parameter("weight", weight);
  if (has_bias) {
    bias = Tensor::empty({out});
    init_uniform(bias, -bound, bound);
    register_parameter("bias", bias);
  }
}

Tensor Linear::forward(const Tensor& x) { return linear(x, weight, bias); }

int64_t Linear::flops(const Tensor& in, const Tensor& out) const {
  (void)in;
  return 2 * in_features * out.numel();
}

Embedding::Embedding(int64_t num, int64_t d) : num_embeddings(num), dim(d) {
  S2H_CHECK(num > 0 && d > 0, "Embedding: sizes must be positive ({}, {})", num, d);
  weight = Tensor::empty({num, d});
  init_normal(weight, 0.0, 1.0);
  register_parameter("weight", weight);
}

Tensor Embedding::forward(const Tensor& ids) {
  S2H_CHECK(ids.dtype() == DType::I64, "Embedding: ids must be i64, got {}", ids.str());
  Shape out_shape = ids.shape();
  out_shape.push_back(dim);
  return reshape(index_select(weight, 0, ids.contiguous().reshape({ids.numel()})), out_shape);
}

std::string Embedding::describe() const { return fmt::format("Embedding({}, {})", num_embeddings, dim); }

std::string Linear::describe() const {
  return fmt::format("Linear({}, {}{})", in_features, out_features, bias.defined() ? "" : ", no bias");
}

// ------------------------------------------------------------------ norms
BatchNorm::BatchNorm(int64_t c, double eps, double momentum) : channels(c), eps(eps), momentum(momentum) {
  weight = register_parameter("weight", Tensor::ones({c}));
  bias = register_parameter("bias", Tensor::zeros({c}));
  running_mean = register_buffer("running_mean", Tensor::zeros({c}));
  running_var = register_buffer("running_var", Tensor::ones({c}));
  num_batches_tracked = register_buffer("num_batches_tracked", Tensor::zeros({}, DType::I64));
}

Tensor BatchNorm::forward(const Tensor& x) {
  if (is_training()) {
    if (num_batches_tracked.device().is_cpu()) {
      num_batches_tracked.data<int64_t>()[0] += 1;
    } else {
#if S2H_HAVE_CUDA
      cuda::add_i64(num_batches_tracked.data<int64_t>(), 1, cuda::stream(num_batches_tracked.device().index));
#endif
    }
  }
  return batch_norm(x, weight, bias, running_mean, running_var, is_training(), momentum, eps);
}

std::string BatchNorm::describe() const { return fmt::format("BatchNorm({})", channels); }

LayerNorm::LayerNorm(int64_t c, double eps) : channels(c), eps(eps) {
  weight = register_parameter("weight", Tensor::ones({c}));
  bias = register_parameter("bias", Tensor::zeros({c}));
}

Tensor LayerNorm::forward(const Tensor& x) { return layer_norm(x, weight, bias, eps); }

std::string LayerNorm::describe() const { return fmt::format("LayerNorm({})", channels); }

// ------------------------------------------------------------------ activations
Tensor Activation::forward(const Tensor& x) {
  switch (kind) {
    case ActKind::ReLU: return relu(x);
    case ActKind::ReLU6: return relu6(x);
    case ActKind::HardSwish: return hardswish(x);
    case ActKind::HardSigmoid: return hardsigmoid(x);
    case ActKind::GELU: return gelu(x, false);
    case ActKind::GELUTanh: return gelu(x, true);
    case ActKind::Sigmoid: return sigmoid(x);
    case ActKind::Tanh: return tanh(x);
  }
  S2H_FAIL("unknown activation");
}

std::string Activation::describe() const {
  switch (kind) {
    case ActKind::ReLU: return "ReLU";
    case ActKind::ReLU6: return "ReLU6";
    case ActKind::HardSwish: return "HardSwish";
    case ActKind::HardSigmoid: return "HardSigmoid";
    case ActKind::GELU: return "GELU";
    case ActKind::GELUTanh: return "GELU(tanh)";
    case ActKind::Sigmoid: return "Sigmoid";
    case ActKind::Tanh: return "Tanh";
  }
  return "?";
}

// ------------------------------------------------------------------ pooling
namespace {
Pool2dOptions pool_options(int64_t kernel, int64_t stride, int64_t padding) {
  Pool2dOptions o;
  o.kernel = {kernel, kernel};
  const int64_t s = stride < 0 ? kernel : stride;
  o.stride = {s, s};
  o.padding = {padding, padding};
  return o;
}
}  // namespace

MaxPool2d::MaxPool2d(int64_t kernel, int64_t stride, int64_t padding) : options(pool_options(kernel, stride, padding)) {}
Tensor MaxPool2d::forward(const Tensor& x) { return max_pool2d(x, options); }
std::string MaxPool2d::describe() const {
  return fmt::format("MaxPool2d(k={}, s={}, p={})", options.kernel[0], options.stride[0], options.padding[0]);
}

AvgPool2d::AvgPool2d(int64_t kernel, int64_t stride, int64_t padding, bool count_include_pad)
    : options(pool_options(kernel, stride, padding)) {
  options.count_include_pad = count_include_pad;
}
Tensor AvgPool2d::forward(const Tensor& x) { return avg_pool2d(x, options); }
std::string AvgPool2d::describe() const {
  return fmt::format("AvgPool2d(k={}, s={}, p={})", options.kernel[0], options.stride[0], options.padding[0]);
}

Tensor AdaptiveAvgPool2d::forward(const Tensor& x) { return adaptive_avg_pool2d(x, out_h, out_w); }
std::string AdaptiveAvgPool2d::describe() const { return fmt::format("AdaptiveAvgPool2d({}x{})", out_h, out_w); }

std::string Dropout::describe() const { return fmt::format("Dropout(p={})", p); }

// ------------------------------------------------------------------ Sequential
Sequential::Sequential(std::initializer_list<ModulePtr> mods) {
  for (const ModulePtr& m : mods) add(m);
}

void Sequential::add(ModulePtr m) { register_module(std::to_string(children().size()), std::move(m)); }

Tensor Sequential::forward(const Tensor& x) {
  Tensor h = x;
  for (const auto& [name, child] : children()) h = (*child)(h);
  return h;
}

}  // namespace s2h
