// VGG-16 with batch norm (Simonyan & Zisserman 2015), torchvision's names.
//
// features: the configuration 64,64,M,128,128,M,256,256,256,M,512,512,512,M,
//   512,512,512,M, each number a conv3x3 (with bias) - BN - ReLU, each M a 2x2
//   max-pool; module indices as torchvision's vgg16_bn (convs at features.0, 3,
//   7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40).
// Classifier, small inputs (image size <= 64, a multiple of 32; CIFAR / Tiny
//   ImageNet): the features of size s/32 x s/32 x 512 are flattened in NHWC
//   order (index (h * s/32 + w) * 512 + c) into one Linear(512 * (s/32)^2 ->
//   classes), named "classifier".
// Classifier, large inputs (>= 224): torchvision's: avgpool (adaptive average
//   pool to 7x7), flatten (NHWC order, unlike torchvision's NCHW: permute
//   classifier.0's input columns to load torchvision weights), classifier =
//   Linear(25088->4096), ReLU, Dropout(0.5), Linear(4096->4096), ReLU,
//   Dropout(0.5), Linear(4096->classes).
// Other sizes are refused.
//
// Channel masks: "masks.K" (ChannelMask, identity unless pruning sets them)
// follows the K-th conv's ReLU, before any max-pool; they live in their own
// list so that the feature indices stay torchvision's. Channel groups: one per
// conv, named after it ("features.0"; follower: its BN; consumer: the next conv,
// or the classifier's first linear layer for the last one); the first conv is
// the stem and is not prunable. The classifier's hidden layers are not grouped.
//
// Initialisation as torchvision: convs Kaiming-normal (fan_out) with bias 0, BN
// weight 1 bias 0, linear N(0, 0.01) with bias 0.
#pragma once

#include <string>
#include <vector>

#include "engine/layers.h"
#include "models/groups.h"
#include "models/registry.h"

namespace s2h::models {

ModulePtr make_vgg(const std::string& name, const ModelConfig& config);

class VGG : public Module, public HasChannelGroups {
 public:
  VGG(const std::string& name, const ModelConfig& config);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override { return name_; }
  std::vector<ChannelGroup> channel_groups() const override { return groups_; }

 private:
  std::string name_;
  std::shared_ptr<Sequential> features_, masks_;
  // For each entry of features, the mask applied after it (the ReLU of a conv), or null.
  std::vector<std::shared_ptr<ChannelMask>> mask_after_;
  std::shared_ptr<AdaptiveAvgPool2d> avgpool_;  // large inputs only
  ModulePtr classifier_;
  std::vector<ChannelGroup> groups_;
};

}  // namespace s2h::models
