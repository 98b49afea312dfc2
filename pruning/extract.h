// The end of a structured pruning run: the budget guarantee, the physically
// narrow network, BatchNorm recalibration and the architecture file.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "engine/layers.h"
#include "engine/module.h"
#include "models/narrow.h"
#include "models/registry.h"
#include "pruning/flops.h"
#include "pruning/masks.h"

namespace s2h::pruning {

// ------------------------------------------------------------------ budget guarantee
struct BudgetResult {
  std::map<std::string, int64_t> widths;  // adjusted
  double ratio_before = 0, ratio_after = 0;  // F/F_full in the budget's scope
  double residual = 0;                       // ratio_after / target - 1
  int removed_blocks = 0, added_blocks = 0;
  bool within = false;  // |residual| <= tolerance
};

// Moves the widths until F(widths)/F_full sits within target*(1 +- tolerance),
// deterministically: (1) scale every prunable group's width by one factor
// (rounded to its divisor; the learned proportions stay), the largest factor
// not above the upper bound (or the smallest reaching the lower one); (2) then
// single width blocks: among the moves that land inside the window, the one
// with the smallest accuracy proxy (the L1 importance of the units removed,
// normalised by the group's mean; or the largest importance added); if none
// lands inside, the move closest to the target. Reports the residual.
BudgetResult enforce_budget(const FlopsModel& flops, const WidthMasks& masks, std::map<std::string, int64_t> widths,
                            double target, double tolerance, FlopsScope scope);

// ------------------------------------------------------------------ BatchNorm recalibration
// While alive: every BatchNorm of the model has its running statistics reset
// and accumulates a plain average over the batches given to step() (PyTorch's
// momentum=None), run in training mode without gradients. Works on a model
// under a NarrowView (its statistics are the view's copies) and on an
// extracted network. Restores momenta and the train/eval mode at the end.
class BnRecalibration {
 public:
  explicit BnRecalibration(Module& model);
  ~BnRecalibration();
  BnRecalibration(const BnRecalibration&) = delete;
  BnRecalibration& operator=(const BnRecalibration&) = delete;
  void step(const Tensor& x);
  int64_t batches() const { return batches_; }
  bool has_batch_norm() const { return !bns_.empty(); }

 private:
  Module& model_;
  std::vector<std::pair<BatchNorm*, double>> bns_;
  bool was_training_;
  int64_t batches_ = 0;
};

// ------------------------------------------------------------------ extraction
// A new network with only the selected units (new tensors, no masks set):
// make_model(name, config), the weights of `model`, then narrow_model.
ModulePtr extract(const std::string& name, const models::ModelConfig& config, const Module& model,
                  const models::ChannelSelection& keep);

}  // namespace s2h::pruning
