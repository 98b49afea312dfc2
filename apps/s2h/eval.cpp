#include <cstdio>
#include <nlohmann/json.hpp>

#include "apps/s2h/commands.h"
#include "apps/s2h/common.h"
#include "engine/safetensors.h"

namespace s2h::app {

CLI::App* add_eval_command(CLI::App& app, EvalOptions& o) {
  CLI::App* cmd = app.add_subcommand("eval", "Evaluate a model written by `s2h train` or `s2h prune` on a dataset split");
  cmd->add_option("--checkpoint", o.checkpoint, "Checkpoint file (model.safetensors of a run)")->required();
  cmd->add_option("--data-root", o.data_root, "Dataset folder (default: the one recorded in the checkpoint)");
  cmd->add_option("--cache-dir", o.cache_dir, "Text: tokenizer cache (default $S2H_CACHE_DIR or ~/.cache/s2h)");
  cmd->add_option("--split", o.split, "Split to evaluate: test (dev/val where the dataset calls it so) or train")
      ->capture_default_str();
  cmd->add_option("--batch-size", o.batch_size, "Evaluation batch size")->capture_default_str();
  cmd->add_option("--threads", o.threads, "CPU threads (0: all cores)")->capture_default_str();
  cmd->add_option("--workers", o.workers, "Loader threads (0: inline)")->capture_default_str();
  cmd->add_option("--device", o.device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--precision", o.precision, "CUDA compute precision: fp32, tf32 or bf16 (see s2h train --help)")
      ->capture_default_str();
  cmd->add_flag("--json", o.json, "Print the result as one JSON object");
  return cmd;
}

int run_eval(const EvalOptions& o) {
  S2H_CHECK(o.batch_size > 0, "--batch-size must be positive, got {}", o.batch_size);
  S2H_CHECK(o.split == "test" || o.split == "train", "--split must be test or train, got '{}'", o.split);
  S2H_CHECK(o.workers >= 0, "--workers must be >= 0, got {}", o.workers);
  set_threads(o.threads);
  const Device dev = setup_device(o.device, o.precision);
  const SafetensorsFile ckpt = load_safetensors(o.checkpoint);
  auto meta = [&](const char* key, const char* fallback = nullptr) {
    return metadata_value(ckpt.metadata, key, o.checkpoint, "model checkpoint", fallback);
  };
  S2H_CHECK(meta("format") == "s2h-model-v1", "{}: unknown checkpoint format '{}'", o.checkpoint, meta("format"));
  const std::string model_name = meta("model"), dataset = meta("dataset");
  const bool pruned = ckpt.metadata.count("architecture") > 0;
  const models::ModelConfig cfg = geometry_from_metadata(ckpt.metadata, o.checkpoint);
  ModulePtr model = model_from_checkpoint(ckpt, o.checkpoint);
  model->to(dev);
  DataOptions dopt;
  dopt.name = dataset;
  dopt.root = o.data_root.empty() ? meta("data_root", "") : o.data_root;
  dopt.cache_dir = o.cache_dir;
  dopt.max_len = cfg.max_len > 0 ? cfg.max_len : dopt.max_len;
  dopt.vocab_size = std::stoll(meta("tokenizer_vocab_size", "8000"));
  dopt.image_size = cfg.image_size;
  const DataSplits data = load_data(dopt, o.split == "train");
  if (cfg.vocab_size > 0)
    S2H_CHECK(data.geometry.vocab_size == cfg.vocab_size,
              "{}: the model has a {}-token vocabulary but the tokenizer now gives {} (another cache or data?)",
              o.checkpoint, cfg.vocab_size, data.geometry.vocab_size);
  const std::string split = o.split == "train" ? "train" : data.test_split;
  const EvalResult r = evaluate(*model, o.split == "train" ? data.train : data.test, o.batch_size, o.workers);
  if (o.json) {
    const nlohmann::json j = {{"checkpoint", o.checkpoint}, {"model", model_name}, {"pruned", pruned},
                              {"parameters", model->num_parameters()}, {"dataset", dataset},
                              {"split", split},             {"accuracy", r.accuracy}, {"loss", r.loss},
                              {"correct", r.correct},       {"total", r.total},      {"seconds", r.seconds}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s%s (%lld parameters) on %s/%s: accuracy %.2f%% (%lld/%lld), loss %.4f, %.1fs\n", model_name.c_str(), pruned ? " (pruned)" : "",
                static_cast<long long>(model->num_parameters()), dataset.c_str(), split.c_str(), 100.0 * r.accuracy, static_cast<long long>(r.correct),
                static_cast<long long>(r.total), r.loss, r.seconds);
  }
  return 0;
}

}  // namespace s2h::app
