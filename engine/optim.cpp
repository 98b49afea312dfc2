// SGD and AdamW: CPU loops, and one fused multi-tensor kernel launch per
// device for parameters on CUDA (kernels/cuda/optim.h); learning-rate schedules.
#include "engine/optim.h"

#include <cmath>
#include <numbers>

#include "engine/autograd.h"
#include "kernels/cpu/parallel.h"
#if S2H_HAVE_CUDA
#include <map>

#include "kernels/cuda/optim.h"
#include "kernels/cuda/runtime.h"
#endif

namespace s2h {

namespace {

#if S2H_HAVE_CUDA
// The CUDA parameters of one step, per device: their table entries for the
// fused kernel and the contiguous gradients the entries point into (kept
// until the launch is queued; freeing is stream-ordered behind it).
template <class Entry>
struct CudaStep {
  std::map<int, std::vector<Entry>> entries;
  std::vector<Tensor> keep;
};

// The contiguous gradient of a CUDA parameter, after checking what the fused
// kernels assume.
Tensor cuda_grad(const Tensor& p, const Tensor& grad, const char* op) {
  S2H_CHECK(p.dtype() == DType::F32, "{}: parameters on {} must be f32 (fp32 master weights), got {}", op,
            p.device().str(), dtype_name(p.dtype()));
  S2H_CHECK(grad.device() == p.device(), "{}: the gradient is on {}, its parameter on {}", op, grad.device().str(),
            p.device().str());
  S2H_CHECK(grad.dtype() == DType::F32 || grad.dtype() == DType::BF16,
            "{}: gradient of dtype {} (expected f32 or bf16 on {})", op, dtype_name(grad.dtype()), p.device().str());
  S2H_CHECK(grad.shape() == p.shape(), "{}: gradient of shape {} for a parameter of shape {}", op,
            shape_str(grad.shape()), shape_str(p.shape()));
  return grad.contiguous();
}
#endif

// Fused per-parameter update loops on contiguous data.
template <class Fn>
void for_each_element(int64_t n, Fn fn) {
  cpu::parallel_for(n, 1 << 15, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) fn(i);
  });
}

std::string state_name(const char* what, size_t group, size_t index) {
  return fmt::format("{}.{}.{}", what, group, index);
}

void load_slot(const NamedTensors& state, const std::string& name, const Tensor& like, Tensor& slot) {
  for (const auto& [n, t] : state)
    if (n == name) {
      S2H_CHECK(t.shape() == like.shape(), "optimizer state '{}' has shape {}, the parameter has {}", name,
                shape_str(t.shape()), shape_str(like.shape()));
      // On the parameter's device (a checkpoint's tensors come on the CPU).
      slot = like.device().is_cpu() ? t.to(like.dtype()).clone() : t.to(like.device()).to(like.dtype()).clone();
      return;
    }
  slot = Tensor();
}

}  // namespace

Optimizer::Optimizer(std::vector<ParamGroup> groups, double lr) : groups_(std::move(groups)), lr_(lr) {
  for (const ParamGroup& g : groups_)
    for (const Tensor& p : g.params) {
      S2H_CHECK(p.defined() && p.requires_grad() && p.is_leaf(), "optimizer: every parameter must be a leaf that requires grad");
      S2H_CHECK(p.is_contiguous(), "optimizer: parameters must be contiguous");
    }
}

void Optimizer::zero_grad() {
  for (ParamGroup& g : groups_)
    for (Tensor& p : g.params) p.zero_grad();
}

// ------------------------------------------------------------------ SGD
SGD::SGD(std::vector<ParamGroup> groups, SGDOptions opt) : Optimizer(std::move(groups), opt.lr), opt_(opt) {
  S2H_CHECK(opt.lr >= 0 && opt.momentum >= 0 && opt.weight_decay >= 0, "SGD: lr, momentum and weight decay must be >= 0");
  S2H_CHECK(!opt.nesterov || (opt.momentum > 0 && opt.dampening == 0), "SGD: Nesterov needs momentum > 0 and no dampening");
  for (const ParamGroup& g : groups_) momentum_.emplace_back(g.params.size());
}

void SGD::step() {
  NoGradGuard guard;
#if S2H_HAVE_CUDA
  CudaStep<cuda::SgdParam> gpu;
#endif
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const ParamGroup& group = groups_[gi];
    const double lr = lr_ * group.lr_scale, wd = group.weight_decay.value_or(opt_.weight_decay);
    for (size_t pi = 0; pi < group.params.size(); ++pi) {
      const Tensor& p = group.params[pi];
      const Tensor grad = p.grad();
      if (!grad.defined()) continue;
#if S2H_HAVE_CUDA
      if (p.device().is_cuda()) {  // queued for the fused kernel below
        const Tensor g = cuda_grad(p, grad, "SGD");
        Tensor& buf = momentum_[gi][pi];
        const bool first = !buf.defined();
        if (opt_.momentum > 0 && first) buf = Tensor::empty(p.shape(), p.dtype(), p.device());
        cuda::SgdParam e;
        e.param = p.data<float>();
        e.grad = g.raw_data();
        e.grad_bf16 = g.dtype() == DType::BF16;
        e.momentum = opt_.momentum > 0 ? buf.data<float>() : nullptr;
        e.first = first;
        e.n = p.numel();
        e.lr = static_cast<float>(lr);
        e.weight_decay = static_cast<float>(wd);
        gpu.entries[p.device().index].push_back(e);
        gpu.keep.push_back(g);
        continue;
      }
#endif
      Tensor g = grad.contiguous();
      Tensor& buf = momentum_[gi][pi];
      const bool first = !buf.defined();
      if (opt_.momentum > 0 && first) buf = Tensor::empty(p.shape(), p.dtype());
      dispatch_float(p.dtype(), "SGD", [&]<typename T>() {
        T* w = p.data<T>();
        const T* gp = g.data<T>();
        T* mb = opt_.momentum > 0 ? buf.data<T>() : nullptr;
        const T tlr = static_cast<T>(lr), twd = static_cast<T>(wd), mom = static_cast<T>(opt_.momentum),
                damp = static_cast<T>(1 - opt_.dampening);
        const bool nesterov = opt_.nesterov;
        for_each_element(p.numel(), [&](int64_t i) {
          T d = gp[i] + twd * w[i];
          if (mb) {
            mb[i] = first ? d : mom * mb[i] + damp * d;
            d = nesterov ? d + mom * mb[i] : mb[i];
          }
          w[i] -= tlr * d;
        });
      });
    }
  }
#if S2H_HAVE_CUDA
  // One launch per device updates all its parameters (same float arithmetic as above).
  for (const auto& [device, entries] : gpu.entries)
    cuda::sgd_step(entries.data(), static_cast<int64_t>(entries.size()), static_cast<float>(opt_.momentum),
                   static_cast<float>(1 - opt_.dampening), opt_.nesterov, cuda::stream(device));
#endif
}

NamedTensors SGD::state_dict() const {
  NamedTensors out;
  for (size_t g = 0; g < momentum_.size(); ++g)
    for (size_t i = 0; i < momentum_[g].size(); ++i)
      if (momentum_[g][i].defined()) out.emplace_back(state_name("momentum", g, i), momentum_[g][i]);
  return out;
}

void SGD::load_state_dict(const NamedTensors& state) {
  for (size_t g = 0; g < groups_.size(); ++g)
    for (size_t i = 0; i < groups_[g].params.size(); ++i)
      load_slot(state, state_name("momentum", g, i), groups_[g].params[i], momentum_[g][i]);
}

// ------------------------------------------------------------------ AdamW
AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions opt) : Optimizer(std::move(groups), opt.lr), opt_(opt) {
  S2H_CHECK(opt.beta1 >= 0 && opt.beta1 < 1 && opt.beta2 >= 0 && opt.beta2 < 1, "AdamW: betas must be in [0, 1)");
  S2H_CHECK(opt.eps > 0 && opt.weight_decay >= 0 && opt.lr >= 0, "AdamW: eps must be > 0, lr and weight decay >= 0");
  for (const ParamGroup& g : groups_) {
    steps_.emplace_back(g.params.size(), 0);
    m_.emplace_back(g.params.size());
    v_.emplace_back(g.params.size());
  }
}

void AdamW::step() {
  NoGradGuard guard;
#if S2H_HAVE_CUDA
  CudaStep<cuda::AdamWParam> gpu;
#endif
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const ParamGroup& group = groups_[gi];
    const double lr = lr_ * group.lr_scale, wd = group.weight_decay.value_or(opt_.weight_decay);
    for (size_t pi = 0; pi < group.params.size(); ++pi) {
      const Tensor& p = group.params[pi];
      const Tensor grad = p.grad();
      if (!grad.defined()) continue;
#if S2H_HAVE_CUDA
      if (p.device().is_cuda()) {  // queued for the fused kernel below
        const Tensor g = cuda_grad(p, grad, "AdamW");
        Tensor& m = m_[gi][pi];
        Tensor& v = v_[gi][pi];
        if (!m.defined()) {
          m = Tensor::zeros(p.shape(), p.dtype(), p.device());
          v = Tensor::zeros(p.shape(), p.dtype(), p.device());
        }
        const double t = static_cast<double>(++steps_[gi][pi]);
        const double bc1 = 1 - std::pow(opt_.beta1, t), bc2 = 1 - std::pow(opt_.beta2, t);
        cuda::AdamWParam e;
        e.param = p.data<float>();
        e.grad = g.raw_data();
        e.grad_bf16 = g.dtype() == DType::BF16;
        e.exp_avg = m.data<float>();
        e.exp_avg_sq = v.data<float>();
        e.n = p.numel();
        e.decay = static_cast<float>(1 - lr * wd);
        e.step_size = static_cast<float>(lr / bc1);
        e.sqrt_bc2 = static_cast<float>(std::sqrt(bc2));
        gpu.entries[p.device().index].push_back(e);
        gpu.keep.push_back(g);
        continue;
      }
#endif
      Tensor g = grad.contiguous();
      Tensor& m = m_[gi][pi];
      Tensor& v = v_[gi][pi];
      if (!m.defined()) {
        m = Tensor::zeros(p.shape(), p.dtype());
        v = Tensor::zeros(p.shape(), p.dtype());
      }
      const double t = static_cast<double>(++steps_[gi][pi]);
      const double bc1 = 1 - std::pow(opt_.beta1, t), bc2 = 1 - std::pow(opt_.beta2, t);
      dispatch_float(p.dtype(), "AdamW", [&]<typename T>() {
        T* w = p.data<T>();
        const T* gp = g.data<T>();
        T* mp = m.data<T>();
        T* vp = v.data<T>();
        const T b1 = static_cast<T>(opt_.beta1), b2 = static_cast<T>(opt_.beta2), eps = static_cast<T>(opt_.eps);
        const T decay = static_cast<T>(1 - lr * wd), step_size = static_cast<T>(lr / bc1),
                sqrt_bc2 = static_cast<T>(std::sqrt(bc2));
        for_each_element(p.numel(), [&](int64_t i) {
          w[i] *= decay;
          mp[i] = b1 * mp[i] + (T(1) - b1) * gp[i];
          vp[i] = b2 * vp[i] + (T(1) - b2) * gp[i] * gp[i];
          w[i] -= step_size * mp[i] / (std::sqrt(vp[i]) / sqrt_bc2 + eps);
        });
      });
    }
  }
#if S2H_HAVE_CUDA
  // One launch per device updates all its parameters (same float arithmetic as above).
  for (const auto& [device, entries] : gpu.entries)
    cuda::adamw_step(entries.data(), static_cast<int64_t>(entries.size()), static_cast<float>(opt_.beta1),
                     static_cast<float>(opt_.beta2), static_cast<float>(opt_.eps), cuda::stream(device));
#endif
}

NamedTensors AdamW::state_dict() const {
  NamedTensors out;
  for (size_t g = 0; g < m_.size(); ++g)
    for (size_t i = 0; i < m_[g].size(); ++i)
      if (m_[g][i].defined()) {
        out.emplace_back(state_name("step", g, i), Tensor::scalar(static_cast<double>(steps_[g][i]), DType::I64));
        out.emplace_back(state_name("exp_avg", g, i), m_[g][i]);
        out.emplace_back(state_name("exp_avg_sq", g, i), v_[g][i]);
      }
  return out;
}

void AdamW::load_state_dict(const NamedTensors& state) {
  for (size_t g = 0; g < groups_.size(); ++g)
    for (size_t i = 0; i < groups_[g].params.size(); ++i) {
      steps_[g][i] = 0;
      const std::string name = state_name("step", g, i);
      for (const auto& [n, t] : state)
        if (n == name) steps_[g][i] = static_cast<int64_t>(t.item());
      load_slot(state, state_name("exp_avg", g, i), groups_[g].params[i], m_[g][i]);
      load_slot(state, state_name("exp_avg_sq", g, i), groups_[g].params[i], v_[g][i]);
    }
}

// ------------------------------------------------------------------ schedules
double LrSchedule::at(int64_t step) const {
  if (warmup_steps > 0 && step < warmup_steps) {
    const double f = static_cast<double>(step) / static_cast<double>(warmup_steps);
    return base_lr * (warmup_start + (1.0 - warmup_start) * f);
  }
  const int64_t s = step - warmup_steps;
  switch (kind) {
    case Kind::Constant: return base_lr;
    case Kind::Cosine: {
      const int64_t span = std::max<int64_t>(1, total_steps - warmup_steps);
      const double f = std::min(1.0, static_cast<double>(s) / static_cast<double>(span));
      return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * f));
    }
    case Kind::Step: return base_lr * std::pow(gamma, static_cast<double>(s / std::max<int64_t>(1, step_size)));
  }
  return base_lr;
}

LrSchedule::Kind LrSchedule::parse_kind(const std::string& name) {
  if (name == "constant") return Kind::Constant;
  if (name == "cosine") return Kind::Cosine;
  if (name == "step") return Kind::Step;
  S2H_FAIL("unknown learning-rate schedule '{}' (expected constant, cosine or step)", name);
}

}  // namespace s2h
