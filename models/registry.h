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
};

// Builds a freshly initialised model; throws s2h::Error listing the known
// names when `name` is unknown.
ModulePtr make_model(const std::string& name, const ModelConfig& config);
std::vector<std::string> model_names();

}  // namespace s2h::models
