#include "pruning/extract.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/autograd.h"

namespace s2h::pruning {

BudgetResult enforce_budget(const FlopsModel& flops, const WidthMasks& masks, std::map<std::string, int64_t> widths,
                            double target, double tolerance, FlopsScope scope) {
  S2H_CHECK(target > 0 && target <= 1, "budget: target {} must be in (0, 1]", target);
  S2H_CHECK(tolerance >= 0, "budget: tolerance {} must be >= 0", tolerance);
  const double full = flops.full(scope);
  auto ratio = [&](const std::map<std::string, int64_t>& w) { return flops.at_widths(w, scope) / full; };
  BudgetResult res;
  res.ratio_before = ratio(widths);
  const double hi = target * (1 + tolerance), lo = target * (1 - tolerance);

  // Importance of the units between positions `from` and `to` of the group's order, normalised by the
  // group's mean unit importance (so groups compare).
  std::map<std::string, double> mean_importance;
  for (const WidthGroup& g : masks.groups()) {
    double m = 0;
    for (double v : g.importance) m += v;
    mean_importance[g.name] = m / static_cast<double>(g.importance.size());
  }
  auto block_importance = [&](const WidthGroup& g, int64_t from, int64_t to) {
    const double mean = mean_importance.at(g.name);
    double s = 0;
    for (int64_t p = std::min(from, to); p < std::max(from, to); ++p)
      s += g.importance[static_cast<size_t>(g.order[static_cast<size_t>(p)])];
    return mean > 0 ? s / mean : 0.0;
  };
  double now = res.ratio_before;

  // 1. Scale every prunable group's width by one factor (the learned proportions are kept), rounded to the
  //    group's divisor: the largest factor that is not above the upper bound, or the smallest one that
  //    reaches the lower bound.
  if (now > hi || now < lo) {
    auto scaled = [&](double a) {
      auto w = widths;
      for (const WidthGroup& g : masks.groups()) {
        const double x = a * static_cast<double>(widths.at(g.name)) / static_cast<double>(g.divisor);
        w[g.name] = std::clamp<int64_t>(static_cast<int64_t>(std::llround(x)) * g.divisor, g.divisor, g.channels);
      }
      return w;
    };
    const bool down = now > hi;
    double a_lo = down ? 0.0 : 1.0, a_hi = down ? 1.0 : 64.0;
    for (int it = 0; it < 60; ++it) {
      const double mid = 0.5 * (a_lo + a_hi);
      const double r = ratio(scaled(mid));
      if (down ? r <= hi : r < lo) a_lo = mid;
      else a_hi = mid;
    }
    auto w = scaled(down ? a_lo : a_hi);
    for (const WidthGroup& g : masks.groups()) {
      const int64_t diff = (w.at(g.name) - widths.at(g.name)) / g.divisor;
      if (diff < 0) res.removed_blocks += static_cast<int>(-diff);
      else res.added_blocks += static_cast<int>(diff);
    }
    widths = w;
    now = ratio(widths);
  }

  // 2. One block at a time: among the moves that land inside [lo, hi], the one that loses the least
  //    importance (removing) or gains the most (adding); if none lands inside, the move that gets closest
  //    to the target. Stops when inside or when no move gets closer.
  for (int it = 0; it < 10000 && (now > hi || now < lo); ++it) {
    int best = -1, best_dir = 0;
    double best_key = std::numeric_limits<double>::infinity();
    bool best_inside = false;
    for (size_t i = 0; i < masks.groups().size(); ++i) {
      const WidthGroup& g = masks.groups()[i];
      const int64_t w = widths.at(g.name);
      for (int dir : {-1, +1}) {
        const int64_t nw = w + dir * g.divisor;
        if (nw < g.divisor || nw > g.channels) continue;
        auto trial = widths;
        trial[g.name] = nw;
        const double r = ratio(trial);
        const bool inside = r >= lo && r <= hi;
        if (!inside && std::fabs(r - target) >= std::fabs(now - target)) continue;
        // Inside: removing costs the block's importance, adding gains it (negative cost).
        const double k = inside ? (dir < 0 ? block_importance(g, nw, w) : -block_importance(g, w, nw))
                                : std::fabs(r - target);
        if ((inside && !best_inside) || (inside == best_inside && k < best_key)) {
          best = static_cast<int>(i);
          best_dir = dir;
          best_key = k;
          best_inside = inside;
        }
      }
    }
    if (best < 0) break;
    const WidthGroup& g = masks.groups()[static_cast<size_t>(best)];
    widths[g.name] += best_dir * g.divisor;
    if (best_dir < 0) ++res.removed_blocks;
    else ++res.added_blocks;
    now = ratio(widths);
  }
  res.widths = widths;
  res.ratio_after = now;
  res.residual = now / target - 1;
  res.within = std::fabs(res.residual) <= tolerance + 1e-12;
  return res;
}

BnRecalibration::BnRecalibration(Module& model) : model_(model), was_training_(model.is_training()) {
  NoGradGuard ng;
  for (auto& [name, m] : model.named_modules())
    if (auto* bn = dynamic_cast<BatchNorm*>(m)) {
      bns_.emplace_back(bn, bn->momentum);
      bn->running_mean.fill_(0.0);
      bn->running_var.fill_(1.0);
    }
}

BnRecalibration::~BnRecalibration() {
  for (auto& [bn, momentum] : bns_) bn->momentum = momentum;
  model_.train(was_training_);
}

void BnRecalibration::step(const Tensor& x) {
  NoGradGuard ng;
  // A plain average: the k-th batch (1-based) enters with weight 1/k.
  ++batches_;
  for (auto& [bn, momentum] : bns_) bn->momentum = 1.0 / static_cast<double>(batches_);
  model_.train();
  model_(x);
}

ModulePtr extract(const std::string& name, const models::ModelConfig& config, const Module& model,
                  const models::ChannelSelection& keep) {
  ModulePtr net = models::make_model(name, config);
  net->load_state_dict(model.state_dict());
  net->train(model.is_training());
  models::narrow_model(*net, models::channel_groups(*net), keep);
  return net;
}

}  // namespace s2h::pruning
