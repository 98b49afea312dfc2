// The s2h binary end to end: bad input gives one clear line on stderr and a
// non-zero exit; a tiny training run on a fake Fashion-MNIST folder writes its
// config, metrics, checkpoint, and `s2h eval` reads the checkpoint back.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/idx.h"
#include "kernels/cuda/runtime.h"
#include "tests/test_util.h"

namespace s2h::test {
namespace {

namespace fs = std::filesystem;

struct Result {
  int rc = -1;
  std::string out, err;
  int err_lines() const { return static_cast<int>(std::count(err.begin(), err.end(), '\n')); }
};

Result run_s2h(const std::string& args, const fs::path& workdir) {
  const fs::path out = workdir / "stdout.txt", err = workdir / "stderr.txt";
  const std::string cmd = fmt::format("cd '{}' && '{}' {} > '{}' 2> '{}'", workdir.string(), S2H_BINARY, args,
                                      out.string(), err.string());
  const int status = std::system(cmd.c_str());
  Result r;
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_bytes(out.string());
  r.err = read_bytes(err.string());
  return r;
}

// A Fashion-MNIST-shaped folder with n_train / n_test random images. Each
// class gets a distinct bright square so that a short run can learn it.
void write_fake_fashion_mnist(const fs::path& root, int n_train, int n_test) {
  fs::create_directories(root);
  Generator& gen = test_generator();
  for (auto [prefix, n] : {std::pair<const char*, int>{"train", n_train}, {"t10k", n_test}}) {
    std::vector<uint8_t> images(static_cast<size_t>(n) * 28 * 28), labels(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      const int label = static_cast<int>(gen.below(10));
      labels[static_cast<size_t>(i)] = static_cast<uint8_t>(label);
      for (int p = 0; p < 28 * 28; ++p) {
        const int r = p / 28, c = p % 28;
        const bool on = r / 7 == label / 4 + 1 && c / 7 == label % 4;
        images[static_cast<size_t>(i) * 784 + static_cast<size_t>(p)] =
            static_cast<uint8_t>(on ? 200 + gen.below(55) : gen.below(60));
      }
    }
    data::write_idx((root / (std::string(prefix) + "-images-idx3-ubyte.gz")).string(), {n, 28, 28}, images);
    data::write_idx((root / (std::string(prefix) + "-labels-idx1-ubyte.gz")).string(), {n}, labels);
  }
}

void expect_one_line_error(const Result& r, const std::string& needle) {
  EXPECT_NE(r.rc, 0) << "stderr: " << r.err;
  EXPECT_EQ(r.err_lines(), 1) << "expected one line on stderr, got:\n" << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << "stderr does not mention '" << needle << "':\n" << r.err;
}

TEST(Cli, NegativeEpochCount) {
  TempDir tmp;
  expect_one_line_error(run_s2h("train --epochs -3", tmp.path()), "--epochs must be positive, got -3");
}

TEST(Cli, UnknownModelName) {
  TempDir tmp;
  expect_one_line_error(run_s2h("train --model resnet9000", tmp.path()), "unknown model 'resnet9000'");
}

TEST(Cli, UnknownFlagAndBadValue) {
  TempDir tmp;
  expect_one_line_error(run_s2h("train --bogus", tmp.path()), "--bogus");
  expect_one_line_error(run_s2h("train --epochs many", tmp.path()), "--epochs");
  expect_one_line_error(run_s2h("train --optimizer rmsprop", tmp.path()), "unknown optimizer 'rmsprop'");
}

TEST(Cli, DeviceAndPrecisionFlags) {
  TempDir tmp;
  expect_one_line_error(run_s2h("train --device tpu", tmp.path()), "--device: unknown device 'tpu'");
  expect_one_line_error(run_s2h("train --precision fp8", tmp.path()), "--precision: unknown precision 'fp8'");
  expect_one_line_error(run_s2h("train --precision bf16", tmp.path()), "--precision bf16: the CPU computes in fp32");
  expect_one_line_error(run_s2h("eval --checkpoint x.safetensors --device gpu", tmp.path()), "--device");
  std::string why;
  if (cuda::device_count(&why) == 0) {
    // No GPU (or no CUDA build): the message says so and names the flag, before any data is read.
    expect_one_line_error(run_s2h("train --device cuda", tmp.path()), "--device cuda:");
  } else {
    expect_one_line_error(run_s2h("train --device cuda:99", tmp.path()), "--device cuda:99: this machine has");
  }
}

TEST(Cli, MissingIdxFile) {
  TempDir tmp;
  write_fake_fashion_mnist(tmp.path() / "data", 20, 10);
  fs::remove(tmp.path() / "data" / "train-images-idx3-ubyte.gz");
  const Result r = run_s2h("train --data-root data --out run", tmp.path());
  expect_one_line_error(r, "train-images-idx3-ubyte.gz: file not found");
  EXPECT_FALSE(fs::exists(tmp.path() / "run")) << "nothing may be written before the data is read";
}

TEST(Cli, MissingDataRoot) {
  TempDir tmp;
  expect_one_line_error(run_s2h("train --data-root nowhere", tmp.path()), "--data-root nowhere: no such folder");
}

TEST(Cli, TruncatedIdxFile) {
  TempDir tmp;
  write_fake_fashion_mnist(tmp.path() / "data", 20, 10);
  // A raw (not gzipped) idx file whose header promises 20 images but holds 19.5.
  std::vector<uint8_t> pixels(static_cast<size_t>(20 * 784 - 392), 7);
  const fs::path raw = tmp.path() / "raw.idx";
  data::write_idx(raw.string(), {20, 28, 28}, pixels);
  fs::rename(raw, tmp.path() / "data" / "train-images-idx3-ubyte.gz");  // gzread reads raw files transparently
  expect_one_line_error(run_s2h("train --data-root data", tmp.path()), "truncated");
}

TEST(Cli, TruncatedGzipFile) {
  TempDir tmp;
  write_fake_fashion_mnist(tmp.path() / "data", 200, 10);
  const fs::path f = tmp.path() / "data" / "train-images-idx3-ubyte.gz";
  const std::string bytes = read_bytes(f);
  std::ofstream(f, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  const Result r = run_s2h("train --data-root data", tmp.path());
  expect_one_line_error(r, "train-images-idx3-ubyte.gz");
  EXPECT_NE(r.err.find("truncated"), std::string::npos) << r.err;
}

TEST(Cli, WrongMagicNumber) {
  TempDir tmp;
  write_fake_fashion_mnist(tmp.path() / "data", 20, 10);
  // A labels file where the images file should be.
  fs::copy_file(tmp.path() / "data" / "train-labels-idx1-ubyte.gz", tmp.path() / "data" / "train-images-idx3-ubyte.gz",
                fs::copy_options::overwrite_existing);
  expect_one_line_error(run_s2h("train --data-root data", tmp.path()), "wrong magic number 0x00000801");
}

TEST(Cli, TrainEvalRoundTrip) {
  TempDir tmp;
  write_fake_fashion_mnist(tmp.path() / "data", 512, 128);
  const Result r = run_s2h("train --data-root data --epochs 2 --batch-size 32 --lr 0.05 --out run --log-every 4 --threads 2",
                           tmp.path());
  ASSERT_EQ(r.rc, 0) << r.err;
  for (const char* f : {"config.json", "metrics.jsonl", "model.safetensors"})
    EXPECT_TRUE(fs::exists(tmp.path() / "run" / f)) << f;
  EXPECT_FALSE(fs::exists(tmp.path() / "run" / "model.safetensors.tmp")) << "temporary checkpoint left behind";

  const nlohmann::json config = nlohmann::json::parse(read_bytes(tmp.path() / "run" / "config.json"));
  EXPECT_EQ(config["options"]["epochs"], 2);
  EXPECT_EQ(config["options"]["model"], "cnn-small");
  EXPECT_EQ(config["resolved"]["train_samples"], 512);

  std::istringstream lines(read_bytes(tmp.path() / "run" / "metrics.jsonl"));
  std::string line;
  int steps = 0, epochs = 0;
  double last_acc = -1;
  while (std::getline(lines, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);  // every line is valid JSON
    if (j["kind"] == "step") {
      ++steps;
      EXPECT_TRUE(j.contains("loss") && j.contains("lr") && j.contains("images_per_s"));
    } else if (j["kind"] == "epoch") {
      ++epochs;
      last_acc = j["test_acc"];
    } else {
      EXPECT_EQ(j["kind"], "summary");
      EXPECT_DOUBLE_EQ(j["last_test_acc"].get<double>(), last_acc);
    }
  }
  EXPECT_EQ(epochs, 2);
  EXPECT_EQ(steps, 2 * 16 / 4);
  EXPECT_GT(last_acc, 0.5) << "the fake classes are easy; the run should learn them";

  const Result e = run_s2h("eval --checkpoint run/model.safetensors --data-root data --json", tmp.path());
  ASSERT_EQ(e.rc, 0) << e.err;
  const nlohmann::json ev = nlohmann::json::parse(e.out);
  EXPECT_NEAR(ev["accuracy"].get<double>(), last_acc, 1e-9) << "eval must reproduce the run's final test accuracy";
  EXPECT_EQ(ev["total"], 128);
}

TEST(Cli, ExistingRunIsNotOverwritten) {
  TempDir tmp;
  write_fake_fashion_mnist(tmp.path() / "data", 64, 32);
  ASSERT_EQ(run_s2h("train --data-root data --epochs 1 --batch-size 32 --out run", tmp.path()).rc, 0);
  const std::string before = read_bytes(tmp.path() / "run" / "model.safetensors");
  const std::string metrics = read_bytes(tmp.path() / "run" / "metrics.jsonl");
  expect_one_line_error(run_s2h("train --data-root data --epochs 1 --out run", tmp.path()), "already holds a run");
  EXPECT_EQ(read_bytes(tmp.path() / "run" / "model.safetensors"), before);
  EXPECT_EQ(read_bytes(tmp.path() / "run" / "metrics.jsonl"), metrics);
}

TEST(Cli, EvalOfABadCheckpoint) {
  TempDir tmp;
  std::ofstream(tmp.path() / "bad.safetensors") << "not a checkpoint at all";
  expect_one_line_error(run_s2h("eval --checkpoint bad.safetensors", tmp.path()), "bad.safetensors");
  expect_one_line_error(run_s2h("eval --checkpoint missing.safetensors", tmp.path()), "missing.safetensors");
}

TEST(Cli, ConfigFileWithCommandLineOverride) {
  TempDir tmp;
  write_fake_fashion_mnist(tmp.path() / "data", 64, 32);
  std::ofstream(tmp.path() / "run.toml") << "# a run\nepochs = 1\nbatch-size = 16\nlr = 0.02\nlabel-smoothing = 0.1\n";
  const Result r = run_s2h("train --config run.toml --data-root data --lr 0.03 --out run --quiet", tmp.path());
  ASSERT_EQ(r.rc, 0) << r.err;
  const nlohmann::json config = nlohmann::json::parse(read_bytes(tmp.path() / "run" / "config.json"));
  EXPECT_EQ(config["options"]["epochs"], 1) << "from the file";
  EXPECT_EQ(config["options"]["batch_size"], 16) << "from the file";
  EXPECT_DOUBLE_EQ(config["options"]["label_smoothing"].get<double>(), 0.1) << "from the file";
  EXPECT_DOUBLE_EQ(config["options"]["lr"].get<double>(), 0.03) << "the flag overrides the file";
  EXPECT_EQ(config["options"]["momentum"], 0.9) << "untouched default";

  std::ofstream(tmp.path() / "bad.toml") << "epochs = 1\nlearning-rate = 0.1\n";
  expect_one_line_error(run_s2h("train --config bad.toml --data-root data --out run2", tmp.path()), "learning");
  expect_one_line_error(run_s2h("train --config nowhere.toml --data-root data --out run3", tmp.path()), "nowhere.toml");
}

TEST(Cli, InfoTableAndGroups) {
  TempDir tmp;
  const Result r = run_s2h("info --model cnn-small --input 1x28x28", tmp.path());
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("87,274"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Conv2d(1, 32"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("channel groups (3)"), std::string::npos) << r.out;
  const Result j = run_s2h("info --model cnn-small --json", tmp.path());
  ASSERT_EQ(j.rc, 0) << j.err;
  const nlohmann::json info = nlohmann::json::parse(j.out);
  EXPECT_EQ(info["params"], 87274);
  // 2*MACs: conv1 1*9*32*784, conv2 32*9*64*196, conv3 64*9*64*49, fc 3136*10.
  EXPECT_EQ(info["flops"], 2 * (9 * 32 * 784 + 32 * 9 * 64 * 196 + 64 * 9 * 64 * 49 + 3136 * 10));
  EXPECT_EQ(info["groups"].size(), 3u);
  expect_one_line_error(run_s2h("info --model cnn-small --input 3x32", tmp.path()), "--input 3x32");
  expect_one_line_error(run_s2h("info --model cnn-small --input 1x28x27", tmp.path()), "square");
  expect_one_line_error(run_s2h("info --model nope", tmp.path()), "unknown model 'nope'");
}

// ------------------------------------------------------------------ resume

// The step and epoch records of a metrics log, without wall-clock fields.
std::vector<nlohmann::json> numeric_records(const std::string& log) {
  std::vector<nlohmann::json> out;
  std::istringstream lines(log);
  std::string line;
  while (std::getline(lines, line)) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (j["kind"] == "summary") continue;
    for (const char* k : {"images_per_s", "train_seconds", "eval_seconds"}) j.erase(k);
    out.push_back(j);
  }
  return out;
}

// Starts s2h in `workdir` without waiting; stdout/stderr go to files there.
pid_t spawn_s2h(const std::string& args, const fs::path& workdir) {
  const std::string cmd = fmt::format("cd '{}' && exec '{}' {} > spawn.out 2> spawn.err", workdir.string(), S2H_BINARY,
                                      args);
  const pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

TEST(Cli, ResumeAfterKillMatchesUninterruptedRun) {
  TempDir tmp;
  write_fake_fashion_mnist(tmp.path() / "data", 1536, 256);
  const std::string args = "train --data-root data --epochs 3 --batch-size 32 --lr 0.05 --log-every 5 --threads 1 "
                           "--workers 1 --quiet --checkpoint-every 1";
  const Result full = run_s2h(args + " --out full", tmp.path());
  ASSERT_EQ(full.rc, 0) << full.err;

  // Kill the second run (SIGKILL: no chance to clean up) as soon as its first checkpoint appears.
  const pid_t pid = spawn_s2h(args + " --out killed", tmp.path());
  ASSERT_GT(pid, 0);
  const fs::path state = tmp.path() / "killed" / "checkpoint.safetensors";
  bool exited = false;
  for (int i = 0; i < 60000 && !fs::exists(state); ++i) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      exited = true;
      break;
    }
    usleep(1000);
  }
  ASSERT_FALSE(exited) << "the run ended before writing a checkpoint: " << read_bytes(tmp.path() / "spawn.err");
  ASSERT_TRUE(fs::exists(state)) << "no checkpoint within 60 s";
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the run finished before it was killed; make it longer";
  EXPECT_FALSE(fs::exists(tmp.path() / "killed" / "model.safetensors")) << "killed before the end";

  // A changed setting is refused, and nothing is touched.
  const std::string log_before = read_bytes(tmp.path() / "killed" / "metrics.jsonl");
  expect_one_line_error(run_s2h("train --out killed --resume --lr 0.1", tmp.path()), "--lr");
  EXPECT_EQ(read_bytes(tmp.path() / "killed" / "metrics.jsonl"), log_before);

  const Result resumed = run_s2h("train --out killed --resume --threads 1 --quiet", tmp.path());
  ASSERT_EQ(resumed.rc, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("(resumed)"), std::string::npos) << resumed.out;
  const auto a = numeric_records(read_bytes(tmp.path() / "full" / "metrics.jsonl"));
  const auto b = numeric_records(read_bytes(tmp.path() / "killed" / "metrics.jsonl"));
  ASSERT_EQ(a.size(), b.size()) << "the resumed log must have the uninterrupted run's records, once each";
  ASSERT_EQ(a.size(), 3u * 48 / 5 + 3);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "record " << i;
  EXPECT_TRUE(read_bytes(tmp.path() / "full" / "model.safetensors") ==
              read_bytes(tmp.path() / "killed" / "model.safetensors"))
      << "the final weights must be identical";

  expect_one_line_error(run_s2h("train --out killed --resume", tmp.path()), "already finished");
  expect_one_line_error(run_s2h("train --out nowhere --resume", tmp.path()), "config.json is missing");
}

}  // namespace
}  // namespace s2h::test

namespace s2h::test {
namespace {

// s2h prune end to end on a small fake dataset: every output, budget within
// tolerance, and `s2h eval` of the extracted network reproduces hard_acc.
TEST(CliPrune, S2hWritesTheExtractedNetworkTableAndPlots) {
  TempDir tmp;
  write_fake_fashion_mnist(tmp.path() / "data", 512, 128);
  const Result r = run_s2h(
      "prune --data-root data --epochs 2 --dense-epochs 0.5 --batch-size 32 --bn-batches 4 --mask-lr 0.5 --out run "
      "--log-every 4 --threads 2",
      tmp.path());
  ASSERT_EQ(r.rc, 0) << r.err;
  const fs::path run = tmp.path() / "run";
  for (const char* f : {"config.json", "metrics.jsonl", "model.safetensors", "architecture.json", "layers.md",
                        "widths.svg", "flops.svg", "gap.svg", "accuracy.svg", "summary.json"})
    EXPECT_TRUE(fs::exists(run / f)) << f;
  EXPECT_NE(r.out.find("network:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("plots:"), std::string::npos) << r.out;
  const nlohmann::json s = nlohmann::json::parse(read_bytes(run / "summary.json"));
  for (const char* k : {"method", "model", "dataset", "target_flops", "flops_full", "flops_hard", "flops_ratio",
                        "params_full", "params_hard", "soft_acc", "hard_acc", "gap_kl", "epochs", "seed", "seconds"})
    EXPECT_TRUE(s.contains(k)) << k;
  EXPECT_EQ(s["method"], "s2h");
  EXPECT_NEAR(s["flops_ratio"].get<double>(), 0.35, 0.35 * 0.02 + 1e-9);
  EXPECT_LT(s["params_hard"].get<int64_t>(), s["params_full"].get<int64_t>());
  EXPECT_GE(s["gap_kl"].get<double>(), 0.0);

  int steps = 0, epochs = 0;
  std::istringstream lines(read_bytes(run / "metrics.jsonl"));
  std::string line;
  while (std::getline(lines, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j["kind"] == "step" && j["phase"] == "masked") {
      ++steps;
      for (const char* k : {"soft_loss", "soft_acc", "hard_loss", "hard_acc", "kl", "js", "l2", "flops_expected",
                            "flops_hard", "mask_entropy"})
        EXPECT_TRUE(j.contains(k)) << k;
    }
    if (j["kind"] == "epoch") ++epochs;
  }
  EXPECT_GT(steps, 0);
  EXPECT_EQ(epochs, 2);

  const Result e = run_s2h("eval --checkpoint run/model.safetensors --data-root data --json", tmp.path());
  ASSERT_EQ(e.rc, 0) << e.err;
  const nlohmann::json ev = nlohmann::json::parse(e.out);
  EXPECT_TRUE(ev["pruned"].get<bool>());
  EXPECT_EQ(ev["parameters"], s["params_hard"]);
  EXPECT_NEAR(ev["accuracy"].get<double>(), s["hard_acc"].get<double>(), 1e-9);
}

TEST(CliPrune, BaselinesAndSdpRun) {
  TempDir tmp;
  write_fake_fashion_mnist(tmp.path() / "data", 256, 64);
  for (const char* m : {"soft-only", "l1", "random"}) {
    const Result r = run_s2h(fmt::format("prune --method {} --data-root data --epochs 2 --dense-epochs 1 "
                                         "--batch-size 32 --bn-batches 2 --out {} --threads 2 --quiet",
                                         m, m),
                             tmp.path());
    ASSERT_EQ(r.rc, 0) << m << ": " << r.err;
    const nlohmann::json s = nlohmann::json::parse(read_bytes(tmp.path() / m / "summary.json"));
    EXPECT_EQ(s["method"], m);
    EXPECT_TRUE(s["budget_within_tolerance"].get<bool>()) << m;
    const Result e = run_s2h(fmt::format("eval --checkpoint {}/model.safetensors --data-root data --json", m), tmp.path());
    ASSERT_EQ(e.rc, 0) << e.err;
    EXPECT_NEAR(nlohmann::json::parse(e.out)["accuracy"].get<double>(), s["hard_acc"].get<double>(), 1e-9) << m;
  }
  // l1 at the widths of another run.
  const Result w = run_s2h("prune --method random --widths-from l1/architecture.json --data-root data --epochs 2 "
                           "--batch-size 32 --out random2 --threads 2 --quiet",
                           tmp.path());
  ASSERT_EQ(w.rc, 0) << w.err;
  EXPECT_EQ(nlohmann::json::parse(read_bytes(tmp.path() / "random2" / "summary.json"))["widths"],
            nlohmann::json::parse(read_bytes(tmp.path() / "l1" / "summary.json"))["widths"]);

  const Result sdp = run_s2h("prune --method sdp --sparsity 0.5 --data-root data --epochs 1 --batch-size 32 --out sdp "
                             "--threads 2 --quiet",
                             tmp.path());
  ASSERT_EQ(sdp.rc, 0) << sdp.err;
  const nlohmann::json s = nlohmann::json::parse(read_bytes(tmp.path() / "sdp" / "summary.json"));
  EXPECT_NEAR(s["sparsity_achieved"].get<double>(), 0.5, 1e-3);
}

TEST(CliPrune, BadInputGivesOneLineErrors) {
  TempDir tmp;
  write_fake_fashion_mnist(tmp.path() / "data", 64, 16);
  expect_one_line_error(run_s2h("prune --method prune-everything --data-root data", tmp.path()),
                        "unknown method 'prune-everything'");
  expect_one_line_error(run_s2h("prune --target-flops 1.5 --data-root data", tmp.path()), "--target-flops");
  expect_one_line_error(run_s2h("prune --variant sideways --data-root data", tmp.path()), "unknown variant");
  expect_one_line_error(run_s2h("prune --epochs 1 --dense-epochs 1 --data-root data", tmp.path()), "--dense-epochs");
  expect_one_line_error(run_s2h("prune --target-flops 0.0001 --data-root data --epochs 2 --out x", tmp.path()),
                        "cannot be reached");
  expect_one_line_error(run_s2h("prune --method l1 --widths-from nowhere.json --data-root data --epochs 2 --out y",
                                tmp.path()),
                        "--widths-from nowhere.json");
  expect_one_line_error(run_s2h("prune --init missing.safetensors --data-root data", tmp.path()),
                        "--init missing.safetensors: no such file");
}

}  // namespace
}  // namespace s2h::test
