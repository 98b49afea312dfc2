// Channel groups: which output channels of a network must be pruned together.
//
// Every model exports one ChannelGroup per set of convolution / linear output
// channels (or attention heads) that must keep the same width: a residual
// stream (every conv writing into it, plus the stage's downsample conv), the
// hidden channels of a bottleneck or inverted-residual block (with the
// depthwise conv that follows them), the heads of one attention layer, the
// hidden units of one MLP. The pruning module reads only this description and
// the module tree; names are dotted module paths as in named_modules().
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/layers.h"
#include "engine/module.h"

namespace s2h::models {

enum class GroupKind {
  Channels,  // the output channels of one conv (plus what follows it)
  Residual,  // a residual stream: every producer is added into the same channels
  Heads,     // attention heads of one layer (unit = head dim)
  Hidden,    // MLP hidden units of one Transformer block
  Embed,     // the embedding width (the whole Transformer residual stream)
};
const char* group_kind_name(GroupKind k);

struct ChannelGroup {
  std::string name;  // unique, e.g. "layer1.residual", "layer2.0.conv1", "blocks.3.attn.heads"
  GroupKind kind = GroupKind::Channels;
  int64_t channels = 0;  // width in units (channels, heads or hidden units)
  int64_t unit = 1;      // features per unit (head dim for Heads, 1 otherwise)
  // Conv2d / Linear modules whose OUTPUT features are this group (all must
  // agree on channels*unit). For Heads: the q, k and v projections.
  std::vector<std::string> producers;
  // Conv2d / Linear modules whose INPUT features read this group.
  std::vector<std::string> consumers;
  // Per-channel modules that follow the group and shrink with it: BatchNorm,
  // LayerNorm, depthwise Conv2d (groups == channels), squeeze-excite.
  std::vector<std::string> followers;
  // models::ChannelMask modules (identity unless a pruning method sets them)
  // placed where a mask multiplies this group: after BN and activation, and
  // for the last conv of a residual branch before the addition.
  std::vector<std::string> masks;
  // False for groups the pruning methods must leave whole: those that hold
  // the stem's output or feed only the classifier's input width.
  bool prunable = true;
  std::string note;  // why not prunable, or anything a reader should know
};

// Implemented by every model in models/ next to Module.
class HasChannelGroups {
 public:
  virtual ~HasChannelGroups() = default;
  virtual std::vector<ChannelGroup> channel_groups() const = 0;
};

// The groups of a model built by make_model(); throws if it exports none.
std::vector<ChannelGroup> channel_groups(const Module& model);

// Checks a description against the module tree: every name exists and has the
// right type, producers' output widths equal channels*unit, consumers' input
// widths match, no name repeats within a role. Throws naming the group.
void validate_channel_groups(const Module& model, const std::vector<ChannelGroup>& groups);

// Identity, unless a pruning method sets `scale` ([channels] f32): then the
// last axis (channels*unit features) is multiplied by scale, each value
// repeated `unit` times. Parameter-free; the models place one per mask point.
class ChannelMask : public Module {
 public:
  ChannelMask(int64_t channels, int64_t unit = 1) : channels(channels), unit(unit) {}
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  int64_t channels, unit;
  Tensor scale;  // undefined: identity
};

// conv(mask(h)), where the mask's output feeds only this conv. When the fused
// kernels apply (CUDA, bf16 policy, fused_kernels() on, a unit-1 mask with a
// scale, a conv with groups 1 and dilation 1), the mask is folded into the
// conv as its input scale (Conv2d::in_scale): one masked_conv2d, whose
// backward also gives the mask's gradient. Elsewhere it is the two modules.
Tensor mask_then_conv(ChannelMask& mask, Conv2d& conv, const Tensor& h);

}  // namespace s2h::models
