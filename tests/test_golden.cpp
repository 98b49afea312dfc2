// Golden tests against PyTorch 1.13 (files written by tests/golden/make_golden.py).
// Tolerance for f32: the scaled error max|ours - torch| / max|torch| of every
// output and gradient is below 1e-4.
#include <nlohmann/json.hpp>

#include "models/registry.h"
#include "tests/test_util.h"

namespace s2h::test {
namespace {

constexpr double kTol = 1e-4;

const SafetensorsFile& golden(const std::string& name) {
  static std::map<std::string, SafetensorsFile> cache;
  auto it = cache.find(name);
  if (it == cache.end()) it = cache.emplace(name, load_safetensors(source_dir() + "/golden/" + name)).first;
  return it->second;
}

void expect_match(const Tensor& ours, const Tensor& ref, const std::string& what, double tol = kTol) {
  ASSERT_TRUE(ours.defined()) << what << " is undefined";
  ASSERT_EQ(ours.shape(), ref.shape()) << what;
  const double err = scaled_error(ours, ref);
  EXPECT_LT(err, tol) << what << ": scaled error " << err;
}

Tensor param(const SafetensorsFile& f, const std::string& name) {
  Tensor t = f.at(name).clone();
  t.set_requires_grad(true);
  return t;
}

// ------------------------------------------------------------------ single ops
Tensor run_case(const nlohmann::json& c, std::map<std::string, Tensor>& in) {
  const std::string op = c["op"];
  const nlohmann::json& p = c["params"];
  auto get = [&](const char* k) { return in.count(k) ? in.at(k) : Tensor(); };
  if (op == "conv2d") {
    Conv2dOptions o;
    o.stride = {p["stride"], p["stride"]};
    o.padding = {p["padding"], p["padding"]};
    o.dilation = {p["dilation"], p["dilation"]};
    o.groups = p["groups"];
    return conv2d(in.at("x"), in.at("w"), get("b"), o);
  }
  if (op == "max_pool2d" || op == "avg_pool2d") {
    Pool2dOptions o;
    o.kernel = {p["kernel"], p["kernel"]};
    o.stride = {p["stride"], p["stride"]};
    o.padding = {p["padding"], p["padding"]};
    if (p.contains("count_include_pad")) o.count_include_pad = p["count_include_pad"];
    return op == "max_pool2d" ? max_pool2d(in.at("x"), o) : avg_pool2d(in.at("x"), o);
  }
  if (op == "adaptive_avg_pool2d") return adaptive_avg_pool2d(in.at("x"), p["out_h"], p["out_w"]);
  if (op == "batch_norm" || op == "batch_norm_4d")
    return batch_norm(in.at("x"), in.at("weight"), in.at("bias"), in.at("running_mean"), in.at("running_var"),
                      p["training"], p["momentum"], p["eps"]);
  if (op == "layer_norm") return layer_norm(in.at("x"), in.at("weight"), in.at("bias"), p["eps"]);
  if (op == "linear") return linear(in.at("x"), in.at("w"), in.at("b"));
  if (op == "matmul") return matmul(in.at("a"), in.at("b"));
  if (op == "bmm") return bmm(in.at("a"), in.at("b"));
  if (op == "softmax") return softmax(in.at("x"), p["axis"]);
  if (op == "log_softmax") return log_softmax(in.at("x"), p["axis"]);
  if (op == "cross_entropy") return cross_entropy(in.at("x"), in.at("target"), p["label_smoothing"]);
  if (op == "kl_div") return kl_div(in.at("input"), in.at("target"), p["log_target"]);
  if (op == "relu") return relu(in.at("x"));
  if (op == "relu6") return relu6(in.at("x"));
  if (op == "hardswish") return hardswish(in.at("x"));
  if (op == "hardsigmoid") return hardsigmoid(in.at("x"));
  if (op == "gelu") return gelu(in.at("x"));
  if (op == "gelu_tanh") return gelu(in.at("x"), true);
  if (op == "sigmoid") return sigmoid(in.at("x"));
  if (op == "tanh") return tanh(in.at("x"));
  if (op == "add") return add(in.at("a"), in.at("b"));
  if (op == "mul") return mul(in.at("a"), in.at("b"));
  if (op == "div") return div(in.at("a"), in.at("b"));
  if (op == "sum") return sum(in.at("x"), p["axes"].get<std::vector<int64_t>>(), p["keepdim"]);
  if (op == "mean") return mean(in.at("x"), p["axes"].get<std::vector<int64_t>>(), p["keepdim"]);
  if (op == "index_select") return index_select(in.at("x"), p["axis"], in.at("index"));
  ADD_FAILURE() << "golden case with unknown op " << op;
  return {};
}

TEST(Golden, EveryOpMatchesPyTorch) {
  const SafetensorsFile& f = golden("ops.safetensors");
  const nlohmann::json cases = nlohmann::json::parse(f.metadata.at("cases"));
  ASSERT_GE(cases.size(), 40u);
  for (const auto& c : cases) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    std::map<std::string, Tensor> in;
    for (const std::string k : c["inputs"]) in[k] = f.at(name + "/" + k).clone();
    for (const std::string k : c["grads"]) in[k].set_requires_grad(true);
    Tensor out = run_case(c, in);
    expect_match(out, f.at(name + "/out"), name + " output");
    sum(mul(out, f.at(name + "/upstream"))).backward();
    for (const std::string k : c["grads"]) expect_match(in[k].grad(), f.at(name + "/grad_" + k), name + " grad " + k);
    if (f.contains(name + "/running_mean_after")) {
      expect_match(in["running_mean"], f.at(name + "/running_mean_after"), name + " running_mean");
      expect_match(in["running_var"], f.at(name + "/running_var_after"), name + " running_var");
    }
  }
}

// ------------------------------------------------------------------ compositions
TEST(Golden, ConvBnReluPoolLinearCrossEntropy) {
  const SafetensorsFile& f = golden("compositions.safetensors");
  Tensor x = param(f, "a/x"), cw = param(f, "a/conv_w"), cb = param(f, "a/conv_b"), bw = param(f, "a/bn_w"),
         bb = param(f, "a/bn_b"), fw = param(f, "a/fc_w"), fb = param(f, "a/fc_b");
  Tensor rm = Tensor::zeros({6}), rv = Tensor::ones({6});
  Conv2dOptions co;
  co.padding = {1, 1};
  Tensor h = max_pool2d(relu(batch_norm(conv2d(x, cw, cb, co), bw, bb, rm, rv, true)), Pool2dOptions{});
  Tensor logits = linear(h.flatten(1), fw, fb);
  Tensor loss = cross_entropy(logits, f.at("a/y"));
  loss.backward();
  expect_match(logits, f.at("a/logits"), "logits");
  expect_match(loss.reshape({1}), f.at("a/loss"), "loss");
  expect_match(rm, f.at("a/bn_running_mean"), "running_mean");
  expect_match(rv, f.at("a/bn_running_var"), "running_var");
  for (auto& [t, n] : std::vector<std::pair<Tensor, std::string>>{
           {x, "x"}, {cw, "conv_w"}, {bw, "bn_w"}, {bb, "bn_b"}, {fw, "fc_w"}, {fb, "fc_b"}})
    expect_match(t.grad(), f.at("a/grad_" + n), "grad " + n);
  // A conv bias right before a training-mode BN has a gradient of exactly 0 (BN
  // subtracts the batch mean); both sides hold rounding noise, so the check is absolute.
  expect_close(cb.grad(), f.at("a/grad_conv_b"), 0.0, 1e-6, "grad conv_b");
}

TEST(Golden, DepthwiseSeparableBlock) {
  const SafetensorsFile& f = golden("compositions.safetensors");
  Tensor x = param(f, "b/x"), dw = param(f, "b/dw_w"), pw = param(f, "b/pw_w");
  Tensor g1 = Tensor::ones({8}).set_requires_grad(), b1 = Tensor::zeros({8}).set_requires_grad();
  Tensor g2 = Tensor::ones({8}).set_requires_grad(), b2 = Tensor::zeros({8}).set_requires_grad();
  Conv2dOptions dwo;
  dwo.padding = {1, 1};
  dwo.groups = 8;
  Tensor h = relu6(batch_norm(conv2d(x, dw, {}, dwo), g1, b1, {}, {}, true));
  Tensor out = add(batch_norm(conv2d(h, pw), g2, b2, {}, {}, true), x);
  Tensor loss = mean(mul(out, out));
  loss.backward();
  expect_match(out, f.at("b/out"), "out");
  expect_match(loss.reshape({1}), f.at("b/loss"), "loss");
  for (auto& [t, n] : std::vector<std::pair<Tensor, std::string>>{
           {x, "x"}, {dw, "dw_w"}, {pw, "pw_w"}, {g1, "bn1_w"}, {b1, "bn1_b"}, {g2, "bn2_w"}, {b2, "bn2_b"}})
    expect_match(t.grad(), f.at("b/grad_" + n), "grad " + n);
}

TEST(Golden, LayerNormGeluSoftmax) {
  const SafetensorsFile& f = golden("compositions.safetensors");
  Tensor x = param(f, "c/x"), lw = param(f, "c/ln_w"), lb = param(f, "c/ln_b"), fw = param(f, "c/fc_w"),
         fb = param(f, "c/fc_b");
  Tensor p = softmax(gelu(linear(layer_norm(x, lw, lb), fw, fb)), -1);
  Tensor loss = sum(mul(p, f.at("c/upstream")));
  loss.backward();
  expect_match(p, f.at("c/out"), "softmax output");
  expect_match(loss.reshape({1}), f.at("c/loss"), "loss");
  for (auto& [t, n] : std::vector<std::pair<Tensor, std::string>>{
           {x, "x"}, {lw, "ln_w"}, {lb, "ln_b"}, {fw, "fc_w"}, {fb, "fc_b"}})
    expect_match(t.grad(), f.at("c/grad_" + n), "grad " + n);
}

// ------------------------------------------------------------------ training
TEST(Golden, CnnSmallTwentySgdSteps) {
  const SafetensorsFile& f = golden("cnn_small_sgd.safetensors");
  ModulePtr model = models::make_model("cnn-small", models::ModelConfig{});
  NamedTensors init;
  for (const auto& [name, t] : f.tensors)
    if (name.starts_with("init/")) init.emplace_back(name.substr(5), t);
  model->load_state_dict(init);
  model->train();
  SGDOptions so;
  so.lr = 0.05;
  so.momentum = 0.9;
  so.nesterov = true;
  so.weight_decay = 5e-4;
  SGD opt(model->parameters(), so);
  const std::vector<double> ref = values(f.at("losses"));
  ASSERT_EQ(ref.size(), 20u);
  for (size_t step = 0; step < ref.size(); ++step) {
    Tensor loss = cross_entropy((*model)(f.at("x")), f.at("y"));
    opt.zero_grad();
    loss.backward();
    opt.step();
    EXPECT_LT(std::abs(loss.item() - ref[step]) / std::abs(ref[step]), kTol)
        << "step " << step << ": loss " << loss.item() << ", PyTorch " << ref[step];
  }
  // The weights after 20 steps (and the BN statistics) follow PyTorch's too.
  for (const auto& [name, t] : model->state_dict()) expect_match(t, f.at("final/" + name), "final " + name, 1e-3);
}

TEST(Golden, AdamWTenSteps) {
  const SafetensorsFile& f = golden("adamw.safetensors");
  Tensor w = param(f, "w0"), b = param(f, "b0");
  AdamWOptions ao;
  ao.lr = 0.01;
  ao.weight_decay = 0.1;
  AdamW opt({w, b}, ao);
  for (int i = 1; i <= 10; ++i) {
    Tensor d = sub(linear(f.at("x"), w, b), f.at("y"));
    Tensor loss = mean(mul(d, d));
    opt.zero_grad();
    loss.backward();
    opt.step();
    expect_match(w, f.at(fmt::format("w{}", i)), fmt::format("weight after step {}", i), 1e-5);
    expect_match(b, f.at(fmt::format("b{}", i)), fmt::format("bias after step {}", i), 1e-5);
  }
}

}  // namespace
}  // namespace s2h::test
