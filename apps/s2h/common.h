// Pieces shared by the s2h subcommands.
#pragma once

#include <map>
#include <string>

#include "data/dataset.h"
#include "engine/module.h"
#include "models/registry.h"

namespace s2h::app {

inline constexpr const char* kDefaultFashionMnistRoot = "/usr/share/datasets/fashion-mnist";

struct EvalResult {
  double loss = 0;      // mean cross-entropy
  double accuracy = 0;  // fraction in [0, 1]
  int64_t correct = 0, total = 0;
  double seconds = 0;
};

// Loads a dataset split by name ("fashion-mnist"); throws naming the name or file.
data::Dataset load_dataset(const std::string& name, const std::string& root, const std::string& split);
// Model input geometry for a dataset.
models::ModelConfig model_config_for(const data::Dataset& ds);

// Mean loss and accuracy over a dataset, in eval mode without gradients.
EvalResult evaluate(Module& model, const data::Dataset& ds, int64_t batch_size);

// Checkpoint metadata that lets `s2h eval` rebuild the model.
std::map<std::string, std::string> checkpoint_metadata(const std::string& model, const models::ModelConfig& cfg,
                                                       const std::string& dataset);

// Sets the OpenMP/BLAS thread count (0: leave the default); returns the count in use.
int set_threads(int threads);

}  // namespace s2h::app
