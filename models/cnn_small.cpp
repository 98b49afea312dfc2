#include "models/cnn_small.h"

#include <memory>

namespace s2h::models {

namespace {
std::shared_ptr<Conv2d> conv3x3(int64_t in, int64_t out) {
  Conv2d::Options o;
  o.padding = 1;
  o.bias = false;
  auto c = std::make_shared<Conv2d>(in, out, 3, o);
  init_kaiming_normal(c->weight, out * 3 * 3);  // fan_out, as torchvision's ResNets
  return c;
}
}  // namespace

CnnSmall::CnnSmall(const ModelConfig& cfg) {
  S2H_CHECK(cfg.image_size % 4 == 0 && cfg.image_size >= 4, "cnn-small: image size {} must be a multiple of 4",
            cfg.image_size);
  const int64_t s = cfg.image_size / 4;
  add(conv3x3(cfg.in_channels, 32));
  add(std::make_shared<BatchNorm>(32));
  add(std::make_shared<Activation>(ActKind::ReLU));
  add(std::make_shared<MaxPool2d>(2));
  add(conv3x3(32, 64));
  add(std::make_shared<BatchNorm>(64));
  add(std::make_shared<Activation>(ActKind::ReLU));
  add(std::make_shared<MaxPool2d>(2));
  add(conv3x3(64, 64));
  add(std::make_shared<BatchNorm>(64));
  add(std::make_shared<Activation>(ActKind::ReLU));
  add(std::make_shared<Flatten>(1));
  add(std::make_shared<Linear>(64 * s * s, cfg.num_classes));
}

}  // namespace s2h::models
