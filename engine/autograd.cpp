#include "engine/autograd.h"

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "engine/ops.h"

namespace s2h {

namespace {
thread_local bool g_grad_enabled = true;

// Adds g into slot (allocating on first use). Never writes into a tensor the
// caller might still hold: the first gradient is stored as given and later
// ones produce a new sum.
void accumulate(Tensor& slot, const Tensor& g) {
  if (!slot.defined()) {
    slot = g;
  } else {
    slot = add(slot, g);
  }
}
}  // namespace

Node::~Node() {
  std::vector<std::shared_ptr<Node>> dying;
  auto harvest = [&dying](std::vector<std::shared_ptr<AutogradMeta>>& inputs) {
    for (auto& meta : inputs) {
      // Sole owner of the metadata and of its node: take the node out so that
      // it is destroyed here, in the loop, instead of inside this destructor.
      if (meta && meta.use_count() == 1 && meta->grad_fn && meta->grad_fn.use_count() == 1)
        dying.push_back(std::move(meta->grad_fn));
    }
    inputs.clear();
  };
  harvest(inputs);
  while (!dying.empty()) {
    std::shared_ptr<Node> node = std::move(dying.back());
    dying.pop_back();
    harvest(node->inputs);
  }  // `node` (now without inputs) is destroyed at the end of each iteration
}

bool grad_enabled() { return g_grad_enabled; }
void set_grad_enabled(bool on) { g_grad_enabled = on; }

bool any_requires_grad(std::initializer_list<Tensor> inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

bool any_requires_grad(const std::vector<Tensor>& inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

Tensor record(Tensor out, const char* name, const std::vector<Tensor>& inputs, BackwardFn fn) {
  if (!any_requires_grad(inputs)) return out;
  auto node = std::make_shared<Node>();
  node->name = name;
  node->out_dtype = out.dtype();
  node->backward = std::move(fn);
  for (const Tensor& t : inputs) {
    node->inputs.push_back(t.defined() && t.requires_grad() ? t.impl().autograd : nullptr);
    node->input_shapes.push_back(t.defined() ? t.shape() : Shape{});
  }
  auto meta = std::make_shared<AutogradMeta>();
  meta->requires_grad = true;
  meta->grad_fn = std::move(node);
  out.impl().autograd = std::move(meta);
  return out;
}

void Tensor::backward(const Tensor& gradient, const std::vector<Tensor>& inputs) const {
  S2H_CHECK(requires_grad(), "backward: tensor {} does not require grad (no input of its graph requires grad)",
            str());
  Tensor seed = gradient;
  if (!seed.defined()) {
    S2H_CHECK(numel() == 1, "backward: a gradient must be given for a non-scalar tensor of shape {}",
              shape_str(shape()));
    seed = Tensor::ones(shape(), dtype(), device());
  }
  S2H_CHECK(seed.shape() == shape() && seed.dtype() == dtype(),
            "backward: gradient {} for a tensor {} (shape and dtype must match)", seed.str(), str());
  seed = seed.detach().contiguous();

  // Restriction to chosen leaves.
  std::unordered_set<const AutogradMeta*> targets;
  for (const Tensor& t : inputs) {
    S2H_CHECK(t.defined() && t.requires_grad(), "backward(inputs=...): input {} does not require grad",
              t.defined() ? t.str() : "undefined");
    S2H_CHECK(t.is_leaf(), "backward(inputs=...): only leaf tensors are supported as inputs");
    targets.insert(t.impl().autograd.get());
  }
  const bool restricted = !targets.empty();
  NoGradGuard no_grad;

  const std::shared_ptr<AutogradMeta>& root = impl().autograd;
  if (!root->grad_fn) {  // the root itself is a leaf
    if (!restricted || targets.count(root.get())) accumulate(root->grad, seed.clone());
    return;
  }

  // Reverse topological order by iterative depth-first search.
  std::vector<Node*> order;
  std::unordered_set<Node*> seen;
  std::vector<std::pair<Node*, size_t>> stack{{root->grad_fn.get(), 0}};
  seen.insert(root->grad_fn.get());
  while (!stack.empty()) {
    auto& [node, next] = stack.back();
    if (next < node->inputs.size()) {
      const auto& in = node->inputs[next++];
      if (in && in->grad_fn && seen.insert(in->grad_fn.get()).second) stack.push_back({in->grad_fn.get(), 0});
    } else {
      order.push_back(node);
      stack.pop_back();
    }
  }
  // `order` is post-order: inputs before consumers. Walk it backwards.

  // With a restriction, skip nodes from which no target leaf is reachable.
  std::unordered_set<Node*> useful;
  if (restricted) {
    for (Node* node : order) {  // inputs are visited before their consumers
      for (const auto& in : node->inputs) {
        if (!in) continue;
        if ((in->grad_fn && useful.count(in->grad_fn.get())) || (!in->grad_fn && targets.count(in.get()))) {
          useful.insert(node);
          break;
        }
      }
    }
  }

  std::unordered_map<Node*, Tensor> grads;
  grads[root->grad_fn.get()] = seed;
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    Node* node = *it;
    auto found = grads.find(node);
    if (found == grads.end()) continue;  // no gradient reached this node
    Tensor g = std::move(found->second).contiguous();
    if (g.dtype() != node->out_dtype) g = g.to(node->out_dtype);
    grads.erase(found);
    if (restricted && !useful.count(node)) continue;
    std::vector<Tensor> in_grads = node->backward(g);
    S2H_CHECK(in_grads.size() == node->inputs.size(), "autograd: backward of '{}' returned {} gradients for {} inputs",
              node->name, in_grads.size(), node->inputs.size());
    for (size_t i = 0; i < in_grads.size(); ++i) {
      const auto& in = node->inputs[i];
      if (!in || !in_grads[i].defined()) continue;
      Tensor gi = in_grads[i].detach();
      S2H_CHECK(gi.shape() == node->input_shapes[i],
                "autograd: backward of '{}' gave a gradient of shape {} for input {} of shape {}", node->name,
                shape_str(gi.shape()), i, shape_str(node->input_shapes[i]));
      if (in->grad_fn) {
        if (restricted && !useful.count(in->grad_fn.get())) continue;
        accumulate(grads[in->grad_fn.get()], gi);
      } else if (!restricted || targets.count(in.get())) {
        // A leaf's first gradient is a private copy: backward functions may
        // return one tensor for several inputs, and users scale grads in place.
        if (!in->grad.defined()) {
          in->grad = gi.clone();
        } else {
          accumulate(in->grad, gi);
        }
      }
    }
  }
}

}  // namespace s2h
