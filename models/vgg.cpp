#include "models/vgg.h"

#include <memory>

namespace s2h::models {

namespace {

constexpr int64_t kPool = 0;  // "M" in the configuration
const std::vector<int64_t> kVgg16 = {64,  64,  kPool, 128, 128, kPool, 256, 256, 256, kPool,
                                     512, 512, 512,   kPool, 512, 512, 512, kPool};

std::shared_ptr<Linear> linear(int64_t in, int64_t out) {
  auto l = std::make_shared<Linear>(in, out);
  init_normal(l->weight, 0.0, 0.01);
  l->bias.detach().zero_();
  return l;
}

}  // namespace

VGG::VGG(const std::string& name, const ModelConfig& cfg) : name_(name) {
  S2H_CHECK(name == "vgg16-bn", "make_vgg: unknown model '{}' (vgg16-bn)", name);
  const int64_t s = cfg.image_size;
  const bool small = s <= 64;
  S2H_CHECK((small && s % 32 == 0 && s > 0) || s >= 224,
            "{}: image size {} is not supported (32 or 64 with the one-layer classifier, or at least 224)", name, s);
  S2H_CHECK(cfg.in_channels > 0, "{}: bad number of input channels {}", name, cfg.in_channels);

  features_ = register_module("features", std::make_shared<Sequential>());
  masks_ = register_module("masks", std::make_shared<Sequential>());
  int64_t in = cfg.in_channels;
  for (int64_t v : kVgg16) {
    if (v == kPool) {
      features_->add(std::make_shared<MaxPool2d>(2));
      mask_after_.push_back(nullptr);
      continue;
    }
    const std::string conv_name = fmt::format("features.{}", features_->children().size());
    Conv2d::Options o;
    o.padding = 1;
    auto c = std::make_shared<Conv2d>(in, v, 3, o);
    init_kaiming_normal(c->weight, v * 3 * 3);
    c->bias.detach().zero_();
    auto mask = std::make_shared<ChannelMask>(v);
    features_->add(c);
    features_->add(std::make_shared<BatchNorm>(v));
    features_->add(std::make_shared<Activation>(ActKind::ReLU));
    mask_after_.insert(mask_after_.end(), {nullptr, nullptr, mask});

    if (!groups_.empty()) groups_.back().consumers = {conv_name};
    ChannelGroup g;
    g.name = conv_name;
    g.channels = v;
    g.producers = {conv_name};
    g.followers = {fmt::format("features.{}", features_->children().size() - 2)};
    g.masks = {fmt::format("masks.{}", masks_->children().size())};
    if (groups_.empty()) {
      g.prunable = false;
      g.note = "holds the stem output";
    }
    masks_->add(mask);
    groups_.push_back(g);
    in = v;
  }

  ChannelGroup& last = groups_.back();
  if (small) {
    const int64_t f = s / 32;
    classifier_ = register_module("classifier", linear(in * f * f, cfg.num_classes));
    last.consumers = {"classifier"};
    last.note = "the classifier reads these channels through an NHWC flatten (H*W features per channel)";
  } else {
    avgpool_ = register_module("avgpool", std::make_shared<AdaptiveAvgPool2d>(7, 7));
    auto cls = std::make_shared<Sequential>();
    cls->add(linear(in * 7 * 7, 4096));
    cls->add(std::make_shared<Activation>(ActKind::ReLU));
    cls->add(std::make_shared<Dropout>(0.5));
    cls->add(linear(4096, 4096));
    cls->add(std::make_shared<Activation>(ActKind::ReLU));
    cls->add(std::make_shared<Dropout>(0.5));
    cls->add(linear(4096, cfg.num_classes));
    classifier_ = register_module("classifier", cls);
    last.consumers = {"classifier.0"};
    last.note = "the classifier reads these channels after a 7x7 average pool and an NHWC flatten";
  }
}

Tensor VGG::forward(const Tensor& x) {
  // features is run entry by entry so that each conv's mask can follow its ReLU.
  Tensor h = x;
  const auto& layers = features_->children();
  for (size_t i = 0; i < layers.size(); ++i) {
    h = (*layers[i].second)(h);
    if (!mask_after_[i]) continue;
    // A mask that feeds the next conv directly is folded into it (one masked conv on CUDA).
    auto* next = i + 1 < layers.size() ? dynamic_cast<Conv2d*>(layers[i + 1].second.get()) : nullptr;
    if (next) {
      h = mask_then_conv(*mask_after_[i], *next, h);
      ++i;
      if (mask_after_[i]) h = (*mask_after_[i])(h);
    } else {
      h = (*mask_after_[i])(h);
    }
  }
  if (avgpool_) h = (*avgpool_)(h);
  return (*classifier_)(h.flatten(1));
}

ModulePtr make_vgg(const std::string& name, const ModelConfig& config) { return std::make_shared<VGG>(name, config); }

}  // namespace s2h::models
