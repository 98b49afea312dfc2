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
  std::string out;
  bool overwrite = false;
  bool resume = false;
  int checkpoint_every = 1;
  int log_every = 50;
  bool quiet = false;
};

struct EvalOptions {
  std::string checkpoint;
  std::string data_root;
  std::string cache_dir;
  std::string split = "test";
  int batch_size = 1000;
  int threads = 0;
  int workers = 2;
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
// Applies `--config FILE` to the options not given on the command line.
void apply_config_file(CLI::App& cmd);
// `cmd` tells which flags were given (for --resume).
int run_train(const TrainOptions& o, const CLI::App& cmd);

CLI::App* add_eval_command(CLI::App& app, EvalOptions& o);
int run_eval(const EvalOptions& o);

CLI::App* add_info_command(CLI::App& app, InfoOptions& o);
int run_info(const InfoOptions& o);

}  // namespace s2h::app
