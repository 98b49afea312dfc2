// Image data: decoding (data/image.h), transforms (data/transforms.h), CIFAR
// binary files (data/cifar.h), image folders and Tiny ImageNet
// (data/image_folder.h), and their use through the threaded loader. The files
// are written by the tests themselves; the real data sets are checked only when
// present under S2H_DATA_DIR (default /work/datasets).
#include <stb/stb_image_write.h>  // implemented by Debian's libstb
#include <turbojpeg.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <set>

#include "data/cifar.h"
#include "data/dataset.h"
#include "data/image.h"
#include "data/image_folder.h"
#include "data/transforms.h"
#include "tests/test_util.h"

namespace s2h::test {
namespace {

namespace fs = std::filesystem;
using data::Image;
using data::ImageTransform;
using data::SourcePtr;

// ------------------------------------------------------------------ fixtures

// An image whose pixel (y, x, ch) is fn(y, x, ch).
Image make_image(int64_t h, int64_t w, int64_t c, const std::function<int(int64_t, int64_t, int64_t)>& fn) {
  Image img;
  img.h = h;
  img.w = w;
  img.c = c;
  img.pixels.resize(static_cast<size_t>(h * w * c));
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x)
      for (int64_t ch = 0; ch < c; ++ch)
        img.pixels[static_cast<size_t>((y * w + x) * c + ch)] = static_cast<uint8_t>(fn(y, x, ch));
  return img;
}

// A smooth colour image (JPEG keeps it within a few levels).
Image smooth_image(int64_t h, int64_t w, int shift = 0) {
  return make_image(h, w, 3, [&](int64_t y, int64_t x, int64_t ch) {
    return static_cast<int>(ch == 0 ? 40 + 4 * x + shift : ch == 1 ? 200 - 3 * y : 90 + 2 * (x + y) / 3);
  });
}

std::string encode_jpeg(const Image& img, int quality = 95) {
  tjhandle h = tjInitCompress();
  EXPECT_NE(h, nullptr);
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  const int pf = img.c == 1 ? TJPF_GRAY : TJPF_RGB;
  const int samp = img.c == 1 ? TJSAMP_GRAY : TJSAMP_444;
  const int rc = tjCompress2(h, img.pixels.data(), static_cast<int>(img.w), 0, static_cast<int>(img.h), pf, &buf, &size,
                             samp, quality, 0);
  EXPECT_EQ(rc, 0) << tjGetErrorStr2(h);
  std::string out(reinterpret_cast<const char*>(buf), size);
  tjFree(buf);
  tjDestroy(h);
  return out;
}

// A JPEG cut halfway through its compressed data (after the start-of-scan marker FF DA).
std::string cut_in_scan(const std::string& jpeg) {
  const size_t sos = jpeg.find("\xFF\xDA");
  EXPECT_NE(sos, std::string::npos);
  return jpeg.substr(0, sos + (jpeg.size() - sos) / 2);
}

void write_png(const std::string& path, const Image& img) {
  ASSERT_NE(stbi_write_png(path.c_str(), static_cast<int>(img.w), static_cast<int>(img.h), static_cast<int>(img.c),
                           img.pixels.data(), static_cast<int>(img.w * img.c)),
            0)
      << path;
}

std::string png_bytes(const Image& img) {
  TempDir dir;
  write_png(dir.file("x.png"), img);
  return read_bytes(dir.file("x.png"));
}

Image decode(const std::string& bytes, const std::string& what = "test image", int64_t channels = 3) {
  return data::decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), what, channels);
}

// Runs a transform with a generator of the given seed.
std::vector<float> transformed(const Image& img, const ImageTransform& t, uint64_t seed) {
  std::vector<float> out(static_cast<size_t>(t.out_size * t.out_size * img.c));
  Generator rng(seed);
  data::apply_transform(img, t, rng, out.data());
  return out;
}

std::vector<float> read_sample(const data::Source& src, int64_t i, uint64_t seed = 0) {
  std::vector<float> out(static_cast<size_t>(shape_numel(src.sample_spec().shape)));
  Generator rng(seed);
  src.read(i, out.data(), rng);
  return out;
}

// Pixel values back from a transform without normalisation (output = v / 255).
int level(float v) { return static_cast<int>(std::lround(v * 255.0f)); }

// CIFAR test pixels: distinct per record, channel, row and column.
uint8_t cifar_pixel(int64_t record, int64_t ch, int64_t y, int64_t x) {
  return static_cast<uint8_t>((record * 31 + ch * 85 + y * 7 + x * 3) & 0xff);
}

// One CIFAR record: label bytes then planar R, G, B 32x32.
std::string cifar_record(int64_t record, const std::string& label_bytes) {
  std::string s = label_bytes;
  for (int64_t ch = 0; ch < 3; ++ch)
    for (int64_t y = 0; y < 32; ++y)
      for (int64_t x = 0; x < 32; ++x) s.push_back(static_cast<char>(cifar_pixel(record, ch, y, x)));
  return s;
}

// CIFAR-10 files in dir: data_batch_k.bin with counts[k-1] records, test_batch.bin with
// `test` records. Record r (numbered across all files) has label r % 10.
void write_cifar10(const std::string& dir, const std::vector<int>& counts, int test) {
  fs::create_directories(dir);
  int64_t r = 0;
  for (size_t k = 0; k < counts.size(); ++k) {
    std::string bytes;
    for (int j = 0; j < counts[k]; ++j, ++r) bytes += cifar_record(r, std::string(1, static_cast<char>(r % 10)));
    write_bytes(dir + "/data_batch_" + std::to_string(k + 1) + ".bin", bytes);
  }
  std::string bytes;
  for (int j = 0; j < test; ++j, ++r) bytes += cifar_record(r, std::string(1, static_cast<char>(r % 10)));
  write_bytes(dir + "/test_batch.bin", bytes);
}

// Checks that sample `got` (normalised by nothing) holds CIFAR record `record` in HWC order.
void expect_cifar_pixels(const std::vector<float>& got, int64_t record) {
  ASSERT_EQ(got.size(), 3072u);
  int bad = 0;
  for (int64_t y = 0; y < 32; ++y)
    for (int64_t x = 0; x < 32; ++x)
      for (int64_t ch = 0; ch < 3; ++ch)
        bad += got[static_cast<size_t>((y * 32 + x) * 3 + ch)] !=
               static_cast<float>(cifar_pixel(record, ch, y, x)) / 255.0f;
  EXPECT_EQ(bad, 0) << "record " << record;
}

ImageTransform plain(int64_t size) { return data::eval_transform(size, {}, {}); }

// ================================================================== decoding

TEST(ImageDecode, PngExactRgbGreyAndAlpha) {
  const Image rgb =
      make_image(5, 7, 3, [](int64_t y, int64_t x, int64_t ch) { return static_cast<int>(y * 40 + x * 5 + ch * 70); });
  Image got = decode(png_bytes(rgb));
  EXPECT_EQ(got.h, 5);
  EXPECT_EQ(got.w, 7);
  EXPECT_EQ(got.c, 3);
  EXPECT_EQ(got.pixels, rgb.pixels);

  const Image grey =
      make_image(4, 6, 1, [](int64_t y, int64_t x, int64_t) { return static_cast<int>(y * 50 + x * 9); });
  got = decode(png_bytes(grey));
  ASSERT_EQ(got.c, 3);
  for (int64_t p = 0; p < 24; ++p)
    for (int64_t ch = 0; ch < 3; ++ch)
      EXPECT_EQ(got.pixels[static_cast<size_t>(p * 3 + ch)], grey.pixels[static_cast<size_t>(p)]) << "grey replicated";
  EXPECT_EQ(decode(png_bytes(grey), "grey", 1).pixels, grey.pixels);

  const Image rgba = make_image(
      3, 3, 4, [](int64_t y, int64_t x, int64_t ch) { return ch == 3 ? 17 : static_cast<int>(y * 60 + x * 20 + ch); });
  got = decode(png_bytes(rgba));
  ASSERT_EQ(got.c, 3);
  for (int64_t p = 0; p < 9; ++p)
    for (int64_t ch = 0; ch < 3; ++ch)
      EXPECT_EQ(got.pixels[static_cast<size_t>(p * 3 + ch)], rgba.pixels[static_cast<size_t>(p * 4 + ch)])
          << "alpha dropped";
}

TEST(ImageDecode, JpegCloseAndChannelOrder) {
  const Image img = smooth_image(24, 40);
  const Image got = decode(encode_jpeg(img));
  ASSERT_EQ(got.h, 24);
  ASSERT_EQ(got.w, 40);
  ASSERT_EQ(got.c, 3);
  int worst = 0;
  for (size_t i = 0; i < img.pixels.size(); ++i) worst = std::max(worst, std::abs(got.pixels[i] - img.pixels[i]));
  EXPECT_LE(worst, 6) << "JPEG at quality 95";
  // Flat red, green and blue thirds come back in RGB order.
  const Image rgb = make_image(16, 48, 3, [](int64_t, int64_t x, int64_t ch) { return ch == x / 16 ? 230 : 20; });
  const Image back = decode(encode_jpeg(rgb));
  for (int64_t third = 0; third < 3; ++third)
    for (int64_t ch = 0; ch < 3; ++ch)
      EXPECT_NEAR(back.pixels[static_cast<size_t>((8 * 48 + third * 16 + 8) * 3 + ch)], ch == third ? 230 : 20, 6)
          << "third " << third << " channel " << ch;
}

TEST(ImageDecode, GreyJpegIsReplicated) {
  const Image grey =
      make_image(16, 16, 1, [](int64_t y, int64_t x, int64_t) { return static_cast<int>(60 + 5 * x + 3 * y); });
  const Image got = decode(encode_jpeg(grey));
  ASSERT_EQ(got.c, 3);
  for (int64_t p = 0; p < 256; ++p) {
    EXPECT_EQ(got.pixels[static_cast<size_t>(p * 3)], got.pixels[static_cast<size_t>(p * 3 + 1)]);
    EXPECT_EQ(got.pixels[static_cast<size_t>(p * 3)], got.pixels[static_cast<size_t>(p * 3 + 2)]);
    EXPECT_NEAR(got.pixels[static_cast<size_t>(p * 3)], grey.pixels[static_cast<size_t>(p)], 4);
  }
  const std::string bytes = encode_jpeg(grey);
  const data::ImageInfo info = data::probe_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "grey");
  EXPECT_EQ(info.format, data::ImageFormat::Jpeg);
  EXPECT_EQ(info.c, 1);
}

TEST(ImageDecode, BadData) {
  const std::string jpeg = encode_jpeg(smooth_image(32, 32));
  const std::string png = png_bytes(smooth_image(32, 32));
  EXPECT_ERROR("bad.jpg|not a JPEG or PNG", decode("this is not an image at all", "bad.jpg"));
  EXPECT_ERROR("empty.png|empty", decode("", "empty.png"));
  EXPECT_ERROR("half.jpg|truncated", decode(cut_in_scan(jpeg), "half.jpg"));
  EXPECT_ERROR("early.jpg|JPEG", decode(jpeg.substr(0, jpeg.size() / 3), "early.jpg"));
  EXPECT_ERROR("half.png|truncated", decode(png.substr(0, png.size() / 2), "half.png"));
  EXPECT_ERROR("head.jpg|JPEG", decode(jpeg.substr(0, 20), "head.jpg"));
  EXPECT_ERROR("garbage.jpg|corrupt JPEG header",
               decode(std::string("\xFF\xD8\xFF") + std::string(200, 'x'), "garbage.jpg"));
  EXPECT_ERROR("x.png|corrupt PNG", decode(png.substr(0, 8) + std::string(100, '\x07'), "x.png"));
  EXPECT_ERROR("channels", decode(jpeg, "x", 4));
  // Damage inside the compressed data: either an error naming the file or an image, never a crash.
  Generator gen(7);
  for (int trial = 0; trial < 100; ++trial) {
    std::string bad = (trial % 2 ? jpeg : png);
    for (int k = 0; k < 8; ++k) bad[40 + gen.below(bad.size() - 60)] = static_cast<char>(gen.below(256));
    try {
      const Image img = decode(bad, "damaged");  // a damaged header may even announce another size
      EXPECT_EQ(static_cast<int64_t>(img.pixels.size()), img.h * img.w * 3);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("damaged"), std::string::npos) << e.what();
    }
  }
}

TEST(ImageDecode, ReadFileBytes) {
  TempDir dir;
  write_bytes(dir.file("a.bin"), std::string("\x01\x02\x00\x03", 4));
  EXPECT_EQ(data::read_file_bytes(dir.file("a.bin")), (std::vector<uint8_t>{1, 2, 0, 3}));
  EXPECT_ERROR(dir.file("missing.jpg") + "|cannot open", data::read_file_bytes(dir.file("missing.jpg")));
  EXPECT_ERROR(dir.str() + "|directory", data::read_file_bytes(dir.str()));
}

// ================================================================== transforms

TEST(Transform, PlainNormalisationIsExact) {
  const Image img = make_image(
      32, 32, 3, [](int64_t y, int64_t x, int64_t ch) { return static_cast<int>((y * 32 + x + ch * 91) % 256); });
  const auto mean = data::cifar10_mean(), std = data::cifar10_std();
  const std::vector<float> got = transformed(img, data::eval_transform(32, mean, std), 1);
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_EQ(got[i], (static_cast<float>(img.pixels[i]) / 255.0f - mean[i % 3]) / std[i % 3]) << "element " << i;
  // Without mean and std the output is pixel / 255; the "none" preset is the same.
  const std::vector<float> raw = transformed(img, plain(32), 1);
  for (size_t i = 0; i < raw.size(); ++i) ASSERT_EQ(raw[i], static_cast<float>(img.pixels[i]) / 255.0f);
  EXPECT_EQ(transformed(img, data::train_transform("none", 32, mean, std), 5), got);
}

TEST(Transform, PadCropOffsetsAreBoundedByThePadding) {
  // Pixel (y, x) holds R = y + 1, G = x + 1, so every output pixel says where it came from.
  const Image img = make_image(32, 32, 3, [](int64_t y, int64_t x, int64_t ch) {
    return ch == 0 ? static_cast<int>(y + 1) : ch == 1 ? static_cast<int>(x + 1) : 200;
  });
  ImageTransform t = plain(32);
  t.pad_crop = 4;
  std::set<std::pair<int64_t, int64_t>> offsets;
  for (uint64_t seed = 0; seed < 1000; ++seed) {
    const std::vector<float> out = transformed(img, t, seed);
    // The shift is (centre pixel's source) - (its position); the padding reads 0.
    const int64_t dy = level(out[(16 * 32 + 16) * 3]) - 1 - 16, dx = level(out[(16 * 32 + 16) * 3 + 1]) - 1 - 16;
    ASSERT_TRUE(std::abs(dy) <= 4 && std::abs(dx) <= 4) << "seed " << seed << ": shift " << dy << ", " << dx;
    offsets.insert({dy, dx});
    for (int64_t y = 0; y < 32; ++y)
      for (int64_t x = 0; x < 32; ++x) {
        const int64_t sy = y + dy, sx = x + dx;
        const bool inside = sy >= 0 && sy < 32 && sx >= 0 && sx < 32;
        const float* p = &out[static_cast<size_t>((y * 32 + x) * 3)];
        ASSERT_EQ(level(p[0]), inside ? sy + 1 : 0) << "seed " << seed << " at " << y << "," << x;
        ASSERT_EQ(level(p[1]), inside ? sx + 1 : 0) << "seed " << seed << " at " << y << "," << x;
        ASSERT_EQ(level(p[2]), inside ? 200 : 0);
      }
  }
  EXPECT_EQ(offsets.size(), 81u) << "every shift in [-4, 4]^2 is drawn";
}

TEST(Transform, FlipMirrorsAboutHalfTheTime) {
  const Image img =
      make_image(8, 8, 3, [](int64_t y, int64_t x, int64_t ch) { return static_cast<int>(y * 30 + x * 3 + ch); });
  ImageTransform t = plain(8);
  t.hflip = true;
  const std::vector<float> same = transformed(img, plain(8), 0);
  std::vector<float> mirrored(same.size());
  for (int64_t y = 0; y < 8; ++y)
    for (int64_t x = 0; x < 8; ++x)
      for (int64_t ch = 0; ch < 3; ++ch)
        mirrored[static_cast<size_t>((y * 8 + x) * 3 + ch)] = same[static_cast<size_t>((y * 8 + 7 - x) * 3 + ch)];
  int flips = 0;
  for (uint64_t seed = 0; seed < 400; ++seed) {
    const std::vector<float> out = transformed(img, t, seed);
    ASSERT_TRUE(out == same || out == mirrored) << "seed " << seed;
    flips += out == mirrored;
  }
  EXPECT_GT(flips, 150);
  EXPECT_LT(flips, 250);
}

TEST(Transform, CropThenFlip) {
  const Image img = make_image(16, 16, 3, [](int64_t y, int64_t x, int64_t ch) {
    return ch == 0 ? static_cast<int>(y + 1) : ch == 1 ? static_cast<int>(x + 1) : 9;
  });
  const ImageTransform t = data::train_transform("crop-flip", 16, {}, {});
  EXPECT_EQ(t.pad_crop, 2);
  EXPECT_TRUE(t.hflip);
  int flipped = 0;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    const std::vector<float> out = transformed(img, t, seed);
    // Output column x comes from the cropped column 15 - x when flipped: the source column then falls as x grows.
    const int g0 = level(out[(8 * 16 + 7) * 3 + 1]), g1 = level(out[(8 * 16 + 8) * 3 + 1]);
    ASSERT_TRUE(g0 > 0 && g1 > 0);
    const bool flip = g1 < g0;
    flipped += flip;
    const int64_t dx = flip ? (g0 - 1) - (15 - 7) : (g0 - 1) - 7;
    ASSERT_LE(std::abs(dx), 2) << "seed " << seed;
    for (int64_t x = 0; x < 16; ++x) {
      const int64_t sx = (flip ? 15 - x : x) + dx;
      ASSERT_EQ(level(out[static_cast<size_t>((8 * 16 + x) * 3 + 1)]), sx >= 0 && sx < 16 ? sx + 1 : 0)
          << "seed " << seed;
    }
  }
  EXPECT_GT(flipped, 50);
  EXPECT_LT(flipped, 150);
}

TEST(Transform, ResizeIsBilinearAndAveragesWhenShrinking) {
  // A horizontal ramp R = 8x (+ 4), constant down the columns.
  const Image ramp16 =
      make_image(16, 16, 3, [](int64_t, int64_t x, int64_t ch) { return static_cast<int>(8 * x + 4 + ch); });
  const std::vector<float> up = transformed(ramp16, plain(32), 0);
  for (int64_t x = 1; x < 31; ++x) {
    // Half-pixel centres: output x samples source (x + 0.5) / 2 - 0.5.
    const double src = (static_cast<double>(x) + 0.5) / 2 - 0.5;
    EXPECT_NEAR(up[static_cast<size_t>((10 * 32 + x) * 3)] * 255.0, 8 * src + 4, 1e-3) << "x " << x;
  }
  EXPECT_NEAR(up[0] * 255.0, 4, 1e-3) << "edges are clamped";
  const Image ramp64 = make_image(64, 64, 3, [](int64_t, int64_t x, int64_t) { return static_cast<int>(3 * x + 10); });
  const std::vector<float> down = transformed(ramp64, plain(32), 0);
  for (int64_t x = 1; x < 31; ++x)  // the mean of the 2x2 block centred at 2x + 0.5
    EXPECT_NEAR(down[static_cast<size_t>((10 * 32 + x) * 3)] * 255.0, 3 * (2 * static_cast<double>(x) + 0.5) + 10,
                1e-3);
  // A constant image stays constant; a non-square one is squashed to out_size x out_size.
  const Image flat = make_image(20, 50, 3, [](int64_t, int64_t, int64_t ch) { return 100 + static_cast<int>(ch); });
  const std::vector<float> f = transformed(flat, plain(12), 0);
  ASSERT_EQ(f.size(), 12u * 12 * 3);
  for (size_t i = 0; i < f.size(); ++i) EXPECT_NEAR(f[i] * 255.0, 100 + static_cast<double>(i % 3), 1e-3);
}

TEST(Transform, RandomResizedCrop) {
  const Image img = make_image(64, 64, 3, [](int64_t y, int64_t x, int64_t ch) {
    return ch == 0 ? static_cast<int>(y * 4) : ch == 1 ? static_cast<int>(x * 4) : static_cast<int>((x * y) % 256);
  });
  // Scale fixed at 1/4 and ratio 1: a 32x32 box copied exactly to a 32x32 output.
  ImageTransform t = plain(32);
  t.random_resized_crop = true;
  t.rrc_min_scale = t.rrc_max_scale = 0.25;
  t.rrc_min_ratio = t.rrc_max_ratio = 1.0;
  std::set<std::pair<int, int>> corners;
  for (uint64_t seed = 0; seed < 100; ++seed) {
    const std::vector<float> out = transformed(img, t, seed);
    const int y0 = level(out[0]) / 4, x0 = level(out[1]) / 4;
    ASSERT_TRUE(y0 >= 0 && y0 <= 32 && x0 >= 0 && x0 <= 32) << "box corner " << y0 << "," << x0;
    corners.insert({y0, x0});
    for (int64_t y = 0; y < 32; ++y)
      for (int64_t x = 0; x < 32; ++x)
        for (int64_t ch = 0; ch < 3; ++ch)
          ASSERT_EQ(out[static_cast<size_t>((y * 32 + x) * 3 + ch)],
                    img.pixels[static_cast<size_t>(((y0 + y) * 64 + x0 + x) * 3 + ch)] / 255.0f)
              << "seed " << seed;
  }
  EXPECT_GT(corners.size(), 50u) << "boxes vary with the seed";
  // Impossible scales fall back to the central crop (the whole square image): a plain resize.
  t.rrc_min_scale = 2;
  t.rrc_max_scale = 3;
  EXPECT_EQ(transformed(img, t, 3), transformed(img, plain(32), 0));
  // The rrc-flip preset: 64x64 output, the same for one seed, different across seeds, values within the image's range.
  const ImageTransform p = data::train_transform("rrc-flip", 64, data::tiny_imagenet_mean(), data::tiny_imagenet_std());
  EXPECT_TRUE(p.random_resized_crop && p.hflip);
  EXPECT_EQ(p.rrc_min_scale, 0.35);
  EXPECT_EQ(transformed(img, p, 42), transformed(img, p, 42));
  std::set<std::vector<float>> distinct;
  for (uint64_t seed = 0; seed < 10; ++seed) {
    const std::vector<float> out = transformed(img, p, seed);
    ASSERT_EQ(out.size(), 64u * 64 * 3);
    distinct.insert(out);
  }
  EXPECT_EQ(distinct.size(), 10u);
  // Upscaled 64 -> 96 box sizes vary too.
  t = plain(96);
  t.random_resized_crop = true;
  EXPECT_EQ(transformed(img, t, 1).size(), 96u * 96 * 3);
}

TEST(Transform, BadSettings) {
  const Image img = smooth_image(8, 8);
  EXPECT_ERROR("unknown augmentation|crop-flip", data::train_transform("mixup", 32, {}, {}));
  EXPECT_ERROR("2 mean values|3 channels", transformed(img, data::eval_transform(8, {0.5f, 0.5f}, {}), 0));
  EXPECT_ERROR("std", transformed(img, data::eval_transform(8, {}, {1, 0, 1}), 0));
  ImageTransform t = plain(8);
  t.random_resized_crop = true;
  t.rrc_min_scale = 0.9;
  t.rrc_max_scale = 0.5;
  EXPECT_ERROR("random-resized-crop", transformed(img, t, 0));
}

// ================================================================== CIFAR

TEST(Cifar, Cifar10TrainAndTest) {
  TempDir dir;
  write_cifar10(dir.str(), {3, 2, 1, 1, 2}, 4);
  const SourcePtr train = data::load_cifar_binary(dir.str(), 10, "train", plain(32));
  EXPECT_EQ(train->name(), "cifar10/train");
  ASSERT_EQ(train->size(), 9);
  EXPECT_EQ(train->num_classes(), 10);
  EXPECT_EQ(train->sample_spec().shape, (Shape{32, 32, 3}));
  EXPECT_EQ(train->sample_spec().dtype, DType::F32);
  for (int64_t i = 0; i < 9; ++i) {
    EXPECT_EQ(train->label(i), i % 10);
    expect_cifar_pixels(read_sample(*train, i), i);
  }
  const std::vector<std::string> names = data::class_names(*train);
  ASSERT_EQ(names.size(), 10u);
  EXPECT_EQ(names.front(), "airplane");
  EXPECT_EQ(names.back(), "truck");
  const SourcePtr test = data::load_cifar_binary(dir.str(), 10, "test", plain(32));
  ASSERT_EQ(test->size(), 4);
  for (int64_t i = 0; i < 4; ++i) {
    EXPECT_EQ(test->label(i), (9 + i) % 10);
    expect_cifar_pixels(read_sample(*test, i), 9 + i);
  }
  // Normalised with the standard statistics.
  const SourcePtr norm = data::load_cifar_binary(dir.str(), 10, "test",
                                                 data::eval_transform(32, data::cifar10_mean(), data::cifar10_std()));
  const std::vector<float> v = read_sample(*norm, 1);
  EXPECT_EQ(v[5], (cifar_pixel(10, 2, 0, 1) / 255.0f - 0.4465f) / 0.2616f);
}

TEST(Cifar, ArchiveFolderIsFound) {
  TempDir dir;
  write_cifar10(dir.file("cifar-10-batches-bin"), {1, 1, 1, 1, 1}, 1);
  EXPECT_EQ(data::load_cifar_binary(dir.str(), 10, "train", plain(32))->size(), 5);
}

TEST(Cifar, Cifar100FineAndCoarse) {
  TempDir dir;
  std::string train, test;
  for (int64_t r = 0; r < 5; ++r) train += cifar_record(r, {static_cast<char>(r * 4), static_cast<char>(r * 20 + 3)});
  test = cifar_record(5, {19, 99});
  write_bytes(dir.file("train.bin"), train);
  write_bytes(dir.file("test.bin"), test);
  const SourcePtr fine = data::load_cifar_binary(dir.str(), 100, "train", plain(32));
  EXPECT_EQ(fine->name(), "cifar100/train");
  ASSERT_EQ(fine->size(), 5);
  EXPECT_EQ(fine->num_classes(), 100);
  const SourcePtr coarse = data::load_cifar_binary(dir.str(), 100, "train", plain(32), true);
  EXPECT_EQ(coarse->num_classes(), 20);
  for (int64_t i = 0; i < 5; ++i) {
    EXPECT_EQ(fine->label(i), i * 20 + 3);
    EXPECT_EQ(coarse->label(i), i * 4);
    expect_cifar_pixels(read_sample(*fine, i), i);
  }
  EXPECT_EQ(data::class_names(*fine)[3], "bear");
  EXPECT_EQ(data::class_names(*coarse)[19], "vehicles_2");
  const SourcePtr t = data::load_cifar_binary(dir.str(), 100, "test", plain(32));
  EXPECT_EQ(t->label(0), 99);
  expect_cifar_pixels(read_sample(*t, 0), 5);
}

TEST(Cifar, Errors) {
  TempDir dir;
  write_cifar10(dir.str(), {2, 2, 2, 2, 2}, 2);
  fs::remove(dir.file("data_batch_3.bin"));
  EXPECT_ERROR(dir.file("data_batch_3.bin") + "|missing|test_batch.bin",
               data::load_cifar_binary(dir.str(), 10, "train", plain(32)));
  EXPECT_ERROR(dir.file("train.bin") + "|missing|test.bin",
               data::load_cifar_binary(dir.str(), 100, "train", plain(32)));
  // A transform that does not fit is refused at load.
  EXPECT_ERROR("1 mean values|3 channels",
               data::load_cifar_binary(dir.str(), 10, "test", data::eval_transform(32, {0.5f}, {})));
  // Truncated: the last record is cut.
  const std::string t = read_bytes(dir.file("test_batch.bin"));
  write_bytes(dir.file("test_batch.bin"), t.substr(0, t.size() - 100));
  EXPECT_ERROR(dir.file("test_batch.bin") + "|truncated|6046 bytes is not a whole number of 3073-byte records",
               data::load_cifar_binary(dir.str(), 10, "test", plain(32)));
  // Label 10 in the second record.
  std::string bad = cifar_record(0, "\x01") + cifar_record(1, "\x0a");
  write_bytes(dir.file("test_batch.bin"), bad);
  EXPECT_ERROR(dir.file("test_batch.bin") + "|record 1|label 10|out of range",
               data::load_cifar_binary(dir.str(), 10, "test", plain(32)));
  write_bytes(dir.file("test.bin"), cifar_record(0, {3, 7}) + cifar_record(1, {2, 100}));
  EXPECT_ERROR(dir.file("test.bin") + "|record 1|fine label 100",
               data::load_cifar_binary(dir.str(), 100, "test", plain(32)));
  EXPECT_ERROR("10 or 100", data::load_cifar_binary(dir.str(), 20, "test", plain(32)));
  EXPECT_ERROR("train or test", data::load_cifar_binary(dir.str(), 10, "val", plain(32)));
  EXPECT_ERROR("coarse", data::load_cifar_binary(dir.str(), 10, "test", plain(32), true));
}

// ================================================================== image folders

// dir/<class>/<files>: PNGs (exact pixels) and JPEGs, plus files that must be ignored.
struct FolderTree {
  TempDir dir;
  Image cat_a =
      make_image(8, 8, 3, [](int64_t y, int64_t x, int64_t ch) { return static_cast<int>(y * 30 + x + ch * 7); });
  Image dog_x =
      make_image(8, 8, 3, [](int64_t y, int64_t x, int64_t ch) { return static_cast<int>(255 - y * 30 - x - ch); });
  FolderTree() {
    fs::create_directories(dir.file("train/cat"));
    fs::create_directories(dir.file("train/dog/sub"));
    fs::create_directories(dir.file("train/.cache"));
    write_png(dir.file("train/cat/a.png"), cat_a);
    write_bytes(dir.file("train/cat/b.JPG"), encode_jpeg(smooth_image(8, 8)));
    write_bytes(dir.file("train/cat/c.jpeg"), png_bytes(cat_a));  // a PNG named .jpeg: the bytes decide
    write_png(dir.file("train/dog/x.png"), dog_x);
    write_png(dir.file("train/dog/.hidden.png"), dog_x);
    write_png(dir.file("train/dog/sub/deeper.png"), dog_x);
    write_bytes(dir.file("train/dog/notes.txt"), "not an image");
    write_bytes(dir.file("train/README"), "ignored");
    fs::create_directories(dir.file("test/dog"));
    write_png(dir.file("test/dog/y.png"), cat_a);
  }
};

std::vector<float> as_floats(const Image& img) {
  std::vector<float> v(img.pixels.size());
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(img.pixels[i]) / 255.0f;
  return v;
}

TEST(ImageFolder, LayoutLabelsAndPixels) {
  FolderTree tree;
  const SourcePtr train = data::load_image_folder(tree.dir.file("train"), plain(8), "toy/train");
  EXPECT_EQ(train->name(), "toy/train");
  ASSERT_EQ(train->size(), 4);
  EXPECT_EQ(train->num_classes(), 2);
  EXPECT_EQ(data::class_names(*train), (std::vector<std::string>{"cat", "dog"}));
  EXPECT_EQ(train->sample_spec().shape, (Shape{8, 8, 3}));
  // Sorted files: cat/a.png, cat/b.JPG, cat/c.jpeg, dog/x.png.
  EXPECT_EQ(train->label(0), 0);
  EXPECT_EQ(train->label(1), 0);
  EXPECT_EQ(train->label(2), 0);
  EXPECT_EQ(train->label(3), 1);
  EXPECT_EQ(read_sample(*train, 0), as_floats(tree.cat_a));
  EXPECT_EQ(read_sample(*train, 2), as_floats(tree.cat_a));
  EXPECT_EQ(read_sample(*train, 3), as_floats(tree.dog_x));
  const std::vector<float> jpeg = read_sample(*train, 1), want = as_floats(smooth_image(8, 8));
  for (size_t i = 0; i < jpeg.size(); ++i) EXPECT_NEAR(jpeg[i], want[i], 6 / 255.0);

  // The test split takes the train split's classes: dog is class 1 though it is its only folder.
  const SourcePtr test =
      data::load_image_folder(tree.dir.file("test"), plain(8), "toy/test", data::class_names(*train));
  ASSERT_EQ(test->size(), 1);
  EXPECT_EQ(test->num_classes(), 2);
  EXPECT_EQ(test->label(0), 1);
  // Images of another size are resized to the output size.
  const SourcePtr small = data::load_image_folder(tree.dir.file("train"), plain(4), "toy/train");
  EXPECT_EQ(read_sample(*small, 0).size(), 4u * 4 * 3);
}

TEST(ImageFolder, GreyJpegAndRealisticSizes) {
  TempDir dir;
  fs::create_directories(dir.file("a"));
  const Image grey = make_image(32, 32, 1, [](int64_t y, int64_t x, int64_t) { return static_cast<int>(100 + x + y); });
  write_bytes(dir.file("a/grey.jpg"), encode_jpeg(grey));
  const SourcePtr src = data::load_image_folder(dir.str(), plain(32), "grey");
  const std::vector<float> v = read_sample(*src, 0);
  for (int64_t p = 0; p < 32 * 32; ++p) {
    ASSERT_EQ(v[static_cast<size_t>(p * 3)], v[static_cast<size_t>(p * 3 + 1)]);
    ASSERT_EQ(v[static_cast<size_t>(p * 3)], v[static_cast<size_t>(p * 3 + 2)]);
    ASSERT_NEAR(v[static_cast<size_t>(p * 3)] * 255.0f, grey.pixels[static_cast<size_t>(p)], 4);
  }
}

TEST(ImageFolder, Errors) {
  FolderTree tree;
  const std::vector<std::string> classes = {"cat", "dog"};
  fs::create_directories(tree.dir.file("test/bird"));
  write_png(tree.dir.file("test/bird/z.png"), tree.cat_a);
  EXPECT_ERROR(tree.dir.file("test/bird") + "|not one of the 2 classes",
               data::load_image_folder(tree.dir.file("test"), plain(8), "toy/test", classes));
  fs::remove_all(tree.dir.file("test/bird"));
  fs::create_directories(tree.dir.file("test/cat"));
  write_bytes(tree.dir.file("test/cat/notes.txt"), "x");
  EXPECT_ERROR(tree.dir.file("test/cat") + "|empty class folder",
               data::load_image_folder(tree.dir.file("test"), plain(8), "toy/test", classes));
  fs::create_directories(tree.dir.file("none/.hidden"));
  EXPECT_ERROR(tree.dir.file("none") + "|no class folders",
               data::load_image_folder(tree.dir.file("none"), plain(8), "x"));
  EXPECT_ERROR(tree.dir.file("nowhere") + "|not found",
               data::load_image_folder(tree.dir.file("nowhere"), plain(8), "x"));

  // Garbage with a .jpg name, and a JPEG cut in half: reported at load, naming the file.
  write_bytes(tree.dir.file("train/dog/garbage.jpg"), "GIF89a and then some bytes that are no JPEG");
  EXPECT_ERROR(tree.dir.file("train/dog/garbage.jpg") + "|not a JPEG or PNG",
               data::load_image_folder(tree.dir.file("train"), plain(8), "toy"));
  fs::remove(tree.dir.file("train/dog/garbage.jpg"));
  const std::string jpeg = encode_jpeg(smooth_image(32, 32));
  write_bytes(tree.dir.file("train/dog/half.jpg"), cut_in_scan(jpeg));
  EXPECT_ERROR(tree.dir.file("train/dog/half.jpg") + "|truncated",
               data::load_image_folder(tree.dir.file("train"), plain(8), "toy"));
  // The first bad file (in load order) is the one reported.
  write_bytes(tree.dir.file("train/cat/0bad.png"), "nope");
  EXPECT_ERROR(tree.dir.file("train/cat/0bad.png"), data::load_image_folder(tree.dir.file("train"), plain(8), "toy"));
}

TEST(ImageFolder, DamagedDataFailsAtReadNamingTheFile) {
  // Valid headers and end markers, destroyed compressed data: decoding either errs naming the file or gives pixels.
  TempDir dir;
  fs::create_directories(dir.file("c"));
  const std::string jpeg = encode_jpeg(smooth_image(32, 32));
  std::string png = png_bytes(smooth_image(32, 32));
  for (size_t i = 60; i + 30 < png.size(); ++i) png[i] = static_cast<char>(i * 13);
  write_bytes(dir.file("c/broken.png"), png);
  const SourcePtr src = data::load_image_folder(dir.str(), plain(32), "broken");
  EXPECT_ERROR(dir.file("c/broken.png") + "|corrupt PNG", read_sample(*src, 0));
}

// ================================================================== Tiny ImageNet

// A miniature Tiny ImageNet: wnids in a non-sorted order, 2 train JPEGs per class, 4 val images.
struct MiniTiny {
  TempDir dir;
  std::vector<std::string> wnids = {"n03", "n01", "n02"};
  MiniTiny(const std::string& annotations = "") {
    write_bytes(dir.file("wnids.txt"), "n03\nn01\r\nn02\n\n");
    for (size_t k = 0; k < wnids.size(); ++k) {
      fs::create_directories(dir.file("train/" + wnids[k] + "/images"));
      write_bytes(dir.file("train/" + wnids[k] + "/" + wnids[k] + "_boxes.txt"), "ignored");
      for (int j = 0; j < 2; ++j)
        write_bytes(dir.file("train/" + wnids[k] + "/images/" + wnids[k] + "_" + std::to_string(j) + ".JPEG"),
                    encode_jpeg(smooth_image(16, 16, static_cast<int>(k * 10 + j))));
    }
    fs::create_directories(dir.file("val/images"));
    for (int j = 0; j < 4; ++j)
      write_bytes(dir.file("val/images/val_" + std::to_string(j) + ".JPEG"), encode_jpeg(smooth_image(16, 16, j)));
    write_bytes(dir.file("val/val_annotations.txt"),
                annotations.empty() ? "val_0.JPEG\tn02\t0\t1\t15\t14\nval_1.JPEG\tn03\t2\t2\t9\t9\n"
                                      "val_2.JPEG\tn01\t0\t0\t16\t16\nval_3.JPEG\tn02\t1\t1\t5\t5\n"
                                    : annotations);
  }
};

TEST(TinyImageNet, TrainAndVal) {
  MiniTiny tiny;
  const SourcePtr train = data::load_tiny_imagenet(tiny.dir.str(), "train", plain(16));
  EXPECT_EQ(train->name(), "tiny-imagenet/train");
  ASSERT_EQ(train->size(), 6);
  EXPECT_EQ(train->num_classes(), 3);
  EXPECT_EQ(data::class_names(*train), tiny.wnids);
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(train->label(i), i / 2) << "wnids.txt order, not sorted order";
  const std::vector<float> v = read_sample(*train, 3), want = as_floats(smooth_image(16, 16, 11));
  for (size_t i = 0; i < v.size(); ++i) ASSERT_NEAR(v[i], want[i], 6 / 255.0);
  const SourcePtr val = data::load_tiny_imagenet(tiny.dir.str(), "val", plain(16));
  ASSERT_EQ(val->size(), 4);
  EXPECT_EQ(val->label(0), 2);
  EXPECT_EQ(val->label(1), 0);
  EXPECT_EQ(val->label(2), 1);
  EXPECT_EQ(val->label(3), 2);
  const std::vector<float> v2 = read_sample(*val, 2), want2 = as_floats(smooth_image(16, 16, 2));
  for (size_t i = 0; i < v2.size(); ++i) ASSERT_NEAR(v2[i], want2[i], 6 / 255.0);
}

TEST(TinyImageNet, Errors) {
  {
    MiniTiny tiny("val_0.JPEG\tn02\t0\t1\t15\t14\nval_1.JPEG\tn03\t2\t2\t9\n");
    EXPECT_ERROR(tiny.dir.file("val/val_annotations.txt") + ":2|6 tab-separated columns|got 5",
                 data::load_tiny_imagenet(tiny.dir.str(), "val", plain(16)));
  }
  {
    MiniTiny tiny("val_0.JPEG\tn02\t0\t1\t15\t14\n\nval_1.JPEG\tn99\t2\t2\t9\t9\n");
    EXPECT_ERROR(tiny.dir.file("val/val_annotations.txt") + ":3|unknown class \"n99\"",
                 data::load_tiny_imagenet(tiny.dir.str(), "val", plain(16)));
  }
  {
    MiniTiny tiny("val_0.JPEG\tn02\t0\t1\t15\t14\nval_9.JPEG\tn01\t0\t0\t1\t1\n");
    EXPECT_ERROR(tiny.dir.file("val/images/val_9.JPEG") + "|cannot open",
                 data::load_tiny_imagenet(tiny.dir.str(), "val", plain(16)));
  }
  {
    MiniTiny tiny;
    fs::remove_all(tiny.dir.file("train/n01/images"));
    EXPECT_ERROR(tiny.dir.file("train/n01/images") + "|missing folder",
                 data::load_tiny_imagenet(tiny.dir.str(), "train", plain(16)));
    write_bytes(tiny.dir.file("wnids.txt"), "n03\nn01\nn03\n");
    EXPECT_ERROR(tiny.dir.file("wnids.txt") + ":3|twice", data::load_tiny_imagenet(tiny.dir.str(), "train", plain(16)));
    fs::remove(tiny.dir.file("wnids.txt"));
    EXPECT_ERROR(tiny.dir.file("wnids.txt") + "|missing", data::load_tiny_imagenet(tiny.dir.str(), "val", plain(16)));
    EXPECT_ERROR("train or val", data::load_tiny_imagenet(tiny.dir.str(), "test", plain(16)));
  }
}

// ================================================================== through the loader

std::vector<std::vector<float>> all_batches(const SourcePtr& src, int workers, std::vector<int64_t>* labels) {
  data::LoaderOptions opt;
  opt.batch_size = 4;
  opt.seed = 11;
  opt.workers = workers;
  opt.prefetch = 3;
  data::Loader loader(src, opt);
  loader.set_epoch(2);
  loader.start();
  std::vector<std::vector<float>> out;
  labels->clear();
  while (auto b = loader.next()) {
    EXPECT_EQ(b->inputs.shape()[0], b->labels.size(0));
    out.push_back(b->inputs.to_vector<float>());
    for (int64_t l : b->labels.to_vector<int64_t>()) labels->push_back(l);
  }
  return out;
}

TEST(ImageLoader, SameBatchesWithAnyNumberOfWorkers) {
  TempDir dir;
  write_cifar10(dir.file("cifar"), {5, 5, 5, 5, 5}, 1);
  FolderTree tree;
  MiniTiny tiny;
  const std::vector<SourcePtr> sources = {
      data::load_cifar_binary(dir.file("cifar"), 10, "train",
                              data::train_transform("crop-flip", 32, data::cifar10_mean(), data::cifar10_std())),
      data::load_image_folder(tree.dir.file("train"), data::train_transform("crop-flip", 8, {}, {}), "toy"),
      data::load_tiny_imagenet(
          tiny.dir.str(), "train",
          data::train_transform("rrc-flip", 12, data::tiny_imagenet_mean(), data::tiny_imagenet_std()))};
  for (const SourcePtr& src : sources) {
    SCOPED_TRACE(src->name());
    std::vector<int64_t> l0, l2;
    const auto b0 = all_batches(src, 0, &l0);
    const auto b2 = all_batches(src, 2, &l2);
    EXPECT_EQ(b0, b2);
    EXPECT_EQ(l0, l2);
    EXPECT_EQ(static_cast<int64_t>(l0.size()), src->size());
    // The batches hold each sample once, with its label.
    std::multiset<int64_t> want, got(l0.begin(), l0.end());
    for (int64_t i = 0; i < src->size(); ++i) want.insert(src->label(i));
    EXPECT_EQ(got, want);
  }
}

TEST(ImageLoader, ErrorInAWorkerNamesTheFile) {
  TempDir dir;
  fs::create_directories(dir.file("c"));
  for (int j = 0; j < 6; ++j)
    write_bytes(dir.file("c/" + std::to_string(j) + ".jpg"), encode_jpeg(smooth_image(8, 8, j)));
  std::string png = png_bytes(smooth_image(8, 8));
  for (size_t i = 60; i + 30 < png.size(); ++i) png[i] = static_cast<char>(i * 13);
  write_bytes(dir.file("c/9.png"), png);
  data::LoaderOptions opt;
  opt.batch_size = 2;
  opt.workers = 2;
  data::Loader loader(data::load_image_folder(dir.str(), plain(8), "broken"), opt);
  loader.start();
  EXPECT_ERROR(dir.file("c/9.png"), while (loader.next()){});
}

// ================================================================== the real data sets

std::string data_root() {
  const char* env = std::getenv("S2H_DATA_DIR");
  return env && *env ? env : "/work/datasets";
}

TEST(RealData, Cifar10Jpeg) {
  const std::string root = data_root() + "/cifar-10-jpeg";
  if (!fs::is_directory(root))
    GTEST_SKIP() << root
                 << " does not exist (set S2H_DATA_DIR to the folder holding cifar-10-jpeg/{train,test}/<class>)";
  const auto t0 = std::chrono::steady_clock::now();
  const SourcePtr train = data::load_image_folder(
      root + "/train", data::train_transform("crop-flip", 32, data::cifar10_mean(), data::cifar10_std()),
      "cifar10-jpeg/train");
  const SourcePtr test =
      data::load_image_folder(root + "/test", data::eval_transform(32, data::cifar10_mean(), data::cifar10_std()),
                              "cifar10-jpeg/test", data::class_names(*train));
  std::printf("[ info     ] loaded 60000 CIFAR-10 JPEG files in %.2f s\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  EXPECT_EQ(train->size(), 50000);
  EXPECT_EQ(test->size(), 10000);
  EXPECT_EQ(train->num_classes(), 10);
  EXPECT_EQ(data::class_names(*train), (std::vector<std::string>{"airplane", "automobile", "bird", "cat", "deer", "dog",
                                                                 "frog", "horse", "ship", "truck"}));
  std::vector<int64_t> counts(10, 0);
  for (int64_t i = 0; i < test->size(); ++i) ++counts[static_cast<size_t>(test->label(i))];
  for (int64_t c : counts) EXPECT_EQ(c, 1000);
  // A few samples decode to 32x32x3 with sane values.
  for (int64_t i : {int64_t{0}, int64_t{12345}, int64_t{49999}}) {
    const std::vector<float> v = read_sample(*train, i, 3);
    ASSERT_EQ(v.size(), 32u * 32 * 3);
    for (float x : v) ASSERT_TRUE(std::isfinite(x) && x > -2.1f && x < 2.2f);
  }
}

TEST(RealData, TinyImageNetVal) {
  const std::string root = data_root() + "/tiny-imagenet-200";
  if (!fs::is_directory(root))
    GTEST_SKIP() << root << " does not exist (set S2H_DATA_DIR to the folder holding tiny-imagenet-200)";
  const SourcePtr val = data::load_tiny_imagenet(
      root, "val", data::eval_transform(64, data::tiny_imagenet_mean(), data::tiny_imagenet_std()));
  EXPECT_EQ(val->size(), 10000);
  EXPECT_EQ(val->num_classes(), 200);
  std::vector<int64_t> counts(200, 0);
  for (int64_t i = 0; i < val->size(); ++i) ++counts[static_cast<size_t>(val->label(i))];
  for (int64_t c : counts) EXPECT_EQ(c, 50);
  EXPECT_EQ(read_sample(*val, 0).size(), 64u * 64 * 3);
}

}  // namespace
}  // namespace s2h::test
