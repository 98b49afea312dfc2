// The first nn layers. Images are NHWC; conv weights [O][KH][KW][C/groups].
#pragma once

#include <functional>
#include <initializer_list>

#include "engine/module.h"
#include "engine/ops.h"

namespace s2h {

class Generator;

// ------------------------------------------------------------------ initialisers (in place, no history)
void init_uniform(Tensor& t, double lo, double hi, Generator* gen = nullptr);
void init_normal(Tensor& t, double mean, double std, Generator* gen = nullptr);
// Kaiming (He) normal with gain sqrt(2): std = sqrt(2 / fan), fan = fan_in or fan_out.
void init_kaiming_normal(Tensor& t, int64_t fan, Generator* gen = nullptr);

class Conv2d : public Module {
 public:
  struct Options {
    int64_t stride = 1, padding = 0, dilation = 1, groups = 1;
    bool bias = true;
  };
  // PyTorch's default initialisation: weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  Conv2d(int64_t in, int64_t out, int64_t kernel, Options opt);
  Conv2d(int64_t in, int64_t out, int64_t kernel) : Conv2d(in, out, kernel, Options{}) {}
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  int64_t flops(const Tensor& in, const Tensor& out) const override;
  int64_t in_channels, out_channels, kernel_size;
  Options options;
  Tensor weight, bias;
  // Set only for the duration of a call (groups 1, dilation 1), by
  // models::NarrowView and the models' mask folding; the forward then is
  // masked_conv2d (engine/ops.h), one fused kernel on CUDA:
  //   keep_out / keep_in (i64): the weight rows / input columns a narrow layer
  //   computes, while `weight` stays the full tensor (its gradient lands in the
  //   kept rows and columns); out_channels / in_channels are the narrow sizes;
  //   in_scale [in_channels]: multiplies the input channels first (a soft
  //   ChannelMask folded into the conv that reads it).
  Tensor keep_out, keep_in, in_scale;
};

class Linear : public Module {
 public:
  Linear(int64_t in, int64_t out, bool bias = true);
  Tensor forward(const Tensor& x) override;  // x [..., in] -> [..., out]
  std::string describe() const override;
  int64_t flops(const Tensor& in, const Tensor& out) const override;
  int64_t in_features, out_features;
  Tensor weight, bias;
};

// Token embedding: i64 ids [...] -> f32 [..., dim]; weight [num, dim] ~ N(0, 1)
// (PyTorch's nn.Embedding default).
class Embedding : public Module {
 public:
  Embedding(int64_t num, int64_t dim);
  Tensor forward(const Tensor& ids) override;
  std::string describe() const override;
  int64_t num_embeddings, dim;
  Tensor weight;
};

// Batch norm over the last (channel) axis; buffers running_mean, running_var, num_batches_tracked.
class BatchNorm : public Module {
 public:
  explicit BatchNorm(int64_t channels, double eps = 1e-5, double momentum = 0.1);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  int64_t channels;
  double eps, momentum;
  Tensor weight, bias, running_mean, running_var, num_batches_tracked;
};

class LayerNorm : public Module {
 public:
  explicit LayerNorm(int64_t channels, double eps = 1e-5);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  int64_t channels;
  double eps;
  Tensor weight, bias;
};

enum class ActKind { ReLU, ReLU6, HardSwish, HardSigmoid, GELU, GELUTanh, Sigmoid, Tanh };
class Activation : public Module {
 public:
  explicit Activation(ActKind kind) : kind(kind) {}
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  ActKind kind;
};

class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(int64_t kernel, int64_t stride = -1, int64_t padding = 0);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  Pool2dOptions options;
};

class AvgPool2d : public Module {
 public:
  explicit AvgPool2d(int64_t kernel, int64_t stride = -1, int64_t padding = 0, bool count_include_pad = true);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  Pool2dOptions options;
};

class AdaptiveAvgPool2d : public Module {
 public:
  AdaptiveAvgPool2d(int64_t out_h, int64_t out_w) : out_h(out_h), out_w(out_w) {}
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  int64_t out_h, out_w;
};

// Flattens every axis from `start` on: [N,H,W,C] -> [N, H*W*C].
class Flatten : public Module {
 public:
  explicit Flatten(int64_t start = 1) : start(start) {}
  Tensor forward(const Tensor& x) override { return x.flatten(start); }
  std::string describe() const override { return "Flatten"; }
  int64_t start;
};

class Dropout : public Module {
 public:
  explicit Dropout(double p) : p(p) {}
  Tensor forward(const Tensor& x) override { return dropout(x, p, is_training()); }
  std::string describe() const override;
  double p;
};

// Runs its children in order; they are named "0", "1", ...
class Sequential : public Module {
 public:
  Sequential() = default;
  Sequential(std::initializer_list<ModulePtr> mods);
  void add(ModulePtr m);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override { return "Sequential"; }
};

}  // namespace s2h
