// cnn-small: the walking-skeleton classifier for 28x28 grey images.
//
//   conv3x3(C->32)-BN-ReLU-maxpool2  ->  conv3x3(32->64)-BN-ReLU-maxpool2
//   -> conv3x3(64->64)-BN-ReLU -> flatten (H*W*C, NHWC order) -> linear(->classes)
//
// Convs have no bias (BN follows). Conv weights are Kaiming-normal (fan_out);
// the linear layer keeps PyTorch's default initialisation.
#pragma once

#include "engine/layers.h"
#include "models/registry.h"

namespace s2h::models {

class CnnSmall : public Sequential {
 public:
  explicit CnnSmall(const ModelConfig& config);
};

}  // namespace s2h::models
