#include <cstdio>
#include <nlohmann/json.hpp>

#include "apps/s2h/commands.h"
#include "apps/s2h/common.h"
#include "engine/safetensors.h"

namespace s2h::app {

CLI::App* add_eval_command(CLI::App& app, EvalOptions& o) {
  CLI::App* cmd = app.add_subcommand("eval", "Evaluate a checkpoint written by `s2h train` on a dataset split");
  cmd->add_option("--checkpoint", o.checkpoint, "Checkpoint file (model.safetensors of a run)")->required();
  cmd->add_option("--data-root", o.data_root, "Dataset folder (default: the one recorded for the checkpoint's dataset)");
  cmd->add_option("--split", o.split, "Split to evaluate: test or train")->capture_default_str();
  cmd->add_option("--batch-size", o.batch_size, "Evaluation batch size")->capture_default_str();
  cmd->add_option("--threads", o.threads, "CPU threads (0: all cores)")->capture_default_str();
  cmd->add_flag("--json", o.json, "Print the result as one JSON object");
  return cmd;
}

int run_eval(const EvalOptions& o) {
  S2H_CHECK(o.batch_size > 0, "--batch-size must be positive, got {}", o.batch_size);
  set_threads(o.threads);
  const SafetensorsFile ckpt = load_safetensors(o.checkpoint);
  auto meta = [&](const char* key) {
    auto it = ckpt.metadata.find(key);
    S2H_CHECK(it != ckpt.metadata.end(), "{}: not an s2h model checkpoint (metadata '{}' is missing)", o.checkpoint, key);
    return it->second;
  };
  S2H_CHECK(meta("format") == "s2h-model-v1", "{}: unknown checkpoint format '{}'", o.checkpoint, meta("format"));
  const std::string model_name = meta("model"), dataset = meta("dataset");
  models::ModelConfig cfg;
  try {
    cfg.num_classes = std::stoll(meta("num_classes"));
    cfg.in_channels = std::stoll(meta("in_channels"));
    cfg.image_size = std::stoll(meta("image_size"));
  } catch (const std::logic_error&) {
    S2H_FAIL("{}: malformed model geometry in the metadata", o.checkpoint);
  }
  ModulePtr model = models::make_model(model_name, cfg);
  try {
    model->load_state_dict(ckpt.tensors);
  } catch (const Error& e) {
    S2H_FAIL("{}: {}", o.checkpoint, e.what());
  }
  const std::string root = o.data_root.empty() ? kDefaultFashionMnistRoot : o.data_root;
  const data::Dataset ds = load_dataset(dataset, root, o.split);
  const EvalResult r = evaluate(*model, ds, o.batch_size);
  if (o.json) {
    const nlohmann::json j = {{"checkpoint", o.checkpoint}, {"model", model_name}, {"dataset", dataset},
                              {"split", o.split},           {"accuracy", r.accuracy}, {"loss", r.loss},
                              {"correct", r.correct},       {"total", r.total},      {"seconds", r.seconds}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s on %s/%s: accuracy %.2f%% (%lld/%lld), loss %.4f, %.1fs\n", model_name.c_str(), dataset.c_str(),
                o.split.c_str(), 100.0 * r.accuracy, static_cast<long long>(r.correct),
                static_cast<long long>(r.total), r.loss, r.seconds);
  }
  return 0;
}

}  // namespace s2h::app
