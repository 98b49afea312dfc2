#include "models/registry.h"

#include <functional>
#include <map>
#include <memory>

#include "models/cnn_small.h"
#include "models/mobilenet.h"
#include "models/resnet.h"
#include "models/transformer.h"
#include "models/vgg.h"

namespace s2h::models {

namespace {
struct Entry {
  std::function<ModulePtr(const ModelConfig&)> make;
  const char* help;
  bool text = false;
};

const std::map<std::string, Entry>& table() {
  static const std::map<std::string, Entry> t = {
      {"cnn-small", {[](const ModelConfig& c) { return std::make_shared<CnnSmall>(c); },
                     "3 conv-BN-ReLU blocks (32, 64, 64) for 28x28 grey images"}},
      // ---- resnet.h
      {"resnet20", {[](const ModelConfig& c) { return make_resnet("resnet20", c); }, "CIFAR ResNet-20 (3 stages of 3 basic blocks, 16-32-64)"}},
      {"resnet56", {[](const ModelConfig& c) { return make_resnet("resnet56", c); }, "CIFAR ResNet-56 (3 stages of 9 basic blocks, 16-32-64)"}},
      {"resnet18", {[](const ModelConfig& c) { return make_resnet("resnet18", c); }, "ResNet-18 (basic blocks 2-2-2-2, 64-512)"}},
      {"resnet50", {[](const ModelConfig& c) { return make_resnet("resnet50", c); }, "ResNet-50 (bottlenecks 3-4-6-3, 256-2048)"}},
      {"wrn28-10", {[](const ModelConfig& c) { return make_resnet("wrn28-10", c); }, "Wide ResNet-28-10 (pre-activation, 160-320-640)"}},
      // ---- mobilenet.h
      {"mobilenetv2", {[](const ModelConfig& c) { return make_mobilenet("mobilenetv2", c); }, "MobileNetV2 (inverted residuals, ReLU6)"}},
      {"mobilenetv3-large", {[](const ModelConfig& c) { return make_mobilenet("mobilenetv3-large", c); }, "MobileNetV3-Large (hardswish, squeeze-excite)"}},
      {"mobilenetv3-small", {[](const ModelConfig& c) { return make_mobilenet("mobilenetv3-small", c); }, "MobileNetV3-Small (hardswish, squeeze-excite)"}},
      // ---- vgg.h
      {"vgg16-bn", {[](const ModelConfig& c) { return make_vgg("vgg16-bn", c); }, "VGG-16 with batch norm (13 convs)"}},
      // ---- transformer.h
      {"vit-tiny", {[](const ModelConfig& c) { return make_transformer("vit-tiny", c); }, "ViT-Tiny (dim 192, depth 12, 3 heads)"}},
      {"vit-small", {[](const ModelConfig& c) { return make_transformer("vit-small", c); }, "ViT-Small (dim 384, depth 12, 6 heads)"}},
      {"text-transformer", {[](const ModelConfig& c) { return make_transformer("text-transformer", c); },
                            "Transformer encoder for text classification (token ids in)", true}},
  };
  return t;
}
}  // namespace

std::vector<std::string> model_names() {
  std::vector<std::string> names;
  for (const auto& [name, e] : table()) names.push_back(name);
  return names;
}

bool is_text_model(const std::string& name) {
  auto it = table().find(name);
  return it != table().end() && it->second.text;
}

std::string model_help(const std::string& name) {
  auto it = table().find(name);
  return it == table().end() ? std::string() : it->second.help;
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
  return it->second.make(config);
}

}  // namespace s2h::models
