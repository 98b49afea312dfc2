// s2h train: the training loop with progress, JSON-lines metrics and checkpoints.
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

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

CLI::App* add_train_command(CLI::App& app, TrainOptions& o) {
  CLI::App* cmd = app.add_subcommand("train", "Train a model on a dataset");
  cmd->add_option("--model", o.model, "Model name (available: cnn-small)")->capture_default_str();
  cmd->add_option("--data", o.data, "Dataset (available: fashion-mnist)")->capture_default_str();
  cmd->add_option("--data-root", o.data_root,
                  std::string("Dataset folder (default for fashion-mnist: ") + kDefaultFashionMnistRoot + ")");
  cmd->add_option("--epochs", o.epochs, "Training epochs (> 0)")->capture_default_str();
  cmd->add_option("--batch-size", o.batch_size, "Training batch size")->capture_default_str();
  cmd->add_option("--eval-batch-size", o.eval_batch_size, "Evaluation batch size")->capture_default_str();
  cmd->add_option("--optimizer", o.optimizer, "sgd or adamw")->capture_default_str();
  cmd->add_option("--lr", o.lr, "Peak learning rate")->capture_default_str();
  cmd->add_option("--momentum", o.momentum, "SGD momentum (AdamW: beta1)")->capture_default_str();
  cmd->add_flag("--nesterov,!--no-nesterov", o.nesterov, "Nesterov momentum for SGD (default on)");
  cmd->add_option("--weight-decay", o.weight_decay, "Weight decay (SGD: L2 on all parameters; AdamW: decoupled)")
      ->capture_default_str();
  cmd->add_option("--schedule", o.schedule, "Learning-rate schedule after warm-up: cosine, step or constant")
      ->capture_default_str();
  cmd->add_option("--warmup-epochs", o.warmup_epochs, "Linear warm-up from 0.1*lr, in epochs (fractions allowed)")
      ->capture_default_str();
  cmd->add_option("--min-lr", o.min_lr, "Final learning rate of the cosine schedule")->capture_default_str();
  cmd->add_option("--step-epochs", o.step_epochs, "Step schedule: epochs between decays")->capture_default_str();
  cmd->add_option("--gamma", o.gamma, "Step schedule: decay factor")->capture_default_str();
  cmd->add_option("--label-smoothing", o.label_smoothing, "Label smoothing of the cross-entropy, in [0, 1)")
      ->capture_default_str();
  cmd->add_option("--seed", o.seed, "Seed of initialisation and data order")->capture_default_str();
  cmd->add_option("--threads", o.threads, "CPU threads (0: all cores)")->capture_default_str();
  cmd->add_option("--device", o.device, "cpu (cuda arrives with the CUDA backend)")->capture_default_str();
  cmd->add_option("--out", o.out, "Output folder (default: runs/<model>-<data>-<date-time>)");
  cmd->add_flag("--overwrite", o.overwrite, "Allow --out to name a folder that already holds a run");
  cmd->add_option("--log-every", o.log_every, "Write a step record to metrics.jsonl every N steps")
      ->capture_default_str();
  cmd->add_flag("--quiet", o.quiet, "No progress bar");
  return cmd;
}

namespace {

void validate(const TrainOptions& o) {
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
  S2H_CHECK(o.optimizer == "sgd" || o.optimizer == "adamw", "--optimizer: unknown optimizer '{}' (expected sgd or adamw)",
            o.optimizer);
  LrSchedule::parse_kind(o.schedule);
  const Device dev = Device::parse(o.device);
  S2H_CHECK(dev.is_cpu(), "--device {}: this build has the CPU backend only", o.device);
}

std::string default_out(const TrainOptions& o) {
  const std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::localtime(&now));
  return fmt::format("runs/{}-{}-{}", o.model, o.data, stamp);
}

nlohmann::json config_json(const TrainOptions& o, const std::string& out, int threads) {
  return {{"command", "train"},
          {"model", o.model},
          {"data", o.data},
          {"data_root", o.data_root},
          {"epochs", o.epochs},
          {"batch_size", o.batch_size},
          {"eval_batch_size", o.eval_batch_size},
          {"optimizer", o.optimizer},
          {"lr", o.lr},
          {"momentum", o.momentum},
          {"nesterov", o.nesterov},
          {"weight_decay", o.weight_decay},
          {"schedule", o.schedule},
          {"warmup_epochs", o.warmup_epochs},
          {"min_lr", o.min_lr},
          {"step_epochs", o.step_epochs},
          {"gamma", o.gamma},
          {"label_smoothing", o.label_smoothing},
          {"seed", o.seed},
          {"threads", threads},
          {"device", o.device},
          {"out", out}};
}

// Appends JSON lines, flushed one by one so that a crash loses at most the line being written.
class MetricsLog {
 public:
  explicit MetricsLog(const std::string& path) : path_(path), f_(path, std::ios::out | std::ios::trunc) {
    S2H_CHECK(f_.good(), "{}: cannot open the metrics log for writing", path);
  }
  void write(const nlohmann::json& j) {
    f_ << j.dump() << '\n';
    f_.flush();
    S2H_CHECK(f_.good(), "{}: write failed", path_);
  }

 private:
  std::string path_;
  std::ofstream f_;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int run_train(const TrainOptions& opt) {
  validate(opt);
  TrainOptions o = opt;
  if (o.data_root.empty()) o.data_root = kDefaultFashionMnistRoot;
  const int threads = set_threads(o.threads);

  // Fail fast on a bad model name, before reading any data.
  models::make_model(o.model, models::ModelConfig{});

  const std::string out = o.out.empty() ? default_out(o) : o.out;
  for (const char* f : {"metrics.jsonl", "model.safetensors"})
    S2H_CHECK(o.overwrite || !fs::exists(fs::path(out) / f),
              "--out {} already holds a run ({} exists); choose another folder or pass --overwrite", out, f);

  const auto t_load = std::chrono::steady_clock::now();
  const data::Dataset train_set = load_dataset(o.data, o.data_root, "train");
  const data::Dataset test_set = load_dataset(o.data, o.data_root, "test");
  const double load_s = seconds_since(t_load);

  manual_seed(o.seed);
  const models::ModelConfig cfg = model_config_for(train_set);
  ModulePtr model = models::make_model(o.model, cfg);
  model->train();

  std::error_code ec;
  fs::create_directories(out, ec);
  S2H_CHECK(!ec, "--out {}: cannot create the folder: {}", out, ec.message());
  write_file_atomically((fs::path(out) / "config.json").string(), config_json(o, out, threads).dump(2) + "\n");
  MetricsLog log((fs::path(out) / "metrics.jsonl").string());

  data::Loader loader(train_set, o.batch_size, true, o.seed);
  const int64_t steps_per_epoch = loader.num_batches();
  LrSchedule sched;
  sched.kind = LrSchedule::parse_kind(o.schedule);
  sched.base_lr = o.lr;
  sched.total_steps = steps_per_epoch * o.epochs;
  sched.warmup_steps = static_cast<int64_t>(o.warmup_epochs * static_cast<double>(steps_per_epoch));
  sched.min_lr = o.min_lr;
  sched.step_size = std::max<int64_t>(1, static_cast<int64_t>(o.step_epochs * static_cast<double>(steps_per_epoch)));
  sched.gamma = o.gamma;

  std::unique_ptr<Optimizer> optim;
  if (o.optimizer == "sgd") {
    SGDOptions so;
    so.lr = o.lr;
    so.momentum = o.momentum;
    so.nesterov = o.nesterov && o.momentum > 0;
    so.weight_decay = o.weight_decay;
    optim = std::make_unique<SGD>(model->parameters(), so);
  } else {
    AdamWOptions ao;
    ao.lr = o.lr;
    ao.beta1 = o.momentum > 0 ? o.momentum : 0.9;
    ao.weight_decay = o.weight_decay;
    optim = std::make_unique<AdamW>(model->parameters(), ao);
  }

  if (!o.quiet)
    std::fprintf(stderr, "s2h train: %s on %s (%lld train / %lld test images, loaded in %.1fs), %lld parameters, %d threads -> %s\n",
                 o.model.c_str(), o.data.c_str(), static_cast<long long>(train_set.size()),
                 static_cast<long long>(test_set.size()), load_s, static_cast<long long>(model->num_parameters()),
                 threads, out.c_str());

  const auto t_run = std::chrono::steady_clock::now();
  int64_t step = 0;
  double best_acc = 0, last_acc = 0;
  for (int epoch = 0; epoch < o.epochs; ++epoch) {
    loader.set_epoch(epoch);
    model->train();
    Progress progress(fmt::format("epoch {}/{}", epoch + 1, o.epochs), steps_per_epoch, !o.quiet);
    const auto t_epoch = std::chrono::steady_clock::now();
    double loss_sum = 0;
    int64_t correct = 0, seen = 0;
    for (int64_t b = 0; b < steps_per_epoch; ++b, ++step) {
      const double lr = sched.at(step);
      optim->set_lr(lr);
      const data::Batch batch = loader.batch(b);
      const Tensor logits = (*model)(batch.inputs);
      const Tensor loss = cross_entropy(logits, batch.labels, o.label_smoothing);
      optim->zero_grad();
      loss.backward();
      optim->step();

      const int64_t n = batch.labels.numel();
      const double loss_v = loss.item();
      S2H_CHECK(std::isfinite(loss_v), "training diverged: the loss is {} at epoch {}, step {} (lower --lr?)", loss_v,
                epoch + 1, b + 1);
      const Tensor pred = argmax(logits.detach(), 1);
      int64_t c = 0;
      for (int64_t i = 0; i < n; ++i) c += pred.data<int64_t>()[i] == batch.labels.data<int64_t>()[i];
      loss_sum += loss_v * static_cast<double>(n);
      correct += c;
      seen += n;
      const double ips = static_cast<double>(seen) / seconds_since(t_epoch);
      progress.update(b + 1, loss_sum / static_cast<double>(seen), static_cast<double>(correct) / static_cast<double>(seen), ips);
      if ((step + 1) % o.log_every == 0)
        log.write({{"kind", "step"}, {"epoch", epoch + 1}, {"step", step + 1}, {"lr", lr}, {"loss", loss_v},
                   {"acc", static_cast<double>(c) / static_cast<double>(n)}, {"images_per_s", ips}});
    }
    progress.finish();
    const double train_s = seconds_since(t_epoch);
    const EvalResult ev = evaluate(*model, test_set, o.eval_batch_size);
    last_acc = ev.accuracy;
    best_acc = std::max(best_acc, ev.accuracy);
    log.write({{"kind", "epoch"},
               {"epoch", epoch + 1},
               {"step", step},
               {"train_loss", loss_sum / static_cast<double>(seen)},
               {"train_acc", static_cast<double>(correct) / static_cast<double>(seen)},
               {"test_loss", ev.loss},
               {"test_acc", ev.accuracy},
               {"train_seconds", train_s},
               {"eval_seconds", ev.seconds},
               {"images_per_s", static_cast<double>(seen) / train_s}});
    if (!o.quiet)
      std::fprintf(stderr, "epoch %d/%d: train loss %.4f acc %.2f%% | test loss %.4f acc %.2f%% | %.1fs (%.0f img/s)\n",
                   epoch + 1, o.epochs, loss_sum / static_cast<double>(seen),
                   100.0 * static_cast<double>(correct) / static_cast<double>(seen), ev.loss, 100.0 * ev.accuracy,
                   train_s, static_cast<double>(seen) / train_s);
  }

  auto meta = checkpoint_metadata(o.model, cfg, o.data);
  meta["epoch"] = std::to_string(o.epochs);
  meta["test_acc"] = fmt::format("{:.6f}", last_acc);
  const std::string ckpt = (fs::path(out) / "model.safetensors").string();
  save_safetensors(ckpt, model->state_dict(), meta);
  const double total_s = seconds_since(t_run);
  log.write({{"kind", "summary"}, {"epochs", o.epochs}, {"best_test_acc", best_acc}, {"last_test_acc", last_acc},
             {"seconds", total_s}, {"checkpoint", ckpt}});
  std::printf("s2h train: %s on %s, %d epochs in %s: test accuracy %.2f%% (best %.2f%%)\ncheckpoint: %s\nmetrics:    %s\n",
              o.model.c_str(), o.data.c_str(), o.epochs, format_duration(total_s).c_str(), 100.0 * last_acc,
              100.0 * best_acc, ckpt.c_str(), (fs::path(out) / "metrics.jsonl").string().c_str());
  return 0;
}

}  // namespace s2h::app
