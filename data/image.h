// Images in memory (u8, HWC) and their decoding from JPEG (libjpeg-turbo's
// TurboJPEG) and PNG (stb_image), detected by their magic bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "data/source.h"

namespace s2h::data {

struct Image {
  int64_t h = 0, w = 0, c = 0;
  std::vector<uint8_t> pixels;  // HWC, row-major, h * w * c bytes
};

enum class ImageFormat { Unknown, Jpeg, Png };

// The format announced by the first bytes (JPEG: FF D8 FF; PNG: the 8-byte signature).
ImageFormat detect_format(const uint8_t* bytes, size_t n);

struct ImageInfo {
  ImageFormat format = ImageFormat::Unknown;
  int64_t h = 0, w = 0;
  int64_t c = 0;  // channels stored in the file (1 grey, 3 colour, 2/4 with alpha)
};

// Checks an encoded image without decoding its pixels: the magic bytes, the
// header (size, colour space) and that the data is not cut short (a JPEG ends
// with its end-of-image marker, a PNG with its IEND chunk). Throws s2h::Error
// naming `what_for_errors` (usually the file's path).
ImageInfo probe_image(const uint8_t* bytes, size_t n, const std::string& what_for_errors);

// Decodes a JPEG or PNG into `channels` (1 or 3) channels: grey is replicated
// to RGB, colour is converted to grey (channels = 1), alpha is dropped.
// Corrupt or truncated data throws s2h::Error naming `what_for_errors`. Safe to
// call from several threads (each thread keeps its own TurboJPEG handle).
Image decode_image(const uint8_t* bytes, size_t n, const std::string& what_for_errors, int64_t channels = 3);

// The whole content of a file; throws s2h::Error naming the path if it cannot be read.
std::vector<uint8_t> read_file_bytes(const std::string& path);

// Image sources that know their class names (index order), e.g. so that the
// test split of an image folder can use the train split's class list.
class ClassNames {
 public:
  virtual ~ClassNames() = default;
  virtual const std::vector<std::string>& class_names() const = 0;
};

// The class names of `source` in class-index order, or an empty list for a
// source that has none (e.g. a TensorSource).
std::vector<std::string> class_names(const Source& source);

}  // namespace s2h::data
