// The FLOPs model of a prunable network: one audited count (2 x MACs of
// convolutions, linear layers and attention products, as Module::flops and
// `s2h info`), split into terms that scale with the widths of the channel
// groups they read and write.
//
// A term is one module's traced FLOPs at full width, F_full, with the group
// its output channels belong to (producers, depthwise followers, squeeze-
// excite fc2, attention heads) and the group its input channels belong to
// (consumers). With width ratios r (kept / channels) its FLOPs are
// F_full * r_out * r_in, which is exact for integer widths (conv, linear and
// attention FLOPs are bilinear in the input and output widths); a depthwise
// conv only has an output group (it reads one channel per output).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "engine/module.h"
#include "models/groups.h"
#include "models/registry.h"

namespace s2h::pruning {

struct FlopsTerm {
  std::string module;     // dotted module name
  double flops = 0;       // at full width, for one sample
  int out_group = -1;     // index into the groups, -1: none
  int in_group = -1;
  bool pruned = false;    // touches a prunable group
};

// Where the FLOPs budget is measured.
enum class FlopsScope { Network, Pruned };
FlopsScope parse_flops_scope(const std::string& s);  // "network" | "pruned", throws naming --flops-scope

// One sample of the model's input with no padding: zeros [1, S, S, C] for
// images, ids [1, max_len] (all 1) for text.
Tensor example_input(const models::ModelConfig& cfg);

class FlopsModel {
 public:
  // Traces one forward of `example` (batch 1) through the model in eval mode.
  FlopsModel(Module& model, const std::vector<models::ChannelGroup>& groups, const Tensor& example);

  double full(FlopsScope scope = FlopsScope::Network) const;
  // FLOPs at width ratios per group (index as in the groups; missing = 1).
  double at(const std::vector<double>& ratio, FlopsScope scope = FlopsScope::Network) const;
  // The same with kept units per group name (missing = all).
  double at_widths(const std::map<std::string, int64_t>& widths, FlopsScope scope = FlopsScope::Network) const;
  // Differentiable: ratios as scalar tensors (undefined = 1). Returns a scalar tensor.
  Tensor at(const std::vector<Tensor>& ratio, FlopsScope scope = FlopsScope::Network) const;

  const std::vector<FlopsTerm>& terms() const { return terms_; }
  const std::vector<models::ChannelGroup>& groups() const { return groups_; }
  double fixed() const { return fixed_; }  // FLOPs of modules in no prunable group

 private:
  std::vector<models::ChannelGroup> groups_;
  std::vector<FlopsTerm> terms_;
  double fixed_ = 0;
};

}  // namespace s2h::pruning
