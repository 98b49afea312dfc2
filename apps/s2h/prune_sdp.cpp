// s2h prune --method sdp | magnitude: self-distilled pruning (a cross-correlation
// term keeps the pruned network's representation close to the unpruned one's)
// and plain magnitude pruning, on a sparsity schedule over training
// (pruning/sdp.h). Writes config.json, metrics.jsonl, model.safetensors (the
// masked network with zeros in place, readable by `s2h eval`) and summary.json.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "apps/s2h/commands.h"
#include "apps/s2h/common.h"
#include "apps/s2h/progress.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "engine/safetensors.h"
#include "pruning/sdp.h"

namespace s2h::app {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

pruning::SdpOptions sdp_options(const PruneOptions& o) {
  pruning::SdpOptions s;
  s.sparsity = o.sparsity;
  s.structured = o.sdp_structured;
  s.scope = o.sdp_scope;
  s.teacher = o.sdp_teacher;
  s.repr = o.sdp_repr;
  s.lambda = o.cc_lambda;
  s.alpha = o.cc_alpha;
  s.cc = o.method == "sdp";
  s.prune_steps = o.prune_steps;
  s.schedule = o.sparsity_schedule;
  s.prune_until = o.prune_until;
  s.label_smoothing = o.train.label_smoothing;
  return s;
}

// Pooled features (the classifier's input) of the masked network on a source, and the Fisher ratio.
double fisher_on(pruning::SdpPruner& pruner, const data::SourcePtr& source, int64_t batch_size, int workers) {
  data::LoaderOptions lo;
  lo.batch_size = batch_size;
  lo.shuffle = false;
  lo.workers = workers;
  data::Loader loader(source, lo);
  loader.start();
  std::vector<float> feats;
  std::vector<int64_t> labels;
  int64_t d = 0;
  while (std::optional<data::Batch> b = loader.next()) {
    const Tensor f = pruner.features(b->inputs.to(pruner.device()));
    d = f.size(1);
    const std::vector<float> v = f.to_vector<float>();
    feats.insert(feats.end(), v.begin(), v.end());
    const std::vector<int64_t> y = b->labels.to_vector<int64_t>();
    labels.insert(labels.end(), y.begin(), y.end());
  }
  const int64_t n = static_cast<int64_t>(labels.size());
  return pruning::fisher_ratio(Tensor::from_vector(feats, {n, d}), Tensor::from_vector(labels, {n}));
}

json finite_or_null(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

}  // namespace

int run_prune_sdp(const PruneOptions& o, const std::string& out) {
  const TrainOptions& t = o.train;
  S2H_CHECK(o.method == "sdp" || o.method == "magnitude", "run_prune_sdp: --method {} is not sdp or magnitude",
            o.method);
  const pruning::SdpOptions so = sdp_options(o);
  pruning::validate(so);
  const int threads = set_threads(t.threads);
  const auto t0 = std::chrono::steady_clock::now();

  const fs::path model_path = fs::path(out) / "model.safetensors", metrics_path = fs::path(out) / "metrics.jsonl",
                 summary_path = fs::path(out) / "summary.json", config_path = fs::path(out) / "config.json";

  const DataOptions dopt = data_options(t);
  const DataSplits data = load_data(dopt, true);
  const double load_s = seconds_since(t0);
  const models::ModelConfig cfg = model_config(t, data);

  manual_seed(t.seed);
  ModulePtr model = models::make_model(t.model, cfg);
  if (!o.init.empty()) load_init_weights(*model, o.init, t.model);
  const Device dev = setup_device(t);
  model->to(dev);
  model->train();

  // One test sample finds the input layer and the classifier.
  Tensor example;
  {
    data::LoaderOptions lo;
    lo.batch_size = 2;
    lo.shuffle = false;
    lo.workers = 0;
    example = data::Loader(data.test, lo).batch(0).inputs.to(dev);
  }
  pruning::SdpPruner pruner(*model, so, example, [&] { return models::make_model(t.model, cfg); });

  data::LoaderOptions lo;
  lo.batch_size = t.batch_size;
  lo.shuffle = true;
  lo.seed = t.seed;
  lo.workers = t.workers;
  lo.pin_memory = dev.is_cuda();
  data::Loader loader(data.train, lo);
  const int64_t steps_per_epoch = loader.num_batches();
  const int64_t total_steps = steps_per_epoch * t.epochs;
  const LrSchedule sched = make_schedule(t, steps_per_epoch);
  std::unique_ptr<Optimizer> optim = make_optimizer(t, model->parameters());
  const std::vector<pruning::PruneEvent> events = pruning::prune_events(so, total_steps);

  // The starting network, when it is a trained one.
  double dense_acc = NAN, dense_fisher = NAN;
  if (!o.init.empty()) {
    dense_acc = evaluate(*model, data.test, t.eval_batch_size, t.workers).accuracy;
    dense_fisher = fisher_on(pruner, data.test, t.eval_batch_size, t.workers);
  }

  DataOptions resolved = dopt;
  resolved.root = data.root;
  json events_json = json::array();
  for (const auto& e : events) events_json.push_back({{"step", e.step}, {"sparsity", e.sparsity}});
  const json config = {{"command", "prune"},
                       {"options", prune_options_json(o)},
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
                         {"total_steps", total_steps},
                         {"parameters", model->num_parameters()},
                         {"cross_correlation", so.cc},
                         {"input_layer", pruner.input_layer()},
                         {"classifier", pruner.classifier()},
                         {"prunable", pruner.prunable_names()},
                         {"prune_events", events_json}}}};
  write_file_atomically(config_path.string(), config.dump(2) + "\n");
  MetricsLog log(metrics_path.string(), -1);

  const std::string method_desc =
      o.method == "sdp" ? fmt::format("self-distilled pruning ({} teacher, {} repr)", so.teacher, so.repr)
                        : std::string("magnitude pruning");
  if (!t.quiet) {
    std::fprintf(stderr,
                 "s2h prune: %s, %s on %s (%lld train / %lld %s samples, loaded in %.1fs), %lld parameters, "
                 "%s sparsity %.2f (%s, %s), %zu prune events by step %lld of %lld, %d threads -> %s\n",
                 method_desc.c_str(), t.model.c_str(), t.data.c_str(), static_cast<long long>(data.train->size()),
                 static_cast<long long>(data.test->size()), data.test_split.c_str(), load_s,
                 static_cast<long long>(model->num_parameters()), so.structured ? "unit" : "weight", so.sparsity,
                 so.scope.c_str(), so.schedule.c_str(), events.size(), static_cast<long long>(events.back().step),
                 static_cast<long long>(total_steps), threads, out.c_str());
    if (!data.note.empty()) std::fprintf(stderr, "%s\n", data.note.c_str());
    if (!o.init.empty())
      std::fprintf(stderr, "start: %s, %s accuracy %.2f%%, Fisher ratio %.4f\n", o.init.c_str(),
                   data.test_split.c_str(), 100 * dense_acc, dense_fisher);
  }

  const auto t_run = std::chrono::steady_clock::now();
  int64_t step = 0;
  size_t next_event = 0;
  double last_acc = 0;
  for (int epoch = 0; epoch < t.epochs; ++epoch) {
    loader.set_epoch(epoch);
    loader.start();
    model->train();
    Progress progress(fmt::format("epoch {}/{}", epoch + 1, t.epochs), steps_per_epoch, !t.quiet);
    const auto t_epoch = std::chrono::steady_clock::now();
    double loss_sum = 0, ce_sum = 0, cc_sum = 0;
    int64_t correct = 0, seen = 0, events_now = 0;
    while (std::optional<data::Batch> batch = loader.next()) {
      while (next_event < events.size() && events[next_event].step <= step) {
        const pruning::PruneEvent& ev = events[next_event++];
        pruner.prune_to(ev.sparsity);
        const pruning::SparsityStats& s = pruner.sparsity();
        json rec = {{"kind", "prune"},
                    {"epoch", epoch + 1},
                    {"step", step},
                    {"event", next_event},
                    {"target_sparsity", ev.sparsity},
                    {"sparsity", s.prunable},
                    {"sparsity_network", s.network},
                    {"pruned", s.prunable_pruned},
                    {"prunable", s.prunable_total}};
        if (so.structured) {
          rec["units_pruned"] = s.units_pruned;
          rec["units"] = s.units_total;
        }
        log.write(rec);
        ++events_now;
      }
      const double lr = sched.at(step);
      optim->set_lr(lr);
      const pruning::SdpStepStats st = pruner.train_step(batch->inputs.to(dev), batch->labels.to(dev), *optim);
      S2H_CHECK(std::isfinite(st.loss), "training diverged: the loss is {} at epoch {}, step {} (lower --lr?)", st.loss,
                epoch + 1, step + 1);
      const int64_t n = batch->labels.numel();
      const int64_t c = count_correct(st.logits, batch->labels);
      loss_sum += st.loss * static_cast<double>(n);
      ce_sum += st.ce * static_cast<double>(n);
      cc_sum += st.cc * static_cast<double>(n);
      correct += c;
      seen += n;
      ++step;
      const double ips = static_cast<double>(seen) / seconds_since(t_epoch);
      progress.update(batch->index + 1, loss_sum / static_cast<double>(seen),
                      static_cast<double>(correct) / static_cast<double>(seen), ips);
      if (step % t.log_every == 0)
        log.write({{"kind", "step"},
                   {"epoch", epoch + 1},
                   {"step", step},
                   {"lr", lr},
                   {"loss", st.loss},
                   {"ce", st.ce},
                   {"cc", st.cc},
                   {"acc", static_cast<double>(c) / static_cast<double>(n)},
                   {"sparsity", pruner.sparsity().prunable},
                   {"images_per_s", ips}});
    }
    progress.finish();
    const double train_s = seconds_since(t_epoch);
    EvalResult ev;
    {
      pruning::SdpPruner::MaskedScope masked(pruner);
      ev = evaluate(*model, data.test, t.eval_batch_size, t.workers);
    }
    last_acc = ev.accuracy;
    const pruning::SparsityStats& s = pruner.sparsity();
    log.write({{"kind", "epoch"},
               {"epoch", epoch + 1},
               {"step", step},
               {"lr", optim->lr()},
               {"train_loss", loss_sum / static_cast<double>(seen)},
               {"train_ce", ce_sum / static_cast<double>(seen)},
               {"train_cc", cc_sum / static_cast<double>(seen)},
               {"train_acc", static_cast<double>(correct) / static_cast<double>(seen)},
               {"test_loss", ev.loss},
               {"test_acc", ev.accuracy},
               {"sparsity", s.prunable},
               {"sparsity_network", s.network},
               {"prune_events", events_now},
               {"train_seconds", train_s},
               {"eval_seconds", ev.seconds},
               {"images_per_s", static_cast<double>(seen) / train_s}});
    if (!t.quiet)
      std::fprintf(stderr,
                   "epoch %d/%d: train loss %.4f (ce %.4f, cc %.4f) acc %.2f%% | %s loss %.4f acc %.2f%% | sparsity "
                   "%.2f%% of prunable weights (%.2f%% of the network) | %.1fs\n",
                   epoch + 1, t.epochs, loss_sum / static_cast<double>(seen), ce_sum / static_cast<double>(seen),
                   cc_sum / static_cast<double>(seen), 100.0 * static_cast<double>(correct) / static_cast<double>(seen),
                   data.test_split.c_str(), ev.loss, 100 * ev.accuracy, 100 * s.prunable, 100 * s.network, train_s);
  }

  // The final network: zeros in place, evaluated as `s2h eval` will see it.
  pruner.apply_masks();
  const EvalResult final_ev = evaluate(*model, data.test, t.eval_batch_size, t.workers);
  const double fisher = fisher_on(pruner, data.test, t.eval_batch_size, t.workers);
  const pruning::SparsityStats& s = pruner.sparsity();
  int64_t nonzero = 0;
  for (const auto& [name, p] : model->named_parameters())
    for (float v : p.to_vector<float>()) nonzero += v != 0.0f;

  auto meta = checkpoint_metadata(t.model, cfg, resolved);
  meta["epoch"] = std::to_string(t.epochs);
  meta["test_acc"] = fmt::format("{:.6f}", final_ev.accuracy);
  meta["method"] = o.method;
  meta["sparsity"] = fmt::format("{:.6f}", s.prunable);
  save_safetensors(model_path.string(), model->state_dict(), meta);

  const double seconds = seconds_since(t0);
  json summary = {{"method", o.method},
                  {"model", t.model},
                  {"dataset", t.data},
                  {"structured", so.structured},
                  {"scope", so.scope},
                  {"teacher", o.method == "sdp" ? json(so.teacher) : json(nullptr)},
                  {"repr", o.method == "sdp" ? json(so.repr) : json(nullptr)},
                  {"schedule", so.schedule},
                  {"prune_steps", static_cast<int64_t>(events.size())},
                  {"prune_until", so.prune_until},
                  {"sparsity", so.sparsity},
                  {"sparsity_achieved", s.prunable},
                  {"sparsity_network", s.network},
                  {"prunable_weights", s.prunable_total},
                  {"params_full", model->num_parameters()},
                  {"params_nonzero", nonzero},
                  {"test_acc", final_ev.accuracy},
                  {"test_loss", final_ev.loss},
                  {"last_epoch_test_acc", last_acc},
                  {"dense_test_acc", finite_or_null(dense_acc)},
                  {"fisher_ratio", finite_or_null(fisher)},
                  {"fisher_ratio_dense", finite_or_null(dense_fisher)},
                  {"cc_lambda", o.method == "sdp" ? json(so.lambda) : json(nullptr)},
                  {"cc_alpha", o.method == "sdp" ? json(so.alpha) : json(0.0)},
                  {"batch_size", t.batch_size},
                  {"epochs", t.epochs},
                  {"seed", t.seed},
                  {"init", o.init.empty() ? json(nullptr) : json(o.init)},
                  {"seconds", seconds}};
  if (so.structured) {
    summary["units_total"] = s.units_total;
    summary["units_pruned"] = s.units_pruned;
  }
  write_file_atomically(summary_path.string(), summary.dump(2) + "\n");
  log.write({{"kind", "summary"},
             {"test_acc", final_ev.accuracy},
             {"sparsity", s.prunable},
             {"sparsity_network", s.network},
             {"fisher_ratio", finite_or_null(fisher)},
             {"seconds", seconds_since(t_run)},
             {"checkpoint", model_path.string()}});

  std::printf(
      "s2h prune: %s, %s on %s, %d epochs in %s: %s accuracy %.2f%%%s at %.2f%% sparsity of the prunable weights "
      "(%.2f%% of the network; %lld of %lld parameters non-zero), Fisher ratio %.4f\n"
      "model:      %s\nsummary:    %s\nconfig:     %s\nmetrics:    %s\ncheck it:   s2h eval --checkpoint %s\n",
      method_desc.c_str(), t.model.c_str(), t.data.c_str(), t.epochs, format_duration(seconds).c_str(),
      data.test_split.c_str(), 100 * final_ev.accuracy,
      o.init.empty() ? "" : fmt::format(" (dense {:.2f}%)", 100 * dense_acc).c_str(), 100 * s.prunable,
      100 * s.network, static_cast<long long>(nonzero), static_cast<long long>(model->num_parameters()), fisher,
      model_path.string().c_str(), summary_path.string().c_str(), config_path.string().c_str(),
      metrics_path.string().c_str(), model_path.string().c_str());
  return 0;
}

}  // namespace s2h::app
