// ResNets (He et al. 2016) and Wide ResNet-28-10 (Zagoruyko & Komodakis 2016).
//
// resnet20, resnet56 (CIFAR ResNets, 6n+2 layers, n = 3, 9):
//   conv1 3x3(C->16)-bn1-ReLU-mask1, layer1..layer3 of n basic blocks with
//   16/32/64 channels (stride 2 at the first block of layer2 and layer3), global
//   average pool, fc. Where a block changes the shape, the shortcut is a 1x1
//   conv (stride 2) + BN ("option B"; the original paper's CIFAR nets use the
//   parameter-free option A). Names: conv1, bn1, layerI.J.{conv1,bn1,conv2,bn2},
//   layerI.0.downsample.{0,1}, fc.
// resnet18 (basic blocks 2-2-2-2), resnet50 (bottlenecks 3-4-6-3, expansion 4,
//   stride on the 3x3 conv): torchvision's structure and names (conv1, bn1,
//   layerI.J.convK/bnK, layerI.0.downsample.0/1, fc). Stem: the CIFAR /
//   Tiny-ImageNet one (3x3 conv stride 1, 64 channels, no max-pool) by default;
//   the ImageNet one (7x7/2 conv, 3x3/2 max-pool) with ModelConfig::imagenet_stem.
// wrn28-10: pre-activation Wide ResNet, depth 28, widen factor 10: conv1
//   3x3(C->16), layer1..layer3 of 4 wide blocks (160/320/640 channels, strides
//   1/2/2), final bn-ReLU-mask, global average pool, fc; no dropout. A wide
//   block is bn1-ReLU-in_mask-conv1(3x3, stride)-bn2-ReLU-mask1-conv2(3x3)-mask2,
//   plus a shortcut: the raw input when the shape is kept, else a 1x1 conv
//   (stride) of the activated input followed by shortcut_mask.
//
// Channel masks (models::ChannelMask, identity until a pruning method sets
// them) sit after BN + ReLU of every masked conv (maskK follows convK/bnK) and,
// for the last conv of a residual branch and the downsample branch, after the
// BN and before the addition (blocks' last maskK, downsample.2). In the
// pre-activation WRN the residual stream also reaches the next block's bn1,
// whose ReLU output is masked again (in_mask) so that a zero mask removes the
// channel from every reader, exactly as slicing it out would.
//
// Channel groups: one per residual stream ("layerI.residual": every conv adding
// into it, downsample convs included, and every conv reading it), one per
// inner conv of a block ("layerI.J.conv1", and "layerI.J.conv2" in a
// bottleneck). Where the stem conv writes into layer1's stream (CIFAR ResNets,
// resnet18) that stream is not prunable; otherwise the stem output is a group
// of its own ("conv1"), also not prunable.
//
// Initialisation: convs Kaiming-normal (fan_out), BN weight 1 and bias 0, fc
// PyTorch's default.
#pragma once

#include <string>
#include <vector>

#include "engine/layers.h"
#include "models/groups.h"
#include "models/registry.h"

namespace s2h::models {

ModulePtr make_resnet(const std::string& name, const ModelConfig& config);

// Post-activation basic block: conv3x3(stride)-bn1-ReLU-mask1-conv3x3-bn2-mask2,
// plus the shortcut (identity, or downsample = 1x1 conv (stride)-BN-mask), then ReLU.
class BasicBlock : public Module {
 public:
  BasicBlock(int64_t in, int64_t out, int64_t stride);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  std::shared_ptr<Conv2d> conv1, conv2;
  std::shared_ptr<BatchNorm> bn1, bn2;
  std::shared_ptr<ChannelMask> mask1, mask2;
  std::shared_ptr<Sequential> downsample;  // null: identity shortcut
};

// torchvision's Bottleneck (stride on the 3x3 conv): conv1x1-bn1-ReLU-mask1,
// conv3x3(stride)-bn2-ReLU-mask2, conv1x1(planes->4*planes)-bn3-mask3, plus
// the shortcut, then ReLU.
class Bottleneck : public Module {
 public:
  Bottleneck(int64_t in, int64_t planes, int64_t stride);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  std::shared_ptr<Conv2d> conv1, conv2, conv3;
  std::shared_ptr<BatchNorm> bn1, bn2, bn3;
  std::shared_ptr<ChannelMask> mask1, mask2, mask3;
  std::shared_ptr<Sequential> downsample;  // null: identity shortcut
};

// resnet20/56/18/50. Built by make_resnet.
class ResNet : public Module, public HasChannelGroups {
 public:
  ResNet(const std::string& name, const ModelConfig& config);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override { return name_; }
  std::vector<ChannelGroup> channel_groups() const override { return groups_; }

 private:
  std::string name_;
  std::shared_ptr<Conv2d> conv1_;
  std::shared_ptr<BatchNorm> bn1_;
  std::shared_ptr<ChannelMask> mask1_;
  std::shared_ptr<MaxPool2d> maxpool_;  // ImageNet stem only
  std::vector<std::shared_ptr<Sequential>> layers_;
  std::shared_ptr<Linear> fc_;
  std::vector<ChannelGroup> groups_;
};

// Pre-activation wide basic block (see the file comment).
class WideBlock : public Module {
 public:
  WideBlock(int64_t in, int64_t out, int64_t stride);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  std::shared_ptr<BatchNorm> bn1, bn2;
  std::shared_ptr<Conv2d> conv1, conv2;
  std::shared_ptr<Conv2d> shortcut;  // null: identity shortcut
  std::shared_ptr<ChannelMask> in_mask, mask1, mask2, shortcut_mask;
};

// wrn28-10 (built by make_resnet); any depth 6n+4 and widen factor >= 2.
class WideResNet : public Module, public HasChannelGroups {
 public:
  WideResNet(int64_t depth, int64_t widen, const ModelConfig& config);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  std::vector<ChannelGroup> channel_groups() const override { return groups_; }

 private:
  int64_t depth_, widen_;
  std::shared_ptr<Conv2d> conv1_;
  std::vector<std::shared_ptr<Sequential>> layers_;
  std::shared_ptr<BatchNorm> bn_;
  std::shared_ptr<ChannelMask> mask_;
  std::shared_ptr<Linear> fc_;
  std::vector<ChannelGroup> groups_;
};

}  // namespace s2h::models
