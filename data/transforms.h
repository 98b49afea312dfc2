// Image augmentation and normalisation: u8 HWC image in, f32 HWC sample out.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/image.h"
#include "engine/random.h"

namespace s2h::data {

struct ImageTransform {
  int64_t out_size = 32;  // the output is out_size x out_size
  // Random crop of out_size x out_size from the image zero-padded (pixel value
  // 0, before normalisation) by pad_crop on each side; 0 = off.
  int64_t pad_crop = 0;
  bool hflip = false;  // horizontal flip with probability 0.5
  // torchvision's RandomResizedCrop: a box of area scale in [min, max] of the
  // image and aspect ratio (w/h) log-uniform in [min, max], 10 attempts, then
  // a central crop clamped to the ratio range; the box is resized to out_size.
  bool random_resized_crop = false;
  double rrc_min_scale = 0.08, rrc_max_scale = 1.0;
  double rrc_min_ratio = 3.0 / 4, rrc_max_ratio = 4.0 / 3;
  // Per channel, in pixel/255 units: output = (pixel/255 - mean) / std.
  // Empty mean means 0, empty std means 1.
  std::vector<float> mean, std;
};

// Checks that t can be applied to images of `channels` channels (positive
// sizes, one mean and std per channel or none, std > 0, a valid
// random-resized-crop range); throws s2h::Error otherwise. The loaders call it
// at load, apply_transform on every call.
void check_transform(const ImageTransform& t, int64_t channels);

// Applies t to an image, writing out_size * out_size * c floats (HWC) to out.
// Order: random-resized-crop, or else a resize to out_size x out_size when the
// image has another size; then pad-crop; then flip; then normalisation. The
// random numbers come from rng in that order, so the same rng state gives the
// same output. Resizing is bilinear (half-pixel centres), with the filter
// widened when shrinking so that it averages all source pixels (as PIL does).
// With no augmentation and an image of out_size x out_size, the output is
// exactly (float(pixel) / 255.0f - mean[c]) / std[c].
void apply_transform(const Image& img, const ImageTransform& t, Generator& rng, float* out);
// The same on pixels that are not held in an Image (h * w * c u8, HWC).
void apply_transform(const uint8_t* pixels, int64_t h, int64_t w, int64_t c, const ImageTransform& t, Generator& rng,
                     float* out);

// Standard per-channel normalisation (RGB, pixel/255 units).
std::vector<float> cifar10_mean();        // 0.4914, 0.4822, 0.4465
std::vector<float> cifar10_std();         // 0.2470, 0.2435, 0.2616
std::vector<float> cifar100_mean();       // 0.5071, 0.4865, 0.4409
std::vector<float> cifar100_std();        // 0.2673, 0.2564, 0.2762
std::vector<float> tiny_imagenet_mean();  // 0.4802, 0.4481, 0.3975
std::vector<float> tiny_imagenet_std();   // 0.2770, 0.2691, 0.2821

// Training augmentation by name, producing size x size samples:
//   "none"      no augmentation (images of another size are resized);
//   "crop-flip" pad by size/8 (4 at 32, 8 at 64), random crop, horizontal flip:
//               the standard CIFAR recipe;
//   "rrc-flip"  random-resized-crop with scale (0.35, 1) and ratio (3/4, 4/3),
//               horizontal flip: for Tiny ImageNet and other larger images.
// An unknown preset throws s2h::Error listing the known ones.
ImageTransform train_transform(const std::string& preset, int64_t size, std::vector<float> mean,
                               std::vector<float> std);
// Evaluation: resize to size x size if needed, normalise; nothing random.
ImageTransform eval_transform(int64_t size, std::vector<float> mean, std::vector<float> std);

}  // namespace s2h::data
