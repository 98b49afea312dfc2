// Define-by-run autograd.
//
// Each differentiable op computes its output, then calls record() with its
// inputs and a backward function (flashlight style). record() creates a Node
// only when grad mode is on and some input requires grad. Tensor::backward()
// walks the nodes in reverse topological order.
//
// The graph lives as long as the tensors that hold it: a backward does not
// free it, so several losses may be backpropagated through shared parts
// (S2HPruner does). Backward functions must not capture the op's own output
// with its history (that would be a reference cycle): capture out.detach().
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace s2h {

struct Node;

struct AutogradMeta {
  bool requires_grad = false;
  Tensor grad;                    // accumulated gradient (leaves)
  std::shared_ptr<Node> grad_fn;  // null for leaves
};

// Returns one gradient per input, in order; an undefined Tensor means "none".
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_out)>;

struct Node {
  Node() = default;
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;
  // Frees the chain of nodes that dies with this one iteratively: a deep
  // graph released recursively would overflow the stack.
  ~Node();
  std::string name;
  // One slot per op input: the input's autograd metadata, or null when that
  // input does not require grad.
  std::vector<std::shared_ptr<AutogradMeta>> inputs;
  std::vector<Shape> input_shapes;
  // The output's dtype: the gradient handed to `backward` is cast to it (two
  // consumers of a bf16 activation may send back a bf16 and an fp32 gradient,
  // whose sum is fp32).
  DType out_dtype = DType::F32;
  BackwardFn backward;
};

// Grad mode (thread-local). Ops record history only while it is on.
bool grad_enabled();
void set_grad_enabled(bool on);

class NoGradGuard {
 public:
  NoGradGuard() : prev_(grad_enabled()) { set_grad_enabled(false); }
  ~NoGradGuard() { set_grad_enabled(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

// True if grad mode is on and any of the tensors requires grad.
bool any_requires_grad(std::initializer_list<Tensor> inputs);
bool any_requires_grad(const std::vector<Tensor>& inputs);

// Attaches history to `out` (an op result without history) if needed and
// returns it. `fn` receives the gradient w.r.t. out (contiguous, out's shape).
Tensor record(Tensor out, const char* name, const std::vector<Tensor>& inputs, BackwardFn fn);

}  // namespace s2h
