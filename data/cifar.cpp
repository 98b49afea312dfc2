#include "data/cifar.h"

#include <filesystem>
#include <memory>
#include <vector>

#include "data/image.h"
#include "engine/error.h"

namespace s2h::data {

namespace {

namespace fs = std::filesystem;

constexpr int64_t kSide = 32, kChannels = 3, kPixels = kSide * kSide * kChannels;  // 3072 bytes per image

const std::vector<std::string> kCifar10Names = {"airplane", "automobile", "bird",  "cat",  "deer",
                                                "dog",      "frog",       "horse", "ship", "truck"};
const std::vector<std::string> kCifar100Fine = {
    "apple",      "aquarium_fish", "baby",         "bear",       "beaver",      "bed",         "bee",
    "beetle",     "bicycle",       "bottle",       "bowl",       "boy",         "bridge",      "bus",
    "butterfly",  "camel",         "can",          "castle",     "caterpillar", "cattle",      "chair",
    "chimpanzee", "clock",         "cloud",        "cockroach",  "couch",       "crab",        "crocodile",
    "cup",        "dinosaur",      "dolphin",      "elephant",   "flatfish",    "forest",      "fox",
    "girl",       "hamster",       "house",        "kangaroo",   "keyboard",    "lamp",        "lawn_mower",
    "leopard",    "lion",          "lizard",       "lobster",    "man",         "maple_tree",  "motorcycle",
    "mountain",   "mouse",         "mushroom",     "oak_tree",   "orange",      "orchid",      "otter",
    "palm_tree",  "pear",          "pickup_truck", "pine_tree",  "plain",       "plate",       "poppy",
    "porcupine",  "possum",        "rabbit",       "raccoon",    "ray",         "road",        "rocket",
    "rose",       "sea",           "seal",         "shark",      "shrew",       "skunk",       "skyscraper",
    "snail",      "snake",         "spider",       "squirrel",   "streetcar",   "sunflower",   "sweet_pepper",
    "table",      "tank",          "telephone",    "television", "tiger",       "tractor",     "train",
    "trout",      "tulip",         "turtle",       "wardrobe",   "whale",       "willow_tree", "wolf",
    "woman",      "worm"};
const std::vector<std::string> kCifar100Coarse = {"aquatic_mammals",
                                                  "fish",
                                                  "flowers",
                                                  "food_containers",
                                                  "fruit_and_vegetables",
                                                  "household_electrical_devices",
                                                  "household_furniture",
                                                  "insects",
                                                  "large_carnivores",
                                                  "large_man-made_outdoor_things",
                                                  "large_natural_outdoor_scenes",
                                                  "large_omnivores_and_herbivores",
                                                  "medium_mammals",
                                                  "non-insect_invertebrates",
                                                  "people",
                                                  "reptiles",
                                                  "small_mammals",
                                                  "trees",
                                                  "vehicles_1",
                                                  "vehicles_2"};

class CifarSource : public Source, public ClassNames {
 public:
  CifarSource(std::string name, std::vector<uint8_t> pixels, std::vector<uint8_t> labels,
              const std::vector<std::string>& names, const ImageTransform& tf)
      : name_(std::move(name)), pixels_(std::move(pixels)), labels_(std::move(labels)), names_(names), tf_(tf) {}
  std::string name() const override { return name_; }
  int64_t size() const override { return static_cast<int64_t>(labels_.size()); }
  int64_t num_classes() const override { return static_cast<int64_t>(names_.size()); }
  int64_t label(int64_t i) const override {
    S2H_CHECK(i >= 0 && i < size(), "{}: sample {} is out of range ({} samples)", name_, i, size());
    return labels_[static_cast<size_t>(i)];
  }
  SampleSpec sample_spec() const override { return {DType::F32, {tf_.out_size, tf_.out_size, kChannels}}; }
  void read(int64_t i, void* out, Generator& rng) const override {
    S2H_CHECK(i >= 0 && i < size(), "{}: sample {} is out of range ({} samples)", name_, i, size());
    apply_transform(pixels_.data() + i * kPixels, kSide, kSide, kChannels, tf_, rng, static_cast<float*>(out));
  }
  const std::vector<std::string>& class_names() const override { return names_; }

 private:
  std::string name_;
  std::vector<uint8_t> pixels_;  // [N][32][32][3]
  std::vector<uint8_t> labels_;
  std::vector<std::string> names_;
  ImageTransform tf_;
};

// The folder holding the files: root itself, or the folder the official archive extracts to.
fs::path resolve_root(const std::string& root, const std::string& subfolder, const std::string& probe_file) {
  const fs::path r(root);
  std::error_code ec;
  if (!fs::exists(r / probe_file, ec) && fs::exists(r / subfolder / probe_file, ec)) return r / subfolder;
  return r;
}

}  // namespace

SourcePtr load_cifar_binary(const std::string& root, int variant, const std::string& split, const ImageTransform& tf,
                            bool coarse) {
  S2H_CHECK(variant == 10 || variant == 100, "CIFAR variant must be 10 or 100, got {}", variant);
  S2H_CHECK(split == "train" || split == "test", "CIFAR split must be train or test, got \"{}\"", split);
  S2H_CHECK(!coarse || variant == 100, "coarse labels exist only in CIFAR-100");
  check_transform(tf, kChannels);
  std::vector<std::string> files;
  if (variant == 10 && split == "train")
    files = {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"};
  else if (variant == 10)
    files = {"test_batch.bin"};
  else
    files = {split + ".bin"};
  const char* expected =
      variant == 10 ? "data_batch_1.bin .. data_batch_5.bin and test_batch.bin" : "train.bin and test.bin";
  const fs::path dir = resolve_root(root, variant == 10 ? "cifar-10-batches-bin" : "cifar-100-binary", files[0]);

  const int64_t label_bytes = variant == 10 ? 1 : 2;
  const int64_t record = label_bytes + kPixels;
  const std::vector<std::string>& names = variant == 10 ? kCifar10Names : coarse ? kCifar100Coarse : kCifar100Fine;
  std::vector<uint8_t> pixels, labels;
  for (const std::string& f : files) {
    const std::string path = (dir / f).string();
    std::error_code ec;
    S2H_CHECK(fs::is_regular_file(path, ec), "{}: missing; a CIFAR-{} folder holds {} (the binary version)", path,
              variant, expected);
    const std::vector<uint8_t> bytes = read_file_bytes(path);
    const auto n = static_cast<int64_t>(bytes.size());
    S2H_CHECK(n % record == 0, "{}: truncated: {} bytes is not a whole number of {}-byte records", path, n, record);
    S2H_CHECK(n > 0, "{}: empty file, expected {}-byte records", path, record);
    const int64_t count = n / record;
    const size_t base = labels.size();
    labels.resize(base + static_cast<size_t>(count));
    pixels.resize(pixels.size() + static_cast<size_t>(count * kPixels));
    for (int64_t r = 0; r < count; ++r) {
      const uint8_t* rec = bytes.data() + r * record;
      if (variant == 100)
        S2H_CHECK(
            rec[0] < 20 && rec[1] < 100,
            "{}: record {} (byte offset {}): coarse label {} or fine label {} is out of range (20 and 100 classes)",
            path, r, r * record, rec[0], rec[1]);
      else
        S2H_CHECK(rec[0] < 10, "{}: record {} (byte offset {}): label {} is out of range (10 classes)", path, r,
                  r * record, rec[0]);
      labels[base + static_cast<size_t>(r)] = variant == 10 ? rec[0] : coarse ? rec[0] : rec[1];
      // Planar R, G, B -> interleaved HWC.
      const uint8_t* src = rec + label_bytes;
      uint8_t* dst = pixels.data() + (base + static_cast<size_t>(r)) * kPixels;
      for (int64_t p = 0; p < kSide * kSide; ++p)
        for (int64_t ch = 0; ch < kChannels; ++ch) dst[p * kChannels + ch] = src[ch * kSide * kSide + p];
    }
  }
  std::string name = (variant == 10 ? "cifar10/" : coarse ? "cifar100-coarse/" : "cifar100/") + split;
  return std::make_shared<CifarSource>(std::move(name), std::move(pixels), std::move(labels), names, tf);
}

}  // namespace s2h::data
