#include "engine/module.h"

#include <algorithm>
#include <map>
#include <set>

#include "engine/autograd.h"

namespace s2h {

namespace {
thread_local ModuleTracer* active_tracer = nullptr;
thread_local InputCapture* active_capture = nullptr;  // a list linked through InputCapture::previous_
}  // namespace

Tensor Module::operator()(const Tensor& x) {
  for (InputCapture* c = active_capture; c != nullptr; c = c->previous_) c->offer(*this, x);
  if (active_tracer == nullptr) return forward(x);
  Tensor out = forward(x);
  active_tracer->add(*this, x, out);
  return out;
}

ModuleTracer::ModuleTracer(const Module& root) : previous_(active_tracer) {
  std::vector<std::pair<std::string, Module*>> mods = root.named_modules();
  for (auto& [name, m] : mods) {
    const int depth = name.empty() ? 0 : 1 + static_cast<int>(std::count(name.begin(), name.end(), '.'));
    names_.push_back({m, {name, depth}});
  }
  active_tracer = this;
}

ModuleTracer::~ModuleTracer() { active_tracer = previous_; }

void ModuleTracer::add(const Module& m, const Tensor& in, const Tensor& out) {
  auto it = std::find_if(names_.begin(), names_.end(), [&](const auto& e) { return e.first == &m; });
  if (it == names_.end()) return;  // not part of the traced tree
  TraceRecord r;
  r.name = it->second.first;
  r.depth = it->second.second;
  r.describe = m.describe();
  r.leaf = m.children().empty();
  r.out_shape = out.shape();
  for (const auto& [n, t] : m.own_parameters()) r.params += t.numel();
  r.flops = m.flops(in, out);
  records_.push_back(std::move(r));
}

InputCapture::InputCapture(const Module& target) : target_(&target), previous_(active_capture) {
  active_capture = this;
}

InputCapture::~InputCapture() {
  // Unlinks itself wherever it sits, so captures may end in any order.
  for (InputCapture** p = &active_capture; *p != nullptr; p = &(*p)->previous_)
    if (*p == this) {
      *p = previous_;
      break;
    }
}

void InputCapture::offer(const Module& m, const Tensor& in) {
  if (&m != target_) return;
  input_ = in;
  ++calls_;
}

int64_t ModuleTracer::total_flops() const {
  int64_t f = 0;
  for (const auto& r : records_) f += r.flops;
  return f;
}

Tensor Module::register_parameter(std::string name, Tensor t) {
  t.set_requires_grad(true);
  params_.emplace_back(std::move(name), t);
  return t;
}

Tensor Module::register_buffer(std::string name, Tensor t) {
  buffers_.emplace_back(std::move(name), t);
  return t;
}

void Module::collect(const std::string& prefix, bool params, NamedTensors& out) const {
  for (const auto& [name, t] : params ? params_ : buffers_) out.emplace_back(prefix + name, t);
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", params, out);
}

NamedTensors Module::named_parameters() const {
  NamedTensors out;
  collect("", true, out);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

NamedTensors Module::named_buffers() const {
  NamedTensors out;
  collect("", false, out);
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules() const {
  std::vector<std::pair<std::string, Module*>> out{{"", const_cast<Module*>(this)}};
  for (const auto& [name, child] : children_)
    for (auto& [sub, m] : child->named_modules()) out.emplace_back(sub.empty() ? name : name + "." + sub, m);
  return out;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

void Module::zero_grad() {
  for (auto& [name, t] : named_parameters()) t.zero_grad();
}

NamedTensors Module::state_dict() const {
  NamedTensors out = named_parameters();
  for (auto& nt : named_buffers()) out.push_back(nt);
  return out;
}

void Module::load_state_dict(const NamedTensors& state, bool strict) {
  std::map<std::string, Tensor> given(state.begin(), state.end());
  std::vector<std::string> missing;
  std::set<std::string> used;
  NoGradGuard guard;
  for (auto& [name, t] : state_dict()) {
    auto it = given.find(name);
    if (it == given.end()) {
      missing.push_back(name);
      continue;
    }
    S2H_CHECK(it->second.shape() == t.shape(), "load_state_dict: '{}' has shape {} in the checkpoint, {} in the model",
              name, shape_str(it->second.shape()), shape_str(t.shape()));
    Tensor dst = t.detach();
    dst.copy_(it->second);
    used.insert(name);
  }
  if (!strict) return;
  std::vector<std::string> unexpected;
  for (auto& [name, t] : given)
    if (!used.count(name)) unexpected.push_back(name);
  auto join = [](const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 8; ++i) s += (i ? ", " : "") + v[i];
    if (v.size() > 8) s += fmt::format(", ... ({} in all)", v.size());
    return s;
  };
  S2H_CHECK(missing.empty() && unexpected.empty(), "load_state_dict: missing [{}], unexpected [{}]", join(missing),
            join(unexpected));
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

void Module::to(Device device) {
  for (auto& [name, t] : named_parameters()) t.move_to_(device);
  for (auto& [name, t] : named_buffers()) t.move_to_(device);
}

Device Module::device() const {
  for (const auto& [name, t] : named_parameters()) return t.device();
  for (const auto& [name, t] : named_buffers()) return t.device();
  return Device::cpu();
}

void Module::summary_into(const std::string& name, int depth, std::string& out) const {
  out += std::string(static_cast<size_t>(depth) * 2, ' ') + (name.empty() ? "" : name + ": ") + describe() + "\n";
  for (const auto& [child_name, child] : children_) child->summary_into(child_name, depth + 1, out);
}

std::string Module::summary() const {
  std::string out;
  summary_into("", 0, out);
  return out;
}

}  // namespace s2h
