// Data: the idx format (data/idx.h), Fashion-MNIST loading, and the seeded
// batch loader (data/dataset.h).
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "data/dataset.h"
#include "data/idx.h"
#include "tests/test_util.h"

namespace s2h::test {
namespace {

namespace fs = std::filesystem;
using data::Dataset;
using data::IdxArray;
using data::Loader;
using data::load_fashion_mnist;
using data::read_idx;
using data::write_idx;

// `bytes` gzipped into `path` by zlib, whatever they contain.
void write_gzip(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  if (!bytes.empty()) {
    ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  }
  ASSERT_EQ(gzclose(f), Z_OK);
}

// The bytes of an idx file of unsigned bytes: magic 0x0000080N, big-endian dims, then `data`.
std::string idx_bytes(const std::vector<uint32_t>& dims, const std::string& data, uint8_t type = 0x08) {
  std::string s = {0, 0, static_cast<char>(type), static_cast<char>(dims.size())};
  for (uint32_t d : dims)
    for (int shift : {24, 16, 8, 0}) s.push_back(static_cast<char>((d >> shift) & 0xff));
  return s + data;
}

std::string pattern(size_t n, unsigned mul = 7) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * mul + i / 256) & 0xff);
  return s;
}

std::vector<uint8_t> as_vector(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

// ================================================================== idx files

TEST(Idx, RoundTripRawAndGzip) {
  TempDir dir;
  const std::vector<uint8_t> labels = as_vector(pattern(37, 3));
  const std::vector<uint8_t> images = as_vector(pattern(5 * 28 * 28));
  for (const char* ext : {"", ".gz"}) {
    SCOPED_TRACE(std::string("extension '") + ext + "'");
    const std::string lpath = dir.file(std::string("labels-idx1-ubyte") + ext);
    const std::string ipath = dir.file(std::string("images-idx3-ubyte") + ext);
    write_idx(lpath, {37}, labels);
    write_idx(ipath, {5, 28, 28}, images);
    const IdxArray l = read_idx(lpath, 1);
    EXPECT_EQ(l.dims, (std::vector<int64_t>{37}));
    EXPECT_EQ(l.bytes, labels);
    const IdxArray im = read_idx(ipath, 3);
    EXPECT_EQ(im.dims, (std::vector<int64_t>{5, 28, 28}));
    EXPECT_EQ(im.bytes, images);
  }
}

TEST(Idx, FileLayout) {
  // Raw files are plain idx (big-endian header); .gz files are real gzip of the same bytes.
  TempDir dir;
  const std::string data = pattern(2 * 3 * 260);
  write_idx(dir.file("x-idx3-ubyte"), {2, 3, 260}, as_vector(data));
  write_idx(dir.file("x-idx3-ubyte.gz"), {2, 3, 260}, as_vector(data));
  const std::string raw = read_bytes(dir.file("x-idx3-ubyte"));
  EXPECT_TRUE(raw == idx_bytes({2, 3, 260}, data)) << "raw file of " << raw.size() << " bytes";
  const std::string gz = read_bytes(dir.file("x-idx3-ubyte.gz"));
  ASSERT_GE(gz.size(), 2u);
  EXPECT_EQ(static_cast<uint8_t>(gz[0]), 0x1f);
  EXPECT_EQ(static_cast<uint8_t>(gz[1]), 0x8b);
  // Decompressed by zlib itself.
  gzFile f = gzopen(dir.file("x-idx3-ubyte.gz").c_str(), "rb");
  ASSERT_NE(f, nullptr);
  std::string back(raw.size() + 16, '\0');
  const int n = gzread(f, back.data(), static_cast<unsigned>(back.size()));
  gzclose(f);
  ASSERT_EQ(n, static_cast<int>(raw.size()));
  EXPECT_TRUE(back.substr(0, raw.size()) == raw);
}

TEST(Idx, EmptyArrays) {
  TempDir dir;
  for (const char* name : {"empty-idx1-ubyte", "empty-idx1-ubyte.gz"}) {
    write_idx(dir.file(name), {0}, {});
    const IdxArray a = read_idx(dir.file(name), 1);
    EXPECT_EQ(a.dims, (std::vector<int64_t>{0})) << name;
    EXPECT_TRUE(a.bytes.empty()) << name;
  }
  write_idx(dir.file("none-idx3-ubyte.gz"), {0, 28, 28}, {});
  EXPECT_EQ(read_idx(dir.file("none-idx3-ubyte.gz"), 3).dims, (std::vector<int64_t>{0, 28, 28}));
}

TEST(IdxErrors, MissingFile) {
  TempDir dir;
  const std::string path = dir.file("train-images-idx3-ubyte.gz");
  expect_error([&] { (void)read_idx(path, 3); }, {path, "not found"}, "missing file");
}

TEST(IdxErrors, WrongMagicNumber) {
  TempDir dir;
  // A labels file read as images, and the other way round.
  const std::string labels = dir.file("labels-idx1-ubyte.gz"), images = dir.file("images-idx3-ubyte.gz");
  write_idx(labels, {10}, as_vector(pattern(10)));
  write_idx(images, {2, 4, 4}, as_vector(pattern(32)));
  expect_error([&] { (void)read_idx(labels, 3); }, {labels, "magic"}, "labels read as images");
  expect_error([&] { (void)read_idx(images, 1); }, {images, "magic"}, "images read as labels");
  // Random bytes (raw and gzipped), and an idx file of another element type (0x0D: float).
  const std::string junk = dir.file("junk.bin"), junk_gz = dir.file("junk.bin.gz"), floats = dir.file("floats-idx1");
  write_bytes(junk, "this is not an idx file at all, just some text");
  write_gzip(junk_gz, "this is not an idx file at all, just some text");
  write_bytes(floats, idx_bytes({2}, std::string(8, '\0'), 0x0D));
  expect_error([&] { (void)read_idx(junk, 1); }, {junk, "magic"}, "random bytes");
  expect_error([&] { (void)read_idx(junk_gz, 1); }, {junk_gz, "magic"}, "random gzipped bytes");
  expect_error([&] { (void)read_idx(floats, 1); }, {floats, "magic"}, "float idx");
}

TEST(IdxErrors, TruncatedData) {
  TempDir dir;
  // The header promises 10 labels / 3 images of 4x4; fewer bytes follow.
  const std::string raw1 = dir.file("short-idx1"), gz1 = dir.file("short-idx1.gz");
  write_bytes(raw1, idx_bytes({10}, pattern(6)));
  write_gzip(gz1, idx_bytes({10}, pattern(6)));
  expect_error([&] { (void)read_idx(raw1, 1); }, {raw1, "truncated", "10"}, "raw labels");
  expect_error([&] { (void)read_idx(gz1, 1); }, {gz1, "truncated", "10"}, "gzipped labels");
  const std::string raw3 = dir.file("short-idx3"), gz3 = dir.file("short-idx3.gz");
  write_bytes(raw3, idx_bytes({3, 4, 4}, pattern(47)));
  write_gzip(gz3, idx_bytes({3, 4, 4}, pattern(47)));
  expect_error([&] { (void)read_idx(raw3, 3); }, {raw3, "truncated", "48"}, "raw images");
  expect_error([&] { (void)read_idx(gz3, 3); }, {gz3, "truncated", "48"}, "gzipped images");
  // A gzip file cut in the middle of its stream (the compressed file, not the content).
  const std::string whole = dir.file("whole-idx3.gz"), cut = dir.file("cut-idx3.gz");
  write_idx(whole, {100, 28, 28}, as_vector(pattern(100 * 28 * 28, 13)));
  const std::string gz = read_bytes(whole);
  write_bytes(cut, gz.substr(0, gz.size() / 2));
  expect_error([&] { (void)read_idx(cut, 3); }, {cut, "truncated"}, "gzip stream cut in half");
}

TEST(IdxErrors, GzipTrailerCut) {
  // BUG (data/idx.cpp, GzFile::read / read_idx): a gzip file that ends before
  // its 8-byte trailer (CRC-32 and length) is accepted when the decompressed
  // bytes happen to be complete. zlib's gzread reports the missing end as
  // Z_BUF_ERROR "unexpected end of file" but still returns the bytes it has
  // (not -1), and read_idx never asks gzerror() afterwards, so the integrity
  // check of a truncated download is silently skipped. Expected: an s2h::Error
  // naming the file and saying it is truncated (check gzerror for Z_BUF_ERROR
  // after the final read).
  TempDir dir;
  const std::string whole = dir.file("whole-idx3.gz"), cut = dir.file("cut-idx3.gz");
  write_idx(whole, {100, 28, 28}, as_vector(pattern(100 * 28 * 28, 13)));
  const std::string gz = read_bytes(whole);
  for (size_t missing : {size_t{4}, size_t{8}}) {
    write_bytes(cut, gz.substr(0, gz.size() - missing));
    expect_error([&] { (void)read_idx(cut, 3); }, {cut, "truncated"},
                 fmt::format("the last {} bytes of the gzip trailer are missing", missing));
  }
}

TEST(IdxErrors, TruncatedHeader) {
  TempDir dir;
  const std::string in_magic = dir.file("magic-idx3"), in_dims = dir.file("dims-idx3"), in_dims_gz = dir.file("dims-idx3.gz");
  write_bytes(in_magic, std::string("\0\0\x08", 3));
  write_bytes(in_dims, idx_bytes({5, 28, 28}, "").substr(0, 10));  // magic, one dimension, half of the next
  write_gzip(in_dims_gz, idx_bytes({5, 28, 28}, "").substr(0, 8));
  expect_error([&] { (void)read_idx(in_magic, 3); }, {in_magic, "truncated", "magic"}, "inside the magic number");
  expect_error([&] { (void)read_idx(in_dims, 3); }, {in_dims, "truncated", "header"}, "inside the dimensions");
  expect_error([&] { (void)read_idx(in_dims_gz, 3); }, {in_dims_gz, "truncated", "header"}, "gzipped, inside dims");
  const std::string empty = dir.file("empty-idx1"), empty_gz = dir.file("empty-idx1.gz");
  write_bytes(empty, "");
  write_gzip(empty_gz, "");
  expect_error([&] { (void)read_idx(empty, 1); }, {empty, "truncated"}, "empty file");
  expect_error([&] { (void)read_idx(empty_gz, 1); }, {empty_gz, "truncated"}, "empty gzip stream");
}

TEST(IdxErrors, TrailingBytes) {
  TempDir dir;
  const std::string raw = dir.file("long-idx1"), gz = dir.file("long-idx1.gz");
  write_bytes(raw, idx_bytes({10}, pattern(11)));
  write_gzip(gz, idx_bytes({10}, pattern(10) + "extra"));
  expect_error([&] { (void)read_idx(raw, 1); }, {raw, "after"}, "raw, one byte too many");
  expect_error([&] { (void)read_idx(gz, 1); }, {gz, "after"}, "gzipped, five bytes too many");
}

TEST(IdxErrors, ImplausibleDimensions) {
  TempDir dir;
  const std::string path = dir.file("huge-idx3");
  write_bytes(path, idx_bytes({0xffffffffu, 0xffffffffu, 28}, pattern(16)));
  expect_error([&] { (void)read_idx(path, 3); }, {path, "dimensions"}, "2^64 elements");
}

TEST(IdxErrors, CorruptGzipStream) {
  TempDir dir;
  const std::string good = dir.file("good-idx3.gz");
  write_idx(good, {50, 28, 28}, as_vector(pattern(50 * 28 * 28, 5)));
  const std::string gz = read_bytes(good);
  ASSERT_GT(gz.size(), 64u);
  // A wrong CRC-32 in the trailer: the data decode, the check fails.
  std::string bad_crc = gz;
  bad_crc[bad_crc.size() - 8] = static_cast<char>(bad_crc[bad_crc.size() - 8] ^ 0x5a);
  const std::string crc_path = dir.file("crc-idx3.gz");
  write_bytes(crc_path, bad_crc);
  expect_error([&] { (void)read_idx(crc_path, 3); }, {crc_path, "corrupt"}, "bad CRC");
  // Garbage in the middle of the deflate stream.
  std::string garbage = gz;
  for (size_t i = garbage.size() / 3; i < garbage.size() / 3 + 32; ++i) garbage[i] = static_cast<char>(0xff);
  const std::string mid_path = dir.file("mid-idx3.gz");
  write_bytes(mid_path, garbage);
  expect_error([&] { (void)read_idx(mid_path, 3); }, {mid_path, "corrupt"}, "garbage in the stream");
}

// ================================================================== Fashion-MNIST

constexpr double kMean = 0.2860, kStd = 0.3530;

uint8_t fake_pixel(int64_t image, int64_t k) { return static_cast<uint8_t>((image * 31 + k * 7) % 256); }
uint8_t fake_label(int64_t image) { return static_cast<uint8_t>((image * 3) % 10); }

// root/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz with n_train and n_test images of rows x cols.
void write_fake_fmnist(const std::string& root, int64_t n_train, int64_t n_test, int64_t rows = 28, int64_t cols = 28) {
  for (const auto& [prefix, n] : {std::pair<std::string, int64_t>{"train", n_train}, {"t10k", n_test}}) {
    std::vector<uint8_t> px(static_cast<size_t>(n * rows * cols)), lb(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      lb[static_cast<size_t>(i)] = fake_label(i + (prefix == "t10k" ? 1 : 0));
      for (int64_t k = 0; k < rows * cols; ++k) px[static_cast<size_t>(i * rows * cols + k)] = fake_pixel(i, k);
    }
    write_idx(root + "/" + prefix + "-images-idx3-ubyte.gz", {n, rows, cols}, px);
    write_idx(root + "/" + prefix + "-labels-idx1-ubyte.gz", {n}, lb);
  }
}

TEST(FashionMnist, FakeDatasetShapesNormalisationLabels) {
  TempDir dir;
  write_fake_fmnist(dir.str(), 50, 20);
  for (const auto& [split, n] : {std::pair<std::string, int64_t>{"train", 50}, {"test", 20}}) {
    SCOPED_TRACE(split);
    const Dataset ds = load_fashion_mnist(dir.str(), split);
    EXPECT_EQ(ds.name, "fashion-mnist/" + split);
    EXPECT_EQ(ds.num_classes, 10);
    EXPECT_EQ(ds.size(), n);
    ASSERT_EQ(ds.images.shape(), (Shape{n, 28, 28, 1}));
    EXPECT_EQ(ds.images.dtype(), DType::F32);
    ASSERT_EQ(ds.labels.shape(), (Shape{n}));
    EXPECT_EQ(ds.labels.dtype(), DType::I64);
    const std::vector<float> px = ds.images.to_vector<float>();
    int bad = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < 28 * 28; ++k) {
        const double want = (fake_pixel(i, k) / 255.0 - kMean) / kStd;
        const double got = px[static_cast<size_t>(i * 784 + k)];
        if (!(std::abs(got - want) <= 1e-5) && bad++ < 5)
          ADD_FAILURE() << "image " << i << " pixel " << k << ": " << got << ", expected " << want;
      }
    const std::vector<int64_t> lb = ds.labels.to_vector<int64_t>();
    for (int64_t i = 0; i < n; ++i)
      EXPECT_EQ(lb[static_cast<size_t>(i)], fake_label(i + (split == "test" ? 1 : 0))) << "label " << i;
  }
}

TEST(FashionMnist, NormalisationEndPoints) {
  // Pixel 0 -> -0.2860/0.3530, pixel 255 -> (1 - 0.2860)/0.3530, in row-major HW order with C = 1.
  TempDir dir;
  std::vector<uint8_t> px(2 * 28 * 28, 0);
  px[5] = 255;            // image 0, row 0, col 5
  px[784 + 28 * 3 + 1] = 128;  // image 1, row 3, col 1
  write_idx(dir.file("train-images-idx3-ubyte.gz"), {2, 28, 28}, px);
  write_idx(dir.file("train-labels-idx1-ubyte.gz"), {2}, {0, 9});
  const Dataset ds = load_fashion_mnist(dir.str(), "train");
  const float* p = ds.images.data<float>();
  EXPECT_NEAR(p[0], -kMean / kStd, 1e-6);
  EXPECT_NEAR(p[5], (1 - kMean) / kStd, 1e-6);
  EXPECT_NEAR(p[784 + 28 * 3 + 1], (128 / 255.0 - kMean) / kStd, 1e-6);
  EXPECT_EQ(ds.labels.to_vector<int64_t>(), (std::vector<int64_t>{0, 9}));
}

TEST(FashionMnistErrors, MissingRoot) {
  TempDir dir;
  const std::string root = dir.file("no-such-folder");
  expect_error([&] { (void)load_fashion_mnist(root, "train"); }, {root, "not a directory"}, "missing root");
}

TEST(FashionMnistErrors, MissingFile) {
  TempDir dir;
  write_fake_fmnist(dir.str(), 10, 10);
  fs::remove(dir.file("t10k-labels-idx1-ubyte.gz"));
  EXPECT_NO_THROW((void)load_fashion_mnist(dir.str(), "train"));
  expect_error([&] { (void)load_fashion_mnist(dir.str(), "test"); },
               {dir.file("t10k-labels-idx1-ubyte.gz"), "not found"}, "missing labels");
}

TEST(FashionMnistErrors, CountMismatch) {
  TempDir dir;
  write_fake_fmnist(dir.str(), 50, 20);
  write_idx(dir.file("train-labels-idx1-ubyte.gz"), {49}, std::vector<uint8_t>(49, 1));
  expect_error([&] { (void)load_fashion_mnist(dir.str(), "train"); },
               {dir.file("train-images-idx3-ubyte.gz"), dir.file("train-labels-idx1-ubyte.gz"), "50", "49"},
               "50 images, 49 labels");
}

TEST(FashionMnistErrors, LabelOutOfRange) {
  TempDir dir;
  write_fake_fmnist(dir.str(), 50, 20);
  std::vector<uint8_t> lb(20, 3);
  lb[7] = 10;
  write_idx(dir.file("t10k-labels-idx1-ubyte.gz"), {20}, lb);
  expect_error([&] { (void)load_fashion_mnist(dir.str(), "test"); },
               {dir.file("t10k-labels-idx1-ubyte.gz"), "10", "position 7", "0..9"}, "label 10");
  lb[7] = 3;
  lb[19] = 255;
  write_idx(dir.file("t10k-labels-idx1-ubyte.gz"), {20}, lb);
  expect_error([&] { (void)load_fashion_mnist(dir.str(), "test"); },
               {dir.file("t10k-labels-idx1-ubyte.gz"), "255", "position 19"}, "label 255");
}

TEST(FashionMnistErrors, UnknownSplit) {
  TempDir dir;
  write_fake_fmnist(dir.str(), 10, 10);
  for (const char* split : {"val", "t10k", "Train", ""})
    expect_error([&] { (void)load_fashion_mnist(dir.str(), split); }, {"unknown split", fmt::format("'{}'", split)},
                 fmt::format("split '{}'", split));
}

TEST(FashionMnistErrors, SwappedFiles) {
  // The images file where the labels file should be: a magic-number error naming the file.
  TempDir dir;
  write_fake_fmnist(dir.str(), 10, 10);
  fs::rename(dir.file("train-labels-idx1-ubyte.gz"), dir.file("tmp"));
  fs::copy_file(dir.file("train-images-idx3-ubyte.gz"), dir.file("train-labels-idx1-ubyte.gz"));
  expect_error([&] { (void)load_fashion_mnist(dir.str(), "train"); },
               {dir.file("train-labels-idx1-ubyte.gz"), "magic"}, "images as labels");
}

TEST(FashionMnistErrors, ImagesThatAreNot28x28) {
  // BUG (data/idx.cpp, load_fashion_mnist): the header promises images of
  // f32 NHWC [N, 28, 28, 1], but the image size is taken from the file without
  // a check: 32x32 images load as [N, 32, 32, 1] and the mistake only shows up
  // later as a shape error deep inside the model. Expected: an s2h::Error
  // naming the images file and saying 28x28 was expected.
  TempDir dir;
  write_fake_fmnist(dir.str(), 10, 10, 32, 32);
  expect_error([&] { (void)load_fashion_mnist(dir.str(), "train"); }, {dir.file("train-images-idx3-ubyte.gz"), "28"},
               "32x32 images");
}

// The real data set, when the Debian package dataset-fashion-mnist is installed.
TEST(FashionMnist, RealDataset) {
  const std::string root = "/usr/share/datasets/fashion-mnist";
  if (!fs::is_directory(root))
    GTEST_SKIP() << root << " does not exist (install the Debian package dataset-fashion-mnist to run this test)";
  for (const auto& [split, n] : {std::pair<std::string, int64_t>{"train", 60000}, {"test", 10000}}) {
    SCOPED_TRACE(split);
    const Dataset ds = load_fashion_mnist(root, split);
    ASSERT_EQ(ds.size(), n);
    EXPECT_EQ(ds.images.shape(), (Shape{n, 28, 28, 1}));
    EXPECT_EQ(ds.labels.shape(), (Shape{n}));
    std::vector<int64_t> counts(10, 0);
    for (int64_t l : ds.labels.to_vector<int64_t>()) {
      ASSERT_TRUE(l >= 0 && l < 10) << "label " << l;
      ++counts[static_cast<size_t>(l)];
    }
    for (int c = 0; c < 10; ++c) EXPECT_EQ(counts[static_cast<size_t>(c)], n / 10) << "class " << c;
    // Pixels span 0..255 after normalisation, and the training mean is the constant used.
    const std::vector<float> px = ds.images.to_vector<float>();
    const auto [lo, hi] = std::minmax_element(px.begin(), px.end());
    EXPECT_NEAR(*lo, -kMean / kStd, 1e-5);
    EXPECT_NEAR(*hi, (1 - kMean) / kStd, 1e-5);
    double mean = 0;
    for (float v : px) mean += v * kStd + kMean;
    mean /= static_cast<double>(px.size());
    EXPECT_NEAR(mean, kMean, 0.005) << "mean pixel / 255";
  }
}

// ================================================================== Loader

// n images of 2x2x1 whose pixels all hold the row number; label = row % 10.
Dataset numbered_dataset(int64_t n) {
  Dataset ds;
  ds.name = "numbered";
  ds.num_classes = 10;
  std::vector<float> px(static_cast<size_t>(n * 4));
  std::vector<int64_t> lb(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    for (int k = 0; k < 4; ++k) px[static_cast<size_t>(i * 4 + k)] = static_cast<float>(i) + 0.25f * k;
    lb[static_cast<size_t>(i)] = i % 10;
  }
  ds.images = Tensor::from_vector<float>(px, {n, 2, 2, 1});
  ds.labels = Tensor::from_vector<int64_t>(lb, {n});
  return ds;
}

// The dataset rows of one epoch, batch after batch, checked against order().
std::vector<int64_t> epoch_rows(const Loader& loader, const Dataset& ds) {
  std::vector<int64_t> rows;
  for (int64_t b = 0; b < loader.num_batches(); ++b) {
    const data::Batch batch = loader.batch(b);
    const int64_t m = batch.inputs.size(0);
    EXPECT_EQ(batch.inputs.shape(), (Shape{m, 2, 2, 1}));
    EXPECT_EQ(batch.labels.shape(), (Shape{m}));
    EXPECT_EQ(batch.labels.dtype(), DType::I64);
    const std::vector<float> px = batch.inputs.to_vector<float>();
    const std::vector<int64_t> lb = batch.labels.to_vector<int64_t>();
    for (int64_t j = 0; j < m; ++j) {
      const int64_t row = static_cast<int64_t>(px[static_cast<size_t>(j * 4)]);
      EXPECT_EQ(row, loader.order()[static_cast<size_t>(b * loader.batch_size() + j)]) << "batch " << b << " item " << j;
      for (int k = 0; k < 4; ++k)
        EXPECT_EQ(px[static_cast<size_t>(j * 4 + k)], ds.images.data<float>()[row * 4 + k]) << "row " << row;
      EXPECT_EQ(lb[static_cast<size_t>(j)], row % 10) << "row " << row;
      rows.push_back(row);
    }
  }
  return rows;
}

TEST(Loader, BatchCountsAndLastBatch) {
  const Dataset ds = numbered_dataset(23);
  const Loader keep(ds, 5, true, 1);
  EXPECT_EQ(keep.num_batches(), 5);
  EXPECT_EQ(keep.batch(0).inputs.size(0), 5);
  EXPECT_EQ(keep.batch(4).inputs.size(0), 3);
  EXPECT_EQ(keep.batch(4).labels.size(0), 3);
  const Loader drop(ds, 5, true, 1, /*drop_last=*/true);
  EXPECT_EQ(drop.num_batches(), 4);
  EXPECT_EQ(drop.batch(3).inputs.size(0), 5);
  EXPECT_THROW((void)drop.batch(4), Error);
  EXPECT_THROW((void)keep.batch(5), Error);
  EXPECT_THROW((void)keep.batch(-1), Error);
  // Exact multiples, one big batch, batch size 1.
  EXPECT_EQ(Loader(ds, 23, true, 1).num_batches(), 1);
  EXPECT_EQ(Loader(ds, 23, true, 1, true).num_batches(), 1);
  EXPECT_EQ(Loader(ds, 100, false, 1).num_batches(), 1);
  EXPECT_EQ(Loader(ds, 100, false, 1).batch(0).inputs.size(0), 23);
  EXPECT_EQ(Loader(ds, 1, true, 1).num_batches(), 23);
  const Dataset even = numbered_dataset(20);
  EXPECT_EQ(Loader(even, 5, true, 1).num_batches(), 4);
  EXPECT_EQ(Loader(even, 5, true, 1, true).num_batches(), 4);
}

TEST(Loader, OneEpochIsAPermutation) {
  const Dataset ds = numbered_dataset(23);
  Loader loader(ds, 5, true, 42);
  for (int64_t epoch : {0, 1, 7}) {
    SCOPED_TRACE(epoch);
    loader.set_epoch(epoch);
    std::vector<int64_t> rows = epoch_rows(loader, ds);
    ASSERT_EQ(rows.size(), 23u);
    std::sort(rows.begin(), rows.end());
    for (int64_t i = 0; i < 23; ++i) EXPECT_EQ(rows[static_cast<size_t>(i)], i);
  }
  // With drop_last: 20 distinct rows, the dropped 3 are the last of the order.
  Loader drop(ds, 5, true, 42, true);
  std::vector<int64_t> rows = epoch_rows(drop, ds);
  ASSERT_EQ(rows.size(), 20u);
  EXPECT_EQ(std::set<int64_t>(rows.begin(), rows.end()).size(), 20u);
  EXPECT_EQ(std::vector<int64_t>(drop.order().begin(), drop.order().begin() + 20), rows);
}

TEST(Loader, SeededOrder) {
  const Dataset ds = numbered_dataset(23);
  Loader a(ds, 4, true, 7), b(ds, 4, true, 7), other_seed(ds, 4, true, 8);
  EXPECT_EQ(a.order(), b.order()) << "same seed, epoch 0";
  EXPECT_NE(a.order(), other_seed.order()) << "different seeds";
  std::vector<int64_t> identity(23);
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_NE(a.order(), identity) << "shuffled";
  const std::vector<int64_t> epoch0 = a.order();
  a.set_epoch(1);
  const std::vector<int64_t> epoch1 = a.order();
  EXPECT_NE(epoch0, epoch1) << "different epochs";
  a.set_epoch(2);
  EXPECT_NE(a.order(), epoch1);
  EXPECT_NE(a.order(), epoch0);
  // Resuming: any epoch can be drawn again, in any order of calls.
  b.set_epoch(1);
  EXPECT_EQ(b.order(), epoch1);
  a.set_epoch(0);
  EXPECT_EQ(a.order(), epoch0);
  EXPECT_EQ(epoch_rows(a, ds), epoch_rows(Loader(ds, 4, true, 7), ds));
}

TEST(Loader, NoShuffleKeepsOrder) {
  const Dataset ds = numbered_dataset(23);
  Loader loader(ds, 6, false, 123);
  std::vector<int64_t> identity(23);
  std::iota(identity.begin(), identity.end(), 0);
  for (int64_t epoch : {0, 1, 5}) {
    loader.set_epoch(epoch);
    EXPECT_EQ(loader.order(), identity) << "epoch " << epoch;
    EXPECT_EQ(epoch_rows(loader, ds), identity) << "epoch " << epoch;
  }
}

TEST(Loader, BadArguments) {
  const Dataset ds = numbered_dataset(5);
  expect_error([&] { Loader(ds, 0, true, 1); }, {"batch size", "0"}, "batch size 0");
  expect_error([&] { Loader(ds, -3, false, 1); }, {"batch size", "-3"}, "batch size -3");
  Dataset empty;
  empty.name = "nothing";
  expect_error([&] { Loader(empty, 4, true, 1); }, {"nothing", "empty"}, "empty dataset");
}

TEST(Loader, OverTheFakeFashionMnist) {
  TempDir dir;
  write_fake_fmnist(dir.str(), 50, 20);
  const Dataset ds = load_fashion_mnist(dir.str(), "train");
  Loader loader(ds, 16, true, 3);
  ASSERT_EQ(loader.num_batches(), 4);
  std::set<int64_t> seen;
  for (int64_t b = 0; b < loader.num_batches(); ++b) {
    const data::Batch batch = loader.batch(b);
    const int64_t m = batch.inputs.size(0);
    EXPECT_EQ(m, b < 3 ? 16 : 2);
    EXPECT_EQ(batch.inputs.shape(), (Shape{m, 28, 28, 1}));
    const std::vector<float> got = batch.inputs.to_vector<float>();
    const std::vector<int64_t> lb = batch.labels.to_vector<int64_t>();
    for (int64_t j = 0; j < m; ++j) {
      const int64_t row = loader.order()[static_cast<size_t>(b * 16 + j)];
      seen.insert(row);
      EXPECT_EQ(lb[static_cast<size_t>(j)], fake_label(row));
      const float* want = ds.images.data<float>() + row * 784;
      EXPECT_TRUE(std::equal(want, want + 784, got.begin() + j * 784)) << "batch " << b << " item " << j;
    }
  }
  EXPECT_EQ(seen.size(), 50u);
}

}  // namespace
}  // namespace s2h::test
