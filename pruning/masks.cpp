#include "pruning/masks.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/autograd.h"
#include "engine/layers.h"
#include "engine/ops.h"

namespace s2h::pruning {

int64_t width_divisor(int64_t channels, int64_t max_divisor) {
  S2H_CHECK(channels > 0 && max_divisor > 0, "width divisor: channels {} and divisor {} must be positive", channels,
            max_divisor);
  for (int64_t d = std::min(channels, max_divisor); d > 1; --d)
    if (channels % d == 0) return d;
  return 1;
}

std::vector<double> unit_importance(const Module& model, const models::ChannelGroup& group) {
  std::map<std::string, const Module*> mods;
  for (auto& [name, m] : model.named_modules()) mods[name] = m;
  std::vector<double> imp(static_cast<size_t>(group.channels), 0.0);
  for (const std::string& name : group.producers) {
    auto it = mods.find(name);
    S2H_CHECK(it != mods.end(), "group {}: producer {} is not in the model", group.name, name);
    Tensor w;
    if (const auto* c = dynamic_cast<const Conv2d*>(it->second)) w = c->weight;
    else if (const auto* l = dynamic_cast<const Linear*>(it->second)) w = l->weight;
    else S2H_FAIL("group {}: producer {} is neither Conv2d nor Linear", group.name, name);
    const Tensor wc = w.detach().contiguous().to(Device::cpu());
    const int64_t rows = wc.size(0), cols = wc.numel() / rows;
    S2H_CHECK(rows == group.channels * group.unit, "group {}: producer {} has {} outputs, expected {}", group.name,
              name, rows, group.channels * group.unit);
    const float* p = wc.data<float>();
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0;
      for (int64_t c = 0; c < cols; ++c) s += std::fabs(p[r * cols + c]);
      imp[static_cast<size_t>(r / group.unit)] += s / static_cast<double>(group.producers.size());
    }
  }
  return imp;
}

WidthMasks::WidthMasks(const Module& model, const std::vector<models::ChannelGroup>& groups, const MaskOptions& opt)
    : opt_(opt), model_groups_(groups) {
  S2H_CHECK(opt.temperature > 0, "--temperature must be positive, got {}", opt.temperature);
  S2H_CHECK(opt.init == "max" || opt.init == "uniform", "--mask-init: unknown '{}' (expected max or uniform)",
            opt.init);
  S2H_CHECK(opt.ch_divisor >= 1 && opt.head_divisor >= 1, "--ch-divisor and --head-divisor must be >= 1");
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const models::ChannelGroup& g = groups[gi];
    if (!g.prunable) continue;
    WidthGroup w;
    w.name = g.name;
    w.group = static_cast<int>(gi);
    w.channels = g.channels;
    w.divisor = width_divisor(g.channels, g.kind == models::GroupKind::Heads ? opt.head_divisor : opt.ch_divisor);
    w.choices = g.channels / w.divisor;
    std::vector<float> u(static_cast<size_t>(w.choices), 0.0f);
    if (opt.init == "max" && w.choices > 1) {
      const double r = static_cast<double>(g.channels - w.divisor) / static_cast<double>(g.channels);
      u.back() = static_cast<float>(opt.temperature * std::log(static_cast<double>(w.choices - 1) * r / (1 - r)));
    }
    w.logits = Tensor::from_vector(u, {w.choices});
    w.logits.set_requires_grad(true);
    groups_.push_back(std::move(w));
  }
  update_order(model);
}

std::vector<Tensor> WidthMasks::parameters() const {
  std::vector<Tensor> ps;
  for (const WidthGroup& g : groups_) ps.push_back(g.logits);
  return ps;
}

Tensor WidthMasks::probs(size_t i) const {
  const WidthGroup& g = groups_.at(i);
  return softmax(mul_scalar(g.logits, 1.0 / opt_.temperature), 0);
}

Tensor WidthMasks::keep_probs(size_t i) const {
  const WidthGroup& g = groups_.at(i);
  const int64_t K = g.choices;
  std::vector<float> upper(static_cast<size_t>(K * K), 0.0f);  // U[j][k] = 1 when j >= k
  for (int64_t j = 0; j < K; ++j)
    for (int64_t k = 0; k <= j; ++k) upper[static_cast<size_t>(j * K + k)] = 1.0f;
  return matmul(probs(i).reshape({1, K}), Tensor::from_vector(upper, {K, K})).reshape({K});
}

Tensor WidthMasks::channel_mask(size_t i) const {
  const WidthGroup& g = groups_.at(i);
  const Tensor sorted =
      expand(keep_probs(i).reshape({g.choices, 1}), {g.choices, g.divisor}).reshape({g.channels});
  std::vector<int64_t> rank(static_cast<size_t>(g.channels));
  for (size_t pos = 0; pos < g.order.size(); ++pos) rank[static_cast<size_t>(g.order[pos])] = static_cast<int64_t>(pos);
  return index_select(sorted, 0, Tensor::from_vector(rank, {g.channels}));
}

Tensor WidthMasks::expected_width(size_t i) const {
  const WidthGroup& g = groups_.at(i);
  std::vector<float> widths(static_cast<size_t>(g.choices));
  for (int64_t k = 0; k < g.choices; ++k) widths[static_cast<size_t>(k)] = static_cast<float>((k + 1) * g.divisor);
  return sum(mul(probs(i), Tensor::from_vector(widths, {g.choices})));
}

int64_t WidthMasks::hard_width(size_t i) const {
  const WidthGroup& g = groups_.at(i);
  double e;
  {
    NoGradGuard ng;
    e = expected_width(i).item();
  }
  const int64_t c = static_cast<int64_t>(std::ceil(e - 1e-6));
  const int64_t n = (std::max<int64_t>(c, 1) + g.divisor - 1) / g.divisor * g.divisor;
  return std::min(g.channels, n);
}

Tensor WidthMasks::hard_width_st(size_t i) const {
  const Tensor e = expected_width(i);
  return add_scalar(e, static_cast<double>(hard_width(i)) - e.item());
}

double WidthMasks::entropy(size_t i) const {
  NoGradGuard ng;
  double h = 0;
  for (float p : probs(i).to_vector<float>())
    if (p > 0) h -= static_cast<double>(p) * std::log(static_cast<double>(p));
  return h;
}

void WidthMasks::update_order(const Module& model) {
  for (WidthGroup& g : groups_) {
    g.importance = unit_importance(model, model_groups_.at(static_cast<size_t>(g.group)));
    g.order.resize(static_cast<size_t>(g.channels));
    std::iota(g.order.begin(), g.order.end(), 0);
    std::stable_sort(g.order.begin(), g.order.end(), [&](int64_t a, int64_t b) {
      return g.importance[static_cast<size_t>(a)] > g.importance[static_cast<size_t>(b)];
    });
  }
}

std::map<std::string, int64_t> WidthMasks::hard_widths() const {
  std::map<std::string, int64_t> w;
  for (size_t i = 0; i < groups_.size(); ++i) w[groups_[i].name] = hard_width(i);
  return w;
}

models::ChannelSelection WidthMasks::selection() const { return selection(hard_widths()); }

models::ChannelSelection WidthMasks::selection(const std::map<std::string, int64_t>& widths) const {
  models::ChannelSelection sel;
  for (const WidthGroup& g : groups_) {
    auto it = widths.find(g.name);
    const int64_t n = it == widths.end() ? g.channels : it->second;
    S2H_CHECK(n >= 1 && n <= g.channels, "group {}: width {} out of [1, {}]", g.name, n, g.channels);
    sel[g.name] = std::vector<int64_t>(g.order.begin(), g.order.begin() + n);
  }
  return sel;
}

}  // namespace s2h::pruning
