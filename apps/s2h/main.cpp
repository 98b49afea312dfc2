// s2h: train, prune, evaluate and export networks (see README.md).
#include <cstdio>
#include <exception>

#include "apps/s2h/commands.h"
#include "engine/error.h"

int main(int argc, char** argv) {
  CLI::App app{"s2h: a C++/CUDA engine for structured-pruning research"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "s2h 0.1.0");
  s2h::app::TrainOptions train;
  s2h::app::EvalOptions eval;
  s2h::app::InfoOptions info;
  s2h::app::PruneOptions prune;
  CLI::App* train_cmd = s2h::app::add_train_command(app, train);
  CLI::App* prune_cmd = s2h::app::add_prune_command(app, prune);
  CLI::App* eval_cmd = s2h::app::add_eval_command(app, eval);
  CLI::App* info_cmd = s2h::app::add_info_command(app, info);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line, like every other error; CLI11's exit codes are non-zero.
    std::fprintf(stderr, "s2h: error: %s (see s2h --help)\n", e.what());
    return e.get_exit_code() != 0 ? e.get_exit_code() : 2;
  }
  try {
    if (train_cmd->parsed()) {
      s2h::app::apply_config_file(*train_cmd);
      return s2h::app::run_train(train, *train_cmd);
    }
    if (prune_cmd->parsed()) {
      s2h::app::apply_config_file(*prune_cmd);
      return s2h::app::run_prune(prune, *prune_cmd);
    }
    if (eval_cmd->parsed()) return s2h::app::run_eval(eval);
    if (info_cmd->parsed()) return s2h::app::run_info(info);
  } catch (const s2h::Error& e) {
    std::fprintf(stderr, "s2h: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "s2h: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
