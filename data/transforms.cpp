#include "data/transforms.h"

#include <algorithm>
#include <cmath>

#include "engine/error.h"

namespace s2h::data {

namespace {

// A crop box in source pixels: rows [y, y + h), columns [x, x + w).
struct Box {
  int64_t y = 0, x = 0, h = 0, w = 0;
};

// torchvision's RandomResizedCrop.get_params. Python's round() is round-half-even, as std::nearbyint.
Box random_resized_box(int64_t height, int64_t width, const ImageTransform& t, Generator& rng) {
  const double area = static_cast<double>(height * width);
  const double log_lo = std::log(t.rrc_min_ratio), log_hi = std::log(t.rrc_max_ratio);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target = area * (t.rrc_min_scale + (t.rrc_max_scale - t.rrc_min_scale) * rng.uniform());
    const double ratio = std::exp(log_lo + (log_hi - log_lo) * rng.uniform());
    const auto w = static_cast<int64_t>(std::nearbyint(std::sqrt(target * ratio)));
    const auto h = static_cast<int64_t>(std::nearbyint(std::sqrt(target / ratio)));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      const auto y = static_cast<int64_t>(rng.below(static_cast<uint64_t>(height - h + 1)));
      const auto x = static_cast<int64_t>(rng.below(static_cast<uint64_t>(width - w + 1)));
      return {y, x, h, w};
    }
  }
  // Central crop, clamped to the ratio range.
  const double in_ratio = static_cast<double>(width) / static_cast<double>(height);
  int64_t w = width, h = height;
  if (in_ratio < t.rrc_min_ratio) {
    h = std::max<int64_t>(1, static_cast<int64_t>(std::nearbyint(static_cast<double>(w) / t.rrc_min_ratio)));
  } else if (in_ratio > t.rrc_max_ratio) {
    w = std::max<int64_t>(1, static_cast<int64_t>(std::nearbyint(static_cast<double>(h) * t.rrc_max_ratio)));
  }
  return {(height - h) / 2, (width - w) / 2, h, w};
}

// Resampling weights along one axis (PIL's scheme): output pixel i covers the
// source interval centred on begin + (i + 0.5) * scale; a triangle filter of
// radius max(scale, 1) source pixels (plain bilinear when enlarging, an
// average of all covered pixels when shrinking), cut at the image edges and
// renormalised.
struct AxisWeights {
  int64_t taps = 0;
  std::vector<int64_t> first;  // [out] first source index
  std::vector<float> w;        // [out][taps], zero past the last source index
};

AxisWeights axis_weights(int64_t begin, int64_t len, int64_t in_size, int64_t out) {
  const double scale = static_cast<double>(len) / static_cast<double>(out);
  const double fscale = std::max(scale, 1.0);
  const double support = fscale;  // triangle radius 1, stretched
  AxisWeights a;
  a.taps = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  a.first.resize(static_cast<size_t>(out));
  a.w.assign(static_cast<size_t>(out * a.taps), 0.0f);
  std::vector<double> ws(static_cast<size_t>(a.taps));
  for (int64_t i = 0; i < out; ++i) {
    const double centre = static_cast<double>(begin) + (static_cast<double>(i) + 0.5) * scale;
    const int64_t lo = std::max<int64_t>(0, static_cast<int64_t>(centre - support + 0.5));
    const int64_t hi = std::min<int64_t>(in_size, static_cast<int64_t>(centre + support + 0.5));
    double sum = 0;
    const int64_t n = std::min<int64_t>(hi - lo, a.taps);
    for (int64_t k = 0; k < n; ++k) {
      const double d = std::abs((static_cast<double>(lo + k) + 0.5 - centre) / fscale);
      ws[static_cast<size_t>(k)] = d < 1.0 ? 1.0 - d : 0.0;
      sum += ws[static_cast<size_t>(k)];
    }
    a.first[static_cast<size_t>(i)] = lo;
    float* dst = a.w.data() + i * a.taps;
    for (int64_t k = 0; k < n; ++k)
      dst[k] = static_cast<float>(sum > 0 ? ws[static_cast<size_t>(k)] / sum : (k == 0 ? 1.0 : 0.0));
  }
  return a;
}

// Resizes the box of a u8 HWC image to out x out x c floats (values in [0, 255]).
void resize_box(const uint8_t* src, int64_t h, int64_t w, int64_t c, const Box& box, int64_t out, float* dst) {
  const AxisWeights ax = axis_weights(box.x, box.w, w, out);
  const AxisWeights ay = axis_weights(box.y, box.h, h, out);
  // Horizontal pass over the source rows the vertical filters touch.
  int64_t row_lo = h, row_hi = 0;
  for (int64_t i = 0; i < out; ++i) {
    row_lo = std::min(row_lo, ay.first[static_cast<size_t>(i)]);
    row_hi = std::max(row_hi, std::min(h, ay.first[static_cast<size_t>(i)] + ay.taps));
  }
  thread_local std::vector<float> rows;
  rows.assign(static_cast<size_t>((row_hi - row_lo) * out * c), 0.0f);
  for (int64_t r = row_lo; r < row_hi; ++r) {
    const uint8_t* s = src + r * w * c;
    float* d = rows.data() + (r - row_lo) * out * c;
    for (int64_t j = 0; j < out; ++j) {
      const int64_t x0 = ax.first[static_cast<size_t>(j)];
      const float* wt = ax.w.data() + j * ax.taps;
      const int64_t n = std::min(ax.taps, w - x0);
      for (int64_t ch = 0; ch < c; ++ch) {
        float acc = 0;
        for (int64_t k = 0; k < n; ++k) acc += wt[k] * static_cast<float>(s[(x0 + k) * c + ch]);
        d[j * c + ch] = acc;
      }
    }
  }
  // Vertical pass.
  const int64_t row_len = out * c;
  for (int64_t i = 0; i < out; ++i) {
    const int64_t y0 = ay.first[static_cast<size_t>(i)];
    const float* wt = ay.w.data() + i * ay.taps;
    const int64_t n = std::min(ay.taps, h - y0);
    float* d = dst + i * row_len;
    std::fill(d, d + row_len, 0.0f);
    for (int64_t k = 0; k < n; ++k) {
      if (wt[k] == 0.0f) continue;
      const float* s = rows.data() + (y0 + k - row_lo) * row_len;
      for (int64_t e = 0; e < row_len; ++e) d[e] += wt[k] * s[e];
    }
  }
}

// Writes the normalised output from an s x s x c stage image, reading it
// through the pad-crop offsets (oy, ox in [0, 2 * pad]) and the flip. Pixels
// of the padding are 0 before normalisation.
template <class T>
void write_output(const T* stage, int64_t s, int64_t c, int64_t pad, int64_t oy, int64_t ox, bool flip,
                  const float* mean, const float* std, float* out) {
  for (int64_t y = 0; y < s; ++y) {
    const int64_t sy = y + oy - pad;
    float* o = out + y * s * c;
    for (int64_t x = 0; x < s; ++x) {
      const int64_t sx = (flip ? s - 1 - x : x) + ox - pad;
      const bool inside = sy >= 0 && sy < s && sx >= 0 && sx < s;
      const T* p = inside ? stage + (sy * s + sx) * c : nullptr;
      for (int64_t ch = 0; ch < c; ++ch) {
        const float v = inside ? static_cast<float>(p[ch]) : 0.0f;
        o[x * c + ch] = (v / 255.0f - mean[ch]) / std[ch];
      }
    }
  }
}

}  // namespace

void check_transform(const ImageTransform& t, int64_t c) {
  S2H_CHECK(t.out_size > 0 && t.pad_crop >= 0, "transform: output size {} must be positive and padding {} >= 0",
            t.out_size, t.pad_crop);
  S2H_CHECK(t.mean.empty() || static_cast<int64_t>(t.mean.size()) == c,
            "transform: {} mean values for an image of {} channels", t.mean.size(), c);
  S2H_CHECK(t.std.empty() || static_cast<int64_t>(t.std.size()) == c,
            "transform: {} std values for an image of {} channels", t.std.size(), c);
  for (float s : t.std) S2H_CHECK(s > 0, "transform: std {} must be positive", s);
  if (t.random_resized_crop)
    S2H_CHECK(t.rrc_min_scale > 0 && t.rrc_min_scale <= t.rrc_max_scale && t.rrc_min_ratio > 0 &&
                  t.rrc_min_ratio <= t.rrc_max_ratio,
              "transform: random-resized-crop needs 0 < scale min {} <= max {} and 0 < ratio min {} <= max {}",
              t.rrc_min_scale, t.rrc_max_scale, t.rrc_min_ratio, t.rrc_max_ratio);
}

void apply_transform(const uint8_t* pixels, int64_t h, int64_t w, int64_t c, const ImageTransform& t, Generator& rng,
                     float* out) {
  S2H_CHECK(h > 0 && w > 0 && c > 0 && c <= 4, "transform: bad image of {}x{} pixels and {} channels", w, h, c);
  check_transform(t, c);
  const int64_t s = t.out_size;
  float mean[4] = {0, 0, 0, 0}, std[4] = {1, 1, 1, 1};
  for (int64_t ch = 0; ch < c; ++ch) {
    if (!t.mean.empty()) mean[ch] = t.mean[static_cast<size_t>(ch)];
    if (!t.std.empty()) std[ch] = t.std[static_cast<size_t>(ch)];
  }

  // Geometry first (random numbers in a fixed order: box, crop offsets, flip).
  const bool resize = t.random_resized_crop || h != s || w != s;
  const Box box = t.random_resized_crop ? random_resized_box(h, w, t, rng) : Box{0, 0, h, w};
  int64_t oy = t.pad_crop, ox = t.pad_crop;
  if (t.pad_crop > 0) {
    oy = static_cast<int64_t>(rng.below(static_cast<uint64_t>(2 * t.pad_crop + 1)));
    ox = static_cast<int64_t>(rng.below(static_cast<uint64_t>(2 * t.pad_crop + 1)));
  }
  const bool flip = t.hflip && rng.uniform() < 0.5;

  if (!resize) {
    write_output(pixels, s, c, t.pad_crop, oy, ox, flip, mean, std, out);
    return;
  }
  thread_local std::vector<float> stage;
  stage.resize(static_cast<size_t>(s * s * c));
  resize_box(pixels, h, w, c, box, s, stage.data());
  write_output(stage.data(), s, c, t.pad_crop, oy, ox, flip, mean, std, out);
}

void apply_transform(const Image& img, const ImageTransform& t, Generator& rng, float* out) {
  S2H_CHECK(static_cast<int64_t>(img.pixels.size()) == img.h * img.w * img.c,
            "transform: image of {}x{}x{} holds {} bytes", img.h, img.w, img.c, img.pixels.size());
  apply_transform(img.pixels.data(), img.h, img.w, img.c, t, rng, out);
}

std::vector<float> cifar10_mean() { return {0.4914f, 0.4822f, 0.4465f}; }
std::vector<float> cifar10_std() { return {0.2470f, 0.2435f, 0.2616f}; }
std::vector<float> cifar100_mean() { return {0.5071f, 0.4865f, 0.4409f}; }
std::vector<float> cifar100_std() { return {0.2673f, 0.2564f, 0.2762f}; }
std::vector<float> tiny_imagenet_mean() { return {0.4802f, 0.4481f, 0.3975f}; }
std::vector<float> tiny_imagenet_std() { return {0.2770f, 0.2691f, 0.2821f}; }

ImageTransform eval_transform(int64_t size, std::vector<float> mean, std::vector<float> std) {
  S2H_CHECK(size > 0, "transform: output size {} must be positive", size);
  ImageTransform t;
  t.out_size = size;
  t.mean = std::move(mean);
  t.std = std::move(std);
  return t;
}

ImageTransform train_transform(const std::string& preset, int64_t size, std::vector<float> mean,
                               std::vector<float> std) {
  ImageTransform t = eval_transform(size, std::move(mean), std::move(std));
  if (preset == "none") return t;
  if (preset == "crop-flip") {
    t.pad_crop = size / 8;
    t.hflip = true;
    return t;
  }
  if (preset == "rrc-flip") {
    t.random_resized_crop = true;
    t.rrc_min_scale = 0.35;
    t.rrc_max_scale = 1.0;
    t.hflip = true;
    return t;
  }
  S2H_FAIL("unknown augmentation preset \"{}\" (known: none, crop-flip, rrc-flip)", preset);
}

}  // namespace s2h::data
