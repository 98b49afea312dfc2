// cnn-small: the walking-skeleton classifier for 28x28 grey images.
//
//   conv3x3(C->32)-BN-ReLU-mask-maxpool2  ->  conv3x3(32->64)-BN-ReLU-mask-maxpool2
//   -> conv3x3(64->64)-BN-ReLU-mask -> flatten (H*W*C, NHWC order) -> linear(->classes)
//
// Modules are numbered as in a Sequential: convs 0, 5, 10; BNs 1, 6, 11;
// channel masks (identity unless pruning sets them) 3, 8, 13; linear 15.
//
// Convs have no bias (BN follows). Conv weights are Kaiming-normal (fan_out);
// the linear layer keeps PyTorch's default initialisation.
#pragma once

#include "engine/layers.h"
#include "models/groups.h"
#include "models/registry.h"

namespace s2h::models {

class CnnSmall : public Sequential, public HasChannelGroups {
 public:
  explicit CnnSmall(const ModelConfig& config);
  std::vector<ChannelGroup> channel_groups() const override;
};

}  // namespace s2h::models
