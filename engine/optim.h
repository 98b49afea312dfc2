// Optimisers (PyTorch semantics) and learning-rate schedules.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "engine/module.h"
#include "engine/tensor.h"

namespace s2h {

// Parameters that share options. weight_decay overrides the optimiser's when set.
struct ParamGroup {
  std::vector<Tensor> params;
  std::optional<double> weight_decay;
  double lr_scale = 1.0;  // this group's lr = optimiser lr * lr_scale
};

// Parameters on CUDA are updated by one fused kernel launch per device and
// step; they must be f32 (master weights), their gradients f32 or bf16, and
// their state (momentum, moments) lives on the parameter's device.
class Optimizer {
 public:
  explicit Optimizer(std::vector<ParamGroup> groups, double lr);
  virtual ~Optimizer() = default;
  // Updates every parameter that has a gradient; parameters without one are skipped.
  virtual void step() = 0;
  void zero_grad();
  void set_lr(double lr) { lr_ = lr; }
  double lr() const { return lr_; }
  const std::vector<ParamGroup>& groups() const { return groups_; }
  // Optimiser state (momentum buffers, step counts) as named tensors, for checkpoints.
  virtual NamedTensors state_dict() const = 0;
  virtual void load_state_dict(const NamedTensors& state) = 0;

 protected:
  std::vector<ParamGroup> groups_;
  double lr_;
};

struct SGDOptions {
  double lr = 0.1;
  double momentum = 0.0;
  double dampening = 0.0;
  bool nesterov = false;
  double weight_decay = 0.0;  // L2, added to the gradient
};

// p -= lr * d, with d = g + wd*p; buf = momentum*buf + (1-dampening)*d (buf = d at
// the first step); d = nesterov ? d + momentum*buf : buf.
class SGD : public Optimizer {
 public:
  SGD(std::vector<ParamGroup> groups, SGDOptions opt);
  SGD(std::vector<Tensor> params, SGDOptions opt) : SGD({ParamGroup{std::move(params), std::nullopt, 1.0}}, opt) {}
  void step() override;
  NamedTensors state_dict() const override;
  void load_state_dict(const NamedTensors& state) override;
  const SGDOptions& options() const { return opt_; }

 private:
  SGDOptions opt_;
  std::vector<std::vector<Tensor>> momentum_;  // per group, per parameter (undefined until used)
};

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;  // decoupled
};

class AdamW : public Optimizer {
 public:
  AdamW(std::vector<ParamGroup> groups, AdamWOptions opt);
  AdamW(std::vector<Tensor> params, AdamWOptions opt) : AdamW({ParamGroup{std::move(params), std::nullopt, 1.0}}, opt) {}
  void step() override;
  NamedTensors state_dict() const override;
  void load_state_dict(const NamedTensors& state) override;

 private:
  AdamWOptions opt_;
  // Per parameter, as PyTorch: a parameter's bias correction counts the steps
  // in which it had a gradient.
  std::vector<std::vector<int64_t>> steps_;
  std::vector<std::vector<Tensor>> m_, v_;
};

// Learning rate as a function of the step: optional linear warm-up from
// base*warmup_start over warmup_steps, then constant, cosine (to min_lr at
// total_steps) or step decay (times gamma every step_size steps after warm-up).
struct LrSchedule {
  enum class Kind { Constant, Cosine, Step };
  Kind kind = Kind::Cosine;
  double base_lr = 0.1;
  int64_t total_steps = 1;
  int64_t warmup_steps = 0;
  double warmup_start = 0.1;
  double min_lr = 0.0;
  int64_t step_size = 1;
  double gamma = 0.1;

  double at(int64_t step) const;
  static Kind parse_kind(const std::string& name);  // "constant", "cosine", "step"
};

}  // namespace s2h
