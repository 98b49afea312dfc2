// Self-distilled pruning (SDP, O'Neill et al., arXiv 2109.15014) and the plain
// magnitude-pruning baseline (S2HPRUNER.md, section 2).
//
// Masks (0/1 tensors) cover the prunable weights: the weights of every Conv2d
// and Linear except the network's input layer (the first Conv2d/Linear called
// in a forward pass: first conv, patch embedding; when a token Embedding comes
// first, it is the input layer, and no Conv2d/Linear is excluded for it) and
// the final classifier (the last Linear called). Both
// are found by tracing one forward pass of an example input. Biases, norms and
// embeddings are never pruned in the unstructured mode.
//
// Unstructured: the mask keeps the largest |w|; the threshold is global (over
// all prunable weights together) or per layer; exactly round(s * n) weights are
// pruned (ties broken by position).
//
// Structured (SdpOptions::structured): whole channels / heads / hidden units of
// the model's prunable channel groups (models/groups.h: the group's own
// `prunable` flag decides, as for the other structured methods; models mark the
// groups that hold the stem output not prunable, except cnn-small, whose first
// conv's channels are prunable) are pruned by their
// importance: for each unit, the mean |w| of the unit's output rows in each
// producer, averaged over the group's producers (mean rather than sum, so that
// units of layers with different fan-in compare in the global scope). A group
// keeps at least one unit. `sparsity` is then the fraction of units pruned (per
// group, or over all prunable units for the global scope). A pruned unit is
// zeroed in the producers' weight rows and biases, in the followers'
// BatchNorm / LayerNorm weight and bias and depthwise-conv rows, and the group's
// ChannelMask scales are 0 there while the masked network runs, so that the
// stored network with zeros in place (no ChannelMask scales, as a checkpoint
// holds it) computes the same function.
//
// Training step (student = the network with masked weights, the mask applied
// inside the forward so that pruned weights get no gradient):
//   L = (1 - alpha) * CE(student logits, y) + alpha * L_cc(z_s, stopgrad(z_t))
// with z the classifier's input (repr pooled) or the logits (repr logits), and
// the teacher either a frozen copy of the network taken before each prune
// event (its weights then are the previous, less sparse, masked network) or the
// live dense weights without gradient. Before the first prune event there is
// no teacher and L = CE. Magnitude pruning is the same with cc = false (L = CE).
// Teacher and student both run in training mode (batch statistics); the live
// teacher's pass leaves the BatchNorm running statistics as they were.
// Frozen teacher: after each optimiser step the masks are re-applied to the
// stored weights (pruned weights stay exactly 0). Live teacher: the stored
// weights stay dense (the teacher); apply_masks() zeroes them at the end.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/module.h"
#include "engine/optim.h"
#include "engine/tensor.h"

namespace s2h::pruning {

struct SdpOptions {
  double sparsity = 0.5;         // final fraction pruned (weights, or units when structured)
  bool structured = false;       // prune channels / heads / hidden units instead of single weights
  std::string scope = "global";  // global | layer
  std::string teacher = "frozen";  // frozen | live
  std::string repr = "pooled";   // pooled (the classifier's input) | logits
  double lambda = 0.0051;        // off-diagonal weight of L_cc
  double alpha = 0.5;            // weight of L_cc against the cross-entropy
  bool cc = true;                // false: magnitude pruning (L = CE, no teacher)
  int64_t prune_steps = 10;      // number of prune events (oneshot: 1)
  std::string schedule = "cubic";  // cubic | linear | oneshot
  double prune_until = 0.75;     // fraction of the training steps by which the final sparsity is reached
  double label_smoothing = 0.0;  // of the cross-entropy term
};

// Checks the values; throws naming the option (flag names of `s2h prune`).
void validate(const SdpOptions& o);

// The sparsity schedule at progress t = step / T_end in [0, 1] (clamped):
// cubic s_f * (1 - (1 - t)^3) (Zhu & Gupta), linear s_f * t, oneshot s_f.
double scheduled_sparsity(const std::string& schedule, double s_final, double t);

struct PruneEvent {
  int64_t step = 0;       // prune before this training step (0-based)
  double sparsity = 0.0;  // target sparsity of the event
};
// Events k = 1..K (K = prune_steps, 1 for oneshot) at step round(k/K * T_end),
// T_end = prune_until * total_steps (clamped to total_steps - 1), with sparsity
// scheduled_sparsity(k / K). The last event reaches the final sparsity.
std::vector<PruneEvent> prune_events(const SdpOptions& o, int64_t total_steps);

// Cross-correlation loss between two representations [B, d]:
//   C = BN(z_s)^T BN(z_t) / B  (each feature standardised over the batch with
//   its biased variance, no affine, eps), L = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2.
// The gradient flows through z_s only (z_t is detached).
Tensor cross_correlation_loss(const Tensor& z_s, const Tensor& z_t, double lambda, double eps = 1e-5);

// Class separability: trace(S_between) / trace(S_within) of features [N, d]
// with i64 labels [N]: sum_c n_c |mu_c - mu|^2 / sum_i |x_i - mu_{y_i}|^2.
// Infinity when the within-class scatter is 0 (and the between-class is not).
double fisher_ratio(const Tensor& features, const Tensor& labels);

struct SparsityStats {
  double prunable = 0;  // fraction of the prunable weights that are masked out
  double network = 0;   // masked-out entries over all parameters of the network
  int64_t prunable_total = 0, prunable_pruned = 0;
  int64_t network_total = 0, network_pruned = 0;
  // Structured: units (channels, heads, hidden units) of the prunable groups.
  int64_t units_total = 0, units_pruned = 0;
};

struct SdpStepStats {
  double loss = 0, ce = 0, cc = 0;  // cc = 0 without a teacher
  Tensor logits;                    // the student's, detached
};

class SdpPruner {
 public:
  // `example_input` (a batch of inputs) is run once, in eval mode and without
  // gradient, to find the input layer and the classifier. `make_copy` builds a
  // fresh model of the same architecture (for the frozen teacher; may be empty
  // when cc is off or the teacher is live).
  SdpPruner(Module& model, SdpOptions opt, const Tensor& example_input, std::function<ModulePtr()> make_copy = {});
  ~SdpPruner();
  SdpPruner(const SdpPruner&) = delete;
  SdpPruner& operator=(const SdpPruner&) = delete;

  const SdpOptions& options() const { return opt_; }
  Device device() const { return model_.device(); }
  // Dotted names: the prunable weights ("features.5.weight"; the structured
  // mode masks only rows of some of them, plus biases and norms), and the
  // excluded input layer and classifier modules.
  const std::vector<std::string>& prunable_names() const { return prunable_; }
  const std::string& input_layer() const { return input_layer_; }
  const std::string& classifier() const { return classifier_; }

  // A prune event: (frozen teacher with cc on) snapshots the teacher from the
  // current network, then recomputes the masks at `sparsity` from the current
  // weights and (frozen) zeroes the pruned weights in place.
  void prune_to(double sparsity);
  double current_sparsity() const { return current_; }
  bool has_teacher() const;

  // One optimiser step on L (see the header comment); the caller sets the lr.
  SdpStepStats train_step(const Tensor& inputs, const Tensor& labels, Optimizer& optim);

  // While alive, the model's forward runs the masked network (weights times
  // masks, ChannelMask scales of pruned units 0). Use it to evaluate.
  class MaskedScope {
   public:
    explicit MaskedScope(SdpPruner& pruner);
    ~MaskedScope();
    MaskedScope(const MaskedScope&) = delete;
    MaskedScope& operator=(const MaskedScope&) = delete;

   private:
    SdpPruner& p_;
  };

  // The representation (classifier input, or the logits with repr logits) of
  // the masked network for `inputs`, in eval mode without gradient: [B, d].
  Tensor features(const Tensor& inputs, bool logits = false);

  // Writes weights * masks into the stored weights (no history).
  void apply_masks();
  // Of the current masks (computed at each prune event).
  const SparsityStats& sparsity() const { return stats_; }
  // Named masks (1 keep, 0 pruned) of every masked parameter.
  NamedTensors masks() const;

 private:
  struct Entry;
  struct Unit;
  void compute_unstructured_masks(double sparsity);
  void compute_structured_masks(double sparsity);
  void snapshot_teacher();
  SparsityStats compute_sparsity() const;
  Tensor teacher_repr(const Tensor& inputs);
  Module& model_;
  SdpOptions opt_;
  std::function<ModulePtr()> make_copy_;
  std::string input_layer_, classifier_;
  Module* classifier_module_ = nullptr;
  Module* teacher_classifier_ = nullptr;
  std::vector<std::string> prunable_;
  std::vector<std::unique_ptr<Entry>> entries_;  // masked parameters
  std::vector<std::unique_ptr<Unit>> groups_;    // structured: prunable groups
  ModulePtr teacher_;                            // frozen teacher
  bool pruned_once_ = false;
  double current_ = 0.0;
  SparsityStats stats_;
  int scope_depth_ = 0;
};

}  // namespace s2h::pruning
