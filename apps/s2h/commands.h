// The s2h subcommands: each registers its flags on a CLI11 subcommand and runs.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace s2h::app {

struct TrainOptions {
  std::string model = "cnn-small";
  std::string data = "fashion-mnist";
  std::string data_root;  // default depends on the dataset
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
  int threads = 0;
  std::string device = "cpu";
  std::string out;
  bool overwrite = false;
  int log_every = 50;
  bool quiet = false;
};

struct EvalOptions {
  std::string checkpoint;
  std::string data_root;
  std::string split = "test";
  int batch_size = 1000;
  int threads = 0;
  bool json = false;
};

CLI::App* add_train_command(CLI::App& app, TrainOptions& o);
int run_train(const TrainOptions& o);

CLI::App* add_eval_command(CLI::App& app, EvalOptions& o);
int run_eval(const EvalOptions& o);

}  // namespace s2h::app
