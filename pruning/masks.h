// S2HPruner's width-choice masks (S2HPRUNER.md, "Mask parametrisation").
//
// Per prunable group with C units and divisor d (the largest d <= the
// divisor option that divides C), K = C/d widths c_k = k*d. Logits u [K]:
//   p = softmax(u / T),  keep[k] = sum_{j >= k} p_j  (keep[1] = 1),
//   relaxed mask w: keep[k] for the d units of block k, blocks in importance
//   order (block 1 = the d units with the largest L1 norm),
//   expected width E = sum_k p_k c_k,  hard width n = min(C, roundup(ceil(E), d)),
//   with a straight-through estimate n_st = E + stopgrad(n - E).
// The hard network keeps the n most important units of every group.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "engine/module.h"
#include "models/groups.h"
#include "models/narrow.h"

namespace s2h::pruning {

struct MaskOptions {
  int64_t ch_divisor = 4;    // channels, hidden units
  int64_t head_divisor = 1;  // attention heads
  double temperature = 1.0;
  std::string init = "max";  // max (start near full width) | uniform (u = 0)
};

// The largest d <= max_divisor that divides `channels`.
int64_t width_divisor(int64_t channels, int64_t max_divisor);

struct WidthGroup {
  std::string name;
  int group = -1;  // index into the model's channel groups
  int64_t channels = 0, divisor = 1, choices = 1;  // C, d, K
  Tensor logits;                // u [K], f32 leaf with requires_grad
  std::vector<int64_t> order;   // unit indices, most important first
  std::vector<double> importance;  // L1 importance per unit (physical order)
};

class WidthMasks {
 public:
  WidthMasks(const Module& model, const std::vector<models::ChannelGroup>& groups, const MaskOptions& opt);

  std::vector<WidthGroup>& groups() { return groups_; }
  const std::vector<WidthGroup>& groups() const { return groups_; }
  std::vector<Tensor> parameters() const;  // every group's logits
  double temperature() const { return opt_.temperature; }

  // Differentiable pieces of group i.
  Tensor probs(size_t i) const;           // p [K]
  Tensor keep_probs(size_t i) const;      // keep [K]
  Tensor channel_mask(size_t i) const;    // w [C] in the units' physical order
  Tensor expected_width(size_t i) const;  // E, scalar
  Tensor hard_width_st(size_t i) const;   // n with the straight-through gradient of E
  int64_t hard_width(size_t i) const;     // n
  double entropy(size_t i) const;         // of p, in nats

  // Recomputes every group's unit order from the L1 norms of its producers' output weights
  // (averaged over the producers; stable, ties by index).
  void update_order(const Module& model);
  // The n most important units of every group (n = hard width, or `widths` when given).
  models::ChannelSelection selection() const;
  models::ChannelSelection selection(const std::map<std::string, int64_t>& widths) const;
  std::map<std::string, int64_t> hard_widths() const;

 private:
  MaskOptions opt_;
  std::vector<models::ChannelGroup> model_groups_;  // the model's groups (WidthGroup::group indexes them)
  std::vector<WidthGroup> groups_;
};

// L1 importance per unit of a group: the mean over producers of the L1 norm of
// each unit's output weights (Conv2d rows, Linear rows; a unit of a head group
// sums its head_dim rows).
std::vector<double> unit_importance(const Module& model, const models::ChannelGroup& group);

}  // namespace s2h::pruning
