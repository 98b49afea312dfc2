#include "models/groups.h"

#include <map>
#include <set>

#include "engine/layers.h"
#include "engine/precision.h"

namespace s2h::models {

const char* group_kind_name(GroupKind k) {
  switch (k) {
    case GroupKind::Channels: return "channels";
    case GroupKind::Residual: return "residual";
    case GroupKind::Heads: return "heads";
    case GroupKind::Hidden: return "hidden";
    case GroupKind::Embed: return "embed";
  }
  return "?";
}

std::vector<ChannelGroup> channel_groups(const Module& model) {
  const auto* g = dynamic_cast<const HasChannelGroups*>(&model);
  S2H_CHECK(g != nullptr, "this model ({}) exports no channel groups", model.describe());
  return g->channel_groups();
}

namespace {

int64_t out_width(const Module* m) {
  if (const auto* c = dynamic_cast<const Conv2d*>(m)) return c->out_channels;
  if (const auto* l = dynamic_cast<const Linear*>(m)) return l->out_features;
  return -1;
}

int64_t in_width(const Module* m) {
  if (const auto* c = dynamic_cast<const Conv2d*>(m)) return c->in_channels;
  if (const auto* l = dynamic_cast<const Linear*>(m)) return l->in_features;
  return -1;
}

}  // namespace

void validate_channel_groups(const Module& model, const std::vector<ChannelGroup>& groups) {
  std::map<std::string, const Module*> mods;
  for (auto& [name, m] : model.named_modules()) mods[name] = m;
  std::set<std::string> group_names;
  for (const ChannelGroup& g : groups) {
    S2H_CHECK(!g.name.empty() && group_names.insert(g.name).second, "channel groups: empty or repeated name '{}'",
              g.name);
    S2H_CHECK(g.channels > 0 && g.unit > 0, "channel group {}: channels {} and unit {} must be positive", g.name,
              g.channels, g.unit);
    S2H_CHECK(!g.producers.empty(), "channel group {}: no producer", g.name);
    const int64_t width = g.channels * g.unit;
    auto find = [&](const std::string& n, const char* role) {
      auto it = mods.find(n);
      S2H_CHECK(it != mods.end(), "channel group {}: {} '{}' is not a module of the model", g.name, role, n);
      return it->second;
    };
    auto unique = [&](const std::vector<std::string>& names, const char* role) {
      std::set<std::string> seen;
      for (const auto& n : names) S2H_CHECK(seen.insert(n).second, "channel group {}: {} '{}' repeats", g.name, role, n);
    };
    unique(g.producers, "producer");
    unique(g.consumers, "consumer");
    unique(g.followers, "follower");
    unique(g.masks, "mask");
    for (const auto& n : g.producers) {
      const Module* m = find(n, "producer");
      S2H_CHECK(out_width(m) == width, "channel group {}: producer {} ({}) has {} outputs, the group {}", g.name, n,
                m->describe(), out_width(m), width);
    }
    for (const auto& n : g.consumers) {
      const Module* m = find(n, "consumer");
      const int64_t w = in_width(m);
      // A linear layer after a spatial flatten reads width * (H*W) features.
      S2H_CHECK(w > 0 && w % width == 0, "channel group {}: consumer {} ({}) has {} inputs, not a multiple of {}",
                g.name, n, m->describe(), w, width);
    }
    for (const auto& n : g.followers) {
      const Module* m = find(n, "follower");
      if (const auto* bn = dynamic_cast<const BatchNorm*>(m))
        S2H_CHECK(bn->channels == width, "channel group {}: follower {} has {} channels, the group {}", g.name, n,
                  bn->channels, width);
      else if (const auto* ln = dynamic_cast<const LayerNorm*>(m))
        S2H_CHECK(ln->channels == width, "channel group {}: follower {} has {} channels, the group {}", g.name, n,
                  ln->channels, width);
      else if (const auto* c = dynamic_cast<const Conv2d*>(m))
        S2H_CHECK(c->options.groups == c->in_channels && c->in_channels == width,
                  "channel group {}: follower conv {} must be depthwise over {} channels ({})", g.name, n, width,
                  c->describe());
    }
    for (const auto& n : g.masks) {
      const auto* mk = dynamic_cast<const ChannelMask*>(find(n, "mask"));
      S2H_CHECK(mk != nullptr, "channel group {}: mask '{}' is not a ChannelMask", g.name, n);
      S2H_CHECK(mk->channels == g.channels && mk->unit == g.unit,
                "channel group {}: mask {} is {}x{}, the group {}x{}", g.name, n, mk->channels, mk->unit, g.channels,
                g.unit);
    }
  }
}

Tensor ChannelMask::forward(const Tensor& x) {
  if (!scale.defined()) return x;
  S2H_CHECK(x.dim() >= 1 && x.size(-1) == channels * unit, "{}: input {} does not end in {} features", describe(),
            x.str(), channels * unit);
  S2H_CHECK(scale.numel() == channels, "{}: scale has {} values, expected {}", describe(), scale.numel(), channels);
  // The scale may live elsewhere (the pruner keeps mask logits on the CPU)
  // and in fp32 while bf16 activations pass: the casts are autograd ops.
  Tensor s = scale.reshape({channels}).to(x.device()).to(x.dtype());
  if (unit > 1) s = reshape(expand(reshape(s, {channels, 1}), {channels, unit}), {channels * unit});
  return mul(x, s);
}

Tensor mask_then_conv(ChannelMask& mask, Conv2d& conv, const Tensor& h) {
  const bool fold = mask.scale.defined() && mask.unit == 1 && fused_kernels_on(h.device()) &&
                    conv.options.groups == 1 && conv.options.dilation == 1 && !conv.in_scale.defined();
  if (!fold) return conv(mask(h));
  S2H_CHECK(mask.scale.numel() == mask.channels && h.dim() >= 1 && h.size(-1) == mask.channels,
            "{}: input {} / scale {} do not match {} channels", mask.describe(), h.str(), mask.scale.str(),
            mask.channels);
  conv.in_scale = mask.scale;
  try {
    Tensor y = conv(h);
    conv.in_scale = Tensor();
    return y;
  } catch (...) {
    conv.in_scale = Tensor();
    throw;
  }
}

std::string ChannelMask::describe() const {
  return unit > 1 ? fmt::format("ChannelMask({}x{})", channels, unit) : fmt::format("ChannelMask({})", channels);
}

}  // namespace s2h::models
