// The idx format of (Fashion-)MNIST, gzipped or raw.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"

namespace s2h::data {

struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> bytes;  // unsigned-byte elements, row-major
};

// Reads an idx file of unsigned bytes with `expected_ndim` dimensions (3 for
// images, 1 for labels). Gzip is detected and decoded by zlib. Throws
// s2h::Error naming the file: missing, unreadable, wrong magic number, or
// truncated (fewer data bytes than the header promises).
IdxArray read_idx(const std::string& path, int expected_ndim);

// Writes an idx file (gzipped when the path ends in .gz); used by tests.
void write_idx(const std::string& path, const std::vector<int64_t>& dims, const std::vector<uint8_t>& bytes);

// Fashion-MNIST from root/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
// (the Debian package dataset-fashion-mnist installs them in
// /usr/share/datasets/fashion-mnist). split: "train" or "test". Images become
// f32 NHWC [N, 28, 28, 1], normalised with mean 0.2860, std 0.3530.
Dataset load_fashion_mnist(const std::string& root, const std::string& split);

}  // namespace s2h::data
