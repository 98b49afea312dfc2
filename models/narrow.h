// Narrow networks: keep a subset of the units (channels, heads, hidden units)
// of each channel group, computing only those.
//
// Two forms share one description of what shrinks (models/groups.h):
// - NarrowView: while alive, the model computes as the narrow network. The
//   modules' tensor members are rebound to index_select(original) (so
//   gradients flow back to the full parameters), their sizes (out_channels,
//   num_heads, ...) set to the narrow ones; everything is restored when the
//   view dies. Plain convolutions (groups 1) are the exception: they keep
//   their full weight and get the kept row / column indexes (Conv2d::keep_out,
//   keep_in), so they run as one hard masked_conv2d. S2HPruner's hard forward
//   pass is the model under a NarrowView: a physically narrower computation,
//   not a multiplication by zero.
// - narrow_model(): the same shrinking made permanent, with new contiguous
//   tensors (parameters keep requires_grad; registered parameters and buffers
//   see the new tensors). `s2h eval` rebuilds an extracted network with it
//   from an architecture file (prefix_selection), then loads its weights.
//
// What shrinks for a group: every producer's output rows (Conv2d / Linear
// weight and bias), every consumer's input columns (Conv2d weight axis 3;
// Linear weight axis 1, once per spatial position when it reads an NHWC
// flatten), every follower (BatchNorm weight/bias/running stats, LayerNorm,
// depthwise Conv2d, SqueezeExcitation's fc2 outputs), every ChannelMask, and
// for attention heads the MultiheadSelfAttention's head count.
#pragma once

#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "models/groups.h"
#include "models/registry.h"

namespace s2h::models {

// Kept units per group name (indices in [0, channels), no repeats, any order:
// the narrow network's unit j is original unit keep[j]). Groups not listed
// keep every unit.
using ChannelSelection = std::map<std::string, std::vector<int64_t>>;

// The first `width` units of each group.
ChannelSelection prefix_selection(const std::map<std::string, int64_t>& widths);

class NarrowView {
 public:
  // `mask_scales` (optional, per group, [channels] full-width values): the
  // kept entries become the scale of the group's ChannelMasks in the narrow
  // network (S2HPruner's straight-through hard mask); otherwise the masks are
  // identity while the view lives.
  NarrowView(Module& model, const std::vector<ChannelGroup>& groups, const ChannelSelection& keep,
             const std::map<std::string, Tensor>& mask_scales = {});
  ~NarrowView();
  NarrowView(const NarrowView&) = delete;
  NarrowView& operator=(const NarrowView&) = delete;

 private:
  std::vector<std::function<void()>> restore_;
};

// Shrinks the model in place for good (see above).
void narrow_model(Module& model, const std::vector<ChannelGroup>& groups, const ChannelSelection& keep);

// The width (kept units) of every group under `keep`.
std::map<std::string, int64_t> selection_widths(const std::vector<ChannelGroup>& groups, const ChannelSelection& keep);

// The architecture of an extracted network: enough to rebuild it with
// make_model(model, config) + narrow_model(prefix_selection(widths)); its
// weights (in that prefix order) then load with load_state_dict.
struct Architecture {
  std::string model;
  ModelConfig config;
  std::map<std::string, int64_t> widths;  // kept units per group (every group)
  // {"format", "model", "config", "widths", "groups": [{name, kind, unit, channels, kept}]}
  nlohmann::json to_json(const std::vector<ChannelGroup>& groups) const;
  // Throws naming `where` (a file) and the field.
  static Architecture from_json(const nlohmann::json& j, const std::string& where);
};
inline constexpr const char* kArchitectureFormat = "s2h-architecture-v1";

// A freshly initialised network of the architecture's narrow shape.
ModulePtr build_narrow(const Architecture& arch);

}  // namespace s2h::models
