// MobileNetV2 (Sandler et al. 2018) and MobileNetV3-Large/Small (Howard et
// al. 2019), with torchvision's architectures and module names, width 1.0.
//
// mobilenetv2: features.0 = conv3x3(C->32, stride 2)-BN-ReLU6, features.1..17 =
//   inverted residuals (t, c, n, s) = (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2)
//   (6,96,3,1) (6,160,3,2) (6,320,1,1), features.18 = conv1x1(320->1280)-BN-ReLU6,
//   global average pool, classifier = Dropout(0.2), Linear(1280->classes)
//   (classifier.1). An inverted residual is features.N.conv = [expand
//   conv1x1-BN-ReLU6 (when t != 1)], depthwise conv3x3(stride)-BN-ReLU6,
//   project conv1x1, BN; it adds its input when the stride is 1 and the width kept.
// mobilenetv3-large / mobilenetv3-small: features.0 = conv3x3(C->16, stride 2)-BN-
//   hardswish, the bneck blocks of the paper (features.N.block = [expand
//   conv-BN-act], depthwise conv-BN-act, [squeeze-excite], project conv-BN),
//   the last conv1x1 (->960 / ->576)-BN-hardswish, avgpool, classifier =
//   Linear(->1280 / ->1024), hardswish, Dropout(0.2), Linear(->classes)
//   (classifier.0 and classifier.3). Squeeze-excite: global average pool, fc1
//   (1x1 conv with bias, expanded -> _make_divisible(expanded / 4, 8)), ReLU, fc2
//   (1x1 conv with bias, back), hardsigmoid, times the input. BN eps 0.001 and
//   momentum 0.01 as torchvision.
//
// Small inputs (image size <= 64, CIFAR / Tiny ImageNet): the stem conv has
// stride 1; in MobileNetV2 the second setting (t=6, c=24, n=2, s=2) also has
// stride 1 (the usual CIFAR adaptation), so a 32x32 input ends at 4x4
// (MobileNetV2) and 2x2 (MobileNetV3) before the pool.
//
// Channel masks (ChannelMask, identity unless pruning sets them) are appended
// to the torchvision Sequentials, so parameter names are unchanged: index 3 of
// a conv-BN-act (features.N.conv.1.3, features.18.3), index 2 of a project
// conv-BN (MobileNetV3, features.N.block.K.2), index 4 or 3 of a MobileNetV2
// inverted residual's conv list (after the project BN, before the addition).
// An expand conv's channels are masked only after the depthwise conv's BN and
// activation (the mask on the expand output itself would be normalised away by
// the depthwise BN) and before squeeze-excite, so a zero mask removes a channel
// from the SE pool, the project conv and the residual exactly as slicing would.
//
// Channel groups: "features.N.expand" (expand conv; followers: its BN, the
// depthwise conv and BN, the SqueezeExcitation module; consumers: SE fc1 and the
// project conv), the residual streams "features.A-B.residual" (the project
// convs of blocks A..B that add into one stream; for MobileNetV3-Large A is 0:
// the stem's output is the first block's residual input), the single project
// outputs "features.N.project", the stem "features.0" (not prunable) and the
// last conv "features.18" / "features.16" / "features.12". In a block without
// expansion the depthwise conv, its BN, SE and the project conv read the
// incoming group directly.
//
// Initialisation as torchvision: convs Kaiming-normal (fan_out), conv biases 0,
// BN weight 1 bias 0, linear N(0, 0.01) with bias 0.
#pragma once

#include <string>
#include <vector>

#include "engine/layers.h"
#include "models/groups.h"
#include "models/registry.h"

namespace s2h::models {

ModulePtr make_mobilenet(const std::string& name, const ModelConfig& config);

// torchvision.ops.SqueezeExcitation with ReLU and hardsigmoid. A follower of
// the group it multiplies: fc1 reads it (and is listed as a consumer), fc2's
// outputs are indexed by it.
class SqueezeExcitation : public Module {
 public:
  SqueezeExcitation(int64_t channels, int64_t squeeze);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  std::shared_ptr<Conv2d> fc1, fc2;
};

// An inverted residual block: `layers` run in order (registered as "conv" in
// MobileNetV2, "block" in MobileNetV3); the input is added when `residual`.
class InvertedResidual : public Module {
 public:
  InvertedResidual(const std::string& seq_name, std::shared_ptr<Sequential> layers, bool residual);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  std::shared_ptr<Sequential> layers;
  bool residual;
};

// mobilenetv2, mobilenetv3-large, mobilenetv3-small. Built by make_mobilenet.
class MobileNet : public Module, public HasChannelGroups {
 public:
  MobileNet(const std::string& name, const ModelConfig& config);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override { return name_; }
  std::vector<ChannelGroup> channel_groups() const override { return groups_; }

 private:
  std::string name_;
  std::shared_ptr<Sequential> features_, classifier_;
  std::vector<ChannelGroup> groups_;
};

}  // namespace s2h::models
