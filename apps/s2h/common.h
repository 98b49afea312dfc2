// Pieces shared by the s2h subcommands: datasets by name, evaluation, checkpoints.
#pragma once

#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apps/s2h/commands.h"
#include "data/dataset.h"
#include "engine/module.h"
#include "engine/optim.h"
#include "engine/safetensors.h"
#include "models/registry.h"

namespace s2h::app {

inline constexpr const char* kDefaultFashionMnistRoot = "/usr/share/datasets/fashion-mnist";

// The dataset names `--data` accepts, with what --data-root must hold.
struct DatasetInfo {
  const char* name;
  const char* root_layout;  // for --help and errors
  const char* default_root;  // "" when none; a relative folder under $S2H_DATA_DIR when starting with '$'
  bool text;
};
const std::vector<DatasetInfo>& dataset_infos();
std::string dataset_names();  // "fashion-mnist, cifar10, ..."

// How to read a dataset.
struct DataOptions {
  std::string name = "fashion-mnist";
  std::string root;              // empty: the dataset's default
  std::string augment = "auto";  // none | crop-flip | rrc-flip | auto (crop-flip for CIFAR/Tiny ImageNet, else none)
  int64_t image_size = 0;        // 0: the dataset's own size
  int64_t max_len = 64;          // text: tokens per sequence
  int64_t vocab_size = 8000;     // text: SentencePiece vocabulary
  std::string cache_dir;         // text: tokenizer cache (empty: $S2H_CACHE_DIR or ~/.cache/s2h)
  int64_t limit_train = 0, limit_test = 0;  // 0: all; else an evenly spaced subset of that size
};

struct DataSplits {
  data::SourcePtr train, test;  // train is null when not requested
  std::string root;             // the folder actually read
  std::string test_split;       // "test", "val" or "dev"
  std::string augment;          // the preset in use for training
  models::ModelConfig geometry;  // num_classes, in_channels, image_size, vocab_size, max_len
  std::string note;             // one line for the log (e.g. where the tokenizer is cached)
};

// Loads the test split and, with `with_train`, the training split; throws
// naming the dataset, the folder or the file.
DataSplits load_data(const DataOptions& opt, bool with_train);

struct EvalResult {
  double loss = 0;      // mean cross-entropy
  double accuracy = 0;  // fraction in [0, 1]
  int64_t correct = 0, total = 0;
  double seconds = 0;
};

// Mean loss and accuracy over a source, in eval mode without gradients.
EvalResult evaluate(Module& model, const data::SourcePtr& source, int64_t batch_size, int workers);

// Checkpoint metadata that lets `s2h eval` rebuild the model and its data.
std::map<std::string, std::string> checkpoint_metadata(const std::string& model, const models::ModelConfig& cfg,
                                                       const DataOptions& data);
// The value of `key` in a checkpoint's metadata, or `fallback` when the key is
// missing; with no fallback a missing key throws "<file>: not an s2h <what>
// (metadata '<key>' is missing)".
std::string metadata_value(const std::map<std::string, std::string>& meta, const std::string& key,
                           const std::string& file, const char* what, const char* fallback = nullptr);
// The network of a model file written by `s2h train` (make_model) or `s2h
// prune` (the narrow architecture in the metadata), with its weights loaded.
ModulePtr model_from_checkpoint(const SafetensorsFile& file, const std::string& path);
// Logits [N, classes] of a whole source in order (eval mode, no gradients); labels into *labels when given.
Tensor predict_logits(Module& model, const data::SourcePtr& source, int64_t batch_size, int workers,
                      Tensor* labels = nullptr);
// Parses a model geometry back from such metadata (throws naming `file`).
models::ModelConfig geometry_from_metadata(const std::map<std::string, std::string>& meta, const std::string& file);

// Sets the OpenMP/BLAS thread count (0: leave the default); returns the count in use.
int set_threads(int threads);
// Checks --device (parses, and a GPU is there) and --precision (fp32 only on
// the CPU); throws naming the flag.
void validate_device_flags(const std::string& device, const std::string& precision);
// The device of --device, with the --precision policy set for the process.
Device setup_device(const std::string& device, const std::string& precision);
// Also sets the --kernels choice (fused_kernels()).
Device setup_device(const TrainOptions& o);
// Throws naming --kernels unless it is fused or library.
void check_kernels_flag(const std::string& kernels);
// "cpu" or "cuda (NVIDIA H100 80GB HBM3, bf16)" for progress lines.
std::string device_label(Device dev);

// Parses an input spec ("3x32x32", "32x32" = 3 channels, "tokens64") into a
// model geometry; throws naming the flag.
void parse_input_spec(const std::string& spec, models::ModelConfig& cfg);

// ------------------------------------------------------------------ shared by train and prune
// TrainOptions <-> JSON (config.json; member names = flag names with '_').
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(TrainOptions, model, classes, imagenet_stem, patch_size, data, data_root, augment,
                                   image_size, max_len, vocab_size, cache_dir, limit_train, limit_test, workers, epochs,
                                   batch_size, eval_batch_size, optimizer, lr, momentum, nesterov, weight_decay,
                                   schedule, warmup_epochs, min_lr, step_epochs, gamma, label_smoothing, seed, threads,
                                   device, precision, out, overwrite, resume, checkpoint_every, log_every, quiet)

// Throws the registry's message (which lists the known names) unless `name` is a model; cheap, so
// commands call it before reading any data.
void require_known_model(const std::string& name);
// The model geometry for `o.model` on the loaded data: the data's geometry with --classes (not
// fewer than the data's), --imagenet-stem and --patch-size; throws when a text model meets images or
// the other way round.
models::ModelConfig model_config(const TrainOptions& o, const DataSplits& data);
// Loads the weights of a dense model file of `s2h train` (--init) into `model`; throws naming the
// file unless it holds a `model_name` of the same shape.
void load_init_weights(Module& model, const std::string& path, const std::string& model_name);
// Every option of s2h prune, as config.json records it (TrainOptions' keys plus the pruning ones).
nlohmann::json prune_options_json(const PruneOptions& o);
// runs/<model>-<data>-<date-time>
std::string default_out(const TrainOptions& o);
DataOptions data_options(const TrainOptions& o);
// SGD (momentum, Nesterov, L2) or AdamW over `params`, as --optimizer says.
std::unique_ptr<Optimizer> make_optimizer(const TrainOptions& o, const std::vector<Tensor>& params);
// The --schedule / --warmup-epochs / --min-lr / --step-epochs / --gamma schedule over --epochs.
LrSchedule make_schedule(const TrainOptions& o, int64_t steps_per_epoch);
double seconds_since(std::chrono::steady_clock::time_point t0);
// Correct predictions (argmax of logits [N, C]) against labels [N].
int64_t count_correct(const Tensor& logits, const Tensor& labels);

// Appends JSON lines, flushed one by one so that a crash loses at most the line being written.
class MetricsLog {
 public:
  // Starts a new log, or (resume) keeps the first `keep_bytes` bytes of an existing one.
  MetricsLog(const std::string& path, int64_t keep_bytes);
  void write(const nlohmann::json& j);
  int64_t bytes() { return static_cast<int64_t>(f_.tellp()); }

 private:
  std::string path_;
  std::ofstream f_;
};

}  // namespace s2h::app
