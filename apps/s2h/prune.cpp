// s2h prune: structured pruning under a FLOPs budget (S2HPruner, its ablations
// and the baselines) and self-distilled / magnitude pruning (prune_sdp.cpp).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <random>

#include "apps/s2h/commands.h"
#include "apps/s2h/common.h"
#include "apps/s2h/progress.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "models/narrow.h"
#include "pruning/extract.h"
#include "pruning/flops.h"
#include "pruning/masks.h"
#include "pruning/report.h"
#include "pruning/s2h.h"

namespace s2h::app {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const char* kMethods = "s2h, soft-only, l1, random, sdp, magnitude";

void validate(const PruneOptions& o) {
  validate_training_options(o.train);
  const std::vector<std::string> methods = {"s2h", "soft-only", "l1", "random", "sdp", "magnitude"};
  S2H_CHECK(std::find(methods.begin(), methods.end(), o.method) != methods.end(),
            "--method: unknown method '{}' (expected {})", o.method, kMethods);
  S2H_CHECK(o.target_flops > 0 && o.target_flops <= 1, "--target-flops must be in (0, 1], got {}", o.target_flops);
  pruning::parse_flops_scope(o.flops_scope);
  pruning::parse_variant(o.variant);
  S2H_CHECK(o.flops_widths == "expected" || o.flops_widths == "hard",
            "--flops-widths: unknown '{}' (expected expected or hard)", o.flops_widths);
  S2H_CHECK(o.dense_epochs >= 0 && o.hard_ft_epochs >= 0, "--dense-epochs and --hard-ft-epochs must be >= 0");
  const bool structured = o.method != "sdp" && o.method != "magnitude";
  S2H_CHECK(!structured || o.dense_epochs + o.hard_ft_epochs < o.train.epochs,
            "--dense-epochs ({}) + --hard-ft-epochs ({}) must leave some of the {} --epochs for pruning",
            o.dense_epochs, o.hard_ft_epochs, o.train.epochs);
  S2H_CHECK(o.bn_batches >= 0, "--bn-batches must be >= 0, got {}", o.bn_batches);
  S2H_CHECK(o.budget_tolerance >= 0 && o.budget_tolerance < 1, "--budget-tolerance must be in [0, 1), got {}",
            o.budget_tolerance);
  S2H_CHECK(o.widths_from.empty() || o.method == "l1" || o.method == "random",
            "--widths-from applies to --method l1 or random only");
  S2H_CHECK(o.sparsity >= 0 && o.sparsity < 1, "--sparsity must be in [0, 1), got {}", o.sparsity);
}

// Uniform widths: every prunable group keeps the same fraction, rounded to its divisor, found by bisection,
// then corrected by the budget guarantee.
std::map<std::string, int64_t> uniform_widths(const pruning::FlopsModel& flops, const pruning::WidthMasks& masks,
                                              double target, pruning::FlopsScope scope) {
  auto widths_at = [&](double r) {
    std::map<std::string, int64_t> w;
    for (const auto& g : masks.groups()) {
      const int64_t n = static_cast<int64_t>(std::llround(r * static_cast<double>(g.channels) /
                                                          static_cast<double>(g.divisor))) * g.divisor;
      w[g.name] = std::clamp<int64_t>(n, g.divisor, g.channels);
    }
    return w;
  };
  double lo = 0, hi = 1;
  for (int it = 0; it < 50; ++it) {
    const double mid = 0.5 * (lo + hi);
    if (flops.at_widths(widths_at(mid), scope) / flops.full(scope) > target) hi = mid;
    else lo = mid;
  }
  return widths_at(lo);
}

std::map<std::string, int64_t> widths_from_file(const std::string& path, const pruning::WidthMasks& masks) {
  std::ifstream f(path);
  S2H_CHECK(f.good(), "--widths-from {}: cannot open the file", path);
  json j;
  try {
    j = json::parse(f);
  } catch (const json::exception& e) {
    S2H_FAIL("--widths-from {}: not valid JSON ({})", path, e.what());
  }
  const models::Architecture a = models::Architecture::from_json(j, path);
  std::map<std::string, int64_t> w;
  for (const auto& g : masks.groups()) {
    auto it = a.widths.find(g.name);
    S2H_CHECK(it != a.widths.end(), "--widths-from {}: no width for group {}", path, g.name);
    w[g.name] = it->second;
  }
  return w;
}

struct EpochGap {
  double soft_acc = NAN, hard_acc = NAN, kl = NAN, js = NAN, l2 = NAN;
};

// Accuracy of logits [N, C] against labels.
double logits_accuracy(const Tensor& logits, const Tensor& labels) {
  return static_cast<double>(count_correct(logits, labels)) / static_cast<double>(labels.numel());
}

// Recalibrates BatchNorm on `batches` training batches of `loader` (fresh epoch `epoch_tag`).
void recalibrate(Module& model, data::Loader& loader, int64_t batches, int64_t epoch_tag) {
  pruning::BnRecalibration recal(model);
  if (!recal.has_batch_norm() || batches == 0) return;
  loader.set_epoch(epoch_tag);
  loader.start();
  while (std::optional<data::Batch> b = loader.next()) {
    recal.step(b->inputs.to(model.device()));
    if (recal.batches() >= batches) break;
  }
  loader.set_epoch(epoch_tag);  // stops the prefetching
}

std::string pct(double v) { return std::isnan(v) ? "-" : fmt::format("{:.2f}%", 100 * v); }

}  // namespace

CLI::App* add_prune_command(CLI::App& app, PruneOptions& o) {
  CLI::App* cmd = app.add_subcommand(
      "prune", "Prune a model: S2HPruner (soft-to-hard distillation under a FLOPs budget), its ablations and "
               "baselines, or self-distilled / magnitude pruning; writes the extracted network, tables and plots");
  add_training_flags(cmd, o.train, /*resume=*/false);
  const char* P = "Pruning";
  cmd->add_option("--method", o.method,
                  "s2h (S2HPruner), soft-only (soft masks + FLOPs loss, then discretised: no KD), l1 (dense "
                  "training, L1-norm channels at the same widths, fine-tune), random (random channels, same "
                  "schedule), sdp (self-distilled magnitude pruning), magnitude (plain magnitude pruning)")
      ->capture_default_str()->group(P);
  cmd->add_option("--init", o.init, "Start from this model.safetensors of `s2h train` (same --model and data)")
      ->group(P);
  cmd->add_option("--target-flops", o.target_flops, "Structured methods: fraction of the FLOPs that remains")
      ->capture_default_str()->group(P);
  cmd->add_option("--flops-scope", o.flops_scope,
                  "What --target-flops measures: network (every conv, linear and attention product, stem and "
                  "classifier included) or pruned (only layers that read or write a prunable group)")
      ->capture_default_str()->group(P);
  cmd->add_option("--dense-epochs", o.dense_epochs,
                  "Epochs of dense training first (s2h/soft-only: warm-up with masks off; l1/random: pre-training "
                  "before the channels are chosen); fractions allowed")
      ->capture_default_str()->group(P);
  cmd->add_option("--budget-tolerance", o.budget_tolerance,
                  "After training the hard FLOPs must be within target*(1 +- this); widths are adjusted if not")
      ->capture_default_str()->group(P);
  cmd->add_option("--bn-batches", o.bn_batches, "Training batches for BatchNorm recalibration of the hard network")
      ->capture_default_str()->group(P);
  cmd->add_option("--ch-divisor", o.ch_divisor,
                  "Width step: a group keeps a multiple of the largest d <= this that divides its channels")
      ->capture_default_str()->group(P);
  cmd->add_option("--head-divisor", o.head_divisor, "The same for attention heads")->capture_default_str()->group(P);
  cmd->add_option("--widths-from", o.widths_from,
                  "l1/random: take the widths from this architecture.json (e.g. of an s2h run; default: uniform "
                  "widths that meet --target-flops)")
      ->group(P);

  const char* S = "S2HPruner";
  cmd->add_option("--variant", o.variant,
                  "s2h: decoupled (the paper), coupled (plain bidirectional KD), no-kd, hard-st (train the hard net "
                  "directly with a straight-through mask), self-only (G1 only: the hard net learns from the soft)")
      ->capture_default_str()->group(S);
  cmd->add_option("--temperature", o.temperature, "T of softmax(u/T) over the width choices")
      ->capture_default_str()->group(S);
  cmd->add_option("--mask-init", o.mask_init, "max (start near full width) or uniform (u = 0)")
      ->capture_default_str()->group(S);
  cmd->add_option("--lambda-flops", o.lambda_flops, "lambda_F of the resource loss lambda_F (F/F_full - target)^2")
      ->capture_default_str()->group(S);
  cmd->add_option("--lambda-kd", o.lambda_kd, "lambda_KD of the distillation terms")->capture_default_str()->group(S);
  cmd->add_option("--flops-tolerance", o.flops_tolerance,
                  "rho: the FLOPs gradient is boosted until the ratio is within about rho of the target")
      ->capture_default_str()->group(S);
  cmd->add_option("--flops-balance", o.flops_balance, "s_F: norm ratio of the mask gradient to the FLOPs gradient")
      ->capture_default_str()->group(S);
  cmd->add_option("--task-balance", o.task_balance,
                  "s_f: weight of the task gradient against the distillation gradient of the masks (0: ignore it)")
      ->capture_default_str()->group(S);
  cmd->add_option("--flops-widths", o.flops_widths,
                  "Widths the resource loss uses: expected (differentiable) or hard (rounded, straight-through)")
      ->capture_default_str()->group(S);
  cmd->add_option("--mask-lr", o.mask_lr, "Learning rate of the mask logits (follows the weights' schedule)")
      ->capture_default_str()->group(S);
  cmd->add_option("--mask-momentum", o.mask_momentum, "Nesterov momentum of the mask optimiser")
      ->capture_default_str()->group(S);
  cmd->add_option("--mask-weight-decay", o.mask_weight_decay, "Weight decay of the mask logits")
      ->capture_default_str()->group(S);
  cmd->add_option("--order-every", o.order_every, "Steps between recomputations of the L1 channel order")
      ->capture_default_str()->group(S);
  cmd->add_option("--hard-ft-epochs", o.hard_ft_epochs,
                  "Final epochs that train only the hard network, masks and channel order frozen")
      ->capture_default_str()->group(S);

  const char* D = "Self-distilled pruning";
  cmd->add_option("--sparsity", o.sparsity, "sdp/magnitude: final fraction of prunable weights set to zero")
      ->capture_default_str()->group(D);
  cmd->add_flag("--sdp-structured", o.sdp_structured, "Prune whole channels/heads by group L1 norm")->group(D);
  cmd->add_option("--sdp-scope", o.sdp_scope, "global or layer: where the magnitude threshold is taken")
      ->capture_default_str()->group(D);
  cmd->add_option("--sdp-teacher", o.sdp_teacher,
                  "frozen (a copy taken before each prune step) or live (the dense weights, stop-grad)")
      ->capture_default_str()->group(D);
  cmd->add_option("--sdp-repr", o.sdp_repr, "Representation compared: pooled (the classifier's input) or logits")
      ->capture_default_str()->group(D);
  cmd->add_option("--cc-lambda", o.cc_lambda, "Off-diagonal weight of the cross-correlation loss")
      ->capture_default_str()->group(D);
  cmd->add_option("--cc-alpha", o.cc_alpha, "Loss = (1 - alpha) CE + alpha L_cc")->capture_default_str()->group(D);
  cmd->add_option("--prune-steps", o.prune_steps, "Number of prune events")->capture_default_str()->group(D);
  cmd->add_option("--sparsity-schedule", o.sparsity_schedule, "cubic, linear or oneshot")
      ->capture_default_str()->group(D);
  cmd->add_option("--prune-until", o.prune_until, "Fraction of training by which the final sparsity is reached")
      ->capture_default_str()->group(D);
  return cmd;
}

namespace {

int run_structured(const PruneOptions& o, const std::string& out) {
  const TrainOptions& t = o.train;
  const auto t0 = std::chrono::steady_clock::now();
  const DataOptions dopt = data_options(t);
  const DataSplits data = load_data(dopt, true);
  const models::ModelConfig cfg = model_config(t, data);

  manual_seed(t.seed);
  ModulePtr model = models::make_model(t.model, cfg);
  if (!o.init.empty()) load_init_weights(*model, o.init, t.model);
  model->train();
  const std::vector<models::ChannelGroup> groups = models::channel_groups(*model);
  models::validate_channel_groups(*model, groups);
  const pruning::FlopsScope scope = pruning::parse_flops_scope(o.flops_scope);
  const pruning::FlopsModel flops(*model, groups, pruning::example_input(cfg));
  pruning::MaskOptions mo;
  mo.ch_divisor = o.ch_divisor;
  mo.head_divisor = o.head_divisor;
  mo.temperature = o.temperature;
  mo.init = o.mask_init;
  pruning::WidthMasks masks(*model, groups, mo);
  S2H_CHECK(!masks.groups().empty(), "--model {}: no prunable channel group", t.model);
  {
    std::map<std::string, int64_t> narrowest;
    for (const auto& g : masks.groups()) narrowest[g.name] = g.divisor;
    const double floor = flops.at_widths(narrowest, scope) / flops.full(scope);
    S2H_CHECK(floor < o.target_flops,
              "--target-flops {} cannot be reached: {} keeps at least {:.4f} of its FLOPs ({} scope) with every "
              "prunable group at its narrowest width",
              o.target_flops, t.model, floor, o.flops_scope);
  }

  // Read --widths-from before any training, so that a bad file fails at once.
  const std::map<std::string, int64_t> given_widths =
      o.widths_from.empty() ? std::map<std::string, int64_t>{} : widths_from_file(o.widths_from, masks);

  pruning::S2HOptions so;
  so.variant = o.method == "soft-only" ? pruning::Variant::NoKd : pruning::parse_variant(o.variant);
  so.target = o.target_flops;
  so.scope = scope;
  so.lambda_flops = o.lambda_flops;
  so.lambda_kd = o.lambda_kd;
  so.flops_tolerance = o.flops_tolerance;
  so.flops_balance = o.flops_balance;
  so.task_balance = o.task_balance;
  so.flops_on_hard = o.flops_widths == "hard";
  so.mask_lr = o.mask_lr;
  so.mask_momentum = o.mask_momentum;
  so.mask_weight_decay = o.mask_weight_decay;
  so.order_every = o.order_every;
  so.label_smoothing = t.label_smoothing;
  // The network moves to the device; the FLOPs model (traced above) and the
  // mask logits stay on the host, where they are small.
  const Device dev = setup_device(t);
  model->to(dev);
  pruning::S2HPruner pruner(*model, flops, masks, so);
  const bool masked = o.method == "s2h" || o.method == "soft-only";

  data::LoaderOptions lo;
  lo.batch_size = t.batch_size;
  lo.shuffle = true;
  lo.seed = t.seed;
  lo.workers = t.workers;
  lo.pin_memory = dev.is_cuda();
  data::Loader loader(data.train, lo);
  data::Loader recal_loader(data.train, lo);
  const int64_t spe = loader.num_batches();
  const int64_t total_steps = spe * t.epochs;
  const int64_t dense_steps = static_cast<int64_t>(std::llround(o.dense_epochs * static_cast<double>(spe)));
  const int64_t hard_from =
      total_steps - static_cast<int64_t>(std::llround(o.hard_ft_epochs * static_cast<double>(spe)));
  const LrSchedule sched = make_schedule(t, spe);
  std::unique_ptr<Optimizer> optim = make_optimizer(t, model->parameters());

  const std::string method_desc =
      o.method == "s2h" ? fmt::format("s2h ({})", pruning::variant_name(so.variant)) : o.method;
  json config = {{"command", "prune"},
                 {"options", prune_options_json(o)},
                 {"resolved",
                  {{"out", out},
                   {"data_root", data.root},
                   {"test_split", data.test_split},
                   {"num_classes", cfg.num_classes},
                   {"steps_per_epoch", spe},
                   {"flops_full_network", flops.full(pruning::FlopsScope::Network)},
                   {"flops_full_pruned", flops.full(pruning::FlopsScope::Pruned)},
                   {"parameters", model->num_parameters()},
                   {"groups", json::array()}}}};
  for (const auto& g : masks.groups())
    config["resolved"]["groups"].push_back(
        {{"name", g.name}, {"channels", g.channels}, {"divisor", g.divisor}, {"choices", g.choices}});
  write_file_atomically((fs::path(out) / "config.json").string(), config.dump(2) + "\n");
  MetricsLog log((fs::path(out) / "metrics.jsonl").string(), -1);

  if (!t.quiet)
    std::fprintf(stderr,
                 "s2h prune: %s, %s on %s (%lld train / %lld %s), target %.0f%% of the FLOPs (%s; full %.2f MFLOPs "
                 "per sample), %zu prunable groups -> %s\n",
                 method_desc.c_str(), t.model.c_str(), t.data.c_str(), static_cast<long long>(data.train->size()),
                 static_cast<long long>(data.test->size()), data.test_split.c_str(), 100 * o.target_flops,
                 o.flops_scope.c_str(), flops.full(scope) / 1e6, masks.groups().size(), out.c_str());

  ModulePtr pruned;  // l1/random: the extracted network being fine-tuned
  std::map<std::string, int64_t> fixed_widths;
  double dense_acc = NAN, pruned_before_ft_acc = NAN;
  std::vector<double> ep_x, ep_kl, ep_fl_exp, ep_fl_hard, ep_soft, ep_hard;
  int64_t step = 0;
  for (int epoch = 0; epoch < t.epochs; ++epoch) {
    loader.set_epoch(epoch);
    loader.start();
    Progress progress(fmt::format("epoch {}/{}", epoch + 1, t.epochs), spe, !t.quiet);
    const auto t_epoch = std::chrono::steady_clock::now();
    double loss_sum = 0, acc_sum = 0;
    int64_t seen = 0, nb = 0;
    while (std::optional<data::Batch> batch = loader.next()) {
      const double lr = sched.at(step);
      const int64_t n = batch->labels.numel();
      const Tensor inputs = batch->inputs.to(dev), labels = batch->labels.to(dev);
      pruning::StepStats st;
      std::string phase;
      if (!masked && step == dense_steps) {
        // l1 / random: choose the channels now and continue on the extracted network.
        dense_acc = evaluate(*model, data.test, t.eval_batch_size, t.workers).accuracy;
        masks.update_order(*model);
        fixed_widths = o.widths_from.empty() ? uniform_widths(flops, masks, o.target_flops, scope) : given_widths;
        fixed_widths =
            pruning::enforce_budget(flops, masks, fixed_widths, o.target_flops, o.budget_tolerance, scope).widths;
        models::ChannelSelection sel = masks.selection(fixed_widths);
        if (o.method == "random") {
          std::mt19937_64 rng(t.seed * 7919 + 17);
          for (const auto& g : masks.groups()) {
            std::vector<int64_t> all(static_cast<size_t>(g.channels));
            std::iota(all.begin(), all.end(), 0);
            std::shuffle(all.begin(), all.end(), rng);
            all.resize(static_cast<size_t>(fixed_widths.at(g.name)));
            sel[g.name] = all;
          }
        }
        pruned = pruning::extract(t.model, cfg, *model, sel);
        pruned->to(dev);
        pruned_before_ft_acc = evaluate(*pruned, data.test, t.eval_batch_size, t.workers).accuracy;
        optim = make_optimizer(t, pruned->parameters());
        log.write({{"kind", "prune"}, {"step", step}, {"dense_test_acc", dense_acc},
                   {"pruned_test_acc_before_finetune", pruned_before_ft_acc}, {"widths", fixed_widths},
                   {"flops_ratio", flops.at_widths(fixed_widths, scope) / flops.full(scope)}});
        if (!t.quiet)
          std::fprintf(stderr, "\n%s channels chosen at step %lld: dense %s -> pruned %s before fine-tuning\n",
                       o.method.c_str(), static_cast<long long>(step), pct(dense_acc).c_str(),
                       pct(pruned_before_ft_acc).c_str());
      }
      optim->set_lr(lr);
      if (pruned) {
        phase = "finetune";
        const Tensor logits = (*pruned)(inputs);
        const Tensor loss = cross_entropy(logits, labels, t.label_smoothing);
        optim->zero_grad();
        loss.backward();
        optim->step();
        st.loss = st.hard_loss = loss.item();
        st.hard_acc = static_cast<double>(count_correct(logits, labels)) / static_cast<double>(n);
        st.flops_hard = st.flops_expected = flops.at_widths(fixed_widths, scope) / flops.full(scope);
      } else if (step < dense_steps) {
        phase = "dense";
        st = pruner.dense_step(inputs, labels, *optim);
        st.hard_acc = st.soft_acc;
      } else if (step >= hard_from) {
        phase = "hard";
        st = pruner.hard_step(inputs, labels, *optim);
      } else {
        phase = "masked";
        st = pruner.step(inputs, labels, *optim, lr / t.lr);
      }
      S2H_CHECK(std::isfinite(st.loss), "training diverged: the loss is {} at epoch {}, step {} (lower --lr?)",
                st.loss, epoch + 1, step + 1);
      ++step;
      ++nb;
      seen += n;
      loss_sum += st.loss * static_cast<double>(n);
      acc_sum += st.hard_acc * static_cast<double>(n);
      const double ips = static_cast<double>(seen) / seconds_since(t_epoch);
      progress.update(batch->index + 1, loss_sum / static_cast<double>(seen), acc_sum / static_cast<double>(seen),
                      ips);
      if (step % t.log_every == 0) {
        json rec = {{"kind", "step"},         {"epoch", epoch + 1},          {"step", step},
                    {"phase", phase},          {"lr", lr},                     {"loss", st.loss},
                    {"soft_loss", st.soft_loss}, {"soft_acc", st.soft_acc},   {"hard_loss", st.hard_loss},
                    {"hard_acc", st.hard_acc}, {"kd", st.kd},                 {"flops_loss", st.flops_loss},
                    {"kl", st.kl},             {"js", st.js},                 {"l2", st.l2},
                    {"flops_expected", st.flops_expected}, {"flops_hard", st.flops_hard}, {"images_per_s", ips}};
        if (masked) {
          json ent = json::object();
          for (size_t i = 0; i < masks.groups().size(); ++i) ent[masks.groups()[i].name] = masks.entropy(i);
          rec["mask_entropy"] = ent;
        }
        log.write(rec);
      }
    }
    progress.finish();
    const double train_s = seconds_since(t_epoch);

    // Epoch telemetry on the test set: soft network, hard network (BN recalibrated), their gap.
    EpochGap eg;
    json widths_now = json::object();
    if (masked) {
      Tensor labels;
      pruner.set_soft_masks(true);
      const Tensor soft_logits = predict_logits(*model, data.test, t.eval_batch_size, t.workers, &labels);
      pruner.set_soft_masks(false);
      Tensor hard_logits;
      {
        models::NarrowView view(*model, groups, masks.selection());
        recalibrate(*model, recal_loader, o.bn_batches, 1000 + epoch);
        hard_logits = predict_logits(*model, data.test, t.eval_batch_size, t.workers);
      }
      eg.soft_acc = logits_accuracy(soft_logits, labels);
      eg.hard_acc = logits_accuracy(hard_logits, labels);
      const pruning::Gap gap = pruning::logit_gap(soft_logits, hard_logits);
      eg.kl = gap.kl;
      eg.js = gap.js;
      eg.l2 = gap.l2;
      for (const auto& [name, w] : masks.hard_widths()) widths_now[name] = w;
    } else {
      Module& net = pruned ? *pruned : *model;
      eg.hard_acc = evaluate(net, data.test, t.eval_batch_size, t.workers).accuracy;
      if (!pruned) eg.soft_acc = eg.hard_acc;
      for (const auto& [name, w] : fixed_widths) widths_now[name] = w;
    }
    const double fe = masked ? pruner.expected_ratio() : flops.at_widths(fixed_widths, scope) / flops.full(scope);
    const double fh = masked ? pruner.hard_ratio() : fe;
    auto num = [](double v) { return std::isnan(v) ? json(nullptr) : json(v); };
    log.write({{"kind", "epoch"},           {"epoch", epoch + 1},        {"step", step},
               {"train_loss", loss_sum / static_cast<double>(seen)},
               {"train_acc", acc_sum / static_cast<double>(seen)},
               {"soft_test_acc", num(eg.soft_acc)}, {"hard_test_acc", num(eg.hard_acc)},
               {"gap_kl", num(eg.kl)},       {"gap_js", num(eg.js)},      {"gap_l2", num(eg.l2)},
               {"flops_expected", fe},       {"flops_hard", fh},          {"widths", widths_now},
               {"train_seconds", train_s}});
    ep_x.push_back(epoch + 1);
    ep_kl.push_back(eg.kl);
    ep_fl_exp.push_back(fe);
    ep_fl_hard.push_back(fh);
    ep_soft.push_back(eg.soft_acc);
    ep_hard.push_back(eg.hard_acc);
    if (!t.quiet)
      std::fprintf(stderr,
                   "epoch %d/%d: loss %.4f | %s soft %s hard %s (hard BN recalibrated) | gap KL %.4f | FLOPs "
                   "expected %.3f hard %.3f | %.1fs\n",
                   epoch + 1, t.epochs, loss_sum / static_cast<double>(seen), data.test_split.c_str(),
                   pct(eg.soft_acc).c_str(), pct(eg.hard_acc).c_str(), std::isnan(eg.kl) ? 0.0 : eg.kl, fe, fh,
                   train_s);
  }

  // ---------------------------------------------------------------- the final network
  pruning::BudgetResult budget;
  models::ChannelSelection sel;
  ModulePtr net;
  double soft_acc = NAN;
  pruning::Gap gap{NAN, NAN, NAN};
  Tensor labels, soft_logits;
  if (masked) {
    masks.update_order(*model);
    budget = pruning::enforce_budget(flops, masks, masks.hard_widths(), o.target_flops, o.budget_tolerance, scope);
    sel = masks.selection(budget.widths);
    pruner.set_soft_masks(true);
    soft_logits = predict_logits(*model, data.test, t.eval_batch_size, t.workers, &labels);
    pruner.set_soft_masks(false);
    soft_acc = logits_accuracy(soft_logits, labels);
    net = pruning::extract(t.model, cfg, *model, sel);
    net->to(dev);
    recalibrate(*net, recal_loader, o.bn_batches, 999999);
  } else {
    budget.widths = fixed_widths;
    budget.ratio_before = budget.ratio_after = flops.at_widths(fixed_widths, scope) / flops.full(scope);
    budget.residual = budget.ratio_after / o.target_flops - 1;
    budget.within = std::fabs(budget.residual) <= o.budget_tolerance + 1e-12;
    net = pruned;
  }
  net->eval();
  const Tensor hard_logits = predict_logits(*net, data.test, t.eval_batch_size, t.workers, &labels);
  const double hard_acc = logits_accuracy(hard_logits, labels);
  if (masked) gap = pruning::logit_gap(soft_logits, hard_logits);

  // The extracted network: safetensors with its architecture in the metadata, plus architecture.json.
  models::Architecture arch;
  arch.model = t.model;
  arch.config = cfg;
  arch.widths = models::selection_widths(groups, sel.empty() ? masks.selection(budget.widths) : sel);
  const json arch_json = arch.to_json(groups);
  DataOptions resolved = dopt;
  resolved.root = data.root;
  auto meta = checkpoint_metadata(t.model, cfg, resolved);
  meta["architecture"] = arch_json.dump();
  meta["method"] = o.method;
  meta["test_acc"] = fmt::format("{:.6f}", hard_acc);
  const fs::path model_path = fs::path(out) / "model.safetensors", arch_path = fs::path(out) / "architecture.json";
  save_safetensors(model_path.string(), net->state_dict(), meta);
  write_file_atomically(arch_path.string(), arch_json.dump(2) + "\n");

  // Per-layer table and plots.
  const double flops_full = flops.full(pruning::FlopsScope::Network);
  const double flops_hard = flops.at_widths(arch.widths, pruning::FlopsScope::Network);
  const double flops_full_p = flops.full(pruning::FlopsScope::Pruned);
  const double flops_hard_p = flops.at_widths(arch.widths, pruning::FlopsScope::Pruned);
  std::vector<std::vector<std::string>> rows = {{"group", "kind", "unit", "channels", "kept", "kept %", "prunable"}};
  std::vector<std::string> cats;
  std::vector<double> full_w, kept_w;
  for (const auto& g : groups) {
    const int64_t kept = arch.widths.at(g.name);
    rows.push_back({g.name, models::group_kind_name(g.kind), std::to_string(g.unit), std::to_string(g.channels),
                    std::to_string(kept), fmt::format("{:.1f}", 100.0 * static_cast<double>(kept) / g.channels),
                    g.prunable ? "yes" : "no"});
    if (!g.prunable) continue;
    cats.push_back(g.name);
    full_w.push_back(static_cast<double>(g.channels));
    kept_w.push_back(static_cast<double>(kept));
  }
  const std::string table = pruning::text_table(rows);
  const std::string md = fmt::format(
      "# Kept units per channel group: {} {} on {}\n\nFLOPs (per sample, 2 x MACs): whole network {:.0f} of {:.0f} "
      "({:.2f}%); pruned layers only {:.0f} of {:.0f} ({:.2f}%). Parameters {} of {}.\n\n{}",
      method_desc, t.model, t.data, flops_hard, flops_full, 100 * flops_hard / flops_full, flops_hard_p, flops_full_p,
      100 * flops_hard_p / flops_full_p, net->num_parameters(), model->num_parameters(),
      pruning::markdown_table(rows));
  write_file_atomically((fs::path(out) / "layers.md").string(), md);
  pruning::ChartOptions wc;
  wc.title = fmt::format("{} {} on {}: kept units per group ({:.1f}% FLOPs)", method_desc, t.model, t.data,
                         100 * flops_hard / flops_full);
  wc.ylabel = "units";
  write_file_atomically((fs::path(out) / "widths.svg").string(),
                        pruning::svg_bar_chart(cats, {"full", "kept"}, {full_w, kept_w}, wc));
  pruning::ChartOptions fc;
  fc.title = "FLOPs ratio over training (" + o.flops_scope + " scope)";
  fc.xlabel = "epoch";
  fc.ylabel = "F / F_full";
  fc.hlines = {o.target_flops};
  fc.y_from_zero = true;
  write_file_atomically((fs::path(out) / "flops.svg").string(),
                        pruning::svg_line_chart({{"expected widths", ep_x, ep_fl_exp}, {"hard widths", ep_x, ep_fl_hard}},
                                                fc));
  pruning::ChartOptions gc;
  gc.title = "Soft/hard gap on the test set";
  gc.xlabel = "epoch";
  gc.ylabel = "KL(soft || hard)";
  gc.y_from_zero = true;
  write_file_atomically((fs::path(out) / "gap.svg").string(), pruning::svg_line_chart({{"KL", ep_x, ep_kl}}, gc));
  pruning::ChartOptions ac;
  ac.title = "Test accuracy over training";
  ac.xlabel = "epoch";
  ac.ylabel = "accuracy";
  write_file_atomically((fs::path(out) / "accuracy.svg").string(),
                        pruning::svg_line_chart({{"soft", ep_x, ep_soft}, {"hard", ep_x, ep_hard}}, ac));

  const double seconds = seconds_since(t0);
  auto num = [](double v) { return std::isnan(v) ? json(nullptr) : json(v); };
  const json summary = {{"method", o.method},
                        {"variant", masked ? json(pruning::variant_name(so.variant)) : json(nullptr)},
                        {"model", t.model},
                        {"dataset", t.data},
                        {"target_flops", o.target_flops},
                        {"flops_scope", o.flops_scope},
                        {"flops_full", flops_full},
                        {"flops_hard", flops_hard},
                        {"flops_ratio", flops_hard / flops_full},
                        {"flops_full_pruned_layers", flops_full_p},
                        {"flops_hard_pruned_layers", flops_hard_p},
                        {"flops_ratio_pruned_layers", flops_hard_p / flops_full_p},
                        {"budget_ratio_before_adjust", budget.ratio_before},
                        {"budget_ratio", budget.ratio_after},
                        {"budget_residual", budget.residual},
                        {"budget_within_tolerance", budget.within},
                        {"budget_blocks_removed", budget.removed_blocks},
                        {"budget_blocks_added", budget.added_blocks},
                        {"params_full", model->num_parameters()},
                        {"params_hard", net->num_parameters()},
                        {"soft_acc", num(soft_acc)},
                        {"hard_acc", hard_acc},
                        {"dense_acc", num(dense_acc)},
                        {"pruned_acc_before_finetune", num(pruned_before_ft_acc)},
                        {"gap_kl", num(gap.kl)},
                        {"gap_js", num(gap.js)},
                        {"gap_l2", num(gap.l2)},
                        {"widths", arch.widths},
                        {"epochs", t.epochs},
                        {"dense_epochs", o.dense_epochs},
                        {"hard_ft_epochs", o.hard_ft_epochs},
                        {"batch_size", t.batch_size},
                        {"seed", t.seed},
                        {"seconds", seconds}};
  write_file_atomically((fs::path(out) / "summary.json").string(), summary.dump(2) + "\n");
  log.write({{"kind", "summary"}, {"hard_acc", hard_acc}, {"soft_acc", num(soft_acc)}, {"gap_kl", num(gap.kl)},
             {"flops_ratio", flops_hard / flops_full}, {"seconds", seconds}});

  std::printf("%s\n", table.c_str());
  std::printf(
      "s2h prune: %s, %s on %s, %d epochs in %s: hard (extracted) %s, soft %s, gap KL %s; FLOPs %.2f%% of the "
      "network (target %.0f%%, %s scope: %.2f%%%s), parameters %lld of %lld\n"
      "network:      %s (+ %s)\ntable:        %s\nplots:        %s, %s, %s, %s\nsummary:      %s\n"
      "metrics:      %s\ncheck it:     s2h eval --checkpoint %s\n",
      method_desc.c_str(), t.model.c_str(), t.data.c_str(), t.epochs, format_duration(seconds).c_str(),
      pct(hard_acc).c_str(), pct(soft_acc).c_str(), std::isnan(gap.kl) ? "-" : fmt::format("{:.4f}", gap.kl).c_str(),
      100 * flops_hard / flops_full, 100 * o.target_flops, o.flops_scope.c_str(), 100 * budget.ratio_after,
      budget.within ? "" : fmt::format(", outside the {:.0f}% tolerance", 100 * o.budget_tolerance).c_str(),
      static_cast<long long>(net->num_parameters()), static_cast<long long>(model->num_parameters()),
      model_path.string().c_str(), arch_path.string().c_str(), (fs::path(out) / "layers.md").string().c_str(),
      (fs::path(out) / "widths.svg").string().c_str(), (fs::path(out) / "flops.svg").string().c_str(),
      (fs::path(out) / "gap.svg").string().c_str(), (fs::path(out) / "accuracy.svg").string().c_str(),
      (fs::path(out) / "summary.json").string().c_str(), (fs::path(out) / "metrics.jsonl").string().c_str(),
      model_path.string().c_str());
  return 0;
}

}  // namespace

int run_prune(const PruneOptions& o, const CLI::App& cmd) {
  (void)cmd;
  validate(o);
  set_threads(o.train.threads);
  require_known_model(o.train.model);
  if (!o.init.empty()) S2H_CHECK(fs::is_regular_file(o.init), "--init {}: no such file", o.init);
  TrainOptions named = o.train;
  named.data = o.train.data + "-" + o.method;
  const std::string out = o.train.out.empty() ? default_out(named) : o.train.out;
  for (const char* f : {"summary.json", "model.safetensors", "metrics.jsonl"})
    S2H_CHECK(o.train.overwrite || !fs::exists(fs::path(out) / f),
              "--out {} already holds a run ({} exists); choose another folder or pass --overwrite", out, f);
  std::error_code ec;
  fs::create_directories(out, ec);
  S2H_CHECK(!ec, "--out {}: cannot create the folder: {}", out, ec.message());
  if (o.method == "sdp" || o.method == "magnitude") return run_prune_sdp(o, out);
  return run_structured(o, out);
}

}  // namespace s2h::app
