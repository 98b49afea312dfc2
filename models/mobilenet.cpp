#include "models/mobilenet.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <vector>

namespace s2h::models {

namespace {

// torchvision's _make_divisible: v rounded to the nearest multiple of `divisor`,
// at least `divisor`, and never more than 10% below v.
int64_t make_divisible(double v, int64_t divisor) {
  int64_t r = std::max<int64_t>(divisor, static_cast<int64_t>(v + divisor / 2.0) / divisor * divisor);
  if (static_cast<double>(r) < 0.9 * v) r += divisor;
  return r;
}

// One bneck block. MobileNetV2's inverted residuals are the special case
// kernel 3, no squeeze-excite, ReLU6.
struct BlockSpec {
  int64_t in, kernel, expanded, out;
  bool se;
  ActKind act;
  int64_t stride;
};

std::vector<BlockSpec> mobilenetv2_blocks(bool small_input) {
  struct Setting {
    int64_t t, c, n, s;
  };
  const Setting settings[] = {{1, 16, 1, 1}, {6, 24, 2, small_input ? 1 : 2}, {6, 32, 3, 2}, {6, 64, 4, 2},
                              {6, 96, 3, 1}, {6, 160, 3, 2},                   {6, 320, 1, 1}};
  std::vector<BlockSpec> blocks;
  int64_t in = 32;
  for (const Setting& st : settings)
    for (int64_t i = 0; i < st.n; ++i) {
      blocks.push_back({in, 3, in * st.t, st.c, false, ActKind::ReLU6, i == 0 ? st.s : 1});
      in = st.c;
    }
  return blocks;
}

// torchvision's bneck_conf tables: in, kernel, expanded, out, squeeze-excite, activation, stride.
std::vector<BlockSpec> mobilenetv3_blocks(bool large) {
  constexpr ActKind RE = ActKind::ReLU, HS = ActKind::HardSwish;
  if (large)
    return {{16, 3, 16, 16, false, RE, 1},    {16, 3, 64, 24, false, RE, 2},    {24, 3, 72, 24, false, RE, 1},
            {24, 5, 72, 40, true, RE, 2},     {40, 5, 120, 40, true, RE, 1},    {40, 5, 120, 40, true, RE, 1},
            {40, 3, 240, 80, false, HS, 2},   {80, 3, 200, 80, false, HS, 1},   {80, 3, 184, 80, false, HS, 1},
            {80, 3, 184, 80, false, HS, 1},   {80, 3, 480, 112, true, HS, 1},   {112, 3, 672, 112, true, HS, 1},
            {112, 5, 672, 160, true, HS, 2},  {160, 5, 960, 160, true, HS, 1},  {160, 5, 960, 160, true, HS, 1}};
  return {{16, 3, 16, 16, true, RE, 2},   {16, 3, 72, 24, false, RE, 2},  {24, 3, 88, 24, false, RE, 1},
          {24, 5, 96, 40, true, HS, 2},   {40, 5, 240, 40, true, HS, 1},  {40, 5, 240, 40, true, HS, 1},
          {40, 5, 120, 48, true, HS, 1},  {48, 5, 144, 48, true, HS, 1},  {48, 5, 288, 96, true, HS, 2},
          {96, 5, 576, 96, true, HS, 1},  {96, 5, 576, 96, true, HS, 1}};
}

// Kaiming-normal (fan_out) conv with "same" padding; its bias (if any) is 0.
std::shared_ptr<Conv2d> conv(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t groups, bool bias) {
  Conv2d::Options o;
  o.stride = stride;
  o.padding = (kernel - 1) / 2;
  o.groups = groups;
  o.bias = bias;
  auto c = std::make_shared<Conv2d>(in, out, kernel, o);
  init_kaiming_normal(c->weight, out * kernel * kernel);
  if (bias) c->bias.detach().zero_();
  return c;
}

std::shared_ptr<Linear> linear(int64_t in, int64_t out) {
  auto l = std::make_shared<Linear>(in, out);
  init_normal(l->weight, 0.0, 0.01);
  l->bias.detach().zero_();
  return l;
}

struct Norm {
  double eps, momentum;
};

// torchvision's Conv2dNormActivation (conv 0, BN 1, activation 2), with a
// ChannelMask appended when `mask` (index 3, or 2 without an activation).
std::shared_ptr<Sequential> conv_norm_act(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t groups,
                                          std::optional<ActKind> act, Norm norm, bool mask) {
  auto s = std::make_shared<Sequential>();
  s->add(conv(in, out, kernel, stride, groups, false));
  s->add(std::make_shared<BatchNorm>(out, norm.eps, norm.momentum));
  if (act) s->add(std::make_shared<Activation>(*act));
  if (mask) s->add(std::make_shared<ChannelMask>(out));
  return s;
}

// The open output stream while the blocks are built: it starts at the stem
// (block 0) or at a block that changes the shape, and gains a producer with
// every block that adds into it.
struct Stream {
  ChannelGroup group;
  int64_t first = 0, last = 0;  // blocks that write into it
  size_t at = 0;                // its place in the group list
  void close(std::vector<ChannelGroup>& groups) {
    if (group.kind == GroupKind::Residual)
      group.name = fmt::format("features.{}-{}.residual", first, last);
    else
      group.name = first == 0 ? "features.0" : fmt::format("features.{}.project", first);
    groups.insert(groups.begin() + static_cast<std::ptrdiff_t>(at), group);
  }
};

}  // namespace

// ------------------------------------------------------------------ blocks
SqueezeExcitation::SqueezeExcitation(int64_t channels, int64_t squeeze) {
  fc1 = register_module("fc1", conv(channels, squeeze, 1, 1, 1, true));
  fc2 = register_module("fc2", conv(squeeze, channels, 1, 1, 1, true));
}

Tensor SqueezeExcitation::forward(const Tensor& x) {
  Tensor s = mean(x, {1, 2}, /*keepdim=*/true);  // [N, 1, 1, C]
  s = hardsigmoid((*fc2)(relu((*fc1)(s))));
  return mul(x, s);
}

std::string SqueezeExcitation::describe() const {
  return fmt::format("SqueezeExcitation({}->{})", fc1->in_channels, fc1->out_channels);
}

InvertedResidual::InvertedResidual(const std::string& seq_name, std::shared_ptr<Sequential> l, bool res)
    : layers(std::move(l)), residual(res) {
  register_module(seq_name, layers);
}

Tensor InvertedResidual::forward(const Tensor& x) {
  Tensor h = (*layers)(x);
  return residual ? add(x, h) : h;
}

std::string InvertedResidual::describe() const {
  return residual ? "InvertedResidual(+input)" : "InvertedResidual";
}

// ------------------------------------------------------------------ MobileNet
MobileNet::MobileNet(const std::string& name, const ModelConfig& cfg) : name_(name) {
  const bool v2 = name == "mobilenetv2";
  S2H_CHECK(v2 || name == "mobilenetv3-large" || name == "mobilenetv3-small",
            "make_mobilenet: unknown model '{}' (mobilenetv2, mobilenetv3-large, mobilenetv3-small)", name);
  S2H_CHECK(cfg.in_channels > 0 && cfg.image_size > 0, "{}: bad input {}x{}x{}", name, cfg.in_channels,
            cfg.image_size, cfg.image_size);
  const bool small_input = cfg.image_size <= 64;
  const std::vector<BlockSpec> blocks =
      v2 ? mobilenetv2_blocks(small_input) : mobilenetv3_blocks(name == "mobilenetv3-large");
  const Norm norm = v2 ? Norm{1e-5, 0.1} : Norm{1e-3, 0.01};
  const ActKind stem_act = v2 ? ActKind::ReLU6 : ActKind::HardSwish;
  const std::string seq_name = v2 ? "conv" : "block";

  features_ = register_module("features", std::make_shared<Sequential>());
  // The stem's output needs its own mask only where it also flows through the
  // first block's identity shortcut (MobileNetV3-Large); elsewhere only the
  // depthwise conv reads it and is masked after its BN.
  const int64_t stem_width = blocks[0].in;
  const bool first_residual = blocks[0].stride == 1 && blocks[0].in == blocks[0].out;
  features_->add(conv_norm_act(cfg.in_channels, stem_width, 3, small_input ? 1 : 2, 1, stem_act, norm,
                               first_residual));
  Stream stream;
  stream.group.channels = stem_width;
  stream.group.producers = {"features.0.0"};
  stream.group.followers = {"features.0.1"};
  if (first_residual) stream.group.masks = {"features.0.3"};
  stream.group.prunable = false;
  stream.group.note = "holds the stem output";

  for (size_t k = 0; k < blocks.size(); ++k) {
    const BlockSpec& b = blocks[k];
    const int64_t n = static_cast<int64_t>(k) + 1;  // index in features
    const std::string p = fmt::format("features.{}.{}.", n, seq_name);
    auto seq = std::make_shared<Sequential>();
    auto at = [&](const std::string& rest) { return p + std::to_string(seq->children().size()) + rest; };
    // The channels the depthwise conv works on: the expand conv's, or the incoming stream's.
    ChannelGroup expand;
    ChannelGroup* hidden = &stream.group;
    if (b.expanded != b.in) {
      stream.group.consumers.push_back(at(".0"));
      expand.name = fmt::format("features.{}.expand", n);
      expand.channels = b.expanded;
      expand.producers = {at(".0")};
      expand.followers = {at(".1")};
      hidden = &expand;
      seq->add(conv_norm_act(b.in, b.expanded, 1, 1, 1, b.act, norm, false));
    }
    hidden->followers.push_back(at(".0"));
    hidden->followers.push_back(at(".1"));
    hidden->masks.push_back(at(".3"));
    seq->add(conv_norm_act(b.expanded, b.expanded, b.kernel, b.stride, b.expanded, b.act, norm, true));
    if (b.se) {
      hidden->followers.push_back(at(""));
      hidden->consumers.push_back(at(".fc1"));
      seq->add(std::make_shared<SqueezeExcitation>(b.expanded, make_divisible(static_cast<double>(b.expanded / 4), 8)));
    }
    // Project conv and BN: plain entries of the list in MobileNetV2, a conv-BN Sequential in MobileNetV3.
    std::string proj, proj_bn, proj_mask;
    if (v2) {
      proj = at("");
      proj_bn = p + std::to_string(seq->children().size() + 1);
      proj_mask = p + std::to_string(seq->children().size() + 2);
      seq->add(conv(b.expanded, b.out, 1, 1, 1, false));
      seq->add(std::make_shared<BatchNorm>(b.out, norm.eps, norm.momentum));
      seq->add(std::make_shared<ChannelMask>(b.out));
    } else {
      proj = at(".0");
      proj_bn = at(".1");
      proj_mask = at(".2");
      seq->add(conv_norm_act(b.expanded, b.out, 1, 1, 1, std::nullopt, norm, true));
    }
    hidden->consumers.push_back(proj);
    if (hidden == &expand) groups_.push_back(expand);

    const bool residual = b.stride == 1 && b.in == b.out;
    features_->add(std::make_shared<InvertedResidual>(seq_name, seq, residual));
    if (residual) {
      stream.group.kind = GroupKind::Residual;
      if (!stream.group.prunable) stream.group.note = "holds the stem output: the stem writes into this stream";
    } else {
      stream.close(groups_);
      stream = Stream{};
      stream.group.channels = b.out;
      stream.first = n;
      stream.at = groups_.size();
    }
    stream.group.producers.push_back(proj);
    stream.group.followers.push_back(proj_bn);
    stream.group.masks.push_back(proj_mask);
    stream.last = n;
  }

  // The last conv, the pool and the classifier.
  const int64_t last_in = blocks.back().out;
  const int64_t last_width = v2 ? 1280 : 6 * last_in;
  const std::string last = fmt::format("features.{}", blocks.size() + 1);
  stream.group.consumers.push_back(last + ".0");
  stream.close(groups_);
  features_->add(conv_norm_act(last_in, last_width, 1, 1, 1, stem_act, norm, true));
  ChannelGroup g;
  g.name = last;
  g.channels = last_width;
  g.producers = {last + ".0"};
  g.followers = {last + ".1"};
  g.masks = {last + ".3"};
  g.note = "the classifier reads these channels after the global average pool";
  classifier_ = register_module("classifier", std::make_shared<Sequential>());
  if (v2) {
    classifier_->add(std::make_shared<Dropout>(0.2));
    classifier_->add(linear(last_width, cfg.num_classes));
    g.consumers = {"classifier.1"};
  } else {
    const int64_t hidden = name == "mobilenetv3-large" ? 1280 : 1024;
    classifier_->add(linear(last_width, hidden));
    classifier_->add(std::make_shared<Activation>(ActKind::HardSwish));
    classifier_->add(std::make_shared<Dropout>(0.2));
    classifier_->add(linear(hidden, cfg.num_classes));
    g.consumers = {"classifier.0"};
  }
  groups_.push_back(g);
}

Tensor MobileNet::forward(const Tensor& x) {
  const Tensor h = (*features_)(x);
  return (*classifier_)(mean(h, {1, 2}));  // global average pool: [N, H, W, C] -> [N, C]
}

// ------------------------------------------------------------------ factory
ModulePtr make_mobilenet(const std::string& name, const ModelConfig& config) {
  return std::make_shared<MobileNet>(name, config);
}

}  // namespace s2h::models
