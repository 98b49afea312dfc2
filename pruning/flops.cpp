#include "pruning/flops.h"

#include "engine/autograd.h"
#include "engine/ops.h"

namespace s2h::pruning {

FlopsScope parse_flops_scope(const std::string& s) {
  if (s == "network") return FlopsScope::Network;
  if (s == "pruned") return FlopsScope::Pruned;
  S2H_FAIL("--flops-scope: unknown scope '{}' (expected network or pruned)", s);
}

Tensor example_input(const models::ModelConfig& cfg) {
  if (cfg.vocab_size > 0) return Tensor::ones({1, cfg.max_len}, DType::I64);
  return Tensor::zeros({1, cfg.image_size, cfg.image_size, cfg.in_channels});
}

FlopsModel::FlopsModel(Module& model, const std::vector<models::ChannelGroup>& groups, const Tensor& example)
    : groups_(groups) {
  // Which group each module's output and input channels belong to.
  std::map<std::string, int> out_of, in_of;
  auto claim = [](std::map<std::string, int>& m, const std::string& name, int g, const char* role) {
    auto [it, fresh] = m.emplace(name, g);
    S2H_CHECK(fresh || it->second == g, "FLOPs model: module {} is the {} of two groups", name, role);
  };
  std::map<std::string, Module*> mods;
  for (auto& [name, m] : model.named_modules()) mods[name] = m;
  for (int gi = 0; gi < static_cast<int>(groups.size()); ++gi) {
    const models::ChannelGroup& g = groups[static_cast<size_t>(gi)];
    for (const auto& p : g.producers) claim(out_of, p, gi, "producer");
    for (const auto& c : g.consumers) claim(in_of, c, gi, "consumer");
    for (const auto& f : g.followers) {
      // A depthwise conv follows its group with one input channel per output;
      // squeeze-excite's fc2 writes the group.
      if (mods.count(f + ".fc2")) claim(out_of, f + ".fc2", gi, "producer");
      else claim(out_of, f, gi, "follower");
    }
    if (g.kind == models::GroupKind::Heads) {
      const std::string& q = g.producers.front();
      claim(out_of, q.substr(0, q.rfind('.')), gi, "attention");
    }
  }

  std::map<std::string, double> per_module;
  std::vector<std::string> order;
  {
    NoGradGuard ng;
    const bool was_training = model.is_training();
    model.eval();
    ModuleTracer tracer(model);
    model(example);
    model.train(was_training);
    for (const TraceRecord& r : tracer.records()) {
      if (r.flops == 0) continue;
      if (!per_module.count(r.name)) order.push_back(r.name);
      per_module[r.name] += static_cast<double>(r.flops) / static_cast<double>(example.size(0));
    }
  }
  for (const std::string& name : order) {
    FlopsTerm t;
    t.module = name;
    t.flops = per_module[name];
    if (auto it = out_of.find(name); it != out_of.end() && groups[static_cast<size_t>(it->second)].prunable)
      t.out_group = it->second;
    if (auto it = in_of.find(name); it != in_of.end() && groups[static_cast<size_t>(it->second)].prunable)
      t.in_group = it->second;
    t.pruned = t.out_group >= 0 || t.in_group >= 0;
    if (t.pruned) terms_.push_back(t);
    else fixed_ += t.flops;
  }
}

double FlopsModel::full(FlopsScope scope) const { return at(std::vector<double>{}, scope); }

double FlopsModel::at(const std::vector<double>& ratio, FlopsScope scope) const {
  auto r = [&](int g) { return g < 0 || g >= static_cast<int>(ratio.size()) ? 1.0 : ratio[static_cast<size_t>(g)]; };
  double f = scope == FlopsScope::Network ? fixed_ : 0.0;
  for (const FlopsTerm& t : terms_) f += t.flops * r(t.out_group) * r(t.in_group);
  return f;
}

double FlopsModel::at_widths(const std::map<std::string, int64_t>& widths, FlopsScope scope) const {
  std::vector<double> ratio(groups_.size(), 1.0);
  for (size_t i = 0; i < groups_.size(); ++i)
    if (auto it = widths.find(groups_[i].name); it != widths.end())
      ratio[i] = static_cast<double>(it->second) / static_cast<double>(groups_[i].channels);
  return at(ratio, scope);
}

Tensor FlopsModel::at(const std::vector<Tensor>& ratio, FlopsScope scope) const {
  auto r = [&](int g) -> const Tensor* {
    if (g < 0 || g >= static_cast<int>(ratio.size()) || !ratio[static_cast<size_t>(g)].defined()) return nullptr;
    return &ratio[static_cast<size_t>(g)];
  };
  double constant = scope == FlopsScope::Network ? fixed_ : 0.0;
  Tensor f;
  for (const FlopsTerm& t : terms_) {
    const Tensor *ro = r(t.out_group), *ri = r(t.in_group);
    if (!ro && !ri) {
      constant += t.flops;
      continue;
    }
    Tensor term = ro && ri ? mul(*ro, *ri) : (ro ? *ro : *ri);
    term = mul_scalar(term.reshape({}), t.flops);
    f = f.defined() ? add(f, term) : term;
  }
  if (!f.defined()) return Tensor::scalar(constant);
  return add_scalar(f, constant);
}

}  // namespace s2h::pruning
