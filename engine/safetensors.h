// Checkpoints in the safetensors format: an 8-byte little-endian header
// length, a JSON header ({"name": {"dtype", "shape", "data_offsets"}, and
// "__metadata__": {string: string}}), then raw little-endian tensor data.
#pragma once

#include <map>
#include <string>

#include "engine/module.h"

namespace s2h {

struct SafetensorsFile {
  NamedTensors tensors;  // in file order (by data offset)
  std::map<std::string, std::string> metadata;

  // The tensor called `name`; throws naming the file and the tensor when absent.
  const Tensor& at(const std::string& name) const;
  bool contains(const std::string& name) const;
  std::string path;
};

// Writes atomically: to a temporary file beside `path`, flushed and synced,
// then renamed over it. A failure leaves any previous file untouched.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Reads and validates a file; every error names the file (and the tensor).
SafetensorsFile load_safetensors(const std::string& path);

// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
void write_file_atomically(const std::string& path, const std::string& bytes);

}  // namespace s2h
