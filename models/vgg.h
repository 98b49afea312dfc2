// (being written) see models/registry.cpp for the names this file builds.
#pragma once

#include <string>

#include "models/registry.h"

namespace s2h::models {

ModulePtr make_vgg(const std::string& name, const ModelConfig& config);

}  // namespace s2h::models
