// The s2h subcommands: each registers its flags on a CLI11 subcommand and runs.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace s2h::app {

// Member names are the flag names with '-' -> '_' (config.json and the
// resume check rely on that).
struct TrainOptions {
  // model
  std::string model = "cnn-small";
  int64_t classes = 0;  // 0: the dataset's
  bool imagenet_stem = false;
  int64_t patch_size = 0;
  // data
  std::string data = "fashion-mnist";
  std::string data_root;  // default depends on the dataset
  std::string augment = "auto";
  int64_t image_size = 0;
  int64_t max_len = 64;
  int64_t vocab_size = 8000;
  std::string cache_dir;
  int64_t limit_train = 0, limit_test = 0;
  int workers = 2;
  // optimisation
  int epochs = 3;
  int batch_size = 128;
  int eval_batch_size = 1000;
  std::string optimizer = "sgd";
  double lr = 0.05;
  double momentum = 0.9;
  bool nesterov = true;
  double weight_decay = 5e-4;
  std::string schedule = "cosine";
  double warmup_epochs = 0.5;
  double min_lr = 0.0;
  double step_epochs = 1.0;
  double gamma = 0.1;
  double label_smoothing = 0.0;
  uint64_t seed = 0;
  // running
  int threads = 0;
  std::string device = "cpu";
  std::string precision = "fp32";
  // fused | library (engine/precision.h: fused_kernels). A speed choice, not
  // saved in config.json: a resumed run uses the flag it is given.
  std::string kernels = "fused";
  std::string out;
  bool overwrite = false;
  bool resume = false;
  int checkpoint_every = 1;
  int log_every = 50;
  bool quiet = false;
};

// s2h prune: the shared training flags plus the pruning method's.
struct PruneOptions {
  TrainOptions train;  // model, data, optimisation and run flags (epochs = total epochs)
  std::string method = "s2h";  // s2h | soft-only | l1 | random | sdp | magnitude
  std::string init;            // start from this model.safetensors of `s2h train` (same model and data)
  // ---- structured methods (s2h, soft-only, l1, random)
  double target_flops = 0.35;          // fraction of FLOPs that remains
  std::string flops_scope = "network";  // network | pruned: what target_flops and the budget refer to
  std::string variant = "decoupled";    // s2h: decoupled | coupled | no-kd | hard-st | self-only
  int64_t ch_divisor = 4;               // width step: largest d <= this dividing the group's channels
  int64_t head_divisor = 1;             // the same for attention heads
  double temperature = 1.0;             // T of softmax(u / T)
  std::string mask_init = "max";        // max | uniform
  double lambda_flops = 2.0;            // lambda_F
  double lambda_kd = 1.0;               // lambda_KD
  double flops_tolerance = 0.02;        // rho
  double flops_balance = 1.0;           // s_F
  double task_balance = 0.5;            // s_f
  std::string flops_widths = "expected";  // expected | hard (straight-through): widths the FLOPs loss uses
  double mask_lr = 0.5;                 // lr_u (follows the weights' schedule)
  double mask_momentum = 0.9;
  double mask_weight_decay = 0.0;
  int64_t order_every = 1;              // steps between L1 channel-order updates
  double dense_epochs = 1;              // dense warm-up (s2h, soft-only) or pre-training (l1, random) epochs
  double hard_ft_epochs = 0;            // s2h: final epochs training the hard net only, masks frozen
  int64_t bn_batches = 50;              // training batches for BN recalibration of the hard net
  double budget_tolerance = 0.02;       // relative tolerance of the hard FLOPs around the target
  std::string widths_from;              // l1/random: architecture.json whose widths to use
  // ---- unstructured / self-distilled (sdp, magnitude)
  double sparsity = 0.5;                // final fraction of prunable weights set to zero
  bool sdp_structured = false;          // prune channels/heads by group L1 instead of single weights
  std::string sdp_scope = "global";     // global | layer
  std::string sdp_teacher = "frozen";   // frozen (copy before each prune step) | live (dense weights, stop-grad)
  std::string sdp_repr = "pooled";      // pooled (the classifier's input) | logits
  double cc_lambda = 0.0051;            // off-diagonal weight of the cross-correlation loss
  double cc_alpha = 0.5;                // weight of the cross-correlation loss against the cross-entropy
  int64_t prune_steps = 10;             // number of prune events
  std::string sparsity_schedule = "cubic";  // cubic | linear | oneshot
  double prune_until = 0.75;            // fraction of training by which the final sparsity is reached
};

struct EvalOptions {
  std::string checkpoint;
  std::string data_root;
  std::string cache_dir;
  std::string split = "test";
  int batch_size = 1000;
  int threads = 0;
  int workers = 2;
  std::string device = "cpu";
  std::string precision = "fp32";
  bool json = false;
};

struct InfoOptions {
  std::string model = "cnn-small";
  std::string input;  // default: the model's usual input
  int64_t classes = 10;
  bool imagenet_stem = false;
  int64_t patch_size = 0;
  int64_t vocab_size = 8000;
  bool json = false;
};

CLI::App* add_train_command(CLI::App& app, TrainOptions& o);
// Registers the model, data, optimisation and run flags of TrainOptions on
// `cmd` (train and prune share them). `resume` adds --resume and --checkpoint-every.
void add_training_flags(CLI::App* cmd, TrainOptions& o, bool resume);
// Checks TrainOptions values; throws naming the flag.
void validate_training_options(const TrainOptions& o);
// Applies `--config FILE` to the options not given on the command line
// (keys may sit under a section named after the subcommand).
void apply_config_file(CLI::App& cmd);
// `cmd` tells which flags were given (for --resume).
int run_train(const TrainOptions& o, const CLI::App& cmd);

CLI::App* add_prune_command(CLI::App& app, PruneOptions& o);
int run_prune(const PruneOptions& o, const CLI::App& cmd);
// The sdp and magnitude methods (apps/s2h/prune_sdp.cpp); `out` exists.
int run_prune_sdp(const PruneOptions& o, const std::string& out);

CLI::App* add_eval_command(CLI::App& app, EvalOptions& o);
int run_eval(const EvalOptions& o);

CLI::App* add_info_command(CLI::App& app, InfoOptions& o);
int run_info(const InfoOptions& o);

}  // namespace s2h::app
