#include "models/registry.h"

#include <functional>
#include <map>
#include <memory>

#include "models/cnn_small.h"

namespace s2h::models {

namespace {
const std::map<std::string, std::function<ModulePtr(const ModelConfig&)>>& table() {
  static const std::map<std::string, std::function<ModulePtr(const ModelConfig&)>> t = {
      {"cnn-small", [](const ModelConfig& c) { return std::make_shared<CnnSmall>(c); }},
  };
  return t;
}
}  // namespace

std::vector<std::string> model_names() {
  std::vector<std::string> names;
  for (const auto& [name, fn] : table()) names.push_back(name);
  return names;
}

ModulePtr make_model(const std::string& name, const ModelConfig& config) {
  auto it = table().find(name);
  if (it == table().end()) {
    std::string known;
    for (const std::string& n : model_names()) known += (known.empty() ? "" : ", ") + n;
    S2H_FAIL("unknown model '{}' (available: {})", name, known);
  }
  S2H_CHECK(config.num_classes > 0, "model {}: the number of classes must be positive, got {}", name,
            config.num_classes);
  return it->second(config);
}

}  // namespace s2h::models
