// Models by name.
#pragma once

#include <string>
#include <vector>

#include "engine/module.h"

namespace s2h::models {

struct ModelConfig {
  int64_t num_classes = 10;
  int64_t in_channels = 1;
  int64_t image_size = 28;  // square inputs
  // Text models: input is i64 token ids [B, max_len], pad id 0 (masked out).
  int64_t vocab_size = 0;
  int64_t max_len = 0;
  // resnet18/resnet50: the ImageNet stem (7x7/2 conv, 3x3/2 max-pool) instead
  // of the CIFAR/Tiny-ImageNet stem (3x3/1 conv, no pool).
  bool imagenet_stem = false;
  // vit-*: patch size; 0 picks image_size/8 (4 for 32x32, 8 for 64x64), 16 from 224 up.
  int64_t patch_size = 0;
};

// What a model expects as input.
bool is_text_model(const std::string& name);

// Builds a freshly initialised model; throws s2h::Error listing the known
// names when `name` is unknown.
ModulePtr make_model(const std::string& name, const ModelConfig& config);
std::vector<std::string> model_names();  // sorted
// A one-line description per model, for --help and `s2h info`.
std::string model_help(const std::string& name);

}  // namespace s2h::models
