#include "pruning/sdp.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <set>

#include "engine/autograd.h"
#include "engine/layers.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "models/groups.h"

namespace s2h::pruning {

// ------------------------------------------------------------------ options and schedule
void validate(const SdpOptions& o) {
  S2H_CHECK(o.sparsity >= 0 && o.sparsity < 1, "--sparsity must be in [0, 1), got {}", o.sparsity);
  S2H_CHECK(o.scope == "global" || o.scope == "layer", "--sdp-scope: unknown scope '{}' (expected global or layer)",
            o.scope);
  S2H_CHECK(o.teacher == "frozen" || o.teacher == "live", "--sdp-teacher: unknown teacher '{}' (expected frozen or live)",
            o.teacher);
  S2H_CHECK(o.repr == "pooled" || o.repr == "logits", "--sdp-repr: unknown representation '{}' (expected pooled or logits)",
            o.repr);
  S2H_CHECK(o.lambda >= 0, "--cc-lambda must be >= 0, got {}", o.lambda);
  S2H_CHECK(o.alpha >= 0 && o.alpha <= 1, "--cc-alpha must be in [0, 1], got {}", o.alpha);
  S2H_CHECK(o.prune_steps >= 1, "--prune-steps must be at least 1, got {}", o.prune_steps);
  S2H_CHECK(o.schedule == "cubic" || o.schedule == "linear" || o.schedule == "oneshot",
            "--sparsity-schedule: unknown schedule '{}' (expected cubic, linear or oneshot)", o.schedule);
  S2H_CHECK(o.prune_until >= 0 && o.prune_until <= 1, "--prune-until must be in [0, 1], got {}", o.prune_until);
  S2H_CHECK(o.label_smoothing >= 0 && o.label_smoothing < 1, "--label-smoothing must be in [0, 1), got {}",
            o.label_smoothing);
}

double scheduled_sparsity(const std::string& schedule, double s_final, double t) {
  t = std::clamp(t, 0.0, 1.0);
  if (schedule == "cubic") return s_final * (1.0 - std::pow(1.0 - t, 3));
  if (schedule == "linear") return s_final * t;
  if (schedule == "oneshot") return s_final;
  S2H_FAIL("--sparsity-schedule: unknown schedule '{}' (expected cubic, linear or oneshot)", schedule);
}

std::vector<PruneEvent> prune_events(const SdpOptions& o, int64_t total_steps) {
  S2H_CHECK(total_steps >= 1, "prune_events: the run has no training step");
  const int64_t k_events = o.schedule == "oneshot" ? 1 : o.prune_steps;
  const double t_end = o.prune_until * static_cast<double>(total_steps);
  std::vector<PruneEvent> out;
  for (int64_t k = 1; k <= k_events; ++k) {
    const double frac = static_cast<double>(k) / static_cast<double>(k_events);
    PruneEvent e;
    e.step = std::min<int64_t>(std::llround(frac * t_end), total_steps - 1);
    e.sparsity = k == k_events ? o.sparsity : scheduled_sparsity(o.schedule, o.sparsity, frac);
    out.push_back(e);
  }
  return out;
}

// ------------------------------------------------------------------ losses and metrics
Tensor cross_correlation_loss(const Tensor& z_s, const Tensor& z_t, double lambda, double eps) {
  S2H_CHECK(z_s.dim() == 2 && z_s.shape() == z_t.shape(), "cross_correlation_loss: expected two [B, d] tensors, got {} and {}",
            shape_str(z_s.shape()), shape_str(z_t.shape()));
  const int64_t B = z_s.size(0);
  S2H_CHECK(B >= 2, "cross_correlation_loss: needs a batch of at least 2, got {}", B);
  auto standardise = [&](const Tensor& z) {
    const Tensor c = sub(z, mean(z, {0}, true));
    const Tensor var = mean(square(c), {0}, true);  // biased, over the batch
    return div(c, sqrt(add_scalar(var, eps)));
  };
  const Tensor a = standardise(z_s);
  const Tensor b = standardise(z_t.detach().to(z_s.dtype()));
  const double inv_b = 1.0 / static_cast<double>(B);
  const Tensor c = mul_scalar(matmul(transpose(a, 0, 1), b), inv_b);  // [d, d]
  const Tensor diag = mul_scalar(sum(mul(a, b), {0}), inv_b);          // C_ii, [d]
  const Tensor on = sum(square(rsub_scalar(diag, 1.0)));
  const Tensor off = sub(sum(square(c)), sum(square(diag)));
  return add(on, mul_scalar(off, lambda));
}

double fisher_ratio(const Tensor& features, const Tensor& labels) {
  S2H_CHECK(features.dim() == 2, "fisher_ratio: features must be [N, d], got {}", shape_str(features.shape()));
  S2H_CHECK(labels.dim() == 1 && labels.size(0) == features.size(0) && labels.dtype() == DType::I64,
            "fisher_ratio: labels must be i64 [{}], got {}", features.size(0), labels.str());
  const int64_t n = features.size(0), d = features.size(1);
  S2H_CHECK(n > 0, "fisher_ratio: no samples");
  const Tensor x = features.detach().contiguous().to(Device::cpu()).to(DType::F32);
  const std::vector<int64_t> y = labels.to_vector<int64_t>();
  return dispatch_float(x.dtype(), "fisher_ratio", [&]<class T>() {
    const T* px = x.data<T>();
    auto row = [&](int64_t i) { return px + i * d; };
    // Class sums, then means (two passes over the data, in double).
    std::map<int64_t, std::pair<int64_t, std::vector<double>>> cls;  // label -> (count, mean)
    std::vector<double> mu(static_cast<size_t>(d), 0.0);
    for (int64_t i = 0; i < n; ++i) {
      auto& [cnt, m] = cls[y[static_cast<size_t>(i)]];
      if (m.empty()) m.assign(static_cast<size_t>(d), 0.0);
      ++cnt;
      const T* r = row(i);
      for (int64_t j = 0; j < d; ++j) {
        m[static_cast<size_t>(j)] += static_cast<double>(r[j]);
        mu[static_cast<size_t>(j)] += static_cast<double>(r[j]);
      }
    }
    for (double& v : mu) v /= static_cast<double>(n);
    double between = 0, within = 0;
    for (auto& [label, cm] : cls) {
      auto& [cnt, m] = cm;
      for (int64_t j = 0; j < d; ++j) {
        m[static_cast<size_t>(j)] /= static_cast<double>(cnt);
        const double diff = m[static_cast<size_t>(j)] - mu[static_cast<size_t>(j)];
        between += static_cast<double>(cnt) * diff * diff;
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      const std::vector<double>& m = cls[y[static_cast<size_t>(i)]].second;
      const T* r = row(i);
      for (int64_t j = 0; j < d; ++j) {
        const double diff = static_cast<double>(r[j]) - m[static_cast<size_t>(j)];
        within += diff * diff;
      }
    }
    if (within == 0) return between == 0 ? 0.0 : std::numeric_limits<double>::infinity();
    return between / within;
  });
}

// ------------------------------------------------------------------ the pruner
struct SdpPruner::Entry {
  std::string name;  // the parameter's dotted name
  Module* module = nullptr;
  Tensor* member = nullptr;  // the module's member that its forward reads
  Tensor param;              // the registered parameter (same handle as *member outside a scope)
  Tensor mask;               // 1 keep, 0 pruned; param's shape and dtype
};

// A prunable channel group (structured mode).
struct SdpPruner::Unit {
  std::string name;
  int64_t channels = 0, unit = 1;
  std::vector<Tensor> producer_weights;              // scores come from these rows
  std::vector<Entry*> entries;                       // axis 0 = channels * unit rows
  std::vector<models::ChannelMask*> channel_masks;   // set while a MaskedScope is alive
  std::vector<Tensor> saved_scales;
  std::vector<float> keep;                           // [channels] 1 keep, 0 pruned
};

namespace {

// Flags (1) exactly the k smallest values; ties are taken in index order.
std::vector<uint8_t> smallest_k(const std::vector<float>& v, int64_t k) {
  std::vector<uint8_t> flag(v.size(), 0);
  k = std::clamp<int64_t>(k, 0, static_cast<int64_t>(v.size()));
  if (k == 0) return flag;
  std::vector<float> tmp = v;
  std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end());
  const float thr = tmp[static_cast<size_t>(k - 1)];
  int64_t below = 0;
  for (float x : v) below += x < thr;
  int64_t ties = k - below;
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] < thr) flag[i] = 1;
    else if (v[i] == thr && ties > 0) {
      flag[i] = 1;
      --ties;
    }
  }
  return flag;
}

std::vector<float> abs_values(const Tensor& t) {
  std::vector<float> v = t.to_vector<float>();
  for (float& x : v) x = std::fabs(x);
  return v;
}

Tensor mask_from(const std::vector<float>& keep, const Tensor& like) {
  return Tensor::from_vector(keep, like.shape()).to(like.device()).to(like.dtype());
}

int64_t count_zeros(const Tensor& mask) {
  const std::vector<float> v = mask.to_vector<float>();
  return std::count(v.begin(), v.end(), 0.0f);
}

// The member of a Conv2d / Linear / BatchNorm / LayerNorm that holds `pname`.
Tensor* member_of(Module* m, const std::string& pname) {
  auto pick = [&](Tensor& w, Tensor& b) -> Tensor* { return pname == "weight" ? &w : pname == "bias" ? &b : nullptr; };
  if (auto* c = dynamic_cast<Conv2d*>(m)) return pick(c->weight, c->bias);
  if (auto* l = dynamic_cast<Linear*>(m)) return pick(l->weight, l->bias);
  if (auto* bn = dynamic_cast<BatchNorm*>(m)) return pick(bn->weight, bn->bias);
  if (auto* ln = dynamic_cast<LayerNorm*>(m)) return pick(ln->weight, ln->bias);
  return nullptr;
}

bool is_weight_layer(const Module* m) {
  return dynamic_cast<const Conv2d*>(m) != nullptr || dynamic_cast<const Linear*>(m) != nullptr;
}

}  // namespace

SdpPruner::SdpPruner(Module& model, SdpOptions opt, const Tensor& example_input, std::function<ModulePtr()> make_copy)
    : model_(model), opt_(std::move(opt)), make_copy_(std::move(make_copy)) {
  validate(opt_);
  S2H_CHECK(!(opt_.cc && opt_.alpha > 0 && opt_.teacher == "frozen") || make_copy_,
            "SdpPruner: the frozen teacher needs a way to build a copy of the model");
  std::map<std::string, Module*> modules;
  for (auto& [name, m] : model_.named_modules()) modules[name] = m;

  // Input layer and classifier: the first Conv2d/Linear (or Embedding) and the last Linear called.
  {
    const bool was_training = model_.is_training();
    model_.eval();
    std::vector<std::string> called;
    {
      NoGradGuard guard;
      ModuleTracer tracer(model_);
      model_(example_input);
      for (const TraceRecord& r : tracer.records()) {
        const Module* m = modules.at(r.name);
        // A token embedding counts as the input layer (it is never pruned anyway).
        if (is_weight_layer(m) || (called.empty() && dynamic_cast<const Embedding*>(m) != nullptr))
          called.push_back(r.name);
      }
    }
    model_.train(was_training);
    S2H_CHECK(!called.empty(), "SdpPruner: the model ({}) calls no Conv2d or Linear layer", model_.describe());
    input_layer_ = called.front();
    for (auto it = called.rbegin(); it != called.rend(); ++it)
      if (dynamic_cast<const Linear*>(modules.at(*it)) != nullptr) {
        classifier_ = *it;
        break;
      }
    S2H_CHECK(!classifier_.empty(), "SdpPruner: the model ({}) has no Linear classifier", model_.describe());
    S2H_CHECK(classifier_ != input_layer_, "SdpPruner: the model's only weight layer is its classifier ({})",
              classifier_);
    classifier_module_ = modules.at(classifier_);
  }

  std::map<std::string, Entry*> by_name;
  auto add_entry = [&](const std::string& module_name, const std::string& pname) -> Entry* {
    const std::string full = module_name.empty() ? pname : module_name + "." + pname;
    auto it = by_name.find(full);
    if (it != by_name.end()) return it->second;
    Module* m = modules.at(module_name);
    Tensor* member = member_of(m, pname);
    if (member == nullptr || !member->defined()) return nullptr;
    auto e = std::make_unique<Entry>();
    e->name = full;
    e->module = m;
    e->member = member;
    for (const auto& [n, t] : m->own_parameters())
      if (n == pname) e->param = t;
    S2H_CHECK(e->param.defined() && e->param.impl_ptr() == member->impl_ptr(),
              "SdpPruner: {} is not the registered parameter of {}", full, m->describe());
    e->mask = Tensor::ones(e->param.shape(), e->param.dtype(), e->param.device());
    by_name[full] = e.get();
    entries_.push_back(std::move(e));
    return entries_.back().get();
  };

  std::vector<std::string> prunable_modules;
  for (auto& [name, m] : model_.named_modules())
    if (is_weight_layer(m) && name != input_layer_ && name != classifier_) {
      prunable_modules.push_back(name);
      prunable_.push_back(name.empty() ? "weight" : name + ".weight");
    }

  if (!opt_.structured) {
    for (const std::string& name : prunable_modules) add_entry(name, "weight");
    S2H_CHECK(!entries_.empty(), "SdpPruner: the model ({}) has no prunable weights besides its input layer and classifier",
              model_.describe());
  } else {
    const std::vector<models::ChannelGroup> groups = models::channel_groups(model_);
    models::validate_channel_groups(model_, groups);
    for (const models::ChannelGroup& g : groups) {
      if (!g.prunable) continue;
      if (std::find(g.producers.begin(), g.producers.end(), classifier_) != g.producers.end()) continue;
      auto u = std::make_unique<Unit>();
      u->name = g.name;
      u->channels = g.channels;
      u->unit = g.unit;
      u->keep.assign(static_cast<size_t>(g.channels), 1.0f);
      auto add_rows = [&](const std::string& module_name, const std::string& pname) {
        Entry* e = add_entry(module_name, pname);
        if (e == nullptr) return;
        S2H_CHECK(e->param.size(0) == g.channels * g.unit, "SdpPruner: group {}: {} has {} rows, the group {}", g.name,
                  e->name, e->param.size(0), g.channels * g.unit);
        u->entries.push_back(e);
      };
      for (const std::string& p : g.producers) {
        add_rows(p, "weight");
        add_rows(p, "bias");
        u->producer_weights.push_back(*member_of(modules.at(p), "weight"));
      }
      for (const std::string& f : g.followers) {
        Module* m = modules.at(f);
        const auto* conv = dynamic_cast<const Conv2d*>(m);
        const bool norm = dynamic_cast<const BatchNorm*>(m) != nullptr || dynamic_cast<const LayerNorm*>(m) != nullptr;
        const bool depthwise = conv != nullptr && conv->options.groups == conv->in_channels &&
                               conv->out_channels == g.channels * g.unit;
        if (!norm && !depthwise) continue;  // e.g. squeeze-excite: its input is zero there already
        add_rows(f, "weight");
        add_rows(f, "bias");
      }
      for (const std::string& mk : g.masks) u->channel_masks.push_back(dynamic_cast<models::ChannelMask*>(modules.at(mk)));
      groups_.push_back(std::move(u));
    }
    S2H_CHECK(!groups_.empty(), "SdpPruner: the model ({}) has no prunable channel group", model_.describe());
  }
  stats_ = compute_sparsity();
}

SdpPruner::~SdpPruner() = default;

bool SdpPruner::has_teacher() const {
  if (!opt_.cc || opt_.alpha <= 0 || !pruned_once_) return false;
  return opt_.teacher == "live" || teacher_ != nullptr;
}

void SdpPruner::compute_unstructured_masks(double sparsity) {
  if (opt_.scope == "layer") {
    for (auto& e : entries_) {
      const std::vector<float> v = abs_values(e->param);
      const std::vector<uint8_t> prune = smallest_k(v, std::llround(sparsity * static_cast<double>(v.size())));
      std::vector<float> keep(v.size());
      for (size_t i = 0; i < v.size(); ++i) keep[i] = prune[i] ? 0.0f : 1.0f;
      e->mask = mask_from(keep, e->param);
    }
    return;
  }
  std::vector<float> all;
  for (auto& e : entries_) {
    const std::vector<float> v = abs_values(e->param);
    all.insert(all.end(), v.begin(), v.end());
  }
  const std::vector<uint8_t> prune = smallest_k(all, std::llround(sparsity * static_cast<double>(all.size())));
  size_t at = 0;
  for (auto& e : entries_) {
    std::vector<float> keep(static_cast<size_t>(e->param.numel()));
    for (float& k : keep) k = prune[at++] ? 0.0f : 1.0f;
    e->mask = mask_from(keep, e->param);
  }
}

void SdpPruner::compute_structured_masks(double sparsity) {
  // Unit scores: mean |w| of the unit's rows, averaged over the producers.
  std::vector<std::vector<float>> scores;
  for (auto& g : groups_) {
    std::vector<float> s(static_cast<size_t>(g->channels), 0.0f);
    for (const Tensor& w : g->producer_weights) {
      const std::vector<float> v = abs_values(w);
      const int64_t per_unit = w.numel() / g->channels;
      for (int64_t c = 0; c < g->channels; ++c) {
        double acc = 0;
        for (int64_t i = 0; i < per_unit; ++i) acc += v[static_cast<size_t>(c * per_unit + i)];
        s[static_cast<size_t>(c)] += static_cast<float>(acc / static_cast<double>(per_unit) /
                                                        static_cast<double>(g->producer_weights.size()));
      }
    }
    scores.push_back(std::move(s));
  }
  if (opt_.scope == "layer") {
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
      Unit& g = *groups_[gi];
      const int64_t k = std::min<int64_t>(g.channels - 1, std::llround(sparsity * static_cast<double>(g.channels)));
      const std::vector<uint8_t> prune = smallest_k(scores[gi], k);
      for (int64_t c = 0; c < g.channels; ++c) g.keep[static_cast<size_t>(c)] = prune[static_cast<size_t>(c)] ? 0.0f : 1.0f;
    }
  } else {
    struct Cand {
      float score;
      size_t group;
      int64_t c;
    };
    std::vector<Cand> cands;
    int64_t total = 0;
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
      total += groups_[gi]->channels;
      for (int64_t c = 0; c < groups_[gi]->channels; ++c) cands.push_back({scores[gi][static_cast<size_t>(c)], gi, c});
    }
    std::stable_sort(cands.begin(), cands.end(), [](const Cand& a, const Cand& b) { return a.score < b.score; });
    int64_t k = std::llround(sparsity * static_cast<double>(total));
    std::vector<int64_t> left(groups_.size());
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
      left[gi] = groups_[gi]->channels;
      std::fill(groups_[gi]->keep.begin(), groups_[gi]->keep.end(), 1.0f);
    }
    for (const Cand& cd : cands) {
      if (k == 0) break;
      if (left[cd.group] <= 1) continue;  // every group keeps a unit
      groups_[cd.group]->keep[static_cast<size_t>(cd.c)] = 0.0f;
      --left[cd.group];
      --k;
    }
  }
  // Masks of the rows: every entry starts at ones, then each group multiplies its rows.
  std::map<Entry*, std::vector<float>> rows;
  for (auto& e : entries_) rows[e.get()].assign(static_cast<size_t>(e->param.numel()), 1.0f);
  for (auto& g : groups_)
    for (Entry* e : g->entries) {
      std::vector<float>& m = rows[e];
      const int64_t per_row = e->param.numel() / e->param.size(0);
      for (int64_t r = 0; r < e->param.size(0); ++r)
        if (g->keep[static_cast<size_t>(r / g->unit)] == 0.0f)
          std::fill(m.begin() + r * per_row, m.begin() + (r + 1) * per_row, 0.0f);
    }
  for (auto& e : entries_) e->mask = mask_from(rows[e.get()], e->param);
}

void SdpPruner::snapshot_teacher() {
  if (!teacher_) {
    // Building the copy initialises it from the default generator: keep that
    // generator's state, so that SDP and magnitude runs draw the same dropout.
    const Generator saved = default_generator();
    teacher_ = make_copy_();
    default_generator() = saved;
    S2H_CHECK(teacher_ != nullptr, "SdpPruner: the model copy for the frozen teacher is null");
    teacher_->to(model_.device());
  }
  teacher_->load_state_dict(model_.state_dict());
  teacher_->train(model_.is_training());
  teacher_classifier_ = nullptr;
  for (auto& [name, m] : teacher_->named_modules())
    if (name == classifier_) teacher_classifier_ = m;
  S2H_CHECK(teacher_classifier_ != nullptr, "SdpPruner: the teacher copy has no module '{}'", classifier_);
}

void SdpPruner::prune_to(double sparsity) {
  S2H_CHECK(sparsity >= 0 && sparsity < 1, "SdpPruner: sparsity must be in [0, 1), got {}", sparsity);
  S2H_CHECK(scope_depth_ == 0, "SdpPruner: prune_to inside a MaskedScope");
  if (opt_.cc && opt_.alpha > 0 && opt_.teacher == "frozen") snapshot_teacher();
  if (opt_.structured) compute_structured_masks(sparsity);
  else compute_unstructured_masks(sparsity);
  current_ = sparsity;
  pruned_once_ = true;
  if (opt_.teacher == "frozen") apply_masks();
  stats_ = compute_sparsity();
}

Tensor SdpPruner::teacher_repr(const Tensor& inputs) {
  NoGradGuard guard;
  const bool logits = opt_.repr == "logits";
  if (opt_.teacher == "frozen") {
    InputCapture cap(*teacher_classifier_);
    Tensor out = (*teacher_)(inputs);
    Tensor z = logits ? out : cap.input();
    S2H_CHECK(z.defined(), "SdpPruner: the teacher did not call its classifier {}", classifier_);
    return z.reshape({z.size(0), -1});
  }
  // Live: the dense weights, leaving the running statistics as they were.
  NamedTensors buffers = model_.named_buffers();
  std::vector<Tensor> saved;
  for (auto& [n, b] : buffers) saved.push_back(b.clone());
  InputCapture cap(*classifier_module_);
  Tensor out = model_(inputs);
  Tensor z = logits ? out : cap.input();
  for (size_t i = 0; i < buffers.size(); ++i) buffers[i].second.detach().copy_(saved[i]);
  S2H_CHECK(z.defined(), "SdpPruner: the model did not call its classifier {}", classifier_);
  return z.reshape({z.size(0), -1});
}

SdpStepStats SdpPruner::train_step(const Tensor& inputs, const Tensor& labels, Optimizer& optim) {
  S2H_CHECK(scope_depth_ == 0, "SdpPruner: train_step inside a MaskedScope");
  const bool use_cc = has_teacher();
  Tensor z_t;
  if (use_cc) z_t = teacher_repr(inputs);
  Tensor logits, z_s;
  {
    MaskedScope scope(*this);
    InputCapture cap(*classifier_module_);
    logits = model_(inputs);
    if (use_cc) {
      z_s = opt_.repr == "logits" ? logits : cap.input();
      S2H_CHECK(z_s.defined(), "SdpPruner: the model did not call its classifier {}", classifier_);
      z_s = z_s.reshape({z_s.size(0), -1});
    }
  }
  const Tensor ce = cross_entropy(logits, labels, opt_.label_smoothing);
  Tensor loss = ce, cc;
  if (use_cc) {
    cc = cross_correlation_loss(z_s, z_t, opt_.lambda);
    loss = add(mul_scalar(ce, 1.0 - opt_.alpha), mul_scalar(cc, opt_.alpha));
  }
  optim.zero_grad();
  loss.backward();
  optim.step();
  if (opt_.teacher == "frozen" && pruned_once_) apply_masks();
  SdpStepStats st;
  st.loss = loss.item();
  st.ce = ce.item();
  st.cc = use_cc ? cc.item() : 0.0;
  st.logits = logits.detach();
  return st;
}

SdpPruner::MaskedScope::MaskedScope(SdpPruner& pruner) : p_(pruner) {
  if (p_.scope_depth_++ > 0) return;  // nested: already masked
  for (auto& e : p_.entries_) *e->member = mul(e->param, e->mask);
  for (auto& g : p_.groups_) {
    g->saved_scales.clear();
    const Tensor scale = Tensor::from_vector(g->keep, {g->channels});
    for (models::ChannelMask* mk : g->channel_masks) {
      g->saved_scales.push_back(mk->scale);
      mk->scale = scale;
    }
  }
}

SdpPruner::MaskedScope::~MaskedScope() {
  if (--p_.scope_depth_ > 0) return;
  for (auto& e : p_.entries_) *e->member = e->param;
  for (auto& g : p_.groups_)
    for (size_t i = 0; i < g->channel_masks.size(); ++i) g->channel_masks[i]->scale = g->saved_scales[i];
}

Tensor SdpPruner::features(const Tensor& inputs, bool logits) {
  const bool was_training = model_.is_training();
  model_.eval();
  Tensor z;
  {
    NoGradGuard guard;
    MaskedScope scope(*this);
    InputCapture cap(*classifier_module_);
    Tensor out = model_(inputs);
    z = logits ? out : cap.input();
  }
  model_.train(was_training);
  S2H_CHECK(z.defined(), "SdpPruner: the model did not call its classifier {}", classifier_);
  return z.reshape({z.size(0), -1}).contiguous();
}

void SdpPruner::apply_masks() {
  S2H_CHECK(scope_depth_ == 0, "SdpPruner: apply_masks inside a MaskedScope");
  NoGradGuard guard;
  for (auto& e : entries_) {
    Tensor d = e->param.detach();
    d.copy_(mul(d, e->mask));
  }
}

SparsityStats SdpPruner::compute_sparsity() const {
  SparsityStats s;
  const std::set<std::string> in_p(prunable_.begin(), prunable_.end());
  std::map<std::string, const Entry*> by_name;
  for (const auto& e : entries_) by_name[e->name] = e.get();
  for (const auto& [name, t] : model_.named_parameters()) {
    s.network_total += t.numel();
    auto it = by_name.find(name);
    const int64_t zeros = it == by_name.end() ? 0 : count_zeros(it->second->mask);
    s.network_pruned += zeros;
    if (in_p.count(name)) {
      s.prunable_total += t.numel();
      s.prunable_pruned += zeros;
    }
  }
  for (const auto& g : groups_) {
    s.units_total += g->channels;
    s.units_pruned += std::count(g->keep.begin(), g->keep.end(), 0.0f);
  }
  s.prunable = s.prunable_total ? static_cast<double>(s.prunable_pruned) / static_cast<double>(s.prunable_total) : 0.0;
  s.network = s.network_total ? static_cast<double>(s.network_pruned) / static_cast<double>(s.network_total) : 0.0;
  return s;
}

NamedTensors SdpPruner::masks() const {
  NamedTensors out;
  for (const auto& e : entries_) out.emplace_back(e->name, e->mask);
  return out;
}

}  // namespace s2h::pruning
