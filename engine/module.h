// Module tree: named parameters, buffers and children; train/eval; state_dict.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace s2h {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Module {
 public:
  virtual ~Module() = default;
  virtual Tensor forward(const Tensor& x) = 0;
  Tensor operator()(const Tensor& x) { return forward(x); }
  // A short description of the module ("Conv2d(3, 16, k=3x3, s=1, p=1)").
  virtual std::string describe() const = 0;

  // Dotted names, children first-to-last in registration order ("features.0.weight").
  NamedTensors named_parameters() const;
  std::vector<Tensor> parameters() const;
  NamedTensors named_buffers() const;
  std::vector<std::pair<std::string, Module*>> named_modules() const;  // includes this one as ""
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }

  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }
  void zero_grad();

  // Parameters and buffers by dotted name.
  NamedTensors state_dict() const;
  // Copies values into the existing tensors (shapes must match). With strict,
  // missing and unexpected names are errors; the message lists them.
  void load_state_dict(const NamedTensors& state, bool strict = true);
  int64_t num_parameters() const;
  // A tree printout with one module per line.
  std::string summary() const;

 protected:
  Tensor register_parameter(std::string name, Tensor t);
  Tensor register_buffer(std::string name, Tensor t);
  template <class M>
  std::shared_ptr<M> register_module(std::string name, std::shared_ptr<M> m) {
    children_.emplace_back(std::move(name), m);
    return m;
  }

 private:
  void collect(const std::string& prefix, bool params, NamedTensors& out) const;
  void summary_into(const std::string& name, int depth, std::string& out) const;
  NamedTensors params_, buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

using ModulePtr = std::shared_ptr<Module>;

}  // namespace s2h
