// s2h info: a model's layers (output shape, parameters, FLOPs) and channel groups.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "apps/s2h/commands.h"
#include "apps/s2h/common.h"
#include "engine/autograd.h"
#include "models/groups.h"

namespace s2h::app {

CLI::App* add_info_command(CLI::App& app, InfoOptions& o) {
  CLI::App* cmd = app.add_subcommand("info", "Print a model's layers (output shape, parameters, FLOPs) and its channel "
                                             "groups");
  std::string names;
  for (const auto& n : models::model_names()) names += (names.empty() ? "" : " ") + n;
  cmd->add_option("--model", o.model, "Model: " + names)->capture_default_str();
  cmd->add_option("--input", o.input,
                  "One sample's input: CxHxW (e.g. 3x32x32), HxW (3 channels) or tokensL for text models (e.g. "
                  "tokens64); default: 1x28x28 for cnn-small, tokens64 for text-transformer, else 3x32x32");
  cmd->add_option("--classes", o.classes, "Classifier outputs")->capture_default_str();
  cmd->add_flag("--imagenet-stem", o.imagenet_stem, "resnet18/resnet50: the ImageNet stem");
  cmd->add_option("--patch-size", o.patch_size, "vit-*: patch size (0: automatic)")->capture_default_str();
  cmd->add_option("--vocab-size", o.vocab_size, "text-transformer: vocabulary size")->capture_default_str();
  cmd->add_flag("--json", o.json, "Print one JSON object instead of tables");
  return cmd;
}

namespace {

std::string with_commas(int64_t v) {
  std::string s = std::to_string(v);
  for (int i = static_cast<int>(s.size()) - 3; i > (s[0] == '-' ? 1 : 0); i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

std::string si(double v) {
  if (v >= 1e9) return fmt::format("{:.3f}G", v / 1e9);
  if (v >= 1e6) return fmt::format("{:.3f}M", v / 1e6);
  if (v >= 1e3) return fmt::format("{:.2f}K", v / 1e3);
  return fmt::format("{:.0f}", v);
}

std::string join(const std::vector<std::string>& v, size_t max_items) {
  std::string s;
  for (size_t i = 0; i < v.size() && i < max_items; ++i) s += (i ? ", " : "") + v[i];
  if (v.size() > max_items) s += fmt::format(", ... ({} in all)", v.size());
  return s;
}

}  // namespace

int run_info(const InfoOptions& o) {
  S2H_CHECK(o.classes > 0, "--classes must be positive, got {}", o.classes);
  models::ModelConfig cfg;
  cfg.num_classes = o.classes;
  cfg.imagenet_stem = o.imagenet_stem;
  cfg.patch_size = o.patch_size;
  const bool text = models::is_text_model(o.model);
  std::string input = o.input;
  if (input.empty()) input = text ? "tokens64" : o.model == "cnn-small" ? "1x28x28" : "3x32x32";
  parse_input_spec(input, cfg);
  if (text) {
    S2H_CHECK(cfg.max_len > 0, "--input {}: {} reads tokens; give tokensL, e.g. tokens64", input, o.model);
    S2H_CHECK(o.vocab_size > 0, "--vocab-size must be positive, got {}", o.vocab_size);
    cfg.vocab_size = o.vocab_size;
  } else {
    S2H_CHECK(cfg.max_len == 0, "--input {}: {} reads images; give CxHxW, e.g. 3x32x32", input, o.model);
  }
  ModulePtr model = models::make_model(o.model, cfg);
  model->eval();

  Tensor x;
  if (text) {
    std::vector<int64_t> ids(static_cast<size_t>(cfg.max_len));
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = 4 + static_cast<int64_t>(i) % (cfg.vocab_size - 4);
    x = Tensor::from_vector<int64_t>(ids, {1, cfg.max_len});
  } else {
    x = Tensor::zeros({1, cfg.image_size, cfg.image_size, cfg.in_channels});
  }
  NoGradGuard guard;
  ModuleTracer tracer(*model);
  const Tensor out = (*model)(x);
  const int64_t params = model->num_parameters(), flops = tracer.total_flops();
  const std::vector<models::ChannelGroup> groups = models::channel_groups(*model);
  models::validate_channel_groups(*model, groups);

  if (o.json) {
    nlohmann::json layers = nlohmann::json::array(), gs = nlohmann::json::array();
    for (const TraceRecord& r : tracer.records())
      layers.push_back({{"name", r.name}, {"module", r.describe}, {"output", r.out_shape}, {"params", r.params},
                        {"flops", r.flops}});
    for (const auto& g : groups)
      gs.push_back({{"name", g.name}, {"kind", models::group_kind_name(g.kind)}, {"channels", g.channels},
                    {"unit", g.unit}, {"producers", g.producers}, {"consumers", g.consumers},
                    {"followers", g.followers}, {"masks", g.masks}, {"prunable", g.prunable}, {"note", g.note}});
    const nlohmann::json j = {{"model", o.model}, {"input", input},   {"classes", o.classes}, {"params", params},
                              {"flops", flops},   {"layers", layers}, {"groups", gs}};
    std::printf("%s\n", j.dump(1).c_str());
    return 0;
  }

  std::printf("%s  input %s, %lld classes  (FLOPs = 2 x multiply-accumulates of convs, linears and attention products, "
              "one sample)\n\n",
              o.model.c_str(), input.c_str(), static_cast<long long>(o.classes));
  std::printf("%-34s %-42s %-16s %12s %12s\n", "layer", "module", "output", "params", "FLOPs");
  for (const TraceRecord& r : tracer.records()) {
    // Show layers that compute or hold parameters; skip containers and identity masks.
    if (r.params == 0 && r.flops == 0 && !r.leaf) continue;
    if (r.describe.rfind("ChannelMask", 0) == 0) continue;
    Shape s(r.out_shape.begin() + 1, r.out_shape.end());
    std::printf("%-34s %-42s %-16s %12s %12s\n", r.name.empty() ? "(model)" : r.name.c_str(), r.describe.c_str(),
                shape_str(s).c_str(), r.params ? with_commas(r.params).c_str() : "-",
                r.flops ? si(static_cast<double>(r.flops)).c_str() : "-");
  }
  std::printf("%-34s %-42s %-16s %12s %12s\n", "total", "", shape_str(Shape(out.shape().begin() + 1, out.shape().end())).c_str(),
              with_commas(params).c_str(), si(static_cast<double>(flops)).c_str());
  std::printf("\nparameters %s (%s), FLOPs %s (%s)\n", with_commas(params).c_str(), si(static_cast<double>(params)).c_str(),
              with_commas(flops).c_str(), si(static_cast<double>(flops)).c_str());

  std::printf("\nchannel groups (%zu):\n%-28s %-9s %9s %9s  %s\n", groups.size(), "group", "kind", "width", "prunable",
              "producers -> consumers; followers; masks");
  for (const auto& g : groups) {
    const std::string width = g.unit > 1 ? fmt::format("{}x{}", g.channels, g.unit) : std::to_string(g.channels);
    std::printf("%-28s %-9s %9s %9s  %s -> %s; %s; %s%s\n", g.name.c_str(), models::group_kind_name(g.kind),
                width.c_str(), g.prunable ? "yes" : "no", join(g.producers, 3).c_str(), join(g.consumers, 3).c_str(),
                g.followers.empty() ? "-" : join(g.followers, 3).c_str(), g.masks.empty() ? "-" : join(g.masks, 2).c_str(),
                g.note.empty() ? "" : ("  (" + g.note + ")").c_str());
  }
  return 0;
}

}  // namespace s2h::app
