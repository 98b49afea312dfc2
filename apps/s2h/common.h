// Pieces shared by the s2h subcommands: datasets by name, evaluation, checkpoints.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "engine/module.h"
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
// Parses a model geometry back from such metadata (throws naming `file`).
models::ModelConfig geometry_from_metadata(const std::map<std::string, std::string>& meta, const std::string& file);

// Sets the OpenMP/BLAS thread count (0: leave the default); returns the count in use.
int set_threads(int threads);

// Parses an input spec ("3x32x32", "32x32" = 3 channels, "tokens64") into a
// model geometry; throws naming the flag.
void parse_input_spec(const std::string& spec, models::ModelConfig& cfg);

}  // namespace s2h::app
