// S2HPruner's training step (S2HPRUNER.md, "One training step"): a soft pass
// (full width, channels scaled by the relaxed masks) and a hard pass (the
// narrow network under models::NarrowView) sharing the weights, decoupled
// bidirectional distillation, the resource loss and the mask optimiser with
// the gradient fusion of the spec. The baselines and ablations are variants of
// the same step.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "engine/module.h"
#include "engine/optim.h"
#include "pruning/flops.h"
#include "pruning/masks.h"

namespace s2h::pruning {

enum class Variant {
  Decoupled,  // S2HPruner: G1 -> weights through the hard net, G2 -> masks through the soft net
  Coupled,    // plain bidirectional KD: KL(soft || hard) to weights (both passes) and masks
  NoKd,       // no distillation: CE(soft) + R (also the soft-only baseline)
  HardSt,     // optimise the hard net directly: CE(hard) + R, masks through a straight-through hard mask
  SelfOnly,   // self-distillation only: G1 (hard learns from soft), no G2
};
Variant parse_variant(const std::string& s);  // throws naming --variant
const char* variant_name(Variant v);

struct S2HOptions {
  Variant variant = Variant::Decoupled;
  double target = 0.35;  // remaining FLOPs fraction
  FlopsScope scope = FlopsScope::Network;
  double lambda_flops = 2.0, lambda_kd = 1.0;
  double flops_tolerance = 0.02;  // rho
  double flops_balance = 1.0;     // s_F
  double task_balance = 0.5;      // s_f
  bool flops_on_hard = false;     // resource loss on straight-through hard widths instead of expected widths
  double mask_lr = 0.5, mask_momentum = 0.9, mask_weight_decay = 0.0;
  bool mask_nesterov = true;
  int64_t order_every = 1;
  double label_smoothing = 0.0;
};

// What one step measured (soft/hard on the training batch).
struct StepStats {
  double loss = 0;  // the total minimised for the weights
  double soft_loss = 0, soft_acc = 0, hard_loss = 0, hard_acc = 0;
  double kd = 0;           // the distillation term's value (0 when none)
  double flops_loss = 0;   // R
  double kl = 0, js = 0, l2 = 0;  // between soft and hard logits
  double flops_expected = 0;      // F(expected widths) / F_full, in the budget's scope
  double flops_hard = 0;          // F(hard widths) / F_full, in the budget's scope
};

// KL(p_s || p_h), JS and mean L2 distance between two logit batches [N, C] (per sample, averaged).
struct Gap {
  double kl = 0, js = 0, l2 = 0;
};
Gap logit_gap(const Tensor& soft, const Tensor& hard);

// The mask gradients of one step, per group, before fusion (zeros where a
// variant has no such term): task (cross-entropy), distillation, resource.
struct MaskGrads {
  std::vector<Tensor> task, kd, flops;
  bool has_kd = false;
};

class S2HPruner {
 public:
  S2HPruner(Module& model, const FlopsModel& flops, WidthMasks& masks, const S2HOptions& opt);

  // Masks on: soft + hard passes. `lr_factor` scales mask_lr (the weights' schedule / base lr).
  StepStats step(const Tensor& x, const Tensor& y, Optimizer& weights, double lr_factor);
  // The first half of step(): both passes and every backward. Leaves the
  // weights' gradients in their .grad (zeroed first) and returns the masks'
  // gradient terms (the logits' .grad is left empty). `st` receives the
  // measurements.
  MaskGrads gradients(const Tensor& x, const Tensor& y, StepStats& st);
  // Gradient fusion of the spec: g_u = g_kd + s_f (|g_kd|/|g_task|) g_task
  // (g_u = g_task without a distillation term), then the norm balance against
  // the FLOPs gradient; returns the final per-group update directions' inputs
  // (g_u, g_R) after balancing.
  std::pair<std::vector<Tensor>, std::vector<Tensor>> fuse(const MaskGrads& g, double r_value) const;

  // Dense warm-up: plain cross-entropy on the full network (masks off).
  StepStats dense_step(const Tensor& x, const Tensor& y, Optimizer& weights);
  // Hard-only fine-tune: masks and channel order frozen, cross-entropy of the hard network.
  StepStats hard_step(const Tensor& x, const Tensor& y, Optimizer& weights);

  // Sets every ChannelMask of the prunable groups to its relaxed mask (soft
  // network) or back to identity.
  void set_soft_masks(bool on);
  // The relaxed masks per group name ([C], no history).
  std::map<std::string, Tensor> soft_mask_values() const;
  // Ratios F/F_full at the expected and the hard widths.
  double expected_ratio() const;
  double hard_ratio() const;
  int64_t steps() const { return steps_; }
  const S2HOptions& options() const { return opt_; }

 private:
  void mask_step(const std::vector<Tensor>& g_u, const std::vector<Tensor>& g_r, double lr_factor);
  Tensor flops_ratio(bool hard_widths) const;  // differentiable in the logits
  Module& model_;
  const FlopsModel& flops_;
  WidthMasks& masks_;
  S2HOptions opt_;
  std::vector<models::ChannelGroup> groups_;
  std::vector<Tensor> params_;     // the model's parameters
  std::vector<std::vector<models::ChannelMask*>> mask_modules_;  // per width group, its ChannelMasks
  std::vector<Tensor> momentum_;   // mask optimiser state, per group
  int64_t steps_ = 0;
};

}  // namespace s2h::pruning
