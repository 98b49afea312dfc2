#include "pruning/s2h.h"

#include <cmath>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "models/narrow.h"

namespace s2h::pruning {

Variant parse_variant(const std::string& s) {
  if (s == "decoupled") return Variant::Decoupled;
  if (s == "coupled") return Variant::Coupled;
  if (s == "no-kd") return Variant::NoKd;
  if (s == "hard-st") return Variant::HardSt;
  if (s == "self-only") return Variant::SelfOnly;
  S2H_FAIL("--variant: unknown variant '{}' (expected decoupled, coupled, no-kd, hard-st or self-only)", s);
}

const char* variant_name(Variant v) {
  switch (v) {
    case Variant::Decoupled: return "decoupled";
    case Variant::Coupled: return "coupled";
    case Variant::NoKd: return "no-kd";
    case Variant::HardSt: return "hard-st";
    case Variant::SelfOnly: return "self-only";
  }
  return "?";
}

Gap logit_gap(const Tensor& soft, const Tensor& hard) {
  S2H_CHECK(soft.dim() == 2 && soft.shape() == hard.shape(), "logit gap: shapes {} and {} differ", soft.str(),
            hard.str());
  const int64_t n = soft.size(0), c = soft.size(1);
  const std::vector<double> s = soft.to_vector<double>(), h = hard.to_vector<double>();
  Gap g;
  std::vector<double> p(static_cast<size_t>(c)), q(static_cast<size_t>(c));
  auto softmax_row = [c](const double* x, std::vector<double>& out) {
    double mx = x[0];
    for (int64_t j = 1; j < c; ++j) mx = std::max(mx, x[j]);
    double z = 0;
    for (int64_t j = 0; j < c; ++j) z += out[static_cast<size_t>(j)] = std::exp(x[j] - mx);
    for (double& v : out) v /= z;
  };
  auto kl = [c](const std::vector<double>& a, const std::vector<double>& b) {
    double k = 0;
    for (int64_t j = 0; j < c; ++j) {
      const double x = a[static_cast<size_t>(j)], y = b[static_cast<size_t>(j)];
      if (x > 0) k += x * (std::log(x) - std::log(std::max(y, 1e-300)));
    }
    return k;
  };
  for (int64_t i = 0; i < n; ++i) {
    softmax_row(s.data() + i * c, p);
    softmax_row(h.data() + i * c, q);
    std::vector<double> m(static_cast<size_t>(c));
    double d2 = 0;
    for (int64_t j = 0; j < c; ++j) {
      m[static_cast<size_t>(j)] = 0.5 * (p[static_cast<size_t>(j)] + q[static_cast<size_t>(j)]);
      const double d = s[static_cast<size_t>(i * c + j)] - h[static_cast<size_t>(i * c + j)];
      d2 += d * d;
    }
    g.kl += kl(p, q);
    g.js += 0.5 * kl(p, m) + 0.5 * kl(q, m);
    g.l2 += std::sqrt(d2);
  }
  if (n > 0) {
    g.kl /= static_cast<double>(n);
    g.js /= static_cast<double>(n);
    g.l2 /= static_cast<double>(n);
  }
  return g;
}

S2HPruner::S2HPruner(Module& model, const FlopsModel& flops, WidthMasks& masks, const S2HOptions& opt)
    : model_(model), flops_(flops), masks_(masks), opt_(opt), groups_(flops.groups()), params_(model.parameters()) {
  S2H_CHECK(opt.target > 0 && opt.target <= 1, "--target-flops must be in (0, 1], got {}", opt.target);
  S2H_CHECK(opt.lambda_flops > 0, "--lambda-flops must be positive, got {}", opt.lambda_flops);
  S2H_CHECK(opt.lambda_kd >= 0, "--lambda-kd must be >= 0, got {}", opt.lambda_kd);
  S2H_CHECK(opt.flops_tolerance > 0, "--flops-tolerance must be positive, got {}", opt.flops_tolerance);
  S2H_CHECK(opt.flops_balance > 0, "--flops-balance must be positive, got {}", opt.flops_balance);
  S2H_CHECK(opt.task_balance >= 0, "--task-balance must be >= 0, got {}", opt.task_balance);
  S2H_CHECK(opt.mask_lr >= 0, "--mask-lr must be >= 0, got {}", opt.mask_lr);
  S2H_CHECK(opt.mask_momentum >= 0 && opt.mask_momentum < 1, "--mask-momentum must be in [0, 1), got {}",
            opt.mask_momentum);
  S2H_CHECK(opt.order_every >= 1, "--order-every must be >= 1, got {}", opt.order_every);
  for (const Tensor& u : masks_.parameters()) momentum_.push_back(Tensor::zeros(u.shape()));
  std::map<std::string, Module*> mods;
  for (auto& [name, m] : model_.named_modules()) mods[name] = m;
  for (const WidthGroup& wg : masks_.groups()) {
    std::vector<models::ChannelMask*>& ms = mask_modules_.emplace_back();
    for (const std::string& name : groups_.at(static_cast<size_t>(wg.group)).masks) {
      auto it = mods.find(name);
      auto* mk = it == mods.end() ? nullptr : dynamic_cast<models::ChannelMask*>(it->second);
      S2H_CHECK(mk != nullptr, "group {}: mask {} is not a ChannelMask of the model", wg.name, name);
      ms.push_back(mk);
    }
  }
}

void S2HPruner::set_soft_masks(bool on) {
  for (size_t i = 0; i < mask_modules_.size(); ++i) {
    const Tensor w = on ? masks_.channel_mask(i) : Tensor();
    for (models::ChannelMask* mk : mask_modules_[i]) mk->scale = w;
  }
}

std::map<std::string, Tensor> S2HPruner::soft_mask_values() const {
  NoGradGuard ng;
  std::map<std::string, Tensor> out;
  for (size_t i = 0; i < masks_.groups().size(); ++i) out[masks_.groups()[i].name] = masks_.channel_mask(i).detach();
  return out;
}

Tensor S2HPruner::flops_ratio(bool hard_widths) const {
  std::vector<Tensor> ratio(groups_.size());
  for (size_t i = 0; i < masks_.groups().size(); ++i) {
    const WidthGroup& wg = masks_.groups()[i];
    const Tensor w = hard_widths ? masks_.hard_width_st(i) : masks_.expected_width(i);
    ratio[static_cast<size_t>(wg.group)] = mul_scalar(w, 1.0 / static_cast<double>(wg.channels));
  }
  return mul_scalar(flops_.at(ratio, opt_.scope), 1.0 / flops_.full(opt_.scope));
}

double S2HPruner::expected_ratio() const {
  NoGradGuard ng;
  return flops_ratio(false).item();
}

double S2HPruner::hard_ratio() const {
  return flops_.at_widths(masks_.hard_widths(), opt_.scope) / flops_.full(opt_.scope);
}

namespace {

double norm(const Tensor& t) {
  double s = 0;
  for (float v : t.to_vector<float>()) s += static_cast<double>(v) * v;
  return std::sqrt(s);
}

// The gradient of the leaves `xs` accumulated so far (zeros when none), then cleared.
std::vector<Tensor> take_grads(const std::vector<Tensor>& xs) {
  std::vector<Tensor> gs;
  for (const Tensor& x : xs) {
    const Tensor g = x.grad();
    gs.push_back(g.defined() ? g.clone() : Tensor::zeros(x.shape(), x.dtype(), x.device()));
    x.zero_grad();
  }
  return gs;
}

double accuracy(const Tensor& logits, const Tensor& labels) {
  const std::vector<int64_t> pred = argmax(logits.detach(), 1).to_vector<int64_t>();
  const std::vector<int64_t> lab = labels.to_vector<int64_t>();
  int64_t c = 0;
  for (size_t i = 0; i < pred.size(); ++i) c += pred[i] == lab[i];
  return pred.empty() ? 0.0 : static_cast<double>(c) / static_cast<double>(pred.size());
}

// KL(softmax(teacher) || softmax(student)), batch mean.
Tensor kl_logits(const Tensor& teacher, const Tensor& student) {
  return kl_div(log_softmax(student, 1), softmax(teacher, 1));
}

}  // namespace

std::pair<std::vector<Tensor>, std::vector<Tensor>> S2HPruner::fuse(const MaskGrads& g, double r_value) const {
  NoGradGuard ng;
  const double closeness = std::max(
      std::min(r_value / (opt_.lambda_flops * opt_.flops_tolerance * opt_.flops_tolerance), 1.0), 1e-12);
  const double scale = opt_.flops_balance / closeness;
  std::vector<Tensor> g_u, g_r;
  for (size_t i = 0; i < g.task.size(); ++i) {
    Tensor gu;
    if (g.has_kd) {
      gu = g.kd[i].clone();
      const double nk = norm(g.kd[i]), nt = norm(g.task[i]);
      if (nt > 0 && opt_.task_balance > 0) gu.add_(g.task[i], opt_.task_balance * nk / nt);
    } else {
      gu = g.task[i].clone();
    }
    Tensor gr = g.flops[i].clone();
    const double nu = norm(gu), nr = norm(gr);
    if (nu > scale * nr) {
      if (nr > 0) gr.mul_(nu / scale / nr);
    } else if (nu > 0) {
      gu.mul_(scale * nr / nu);
    }
    g_u.push_back(gu);
    g_r.push_back(gr);
  }
  return {g_u, g_r};
}

void S2HPruner::mask_step(const std::vector<Tensor>& g_u, const std::vector<Tensor>& g_r, double lr_factor) {
  NoGradGuard ng;
  const std::vector<Tensor> us = masks_.parameters();
  const double lr = opt_.mask_lr * lr_factor;
  for (size_t i = 0; i < us.size(); ++i) {
    Tensor g = g_u[i].clone();
    g.add_(g_r[i]);
    if (opt_.mask_weight_decay > 0) g.add_(us[i].detach(), opt_.mask_weight_decay);
    Tensor& m = momentum_[i];
    m.mul_(opt_.mask_momentum);
    m.add_(g);
    Tensor d = opt_.mask_nesterov ? g : m.clone();
    if (opt_.mask_nesterov) d.add_(m, opt_.mask_momentum);
    Tensor u = us[i].detach();
    u.add_(d, -lr);
  }
}

StepStats S2HPruner::step(const Tensor& x, const Tensor& y, Optimizer& weights, double lr_factor) {
  if (steps_ % opt_.order_every == 0) masks_.update_order(model_);
  ++steps_;
  StepStats st;
  const MaskGrads g = gradients(x, y, st);
  const auto [g_u, g_r] = fuse(g, st.flops_loss);
  mask_step(g_u, g_r, lr_factor);
  weights.step();
  st.flops_expected = expected_ratio();
  st.flops_hard = hard_ratio();
  return st;
}

MaskGrads S2HPruner::gradients(const Tensor& x, const Tensor& y, StepStats& st) {
  const std::vector<Tensor> us = masks_.parameters();
  std::vector<Tensor> all = params_;
  all.insert(all.end(), us.begin(), us.end());
  for (const Tensor& p : params_) p.zero_grad();
  for (const Tensor& u : us) u.zero_grad();
  const Variant v = opt_.variant;

  // Soft pass (no history for hard-st: there it only measures the gap).
  Tensor s;
  set_soft_masks(true);
  try {
    if (v == Variant::HardSt) {
      NoGradGuard ng;
      s = model_(x);
    } else {
      s = model_(x);
    }
  } catch (...) {
    set_soft_masks(false);
    throw;
  }
  set_soft_masks(false);
  const Tensor L = cross_entropy(s, y, opt_.label_smoothing);

  // Hard pass: the narrow network with the same weights.
  Tensor h;
  {
    std::map<std::string, Tensor> st_scales;
    if (v == Variant::HardSt)
      for (size_t i = 0; i < masks_.groups().size(); ++i) {
        const Tensor w = masks_.channel_mask(i);
        st_scales[masks_.groups()[i].name] = add_scalar(sub(w, w.detach()), 1.0);  // value 1, gradient of w
      }
    models::NarrowView view(model_, groups_, masks_.selection(), st_scales);
    h = model_(x);
  }
  const Tensor Lh = cross_entropy(h, y, opt_.label_smoothing);

  const Tensor ratio = flops_ratio(opt_.flops_on_hard);
  const Tensor R = mul_scalar(square(add_scalar(ratio, -opt_.target)), opt_.lambda_flops);

  MaskGrads g;
  switch (v) {
    case Variant::Decoupled: {
      L.backward({}, all);
      g.task = take_grads(us);
      // G1: to the weights only, through the hard net. G2: to the masks only, through the soft net.
      const Tensor g1 = mul_scalar(kl_logits(s.detach(), h), opt_.lambda_kd);
      g1.backward({}, params_);
      const Tensor g2 = mul_scalar(kl_logits(s, h.detach()), opt_.lambda_kd);
      g2.backward({}, us);
      g.kd = take_grads(us);
      g.has_kd = true;
      st.kd = g1.item();
      st.loss = L.item() + st.kd;
      break;
    }
    case Variant::Coupled: {
      L.backward({}, all);
      g.task = take_grads(us);
      const Tensor kd = mul_scalar(kl_logits(s, h), opt_.lambda_kd);
      kd.backward({}, all);
      g.kd = take_grads(us);
      g.has_kd = true;
      st.kd = kd.item();
      st.loss = L.item() + st.kd;
      break;
    }
    case Variant::NoKd:
      L.backward({}, all);
      g.task = take_grads(us);
      st.loss = L.item();
      break;
    case Variant::SelfOnly: {
      L.backward({}, all);
      g.task = take_grads(us);
      const Tensor g1 = mul_scalar(kl_logits(s.detach(), h), opt_.lambda_kd);
      g1.backward({}, params_);
      st.kd = g1.item();
      st.loss = L.item() + st.kd;
      break;
    }
    case Variant::HardSt:
      Lh.backward({}, all);
      g.task = take_grads(us);
      st.loss = Lh.item();
      break;
  }
  R.backward({}, us);
  g.flops = take_grads(us);
  if (!g.has_kd)
    for (const Tensor& u : us) g.kd.push_back(Tensor::zeros(u.shape()));

  st.soft_loss = L.item();
  st.soft_acc = accuracy(s, y);
  st.hard_loss = Lh.item();
  st.hard_acc = accuracy(h, y);
  st.flops_loss = R.item();
  const Gap gap = logit_gap(s.detach(), h.detach());
  st.kl = gap.kl;
  st.js = gap.js;
  st.l2 = gap.l2;
  return g;
}

StepStats S2HPruner::dense_step(const Tensor& x, const Tensor& y, Optimizer& weights) {
  set_soft_masks(false);
  const Tensor s = model_(x);
  const Tensor L = cross_entropy(s, y, opt_.label_smoothing);
  weights.zero_grad();
  L.backward({}, params_);
  weights.step();
  StepStats st;
  st.loss = st.soft_loss = L.item();
  st.soft_acc = accuracy(s, y);
  st.flops_expected = st.flops_hard = 1.0;
  return st;
}

StepStats S2HPruner::hard_step(const Tensor& x, const Tensor& y, Optimizer& weights) {
  Tensor h;
  {
    models::NarrowView view(model_, groups_, masks_.selection());
    h = model_(x);
  }
  const Tensor Lh = cross_entropy(h, y, opt_.label_smoothing);
  weights.zero_grad();
  Lh.backward({}, params_);
  weights.step();
  StepStats st;
  st.loss = st.hard_loss = Lh.item();
  st.hard_acc = accuracy(h, y);
  st.flops_expected = expected_ratio();
  st.flops_hard = hard_ratio();
  return st;
}

}  // namespace s2h::pruning
