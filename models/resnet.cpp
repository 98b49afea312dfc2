#include "models/resnet.h"

#include <memory>

namespace s2h::models {

namespace {

// Bias-free conv with "same" padding, Kaiming-normal (fan_out) as torchvision's ResNets.
std::shared_ptr<Conv2d> conv(int64_t in, int64_t out, int64_t kernel, int64_t stride) {
  Conv2d::Options o;
  o.stride = stride;
  o.padding = (kernel - 1) / 2;
  o.bias = false;
  auto c = std::make_shared<Conv2d>(in, out, kernel, o);
  init_kaiming_normal(c->weight, out * kernel * kernel);
  return c;
}

// 1x1 conv (stride) - BN - mask: the shortcut of a block that changes the shape.
std::shared_ptr<Sequential> make_downsample(int64_t in, int64_t out, int64_t stride) {
  return std::make_shared<Sequential>(std::initializer_list<ModulePtr>{
      conv(in, out, 1, stride), std::make_shared<BatchNorm>(out), std::make_shared<ChannelMask>(out)});
}

ChannelGroup conv_group(const std::string& conv, int64_t channels, std::vector<std::string> followers,
                        const std::string& mask, const std::string& consumer) {
  ChannelGroup g;
  g.name = conv;
  g.channels = channels;
  g.producers = {conv};
  g.followers = std::move(followers);
  g.masks = {mask};
  g.consumers = {consumer};
  return g;
}

// Collects the groups of a residual network while its blocks are built. One
// stream is open at a time: it starts with the stem's output, and a block
// whose shortcut is a conv ends it and starts the next one. Streams are listed
// before the groups of the blocks that write into them.
class GroupBuilder {
 public:
  void start_stem(int64_t channels, std::vector<std::string> followers, std::vector<std::string> masks) {
    stream_.name = "conv1";
    stream_.kind = GroupKind::Channels;
    stream_.channels = channels;
    stream_.producers = {"conv1"};
    stream_.followers = std::move(followers);
    stream_.masks = std::move(masks);
    stream_.prunable = false;
    stream_.note = "holds the stem output";
    stream_at_ = groups_.size();
  }
  ChannelGroup& stream() { return stream_; }
  // A block of layer `stage` adds into the open stream through an identity
  // shortcut. When that stream is the stem's output, it becomes the layer's
  // residual stream (still not prunable: the stem writes into it).
  void join(int stage) {
    if (stream_.kind == GroupKind::Residual) return;
    stream_.name = fmt::format("layer{}.residual", stage);
    stream_.kind = GroupKind::Residual;
    stream_.note = "holds the stem output: conv1 writes into this residual stream";
  }
  // The open stream ends; layer `stage`'s residual stream starts with a shortcut conv.
  void restart(int stage, int64_t channels, const std::string& producer, std::vector<std::string> followers,
               const std::string& mask) {
    close();
    stream_ = ChannelGroup{};
    stream_.name = fmt::format("layer{}.residual", stage);
    stream_.kind = GroupKind::Residual;
    stream_.channels = channels;
    stream_.producers = {producer};
    stream_.followers = std::move(followers);
    stream_.masks = {mask};
    stream_at_ = groups_.size();
  }
  void add(ChannelGroup g) { groups_.push_back(std::move(g)); }
  std::vector<ChannelGroup> finish(const std::string& classifier, std::string note) {
    stream_.consumers.push_back(classifier);
    if (stream_.note.empty()) stream_.note = std::move(note);
    close();
    return std::move(groups_);
  }

 private:
  void close() { groups_.insert(groups_.begin() + static_cast<std::ptrdiff_t>(stream_at_), stream_); }
  std::vector<ChannelGroup> groups_;
  ChannelGroup stream_;
  size_t stream_at_ = 0;
};

struct Arch {
  bool bottleneck;
  std::vector<int64_t> blocks, widths;
  int64_t stem;
  bool cifar;  // resnet20/56: no ImageNet stem
};

Arch arch_of(const std::string& name) {
  if (name == "resnet20") return {false, {3, 3, 3}, {16, 32, 64}, 16, true};
  if (name == "resnet56") return {false, {9, 9, 9}, {16, 32, 64}, 16, true};
  if (name == "resnet18") return {false, {2, 2, 2, 2}, {64, 128, 256, 512}, 64, false};
  if (name == "resnet50") return {true, {3, 4, 6, 3}, {64, 128, 256, 512}, 64, false};
  S2H_FAIL("make_resnet: unknown model '{}' (resnet20, resnet56, resnet18, resnet50, wrn28-10)", name);
}

}  // namespace

// ------------------------------------------------------------------ blocks
BasicBlock::BasicBlock(int64_t in, int64_t out, int64_t stride) {
  conv1 = register_module("conv1", conv(in, out, 3, stride));
  bn1 = register_module("bn1", std::make_shared<BatchNorm>(out));
  mask1 = register_module("mask1", std::make_shared<ChannelMask>(out));
  conv2 = register_module("conv2", conv(out, out, 3, 1));
  bn2 = register_module("bn2", std::make_shared<BatchNorm>(out));
  mask2 = register_module("mask2", std::make_shared<ChannelMask>(out));
  if (stride != 1 || in != out) downsample = register_module("downsample", make_downsample(in, out, stride));
}

Tensor BasicBlock::forward(const Tensor& x) {
  Tensor h = relu((*bn1)((*conv1)(x)));
  h = (*mask2)((*bn2)(mask_then_conv(*mask1, *conv2, h)));
  return relu(add(h, downsample ? (*downsample)(x) : x));
}

std::string BasicBlock::describe() const {
  return fmt::format("BasicBlock({}->{}, stride {})", conv1->in_channels, conv2->out_channels,
                     conv1->options.stride);
}

Bottleneck::Bottleneck(int64_t in, int64_t planes, int64_t stride) {
  const int64_t out = planes * 4;
  conv1 = register_module("conv1", conv(in, planes, 1, 1));
  bn1 = register_module("bn1", std::make_shared<BatchNorm>(planes));
  mask1 = register_module("mask1", std::make_shared<ChannelMask>(planes));
  conv2 = register_module("conv2", conv(planes, planes, 3, stride));
  bn2 = register_module("bn2", std::make_shared<BatchNorm>(planes));
  mask2 = register_module("mask2", std::make_shared<ChannelMask>(planes));
  conv3 = register_module("conv3", conv(planes, out, 1, 1));
  bn3 = register_module("bn3", std::make_shared<BatchNorm>(out));
  mask3 = register_module("mask3", std::make_shared<ChannelMask>(out));
  if (stride != 1 || in != out) downsample = register_module("downsample", make_downsample(in, out, stride));
}

Tensor Bottleneck::forward(const Tensor& x) {
  Tensor h = relu((*bn1)((*conv1)(x)));
  h = relu((*bn2)(mask_then_conv(*mask1, *conv2, h)));
  h = (*mask3)((*bn3)(mask_then_conv(*mask2, *conv3, h)));
  return relu(add(h, downsample ? (*downsample)(x) : x));
}

std::string Bottleneck::describe() const {
  return fmt::format("Bottleneck({}->{}->{}, stride {})", conv1->in_channels, conv1->out_channels,
                     conv3->out_channels, conv2->options.stride);
}

// ------------------------------------------------------------------ ResNet
ResNet::ResNet(const std::string& name, const ModelConfig& cfg) : name_(name) {
  const Arch a = arch_of(name);
  S2H_CHECK(!(a.cifar && cfg.imagenet_stem), "{}: a CIFAR ResNet has no ImageNet stem (only resnet18 and resnet50)",
            name);
  S2H_CHECK(cfg.in_channels > 0 && cfg.image_size > 0, "{}: bad input {}x{}x{}", name, cfg.in_channels,
            cfg.image_size, cfg.image_size);
  GroupBuilder gb;
  conv1_ = register_module("conv1", cfg.imagenet_stem ? conv(cfg.in_channels, a.stem, 7, 2)
                                                      : conv(cfg.in_channels, a.stem, 3, 1));
  bn1_ = register_module("bn1", std::make_shared<BatchNorm>(a.stem));
  mask1_ = register_module("mask1", std::make_shared<ChannelMask>(a.stem));
  if (cfg.imagenet_stem) maxpool_ = register_module("maxpool", std::make_shared<MaxPool2d>(3, 2, 1));
  gb.start_stem(a.stem, {"bn1"}, {"mask1"});

  int64_t in = a.stem;
  for (size_t i = 0; i < a.blocks.size(); ++i) {
    const int stage = static_cast<int>(i) + 1;
    auto layer = register_module(fmt::format("layer{}", stage), std::make_shared<Sequential>());
    const int64_t width = a.widths[i];
    const int64_t out = a.bottleneck ? width * 4 : width;
    for (int64_t j = 0; j < a.blocks[i]; ++j) {
      const int64_t stride = (j == 0 && i > 0) ? 2 : 1;
      const std::string p = fmt::format("layer{}.{}", stage, j);
      gb.stream().consumers.push_back(p + ".conv1");
      if (stride != 1 || in != out) {
        gb.stream().consumers.push_back(p + ".downsample.0");
        gb.restart(stage, out, p + ".downsample.0", {p + ".downsample.1"}, p + ".downsample.2");
      } else {
        gb.join(stage);
      }
      std::string last;
      if (a.bottleneck) {
        layer->add(std::make_shared<Bottleneck>(in, width, stride));
        gb.add(conv_group(p + ".conv1", width, {p + ".bn1"}, p + ".mask1", p + ".conv2"));
        gb.add(conv_group(p + ".conv2", width, {p + ".bn2"}, p + ".mask2", p + ".conv3"));
        last = "3";
      } else {
        layer->add(std::make_shared<BasicBlock>(in, width, stride));
        gb.add(conv_group(p + ".conv1", width, {p + ".bn1"}, p + ".mask1", p + ".conv2"));
        last = "2";
      }
      ChannelGroup& s = gb.stream();
      s.producers.push_back(p + ".conv" + last);
      s.followers.push_back(p + ".bn" + last);
      s.masks.push_back(p + ".mask" + last);
      in = out;
    }
    layers_.push_back(layer);
  }
  fc_ = register_module("fc", std::make_shared<Linear>(in, cfg.num_classes));
  groups_ = gb.finish("fc", "the classifier reads these channels after the global average pool");
}

Tensor ResNet::forward(const Tensor& x) {
  Tensor h = (*mask1_)(relu((*bn1_)((*conv1_)(x))));
  if (maxpool_) h = (*maxpool_)(h);
  for (const auto& layer : layers_) h = (*layer)(h);
  return (*fc_)(mean(h, {1, 2}));  // global average pool: [N, H, W, C] -> [N, C]
}

// ------------------------------------------------------------------ Wide ResNet
WideBlock::WideBlock(int64_t in, int64_t out, int64_t stride) {
  bn1 = register_module("bn1", std::make_shared<BatchNorm>(in));
  in_mask = register_module("in_mask", std::make_shared<ChannelMask>(in));
  conv1 = register_module("conv1", conv(in, out, 3, stride));
  bn2 = register_module("bn2", std::make_shared<BatchNorm>(out));
  mask1 = register_module("mask1", std::make_shared<ChannelMask>(out));
  conv2 = register_module("conv2", conv(out, out, 3, 1));
  mask2 = register_module("mask2", std::make_shared<ChannelMask>(out));
  if (stride != 1 || in != out) {
    shortcut = register_module("shortcut", conv(in, out, 1, stride));
    shortcut_mask = register_module("shortcut_mask", std::make_shared<ChannelMask>(out));
  }
}

Tensor WideBlock::forward(const Tensor& x) {
  const Tensor h = (*in_mask)(relu((*bn1)(x)));
  Tensor o = relu((*bn2)((*conv1)(h)));
  o = (*mask2)(mask_then_conv(*mask1, *conv2, o));
  // The conv shortcut reads the activated input; the identity one the raw stream.
  return add(o, shortcut ? (*shortcut_mask)((*shortcut)(h)) : x);
}

std::string WideBlock::describe() const {
  return fmt::format("WideBlock({}->{}, stride {})", conv1->in_channels, conv1->out_channels, conv1->options.stride);
}

WideResNet::WideResNet(int64_t depth, int64_t widen, const ModelConfig& cfg) : depth_(depth), widen_(widen) {
  // With widen >= 2 the first block has a shortcut conv, so the stem's output reaches the blocks only through
  // layer1.0's bn1 and in_mask, and needs no mask of its own.
  S2H_CHECK(depth >= 10 && (depth - 4) % 6 == 0 && widen >= 2,
            "WideResNet: depth {} must be 6n+4 and the widen factor {} at least 2", depth, widen);
  S2H_CHECK(cfg.in_channels > 0 && cfg.image_size > 0, "{}: bad input {}x{}x{}", describe(), cfg.in_channels,
            cfg.image_size, cfg.image_size);
  const int64_t n = (depth - 4) / 6;
  conv1_ = register_module("conv1", conv(cfg.in_channels, 16, 3, 1));
  GroupBuilder gb;
  gb.start_stem(16, {}, {});
  int64_t in = 16;
  for (int i = 0; i < 3; ++i) {
    const int stage = i + 1;
    auto layer = register_module(fmt::format("layer{}", stage), std::make_shared<Sequential>());
    const int64_t out = (16 << i) * widen;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t stride = (j == 0 && i > 0) ? 2 : 1;
      const std::string p = fmt::format("layer{}.{}", stage, j);
      // The block's bn1 (and its mask) read the incoming stream, then conv1 and the shortcut conv.
      ChannelGroup& s = gb.stream();
      s.followers.push_back(p + ".bn1");
      s.masks.push_back(p + ".in_mask");
      s.consumers.push_back(p + ".conv1");
      if (stride != 1 || in != out) {
        s.consumers.push_back(p + ".shortcut");
        gb.restart(stage, out, p + ".shortcut", {}, p + ".shortcut_mask");
      } else {
        gb.join(stage);
      }
      layer->add(std::make_shared<WideBlock>(in, out, stride));
      gb.add(conv_group(p + ".conv1", out, {p + ".bn2"}, p + ".mask1", p + ".conv2"));
      gb.stream().producers.push_back(p + ".conv2");
      gb.stream().masks.push_back(p + ".mask2");
      in = out;
    }
    layers_.push_back(layer);
  }
  bn_ = register_module("bn", std::make_shared<BatchNorm>(in));
  mask_ = register_module("mask", std::make_shared<ChannelMask>(in));
  fc_ = register_module("fc", std::make_shared<Linear>(in, cfg.num_classes));
  gb.stream().followers.push_back("bn");
  gb.stream().masks.push_back("mask");
  groups_ = gb.finish("fc", "the classifier reads these channels after bn, ReLU and the global average pool");
}

Tensor WideResNet::forward(const Tensor& x) {
  Tensor h = (*conv1_)(x);
  for (const auto& layer : layers_) h = (*layer)(h);
  h = (*mask_)(relu((*bn_)(h)));
  return (*fc_)(mean(h, {1, 2}));
}

std::string WideResNet::describe() const { return fmt::format("WideResNet-{}-{}", depth_, widen_); }

// ------------------------------------------------------------------ factory
ModulePtr make_resnet(const std::string& name, const ModelConfig& config) {
  if (name == "wrn28-10") return std::make_shared<WideResNet>(28, 10, config);
  return std::make_shared<ResNet>(name, config);
}

}  // namespace s2h::models
