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
  // Runs forward; models call children through this so a ModuleTracer sees every module.
  Tensor operator()(const Tensor& x);
  // FLOPs (2 x multiply-accumulates) of this module's own computation, children excluded,
  // for the given input and output. Only convolutions, linear layers and attention
  // products count; norms, activations, pooling and additions are 0.
  virtual int64_t flops(const Tensor& in, const Tensor& out) const {
    (void)in;
    (void)out;
    return 0;
  }
  // A short description of the module ("Conv2d(3, 16, k=3x3, s=1, p=1)").
  virtual std::string describe() const = 0;

  // Dotted names, children first-to-last in registration order ("features.0.weight").
  NamedTensors named_parameters() const;
  std::vector<Tensor> parameters() const;
  NamedTensors named_buffers() const;
  std::vector<std::pair<std::string, Module*>> named_modules() const;  // includes this one as ""
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }

  // Moves every parameter and buffer to `device` in place (handles held by
  // layers see the move). Optimisers must be made after the move.
  void to(Device device);
  // The device of the first parameter or buffer (CPU for a module with none).
  Device device() const;

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
  // Parameters registered on this module itself (children excluded).
  const NamedTensors& own_parameters() const { return params_; }
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

// One module call seen by a ModuleTracer.
struct TraceRecord {
  std::string name;      // dotted path from the traced root ("" for the root)
  std::string describe;  // Module::describe()
  int depth = 0;         // nesting depth (root 0)
  bool leaf = false;     // no children
  Shape out_shape;
  int64_t params = 0;  // own parameters (elements)
  int64_t flops = 0;   // own FLOPs for this call
};

// While alive, records every Module::operator() call under `root` on this
// thread, in call order (children before their parent's record is finished:
// a record is appended when the module's forward returns).
class ModuleTracer {
 public:
  explicit ModuleTracer(const Module& root);
  ~ModuleTracer();
  ModuleTracer(const ModuleTracer&) = delete;
  ModuleTracer& operator=(const ModuleTracer&) = delete;
  const std::vector<TraceRecord>& records() const { return records_; }
  int64_t total_flops() const;
  void add(const Module& m, const Tensor& in, const Tensor& out);

 private:
  std::vector<std::pair<const Module*, std::pair<std::string, int>>> names_;
  std::vector<TraceRecord> records_;
  ModuleTracer* previous_;
};

// While alive, records (on this thread) the input of the last call of
// `target` through Module::operator(), with its autograd history: e.g. the
// feature a classifier reads. Works together with a ModuleTracer and with
// other captures (on the same or other modules).
class InputCapture {
 public:
  explicit InputCapture(const Module& target);
  ~InputCapture();
  InputCapture(const InputCapture&) = delete;
  InputCapture& operator=(const InputCapture&) = delete;
  // The input of the last call since construction (or reset); undefined if none.
  Tensor input() const { return input_; }
  int64_t calls() const { return calls_; }
  void reset() {
    input_ = Tensor();
    calls_ = 0;
  }
  // Called by Module::operator() for every module call on this thread.
  void offer(const Module& m, const Tensor& in);

 private:
  const Module* target_;
  Tensor input_;
  int64_t calls_ = 0;
  InputCapture* previous_;
  friend class Module;
};

}  // namespace s2h
