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
  add(std::make_shared<ChannelMask>(32));
  add(std::make_shared<MaxPool2d>(2));
  add(conv3x3(32, 64));
  add(std::make_shared<BatchNorm>(64));
  add(std::make_shared<Activation>(ActKind::ReLU));
  add(std::make_shared<ChannelMask>(64));
  add(std::make_shared<MaxPool2d>(2));
  add(conv3x3(64, 64));
  add(std::make_shared<BatchNorm>(64));
  add(std::make_shared<Activation>(ActKind::ReLU));
  add(std::make_shared<ChannelMask>(64));
  add(std::make_shared<Flatten>(1));
  add(std::make_shared<Linear>(64 * s * s, cfg.num_classes));
}

std::vector<ChannelGroup> CnnSmall::channel_groups() const {
  auto group = [](const std::string& conv, int64_t c, const std::string& next) {
    const int i = std::stoi(conv);
    ChannelGroup g;
    g.name = conv;
    g.channels = c;
    g.producers = {conv};
    g.followers = {std::to_string(i + 1)};
    g.masks = {std::to_string(i + 3)};
    g.consumers = {next};
    return g;
  };
  std::vector<ChannelGroup> gs{group("0", 32, "5"), group("5", 64, "10"), group("10", 64, "15")};
  gs.back().note = "the classifier reads these channels through an NHWC flatten (H*W features per channel)";
  return gs;
}

}  // namespace s2h::models
