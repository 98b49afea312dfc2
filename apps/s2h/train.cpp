// s2h train: the training loop with progress, JSON-lines metrics, periodic
// atomic checkpoints and exact resumption.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "apps/s2h/commands.h"
#include "apps/s2h/common.h"
#include "apps/s2h/progress.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/random.h"
#include "engine/safetensors.h"

namespace s2h::app {

namespace fs = std::filesystem;


namespace {
constexpr const char* kStateFile = "checkpoint.safetensors";  // the resumable training state
constexpr const char* kModelFile = "model.safetensors";       // the final model, for `s2h eval`
constexpr const char* kStateFormat = "s2h-train-state-v1";
// Options a resumed run may change: they do not affect the numbers.
const std::set<std::string> kResumeMayChange = {"help", "threads", "workers", "quiet", "resume", "out", "overwrite", "config",
                                                "eval_batch_size", "data_root", "cache_dir", "device"};
}  // namespace

CLI::App* add_train_command(CLI::App& app, TrainOptions& o) {
  CLI::App* cmd = app.add_subcommand("train", "Train a model on a dataset");
  add_training_flags(cmd, o, /*resume=*/true);
  return cmd;
}

void add_training_flags(CLI::App* cmd, TrainOptions& o, bool resume) {
  const std::string sub = cmd->get_name();
  const std::string config_help = "Read options from a TOML or INI file (key = value, keys as the long flags without "
                                  "dashes, e.g. lr = 0.1, batch-size = 64, optionally under a [" + sub +
                                  "] section); flags on the command line override it";
  cmd->add_option("--config")->description(config_help)->type_name("FILE");
  const std::string models_list = [] {
    std::string s;
    for (const auto& n : models::model_names()) s += (s.empty() ? "" : " ") + n;
    return s;
  }();
  cmd->add_option("--model", o.model, "Model: " + models_list)->capture_default_str()->group("Model");
  cmd->add_option("--classes", o.classes, "Classifier outputs (0: the dataset's class count; more is allowed)")
      ->capture_default_str()->group("Model");
  cmd->add_flag("--imagenet-stem", o.imagenet_stem, "resnet18/resnet50: 7x7/2 conv + max-pool stem instead of 3x3/1")
      ->group("Model");
  cmd->add_option("--patch-size", o.patch_size, "vit-*: patch size (0: image size / 8, 16 from 224 up)")
      ->capture_default_str()->group("Model");

  cmd->add_option("--data", o.data, "Dataset: " + dataset_names())->capture_default_str()->group("Data");
  cmd->add_option("--data-root", o.data_root,
                  "Dataset folder (fashion-mnist: /usr/share/datasets/fashion-mnist; others: $S2H_DATA_DIR/<the "
                  "dataset's usual folder name>, see the README)")
      ->group("Data");
  cmd->add_option("--augment", o.augment,
                  "Training augmentation: none, crop-flip (random crop with padding size/8, horizontal flip), rrc-flip "
                  "(random-resized crop, flip) or auto (crop-flip for colour image datasets, none otherwise)")
      ->capture_default_str()->group("Data");
  cmd->add_option("--image-size", o.image_size, "Resize images to this size (0: the dataset's own)")
      ->capture_default_str()->group("Data");
  cmd->add_option("--max-len", o.max_len, "Text: tokens per sequence (with BOS/EOS, padded)")
      ->capture_default_str()->group("Data");
  cmd->add_option("--vocab-size", o.vocab_size, "Text: SentencePiece vocabulary trained on the training split")
      ->capture_default_str()->group("Data");
  cmd->add_option("--cache-dir", o.cache_dir, "Text: tokenizer cache (default $S2H_CACHE_DIR or ~/.cache/s2h)")
      ->group("Data");
  cmd->add_option("--limit-train", o.limit_train, "Use an evenly spaced subset of this many training samples (0: all)")
      ->capture_default_str()->group("Data");
  cmd->add_option("--limit-test", o.limit_test, "Use an evenly spaced subset of this many test samples (0: all)")
      ->capture_default_str()->group("Data");
  cmd->add_option("--workers", o.workers, "Loader threads that decode and augment ahead of training (0: inline)")
      ->capture_default_str()->group("Data");

  cmd->add_option("--epochs", o.epochs, "Training epochs (> 0)")->capture_default_str()->group("Optimisation");
  cmd->add_option("--batch-size", o.batch_size, "Training batch size")->capture_default_str()->group("Optimisation");
  cmd->add_option("--eval-batch-size", o.eval_batch_size, "Evaluation batch size")
      ->capture_default_str()->group("Optimisation");
  cmd->add_option("--optimizer", o.optimizer, "sgd or adamw")->capture_default_str()->group("Optimisation");
  cmd->add_option("--lr", o.lr, "Peak learning rate")->capture_default_str()->group("Optimisation");
  cmd->add_option("--momentum", o.momentum, "SGD momentum (AdamW: beta1)")->capture_default_str()->group("Optimisation");
  cmd->add_flag("--nesterov,!--no-nesterov", o.nesterov, "Nesterov momentum for SGD (default on)")
      ->group("Optimisation");
  cmd->add_option("--weight-decay", o.weight_decay, "Weight decay (SGD: L2 on all parameters; AdamW: decoupled)")
      ->capture_default_str()->group("Optimisation");
  cmd->add_option("--schedule", o.schedule, "Learning-rate schedule after warm-up: cosine, step or constant")
      ->capture_default_str()->group("Optimisation");
  cmd->add_option("--warmup-epochs", o.warmup_epochs, "Linear warm-up from 0.1*lr, in epochs (fractions allowed)")
      ->capture_default_str()->group("Optimisation");
  cmd->add_option("--min-lr", o.min_lr, "Final learning rate of the cosine schedule")
      ->capture_default_str()->group("Optimisation");
  cmd->add_option("--step-epochs", o.step_epochs, "Step schedule: epochs between decays")
      ->capture_default_str()->group("Optimisation");
  cmd->add_option("--gamma", o.gamma, "Step schedule: decay factor")->capture_default_str()->group("Optimisation");
  cmd->add_option("--label-smoothing", o.label_smoothing, "Label smoothing of the cross-entropy, in [0, 1)")
      ->capture_default_str()->group("Optimisation");
  cmd->add_option("--seed", o.seed, "Seed of initialisation, data order, augmentation and dropout")
      ->capture_default_str()->group("Optimisation");

  cmd->add_option("--threads", o.threads, "CPU threads for compute (0: all cores)")->capture_default_str()->group("Run");
  cmd->add_option("--device", o.device, "cpu, cuda or cuda:N (the model, its gradients and the optimiser state live there)")
      ->capture_default_str()->group("Run");
  cmd->add_option("--precision", o.precision,
                  "CUDA compute precision: fp32, tf32 (fp32 tensors, TF32 tensor-core GEMMs/convolutions) or bf16 "
                  "(bf16 activations and GEMM/conv inputs with fp32 accumulation; weights, optimiser state, losses and "
                  "norm statistics stay fp32). The CPU computes in fp32")
      ->capture_default_str()->group("Run");
  cmd->add_option("--kernels", o.kernels,
                  "CUDA kernels for S2HPruner's masked / hard convolutions and for attention: fused (the handwritten "
                  "fused kernels, used under --precision bf16) or library (cuDNN / cuBLAS plus elementwise kernels "
                  "only; the same math). No effect on the CPU")
      ->capture_default_str()->group("Run");
  cmd->add_option("--out", o.out, "Output folder (default: runs/<model>-<data>-<date-time>)")->group("Run");
  cmd->add_flag("--overwrite", o.overwrite, "Start afresh in an --out folder that already holds a run")->group("Run");
  if (resume) {
    cmd->add_flag("--resume", o.resume,
                  "Continue the run in --out from its last checkpoint (same config; only --threads, --workers, "
                  "--eval-batch-size, --data-root, --cache-dir, --device and --quiet may change)")
        ->group("Run");
    cmd->add_option("--checkpoint-every", o.checkpoint_every,
                    "Write the resumable state (checkpoint.safetensors) every N epochs (0: only at the end)")
        ->capture_default_str()->group("Run");
  }
  cmd->add_option("--log-every", o.log_every, "Write a step record to metrics.jsonl every N steps")
      ->capture_default_str()->group("Run");
  cmd->add_flag("--quiet", o.quiet, "No progress bar")->group("Run");
}

void apply_config_file(CLI::App& cmd) {
  const CLI::Option* config = cmd.get_option("--config");
  if (config->count() == 0) return;
  const std::string path = config->as<std::string>();
  S2H_CHECK(fs::is_regular_file(path), "--config {}: no such file", path);
  std::vector<CLI::ConfigItem> items;
  try {
    items = CLI::ConfigTOML().from_file(path);
  } catch (const CLI::Error& e) {
    S2H_FAIL("--config {}: {}", path, e.what());
  }
  for (const CLI::ConfigItem& item : items) {
    if (item.name == "++" || item.name == "--") continue;  // section markers
    S2H_CHECK(item.parents.empty() || (item.parents.size() == 1 && item.parents[0] == cmd.get_name()),
              "--config {}: section [{}] is not [{}]", path, item.parents.empty() ? "" : item.parents[0],
              cmd.get_name());
    std::string name = item.name;
    std::replace(name.begin(), name.end(), '_', '-');
    CLI::Option* opt = cmd.get_option_no_throw("--" + name);
    S2H_CHECK(opt != nullptr && name != "config" && name != "help",
              "--config {}: unknown option '{}' (keys are the long flags of s2h {} without dashes)", path, item.name,
              cmd.get_name());
    if (opt->count() > 0) continue;  // the command line wins
    try {
      opt->add_result(item.inputs);
      opt->run_callback();
    } catch (const CLI::Error& e) {
      S2H_FAIL("--config {}: {}: {}", path, item.name, e.what());
    }
  }
}

void validate_training_options(const TrainOptions& o) {
  S2H_CHECK(o.epochs > 0, "--epochs must be positive, got {}", o.epochs);
  S2H_CHECK(o.batch_size > 0, "--batch-size must be positive, got {}", o.batch_size);
  S2H_CHECK(o.eval_batch_size > 0, "--eval-batch-size must be positive, got {}", o.eval_batch_size);
  S2H_CHECK(o.lr > 0, "--lr must be positive, got {}", o.lr);
  S2H_CHECK(o.momentum >= 0 && o.momentum < 1, "--momentum must be in [0, 1), got {}", o.momentum);
  S2H_CHECK(o.weight_decay >= 0, "--weight-decay must be >= 0, got {}", o.weight_decay);
  S2H_CHECK(o.warmup_epochs >= 0 && o.warmup_epochs <= o.epochs, "--warmup-epochs must be in [0, --epochs], got {}",
            o.warmup_epochs);
  S2H_CHECK(o.min_lr >= 0, "--min-lr must be >= 0, got {}", o.min_lr);
  S2H_CHECK(o.step_epochs > 0, "--step-epochs must be positive, got {}", o.step_epochs);
  S2H_CHECK(o.gamma > 0, "--gamma must be positive, got {}", o.gamma);
  S2H_CHECK(o.label_smoothing >= 0 && o.label_smoothing < 1, "--label-smoothing must be in [0, 1), got {}",
            o.label_smoothing);
  S2H_CHECK(o.log_every > 0, "--log-every must be positive, got {}", o.log_every);
  S2H_CHECK(o.checkpoint_every >= 0, "--checkpoint-every must be >= 0, got {}", o.checkpoint_every);
  S2H_CHECK(o.workers >= 0 && o.workers <= 64, "--workers must be in [0, 64], got {}", o.workers);
  S2H_CHECK(o.classes >= 0, "--classes must be >= 0, got {}", o.classes);
  S2H_CHECK(o.patch_size >= 0, "--patch-size must be >= 0, got {}", o.patch_size);
  S2H_CHECK(o.image_size >= 0, "--image-size must be >= 0, got {}", o.image_size);
  S2H_CHECK(o.max_len >= 4, "--max-len must be at least 4, got {}", o.max_len);
  S2H_CHECK(o.vocab_size >= 16, "--vocab-size must be at least 16, got {}", o.vocab_size);
  S2H_CHECK(o.limit_train >= 0 && o.limit_test >= 0, "--limit-train and --limit-test must be >= 0");
  S2H_CHECK(o.optimizer == "sgd" || o.optimizer == "adamw", "--optimizer: unknown optimizer '{}' (expected sgd or adamw)",
            o.optimizer);
  S2H_CHECK(o.augment == "auto" || o.augment == "none" || o.augment == "crop-flip" || o.augment == "rrc-flip",
            "--augment: unknown preset '{}' (expected none, crop-flip, rrc-flip or auto)", o.augment);
  S2H_CHECK(!(o.resume && o.overwrite), "--resume and --overwrite contradict each other");
  S2H_CHECK(!o.resume || !o.out.empty(), "--resume needs --out, the folder of the run to continue");
  LrSchedule::parse_kind(o.schedule);
  validate_device_flags(o.device, o.precision);
  check_kernels_flag(o.kernels);
}

namespace {





std::string generator_state(Generator& g) {
  std::ostringstream s;
  s << g.engine();
  return s.str();
}

void set_generator_state(Generator& g, const std::string& state, const std::string& file) {
  std::istringstream s(state);
  s >> g.engine();
  S2H_CHECK(!s.fail(), "{}: malformed generator state in the metadata", file);
}

// The options of the run to resume, checked against the flags given now.
TrainOptions resumed_options(const TrainOptions& given, const CLI::App& cmd) {
  const fs::path cfg_path = fs::path(given.out) / "config.json";
  std::ifstream f(cfg_path);
  S2H_CHECK(f.good(), "--resume: {} is missing; is {} the folder of an s2h train run?", cfg_path.string(), given.out);
  nlohmann::json saved;
  try {
    saved = nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    S2H_FAIL("{}: not valid JSON ({})", cfg_path.string(), e.what());
  }
  TrainOptions o;
  try {
    o = saved.at("options").get<TrainOptions>();
  } catch (const nlohmann::json::exception& e) {
    S2H_FAIL("{}: the options do not match this s2h ({})", cfg_path.string(), e.what());
  }
  const nlohmann::json now = given;
  nlohmann::json merged = o;  // the run's options, with the allowed changes given now
  for (const CLI::Option* opt : cmd.get_options()) {
    if (opt->count() == 0 || opt->get_lnames().empty()) continue;
    std::string key = opt->get_lnames().front();
    for (char& c : key)
      if (c == '-') c = '_';
    if (!now.contains(key)) continue;
    if (kResumeMayChange.count(key)) {
      merged[key] = now.at(key);
      continue;
    }
    S2H_CHECK(now.at(key) == saved.at("options").at(key),
              "--resume: --{} is {} here but {} in the run in {} (a resumed run keeps its configuration)",
              opt->get_lnames().front(), now.at(key).dump(), saved.at("options").at(key).dump(), given.out);
  }
  o = merged.get<TrainOptions>();
  o.resume = true;
  o.overwrite = false;
  return o;
}


// Everything a resumed run needs to continue exactly.
struct TrainState {
  int epoch = 0;  // epochs completed
  int64_t step = 0;
  double best_acc = 0, last_acc = 0;
  int best_epoch = 0;
  int64_t metrics_bytes = 0;
};

void save_state(const std::string& path, const Module& model, const Optimizer& optim, const TrainState& st,
                std::map<std::string, std::string> meta) {
  NamedTensors tensors;
  for (auto& [name, t] : model.state_dict()) tensors.emplace_back("model/" + name, t);
  for (auto& [name, t] : optim.state_dict()) tensors.emplace_back("optim/" + name, t);
  meta["format"] = kStateFormat;
  meta["epoch"] = std::to_string(st.epoch);
  meta["step"] = std::to_string(st.step);
  meta["best_acc"] = fmt::format("{:.17g}", st.best_acc);
  meta["last_acc"] = fmt::format("{:.17g}", st.last_acc);
  meta["best_epoch"] = std::to_string(st.best_epoch);
  meta["metrics_bytes"] = std::to_string(st.metrics_bytes);
  meta["generator"] = generator_state(default_generator());
  save_safetensors(path, tensors, meta);
}

TrainState load_state(const std::string& path, Module& model, Optimizer& optim) {
  const SafetensorsFile f = load_safetensors(path);
  auto meta = [&](const char* key) { return metadata_value(f.metadata, key, path, "training checkpoint"); };
  S2H_CHECK(meta("format") == kStateFormat, "{}: unknown checkpoint format '{}'", path, meta("format"));
  NamedTensors model_state, optim_state;
  for (const auto& [name, t] : f.tensors) {
    if (name.rfind("model/", 0) == 0) model_state.emplace_back(name.substr(6), t);
    else if (name.rfind("optim/", 0) == 0) optim_state.emplace_back(name.substr(6), t);
    else S2H_FAIL("{}: unexpected tensor '{}'", path, name);
  }
  TrainState st;
  try {
    model.load_state_dict(model_state);
    optim.load_state_dict(optim_state);
    st.epoch = std::stoi(meta("epoch"));
    st.step = std::stoll(meta("step"));
    st.best_acc = std::stod(meta("best_acc"));
    st.last_acc = std::stod(meta("last_acc"));
    st.best_epoch = std::stoi(meta("best_epoch"));
    st.metrics_bytes = std::stoll(meta("metrics_bytes"));
  } catch (const std::logic_error& e) {
    S2H_FAIL("{}: {}", path, e.what());
  }
  set_generator_state(default_generator(), meta("generator"), path);
  return st;
}

}  // namespace

int run_train(const TrainOptions& given, const CLI::App& cmd) {
  validate_training_options(given);
  const TrainOptions o = given.resume ? resumed_options(given, cmd) : given;
  if (given.resume) validate_training_options(o);
  const int threads = set_threads(o.threads);

  // Fail fast on a bad model name, before reading any data.
  require_known_model(o.model);

  const std::string out = o.out.empty() ? default_out(o) : o.out;
  const fs::path state_path = fs::path(out) / kStateFile, model_path = fs::path(out) / kModelFile,
                 metrics_path = fs::path(out) / "metrics.jsonl";
  if (o.resume) {
    S2H_CHECK(fs::exists(state_path), "--resume: {} has no {} (the run wrote no checkpoint yet; start it again)", out,
              kStateFile);
  } else {
    for (const fs::path& f : {metrics_path, state_path, model_path})
      S2H_CHECK(o.overwrite || !fs::exists(f),
                "--out {} already holds a run ({} exists); choose another folder, pass --resume to continue it or "
                "--overwrite to start afresh",
                out, f.filename().string());
  }

  const auto t_load = std::chrono::steady_clock::now();
  const DataOptions dopt = data_options(o);
  const DataSplits data = load_data(dopt, true);
  const double load_s = seconds_since(t_load);
  const models::ModelConfig cfg = model_config(o, data);

  const Device dev = setup_device(o);
  manual_seed(o.seed);
  ModulePtr model = models::make_model(o.model, cfg);
  model->to(dev);
  model->train();

  std::error_code ec;
  fs::create_directories(out, ec);
  S2H_CHECK(!ec, "--out {}: cannot create the folder: {}", out, ec.message());

  data::LoaderOptions lo;
  lo.batch_size = o.batch_size;
  lo.shuffle = true;
  lo.seed = o.seed;
  lo.workers = o.workers;
  lo.pin_memory = dev.is_cuda();
  data::Loader loader(data.train, lo);
  const int64_t steps_per_epoch = loader.num_batches();
  const LrSchedule sched = make_schedule(o, steps_per_epoch);
  std::unique_ptr<Optimizer> optim = make_optimizer(o, model->parameters());

  DataOptions resolved = dopt;
  resolved.root = data.root;
  const auto meta = checkpoint_metadata(o.model, cfg, resolved);
  TrainState st;
  if (o.resume) {
    st = load_state(state_path.string(), *model, *optim);
    S2H_CHECK(st.epoch < o.epochs, "--resume: the run in {} already finished its {} epochs", out, o.epochs);
  } else {
    nlohmann::json config = {{"command", "train"},
                             {"options", o},
                             {"resolved",
                              {{"out", out},
                               {"threads", threads},
                               {"data_root", data.root},
                               {"test_split", data.test_split},
                               {"augment", data.augment},
                               {"num_classes", cfg.num_classes},
                               {"image_size", cfg.image_size},
                               {"in_channels", cfg.in_channels},
                               {"vocab_size", cfg.vocab_size},
                               {"train_samples", data.train->size()},
                               {"test_samples", data.test->size()},
                               {"steps_per_epoch", steps_per_epoch},
                               {"parameters", model->num_parameters()}}}};
    config["options"]["out"] = out;
    write_file_atomically((fs::path(out) / "config.json").string(), config.dump(2) + "\n");
  }
  MetricsLog log(metrics_path.string(), o.resume ? st.metrics_bytes : -1);

  if (!o.quiet) {
    std::fprintf(stderr,
                 "s2h train: %s on %s (%lld train / %lld %s samples, loaded in %.1fs), %lld parameters, %d threads, "
                 "%d loader workers, %s -> %s\n",
                 o.model.c_str(), o.data.c_str(), static_cast<long long>(data.train->size()),
                 static_cast<long long>(data.test->size()), data.test_split.c_str(), load_s,
                 static_cast<long long>(model->num_parameters()), threads, o.workers, device_label(dev).c_str(),
                 out.c_str());
    if (!data.note.empty()) std::fprintf(stderr, "%s\n", data.note.c_str());
    if (o.resume)
      std::fprintf(stderr, "resuming after epoch %d (step %lld) from %s\n", st.epoch, static_cast<long long>(st.step),
                   state_path.string().c_str());
  }

  const auto t_run = std::chrono::steady_clock::now();
  for (int epoch = st.epoch; epoch < o.epochs; ++epoch) {
    loader.set_epoch(epoch);
    loader.start();
    model->train();
    Progress progress(fmt::format("epoch {}/{}", epoch + 1, o.epochs), steps_per_epoch, !o.quiet);
    const auto t_epoch = std::chrono::steady_clock::now();
    double loss_sum = 0;
    int64_t correct = 0, seen = 0;
    // The host reads a step's loss and accuracy only after it has queued the
    // next step, so that on a GPU the reading never leaves the device idle.
    struct Done {
      Tensor loss, logits, labels;
      int64_t index, step;
      double lr;
    };
    std::optional<Done> done;
    auto account = [&](const Done& d) {
      const int64_t n = d.labels.numel();
      const double loss_v = d.loss.item();
      S2H_CHECK(std::isfinite(loss_v), "training diverged: the loss is {} at epoch {}, step {} (lower --lr?)", loss_v,
                epoch + 1, d.index + 1);
      const int64_t c = count_correct(d.logits, d.labels);
      loss_sum += loss_v * static_cast<double>(n);
      correct += c;
      seen += n;
      const double ips = static_cast<double>(seen) / seconds_since(t_epoch);
      progress.update(d.index + 1, loss_sum / static_cast<double>(seen),
                      static_cast<double>(correct) / static_cast<double>(seen), ips);
      if (d.step % o.log_every == 0)
        log.write({{"kind", "step"}, {"epoch", epoch + 1}, {"step", d.step}, {"lr", d.lr}, {"loss", loss_v},
                   {"acc", static_cast<double>(c) / static_cast<double>(n)}, {"images_per_s", ips}});
    };
    while (std::optional<data::Batch> batch = loader.next()) {
      const double lr = sched.at(st.step);
      optim->set_lr(lr);
      const Tensor inputs = batch->inputs.to(dev), labels = batch->labels.to(dev);
      const Tensor logits = (*model)(inputs);
      const Tensor loss = cross_entropy(logits, labels, o.label_smoothing);
      optim->zero_grad();
      loss.backward();
      optim->step();
      ++st.step;
      Done now{loss.detach(), logits.detach(), labels, batch->index, st.step, lr};
      if (done) account(*done);
      done = std::move(now);
    }
    if (done) account(*done);
    progress.finish();
    const double train_s = seconds_since(t_epoch);
    const EvalResult ev = evaluate(*model, data.test, o.eval_batch_size, o.workers);
    st.epoch = epoch + 1;
    st.last_acc = ev.accuracy;
    if (ev.accuracy > st.best_acc || st.best_epoch == 0) {
      st.best_acc = ev.accuracy;
      st.best_epoch = st.epoch;
    }
    log.write({{"kind", "epoch"},
               {"epoch", st.epoch},
               {"step", st.step},
               {"lr", optim->lr()},
               {"train_loss", loss_sum / static_cast<double>(seen)},
               {"train_acc", static_cast<double>(correct) / static_cast<double>(seen)},
               {"test_loss", ev.loss},
               {"test_acc", ev.accuracy},
               {"best_test_acc", st.best_acc},
               {"train_seconds", train_s},
               {"eval_seconds", ev.seconds},
               {"images_per_s", static_cast<double>(seen) / train_s}});
    if (!o.quiet)
      std::fprintf(stderr,
                   "epoch %d/%d: train loss %.4f acc %.2f%% | %s loss %.4f acc %.2f%% (best %.2f%%) | %.1fs (%.0f img/s)\n",
                   st.epoch, o.epochs, loss_sum / static_cast<double>(seen),
                   100.0 * static_cast<double>(correct) / static_cast<double>(seen), data.test_split.c_str(), ev.loss,
                   100.0 * ev.accuracy, 100.0 * st.best_acc, train_s, static_cast<double>(seen) / train_s);
    const bool last = st.epoch == o.epochs;
    if (last || (o.checkpoint_every > 0 && st.epoch % o.checkpoint_every == 0)) {
      st.metrics_bytes = log.bytes();
      save_state(state_path.string(), *model, *optim, st, meta);
    }
  }

  auto model_meta = meta;
  model_meta["epoch"] = std::to_string(o.epochs);
  model_meta["test_acc"] = fmt::format("{:.6f}", st.last_acc);
  save_safetensors(model_path.string(), model->state_dict(), model_meta);
  const double total_s = seconds_since(t_run);
  log.write({{"kind", "summary"},
             {"epochs", o.epochs},
             {"best_test_acc", st.best_acc},
             {"best_epoch", st.best_epoch},
             {"last_test_acc", st.last_acc},
             {"seconds", total_s},
             {"checkpoint", model_path.string()}});
  std::printf(
      "s2h train: %s on %s, %d epochs%s in %s: %s accuracy %.2f%% last, %.2f%% best (epoch %d)\n"
      "model:      %s\nstate:      %s\nmetrics:    %s\n",
      o.model.c_str(), o.data.c_str(), o.epochs, o.resume ? " (resumed)" : "", format_duration(total_s).c_str(),
      data.test_split.c_str(), 100.0 * st.last_acc, 100.0 * st.best_acc, st.best_epoch, model_path.string().c_str(),
      state_path.string().c_str(), metrics_path.string().c_str());
  return 0;
}

}  // namespace s2h::app
