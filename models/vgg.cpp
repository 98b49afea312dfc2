#include "models/vgg.h"

namespace s2h::models {

ModulePtr make_vgg(const std::string& name, const ModelConfig& config) {
  (void)config;
  S2H_FAIL("model {} is not implemented yet", name);
}

}  // namespace s2h::models
