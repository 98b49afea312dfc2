#include "models/narrow.h"

#include <algorithm>
#include <set>

#include "engine/autograd.h"
#include "engine/layers.h"
#include "models/mobilenet.h"
#include "models/transformer.h"

namespace s2h::models {

namespace {

// How one shrinking step is carried out: rebinding with history (NarrowView)
// or replacing the data for good (narrow_model).
class Editor {
 public:
  virtual ~Editor() = default;
  // member <- member.index_select(axis, index)
  virtual void tensor(Tensor& member, int64_t axis, const Tensor& index) = 0;
  virtual void size(int64_t& field, int64_t value) = 0;
  // A Conv2d weight's rows (axis 0) or input columns (axis 3); by default
  // like tensor().
  virtual void conv_weight(Conv2d& c, int64_t axis, const Tensor& index) { tensor(c.weight, axis, index); }
  // The ChannelMask's scale in the narrow network (undefined: identity).
  virtual void mask_scale(Tensor& scale, const Tensor& value) = 0;
};

Tensor index_tensor(const std::vector<int64_t>& v) {
  return Tensor::from_vector(v, {static_cast<int64_t>(v.size())});
}

// Feature indices of the kept units (unit u -> features u*unit .. u*unit+unit-1),
// repeated for `repeat` consecutive blocks of `width` features (an NHWC flatten).
Tensor feature_index(const std::vector<int64_t>& units, int64_t unit, int64_t width, int64_t repeat) {
  std::vector<int64_t> idx;
  idx.reserve(units.size() * static_cast<size_t>(unit * repeat));
  for (int64_t p = 0; p < repeat; ++p)
    for (int64_t u : units)
      for (int64_t t = 0; t < unit; ++t) idx.push_back(p * width + u * unit + t);
  return index_tensor(idx);
}

template <class T>
T* find_as(const std::map<std::string, Module*>& mods, const std::string& name, const std::string& group,
           const char* role) {
  auto it = mods.find(name);
  S2H_CHECK(it != mods.end(), "narrowing group {}: {} '{}' is not a module of the model", group, role, name);
  T* m = dynamic_cast<T*>(it->second);
  S2H_CHECK(m != nullptr, "narrowing group {}: {} '{}' ({}) has an unexpected type", group, role, name,
            it->second->describe());
  return m;
}

void shrink_rows(Editor& ed, Module* m, const Tensor& feat, int64_t n_feat, const std::string& group,
                 const std::string& name) {
  if (auto* c = dynamic_cast<Conv2d*>(m)) {
    ed.conv_weight(*c, 0, feat);
    if (c->bias.defined()) ed.tensor(c->bias, 0, feat);
    ed.size(c->out_channels, n_feat);
  } else if (auto* l = dynamic_cast<Linear*>(m)) {
    ed.tensor(l->weight, 0, feat);
    if (l->bias.defined()) ed.tensor(l->bias, 0, feat);
    ed.size(l->out_features, n_feat);
  } else {
    S2H_FAIL("narrowing group {}: producer '{}' ({}) is neither Conv2d nor Linear", group, name, m->describe());
  }
}

void shrink(Module& model, const std::vector<ChannelGroup>& groups, const ChannelSelection& keep,
            const std::map<std::string, Tensor>& mask_scales, Editor& ed) {
  std::map<std::string, Module*> mods;
  for (auto& [name, m] : model.named_modules()) mods[name] = m;
  std::set<std::string> known;
  for (const ChannelGroup& g : groups) known.insert(g.name);
  for (const auto& [name, units] : keep)
    S2H_CHECK(known.count(name), "narrowing: '{}' is not a channel group of this model", name);
  for (const auto& [name, scale] : mask_scales)
    S2H_CHECK(known.count(name), "narrowing: mask scale for unknown group '{}'", name);

  for (const ChannelGroup& g : groups) {
    auto it = keep.find(g.name);
    if (it == keep.end()) continue;
    const std::vector<int64_t>& units = it->second;
    const int64_t n = static_cast<int64_t>(units.size());
    S2H_CHECK(n >= 1 && n <= g.channels, "narrowing group {}: {} units kept of {}", g.name, n, g.channels);
    std::set<int64_t> seen;
    for (int64_t u : units)
      S2H_CHECK(u >= 0 && u < g.channels && seen.insert(u).second,
                "narrowing group {}: unit index {} is out of range [0, {}) or repeated", g.name, u, g.channels);
    S2H_CHECK(g.prunable || n == g.channels, "narrowing group {}: the group is not prunable ({})", g.name, g.note);
    const int64_t width = g.channels * g.unit, n_feat = n * g.unit;
    const Tensor feat = feature_index(units, g.unit, width, 1);
    const Tensor unit_index = index_tensor(units);

    for (const std::string& name : g.producers) shrink_rows(ed, mods.at(name), feat, n_feat, g.name, name);
    for (const std::string& name : g.consumers) {
      Module* m = mods.count(name) ? mods.at(name) : nullptr;
      if (auto* c = dynamic_cast<Conv2d*>(m)) {
        S2H_CHECK(c->options.groups == 1, "narrowing group {}: consumer '{}' is a grouped conv", g.name, name);
        ed.conv_weight(*c, 3, feat);
        ed.size(c->in_channels, n_feat);
      } else if (auto* l = dynamic_cast<Linear*>(m)) {
        const int64_t repeat = l->in_features / width;
        S2H_CHECK(repeat * width == l->in_features, "narrowing group {}: consumer '{}' reads {} features, not a "
                  "multiple of {}", g.name, name, l->in_features, width);
        ed.tensor(l->weight, 1, feature_index(units, g.unit, width, repeat));
        ed.size(l->in_features, repeat * n_feat);
      } else {
        S2H_FAIL("narrowing group {}: consumer '{}' is neither Conv2d nor Linear", g.name, name);
      }
    }
    for (const std::string& name : g.followers) {
      Module* m = mods.count(name) ? mods.at(name) : nullptr;
      if (auto* bn = dynamic_cast<BatchNorm*>(m)) {
        for (Tensor* t : {&bn->weight, &bn->bias, &bn->running_mean, &bn->running_var})
          if (t->defined()) ed.tensor(*t, 0, feat);
        ed.size(bn->channels, n_feat);
      } else if (auto* ln = dynamic_cast<LayerNorm*>(m)) {
        for (Tensor* t : {&ln->weight, &ln->bias})
          if (t->defined()) ed.tensor(*t, 0, feat);
        ed.size(ln->channels, n_feat);
      } else if (auto* c = dynamic_cast<Conv2d*>(m)) {
        S2H_CHECK(c->options.groups == c->in_channels, "narrowing group {}: follower conv '{}' is not depthwise",
                  g.name, name);
        ed.tensor(c->weight, 0, feat);
        if (c->bias.defined()) ed.tensor(c->bias, 0, feat);
        ed.size(c->in_channels, n_feat);
        ed.size(c->out_channels, n_feat);
        ed.size(c->options.groups, n_feat);
      } else if (auto* se = dynamic_cast<SqueezeExcitation*>(m)) {
        // fc1 reads the group (it is a consumer); fc2's outputs scale it.
        shrink_rows(ed, se->fc2.get(), feat, n_feat, g.name, name + ".fc2");
      } else {
        S2H_FAIL("narrowing group {}: follower '{}' has a type this code does not know", g.name, name);
      }
    }
    for (const std::string& name : g.masks) {
      auto* mk = find_as<ChannelMask>(mods, name, g.name, "mask");
      ed.size(mk->channels, n);
      auto sc = mask_scales.find(g.name);
      if (sc != mask_scales.end()) {
        S2H_CHECK(sc->second.numel() == g.channels, "narrowing group {}: mask scale has {} values, expected {}",
                  g.name, sc->second.numel(), g.channels);
        ed.mask_scale(mk->scale, index_select(sc->second.reshape({g.channels}), 0, unit_index));
      } else {
        ed.mask_scale(mk->scale, Tensor());
      }
    }
    if (g.kind == GroupKind::Heads) {
      const std::string& q = g.producers.front();
      const auto dot = q.rfind('.');
      S2H_CHECK(dot != std::string::npos, "narrowing group {}: cannot find the attention module of '{}'", g.name, q);
      auto* attn = find_as<MultiheadSelfAttention>(mods, q.substr(0, dot), g.name, "attention");
      ed.size(attn->num_heads, n);
    }
  }
}

class ViewEditor : public Editor {
 public:
  explicit ViewEditor(std::vector<std::function<void()>>& restore) : restore_(restore) {}
  void tensor(Tensor& member, int64_t axis, const Tensor& index) override {
    save(member);
    member = index_select(member, axis, index);
  }
  void size(int64_t& field, int64_t value) override {
    if (saved_sizes_.insert(&field).second) restore_.push_back([&field, v = field] { field = v; });
    field = value;
  }
  void mask_scale(Tensor& scale, const Tensor& value) override {
    save(scale);
    scale = value;
  }
  // A plain conv keeps its full weight and computes only the kept rows and
  // columns through masked_conv2d (no gathered weight copy; on CUDA one hard
  // kernel whose time falls with the kept FLOPs).
  void conv_weight(Conv2d& c, int64_t axis, const Tensor& index) override {
    if (c.options.groups != 1 || c.options.dilation != 1) return tensor(c.weight, axis, index);
    Tensor& member = axis == 0 ? c.keep_out : c.keep_in;
    save(member);
    member = index;
  }

 private:
  void save(Tensor& member) {
    if (saved_tensors_.insert(&member).second) restore_.push_back([&member, v = member] { member = v; });
  }
  std::vector<std::function<void()>>& restore_;
  std::set<Tensor*> saved_tensors_;
  std::set<int64_t*> saved_sizes_;
};

class PermanentEditor : public Editor {
 public:
  void tensor(Tensor& member, int64_t axis, const Tensor& index) override {
    Tensor fresh;
    {
      NoGradGuard ng;
      fresh = index_select(member.detach(), axis, index).contiguous();
    }
    // Replace the data behind the handle, so the registered parameter (the same
    // TensorImpl) sees it; keep its autograd slot (requires_grad), drop its gradient.
    TensorImpl& impl = member.impl();
    auto autograd = impl.autograd;
    impl = fresh.impl();
    impl.autograd = autograd;
    if (autograd) autograd->grad = Tensor();
  }
  void size(int64_t& field, int64_t value) override { field = value; }
  void mask_scale(Tensor& scale, const Tensor& value) override {
    scale = value.defined() ? value.detach().contiguous() : Tensor();
  }
};

}  // namespace

ChannelSelection prefix_selection(const std::map<std::string, int64_t>& widths) {
  ChannelSelection sel;
  for (const auto& [name, w] : widths) {
    S2H_CHECK(w >= 1, "group {}: width {} must be at least 1", name, w);
    std::vector<int64_t>& v = sel[name];
    for (int64_t i = 0; i < w; ++i) v.push_back(i);
  }
  return sel;
}

NarrowView::NarrowView(Module& model, const std::vector<ChannelGroup>& groups, const ChannelSelection& keep,
                       const std::map<std::string, Tensor>& mask_scales) {
  ViewEditor ed(restore_);
  try {
    shrink(model, groups, keep, mask_scales, ed);
  } catch (...) {
    for (auto it = restore_.rbegin(); it != restore_.rend(); ++it) (*it)();
    throw;
  }
}

NarrowView::~NarrowView() {
  for (auto it = restore_.rbegin(); it != restore_.rend(); ++it) (*it)();
}

void narrow_model(Module& model, const std::vector<ChannelGroup>& groups, const ChannelSelection& keep) {
  PermanentEditor ed;
  shrink(model, groups, keep, {}, ed);
}

std::map<std::string, int64_t> selection_widths(const std::vector<ChannelGroup>& groups,
                                                const ChannelSelection& keep) {
  std::map<std::string, int64_t> w;
  for (const ChannelGroup& g : groups) {
    auto it = keep.find(g.name);
    w[g.name] = it == keep.end() ? g.channels : static_cast<int64_t>(it->second.size());
  }
  return w;
}

}  // namespace s2h::models

namespace s2h::models {

nlohmann::json Architecture::to_json(const std::vector<ChannelGroup>& groups) const {
  nlohmann::json gs = nlohmann::json::array();
  for (const ChannelGroup& g : groups) {
    auto it = widths.find(g.name);
    gs.push_back({{"name", g.name},
                  {"kind", group_kind_name(g.kind)},
                  {"unit", g.unit},
                  {"channels", g.channels},
                  {"kept", it == widths.end() ? g.channels : it->second},
                  {"prunable", g.prunable}});
  }
  return {{"format", kArchitectureFormat},
          {"model", model},
          {"config",
           {{"num_classes", config.num_classes},
            {"in_channels", config.in_channels},
            {"image_size", config.image_size},
            {"vocab_size", config.vocab_size},
            {"max_len", config.max_len},
            {"imagenet_stem", config.imagenet_stem},
            {"patch_size", config.patch_size}}},
          {"widths", widths},
          {"groups", gs}};
}

Architecture Architecture::from_json(const nlohmann::json& j, const std::string& where) {
  Architecture a;
  try {
    S2H_CHECK(j.is_object() && j.value("format", "") == kArchitectureFormat,
              "{}: not an s2h architecture (format is not {})", where, kArchitectureFormat);
    a.model = j.at("model").get<std::string>();
    const nlohmann::json& c = j.at("config");
    a.config.num_classes = c.at("num_classes").get<int64_t>();
    a.config.in_channels = c.at("in_channels").get<int64_t>();
    a.config.image_size = c.at("image_size").get<int64_t>();
    a.config.vocab_size = c.at("vocab_size").get<int64_t>();
    a.config.max_len = c.at("max_len").get<int64_t>();
    a.config.imagenet_stem = c.at("imagenet_stem").get<bool>();
    a.config.patch_size = c.at("patch_size").get<int64_t>();
    a.widths = j.at("widths").get<std::map<std::string, int64_t>>();
  } catch (const nlohmann::json::exception& e) {
    S2H_FAIL("{}: malformed architecture ({})", where, e.what());
  }
  return a;
}

ModulePtr build_narrow(const Architecture& arch) {
  ModulePtr m = make_model(arch.model, arch.config);
  const std::vector<ChannelGroup> groups = channel_groups(*m);
  for (const auto& [name, w] : arch.widths) {
    auto it = std::find_if(groups.begin(), groups.end(), [&](const ChannelGroup& g) { return g.name == name; });
    S2H_CHECK(it != groups.end(), "architecture of {}: '{}' is not a channel group of the model", arch.model, name);
    S2H_CHECK(w >= 1 && w <= it->channels, "architecture of {}: group {} keeps {} of {} units", arch.model, name, w,
              it->channels);
  }
  narrow_model(*m, groups, prefix_selection(arch.widths));
  return m;
}

}  // namespace s2h::models
