// The CNN models (models/resnet, mobilenet, vgg, cnn_small): parameter counts
// and FLOPs against PyTorch definitions of the same networks
// (golden/model_counts.json, written by golden/make_model_golden.py from
// golden/ref_cnn.py), forward passes against PyTorch (files made at test time
// by the golden_models_forward CTest fixture), the channel-group descriptions,
// and a training step.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <set>

#include "models/groups.h"
#include "models/mobilenet.h"
#include "models/registry.h"
#include "models/resnet.h"
#include "tests/test_util.h"

namespace s2h::test {
namespace {

using models::ChannelGroup;
using models::ChannelMask;
using models::ModelConfig;

// The CNN entries of model_counts.json (its Transformer entries are test_models_transformer's).
const std::vector<std::string> kCnnKeys = {
    "cnn-small", "resnet20", "resnet56", "resnet18", "resnet50", "wrn28-10", "mobilenetv2", "mobilenetv3-large",
    "mobilenetv3-small", "vgg16-bn",
    // Tiny ImageNet and ImageNet sizes (the large-input stems, strides and classifiers)
    "resnet18@64", "resnet50@64", "vgg16-bn@64", "resnet18@224", "mobilenetv2@224", "mobilenetv3-large@224",
    "mobilenetv3-small@224"};
const std::set<std::string> kCnnModels = {
    "cnn-small", "resnet20", "resnet56", "resnet18", "resnet50", "wrn28-10", "mobilenetv2", "mobilenetv3-large",
    "mobilenetv3-small", "vgg16-bn"};

const nlohmann::json& counts() {
  static const nlohmann::json j = nlohmann::json::parse(read_bytes(source_dir() + "/golden/model_counts.json"));
  return j;
}

// "CxHxW" (square) -> in_channels, image_size.
ModelConfig config_for(const std::string& input, int64_t classes, bool imagenet_stem = false) {
  long long c = 0, h = 0, w = 0;
  EXPECT_EQ(std::sscanf(input.c_str(), "%lldx%lldx%lld", &c, &h, &w), 3) << "input spec " << input;
  EXPECT_EQ(h, w) << "input spec " << input;
  ModelConfig cfg;
  cfg.in_channels = c;
  cfg.image_size = h;
  cfg.num_classes = classes;
  cfg.imagenet_stem = imagenet_stem;
  return cfg;
}

ModelConfig config_of(const nlohmann::json& e) {
  return config_for(e.at("input").get<std::string>(), e.at("classes").get<int64_t>(), e.value("imagenet_stem", false));
}

ModelConfig cifar(int64_t image_size = 32) { return config_for(fmt::format("3x{}x{}", image_size, image_size), 10); }

Tensor images(int64_t n, const ModelConfig& cfg) {
  return randn({n, cfg.image_size, cfg.image_size, cfg.in_channels}, DType::F32);
}

bool all_finite(const Tensor& t) {
  for (double v : values(t))
    if (!std::isfinite(v)) return false;
  return true;
}

std::map<std::string, Module*> modules_by_name(const Module& m) {
  std::map<std::string, Module*> out;
  for (auto& [name, mod] : m.named_modules()) out[name] = mod;
  return out;
}

const ChannelGroup& group(const std::vector<ChannelGroup>& gs, const std::string& name) {
  for (const ChannelGroup& g : gs)
    if (g.name == name) return g;
  static const ChannelGroup none;
  ADD_FAILURE() << "no channel group " << name;
  return none;
}

std::set<std::string> as_set(const std::vector<std::string>& v) { return {v.begin(), v.end()}; }

// ------------------------------------------------------------------ group structure, for any CNN
// Every conv's output is described exactly once: each non-depthwise conv is a
// producer of one group (squeeze-excite convs excepted: the SE module follows
// its group and fc1 reads it); each depthwise conv, BN and mask belongs to one
// group; every conv and the classifier's first linear layer read one group;
// the stem conv reads the image and nothing else is left out.
void check_group_roles(const Module& model, const std::vector<ChannelGroup>& groups, const std::string& what) {
  std::map<std::string, int> produced, consumed, followed, masked;
  for (const ChannelGroup& g : groups) {
    for (const auto& n : g.producers) ++produced[n];
    for (const auto& n : g.consumers) ++consumed[n];
    for (const auto& n : g.followers) ++followed[n];
    for (const auto& n : g.masks) ++masked[n];
  }
  std::set<std::string> se_convs;
  for (auto& [name, m] : model.named_modules())
    if (dynamic_cast<const models::SqueezeExcitation*>(m)) {
      se_convs.insert(name + ".fc1");
      se_convs.insert(name + ".fc2");
      EXPECT_EQ(followed[name], 1) << what << ": squeeze-excite " << name << " follows " << followed[name] << " groups";
      EXPECT_EQ(consumed[name + ".fc1"], 1) << what << ": " << name << ".fc1 reads " << consumed[name + ".fc1"]
                                            << " groups";
      EXPECT_EQ(consumed[name + ".fc2"] + produced[name + ".fc2"], 0) << what << ": " << name << ".fc2 is listed";
    }
  bool stem_seen = false;
  int linear_consumers = 0;
  for (auto& [name, m] : model.named_modules()) {
    if (const auto* c = dynamic_cast<const Conv2d*>(m)) {
      if (se_convs.count(name)) continue;
      const bool depthwise = c->options.groups > 1 && c->options.groups == c->in_channels;
      if (depthwise) {
        EXPECT_EQ(followed[name], 1) << what << ": depthwise conv " << name << " follows " << followed[name]
                                     << " groups";
        EXPECT_EQ(produced[name] + consumed[name], 0)
            << what << ": depthwise conv " << name << " is not a follower only";
        continue;
      }
      EXPECT_EQ(produced[name], 1) << what << ": conv " << name << " produces " << produced[name] << " groups";
      if (!stem_seen) {  // the first conv in module order reads the image
        stem_seen = true;
        EXPECT_EQ(consumed[name], 0) << what << ": the stem conv " << name << " reads a group";
      } else {
        EXPECT_EQ(consumed[name], 1) << what << ": conv " << name << " reads " << consumed[name] << " groups";
      }
    } else if (dynamic_cast<const Linear*>(m)) {
      EXPECT_EQ(produced[name], 0) << what << ": linear " << name << " produces a group";
      EXPECT_LE(consumed[name], 1) << what << ": linear " << name << " reads " << consumed[name] << " groups";
      linear_consumers += consumed[name];
    } else if (dynamic_cast<const BatchNorm*>(m)) {
      EXPECT_EQ(followed[name], 1) << what << ": BN " << name << " follows " << followed[name] << " groups";
    } else if (dynamic_cast<const ChannelMask*>(m)) {
      EXPECT_EQ(masked[name], 1) << what << ": mask " << name << " is in " << masked[name] << " groups";
    }
  }
  EXPECT_TRUE(stem_seen) << what;
  EXPECT_EQ(linear_consumers, 1) << what << ": exactly the classifier's first linear layer reads a group";
  for (const ChannelGroup& g : groups) EXPECT_FALSE(g.masks.empty()) << what << ": group " << g.name << " has no mask";
}

// The groups that hold the stem conv's output, and only those, are not prunable.
void check_stem_not_prunable(const Module& model, const std::vector<ChannelGroup>& groups, const std::string& what) {
  std::string stem;
  for (auto& [name, m] : model.named_modules())
    if (dynamic_cast<const Conv2d*>(m)) {
      stem = name;
      break;
    }
  int stem_groups = 0;
  for (const ChannelGroup& g : groups) {
    const bool has_stem = as_set(g.producers).count(stem) > 0;
    stem_groups += has_stem;
    EXPECT_EQ(g.prunable, !has_stem) << what << ": group " << g.name;
    if (has_stem) {
      EXPECT_NE(g.note.find("stem"), std::string::npos) << what << ": group " << g.name << ": " << g.note;
    }
  }
  EXPECT_EQ(stem_groups, 1) << what;
}

// ------------------------------------------------------------------ structures of particular models
// Run by ModelCounts on the model it has built (the big ones take seconds to build).
void resnet20_groups(const Module&, const std::vector<ChannelGroup>& gs) {
  std::vector<std::string> names;
  for (const auto& g : gs) names.push_back(g.name);
  EXPECT_EQ(names, (std::vector<std::string>{"layer1.residual", "layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1",
                                             "layer2.residual", "layer2.0.conv1", "layer2.1.conv1", "layer2.2.conv1",
                                             "layer3.residual", "layer3.0.conv1", "layer3.1.conv1",
                                             "layer3.2.conv1"}));
  const ChannelGroup& r1 = group(gs, "layer1.residual");
  EXPECT_EQ(r1.kind, models::GroupKind::Residual);
  EXPECT_EQ(r1.channels, 16);
  EXPECT_FALSE(r1.prunable);
  EXPECT_EQ(as_set(r1.producers),
            (std::set<std::string>{"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"}));
  EXPECT_EQ(as_set(r1.masks), (std::set<std::string>{"mask1", "layer1.0.mask2", "layer1.1.mask2", "layer1.2.mask2"}));
  EXPECT_EQ(as_set(r1.consumers), (std::set<std::string>{"layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1",
                                                         "layer2.0.conv1", "layer2.0.downsample.0"}));
  const ChannelGroup& r2 = group(gs, "layer2.residual");
  EXPECT_TRUE(r2.prunable);
  EXPECT_EQ(r2.channels, 32);
  EXPECT_EQ(as_set(r2.producers),
            (std::set<std::string>{"layer2.0.downsample.0", "layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2"}));
  EXPECT_EQ(as_set(r2.followers),
            (std::set<std::string>{"layer2.0.downsample.1", "layer2.0.bn2", "layer2.1.bn2", "layer2.2.bn2"}));
  EXPECT_EQ(as_set(r2.masks),
            (std::set<std::string>{"layer2.0.downsample.2", "layer2.0.mask2", "layer2.1.mask2", "layer2.2.mask2"}));
  EXPECT_EQ(as_set(group(gs, "layer3.residual").consumers),
            (std::set<std::string>{"layer3.1.conv1", "layer3.2.conv1", "fc"}));
  const ChannelGroup& b = group(gs, "layer2.0.conv1");
  EXPECT_EQ(b.channels, 32);
  EXPECT_EQ(b.producers, std::vector<std::string>{"layer2.0.conv1"});
  EXPECT_EQ(b.followers, std::vector<std::string>{"layer2.0.bn1"});
  EXPECT_EQ(b.masks, std::vector<std::string>{"layer2.0.mask1"});
  EXPECT_EQ(b.consumers, std::vector<std::string>{"layer2.0.conv2"});
}

void resnet50_groups(const Module& m, const std::vector<ChannelGroup>& gs) {
  EXPECT_EQ(gs.size(), 1u + 4u + 2u * 16u);  // stem, 4 streams, 2 per bottleneck
  const ChannelGroup& stem = group(gs, "conv1");
  EXPECT_FALSE(stem.prunable);
  EXPECT_EQ(as_set(stem.consumers), (std::set<std::string>{"layer1.0.conv1", "layer1.0.downsample.0"}));
  const ChannelGroup& r1 = group(gs, "layer1.residual");
  EXPECT_TRUE(r1.prunable);
  EXPECT_EQ(r1.channels, 256);
  EXPECT_EQ(as_set(r1.producers),
            (std::set<std::string>{"layer1.0.downsample.0", "layer1.0.conv3", "layer1.1.conv3", "layer1.2.conv3"}));
  EXPECT_EQ(group(gs, "layer4.residual").channels, 2048);
  const ChannelGroup& c2 = group(gs, "layer3.4.conv2");
  EXPECT_EQ(c2.channels, 256);
  EXPECT_EQ(c2.consumers, std::vector<std::string>{"layer3.4.conv3"});
  // torchvision's names; the stride sits on the 3x3 conv
  const auto mods = modules_by_name(m);
  const auto* c = dynamic_cast<const Conv2d*>(mods.at("layer2.0.conv2"));
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->options.stride, 2);
  EXPECT_TRUE(mods.count("layer4.2.bn3") && mods.count("fc"));
}

void resnet18_imagenet_stem(const Module& m, const std::vector<ChannelGroup>& gs) {
  const auto mods = modules_by_name(m);
  const auto* c = dynamic_cast<const Conv2d*>(mods.at("conv1"));
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->kernel_size, 7);
  EXPECT_EQ(c->options.stride, 2);
  EXPECT_NE(dynamic_cast<const MaxPool2d*>(mods.at("maxpool")), nullptr);
  EXPECT_FALSE(group(gs, "layer1.residual").prunable);  // the stem still writes into layer1's stream
}

void wrn_groups(const Module&, const std::vector<ChannelGroup>& gs) {
  EXPECT_EQ(gs.size(), 1u + 3u + 12u);  // stem, 3 streams, one per block
  const ChannelGroup& stem = group(gs, "conv1");
  EXPECT_FALSE(stem.prunable);
  EXPECT_EQ(stem.followers, std::vector<std::string>{"layer1.0.bn1"});
  EXPECT_EQ(as_set(stem.consumers), (std::set<std::string>{"layer1.0.conv1", "layer1.0.shortcut"}));
  const ChannelGroup& r3 = group(gs, "layer3.residual");
  EXPECT_EQ(r3.channels, 640);
  EXPECT_EQ(as_set(r3.followers), (std::set<std::string>{"layer3.1.bn1", "layer3.2.bn1", "layer3.3.bn1", "bn"}));
  EXPECT_EQ(as_set(r3.consumers), (std::set<std::string>{"layer3.1.conv1", "layer3.2.conv1", "layer3.3.conv1", "fc"}));
  EXPECT_EQ(as_set(r3.masks), (std::set<std::string>{"layer3.0.shortcut_mask", "layer3.0.mask2", "layer3.1.mask2",
                                                     "layer3.2.mask2", "layer3.3.mask2", "layer3.1.in_mask",
                                                     "layer3.2.in_mask", "layer3.3.in_mask", "mask"}));
  EXPECT_EQ(group(gs, "layer2.1.conv1").channels, 320);
}

int64_t stride_of(const Module& m, const std::string& conv) {
  const auto* c = dynamic_cast<const Conv2d*>(modules_by_name(m).at(conv));
  EXPECT_NE(c, nullptr) << conv;
  return c ? c->options.stride : -1;
}

void mobilenetv2_groups(const Module& m, const std::vector<ChannelGroup>& gs) {
  const ChannelGroup& stem = group(gs, "features.0");
  EXPECT_FALSE(stem.prunable);
  EXPECT_EQ(as_set(stem.followers),
            (std::set<std::string>{"features.0.1", "features.1.conv.0.0", "features.1.conv.0.1"}));
  EXPECT_EQ(stem.masks, std::vector<std::string>{"features.1.conv.0.3"});
  EXPECT_EQ(stem.consumers, std::vector<std::string>{"features.1.conv.1"});
  const ChannelGroup& e = group(gs, "features.5.expand");
  EXPECT_EQ(e.channels, 192);
  EXPECT_EQ(as_set(e.followers),
            (std::set<std::string>{"features.5.conv.0.1", "features.5.conv.1.0", "features.5.conv.1.1"}));
  EXPECT_EQ(e.masks, std::vector<std::string>{"features.5.conv.1.3"});
  EXPECT_EQ(e.consumers, std::vector<std::string>{"features.5.conv.2"});
  const ChannelGroup& r = group(gs, "features.4-6.residual");
  EXPECT_EQ(r.channels, 32);
  EXPECT_EQ(as_set(r.producers),
            (std::set<std::string>{"features.4.conv.2", "features.5.conv.2", "features.6.conv.2"}));
  EXPECT_EQ(as_set(r.masks), (std::set<std::string>{"features.4.conv.4", "features.5.conv.4", "features.6.conv.4"}));
  EXPECT_EQ(as_set(r.consumers),
            (std::set<std::string>{"features.5.conv.0.0", "features.6.conv.0.0", "features.7.conv.0.0"}));
  EXPECT_EQ(group(gs, "features.17.project").consumers, std::vector<std::string>{"features.18.0"});
  EXPECT_EQ(group(gs, "features.18").consumers, std::vector<std::string>{"classifier.1"});
  // The CIFAR adaptation: the stem and the first 24-channel block keep the resolution.
  EXPECT_EQ(stride_of(m, "features.0.0"), 1);
  EXPECT_EQ(stride_of(m, "features.2.conv.1.0"), 1);
}

void mobilenetv2_imagenet_strides(const Module& m, const std::vector<ChannelGroup>&) {
  EXPECT_EQ(stride_of(m, "features.0.0"), 2);
  EXPECT_EQ(stride_of(m, "features.2.conv.1.0"), 2);
}

void mobilenetv3_large_groups(const Module& m, const std::vector<ChannelGroup>& gs) {
  // The first block has no expansion and a residual connection: the stem's output is its stream.
  const ChannelGroup& s = group(gs, "features.0-1.residual");
  EXPECT_FALSE(s.prunable);
  EXPECT_EQ(as_set(s.producers), (std::set<std::string>{"features.0.0", "features.1.block.1.0"}));
  EXPECT_EQ(as_set(s.followers), (std::set<std::string>{"features.0.1", "features.1.block.0.0", "features.1.block.0.1",
                                                        "features.1.block.1.1"}));
  EXPECT_EQ(as_set(s.masks), (std::set<std::string>{"features.0.3", "features.1.block.0.3", "features.1.block.1.2"}));
  EXPECT_EQ(as_set(s.consumers), (std::set<std::string>{"features.1.block.1.0", "features.2.block.0.0"}));
  const ChannelGroup& e = group(gs, "features.5.expand");  // with squeeze-excite
  EXPECT_EQ(e.channels, 120);
  EXPECT_EQ(as_set(e.followers), (std::set<std::string>{"features.5.block.0.1", "features.5.block.1.0",
                                                        "features.5.block.1.1", "features.5.block.2"}));
  EXPECT_EQ(as_set(e.consumers), (std::set<std::string>{"features.5.block.2.fc1", "features.5.block.3.0"}));
  EXPECT_EQ(group(gs, "features.16").consumers, std::vector<std::string>{"classifier.0"});
  const auto mods = modules_by_name(m);
  const auto* se = dynamic_cast<const models::SqueezeExcitation*>(mods.at("features.5.block.2"));
  ASSERT_NE(se, nullptr);
  EXPECT_EQ(se->fc1->out_channels, 32);  // _make_divisible(120 // 4, 8)
  EXPECT_EQ(dynamic_cast<const BatchNorm*>(mods.at("features.5.block.1.1"))->eps, 1e-3);
  EXPECT_EQ(stride_of(m, "features.0.0"), 1);  // small input
}

void mobilenetv3_small_groups(const Module&, const std::vector<ChannelGroup>& gs) {
  // The first block (no expansion, stride 2, squeeze-excite) reads the stem directly.
  const ChannelGroup& stem = group(gs, "features.0");
  EXPECT_EQ(as_set(stem.followers), (std::set<std::string>{"features.0.1", "features.1.block.0.0",
                                                           "features.1.block.0.1", "features.1.block.1"}));
  EXPECT_EQ(as_set(stem.consumers), (std::set<std::string>{"features.1.block.1.fc1", "features.1.block.2.0"}));
  EXPECT_EQ(stem.masks, std::vector<std::string>{"features.1.block.0.3"});
  EXPECT_EQ(group(gs, "features.1.project").channels, 16);
  EXPECT_EQ(group(gs, "features.9-11.residual").channels, 96);
  EXPECT_EQ(group(gs, "features.12").channels, 576);
}

void vgg_groups(const Module&, const std::vector<ChannelGroup>& gs) {
  ASSERT_EQ(gs.size(), 13u);
  const std::vector<int> convs = {0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40};  // torchvision's indices
  for (size_t k = 0; k < gs.size(); ++k) {
    EXPECT_EQ(gs[k].name, fmt::format("features.{}", convs[k]));
    EXPECT_EQ(gs[k].followers, std::vector<std::string>{fmt::format("features.{}", convs[k] + 1)});
    EXPECT_EQ(gs[k].masks, std::vector<std::string>{fmt::format("masks.{}", k)});
    EXPECT_EQ(gs[k].consumers, std::vector<std::string>{k + 1 < gs.size() ? fmt::format("features.{}", convs[k + 1])
                                                                          : std::string("classifier")});
  }
}

void vgg_tiny_imagenet_classifier(const Module& m, const std::vector<ChannelGroup>&) {
  const auto* fc = dynamic_cast<const Linear*>(modules_by_name(m).at("classifier"));
  ASSERT_NE(fc, nullptr);
  EXPECT_EQ(fc->in_features, 512 * 2 * 2);  // 64 / 32 = 2: a 2x2x512 NHWC flatten
}

using StructureCheck = void (*)(const Module&, const std::vector<ChannelGroup>&);
const std::map<std::string, StructureCheck> kStructureChecks = {
    {"resnet20", resnet20_groups},
    {"resnet50", resnet50_groups},
    {"resnet18@224", resnet18_imagenet_stem},
    {"wrn28-10", wrn_groups},
    {"mobilenetv2", mobilenetv2_groups},
    {"mobilenetv2@224", mobilenetv2_imagenet_strides},
    {"mobilenetv3-large", mobilenetv3_large_groups},
    {"mobilenetv3-small", mobilenetv3_small_groups},
    {"vgg16-bn", vgg_groups},
    {"vgg16-bn@64", vgg_tiny_imagenet_classifier},
};

// ------------------------------------------------------------------ counts, FLOPs, groups, forward
class ModelCounts : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelCounts, ParamsFlopsGroupsForward) {
  const std::string key = GetParam();
  ASSERT_TRUE(counts().contains(key)) << key << " is missing from golden/model_counts.json (run make_model_golden.py)";
  const nlohmann::json& e = counts().at(key);
  const std::string name = e.at("model");
  const ModelConfig cfg = config_of(e);
  ModulePtr model = models::make_model(name, cfg);
  EXPECT_EQ(model->num_parameters(), e.at("params").get<int64_t>()) << key;

  model->eval();
  {
    NoGradGuard no_grad;
    ModuleTracer tracer(*model);
    const Tensor out = (*model)(images(1, cfg));
    EXPECT_EQ(tracer.total_flops(), e.at("flops").get<int64_t>()) << key;
    EXPECT_EQ(out.shape(), (Shape{1, cfg.num_classes})) << key;
  }

  const std::vector<ChannelGroup> groups = models::channel_groups(*model);
  EXPECT_NO_THROW(models::validate_channel_groups(*model, groups)) << key;
  check_group_roles(*model, groups, key);
  if (name != "cnn-small") check_stem_not_prunable(*model, groups, key);
  if (auto it = kStructureChecks.find(key); it != kStructureChecks.end()) it->second(*model, groups);

  // Batch 2 in training mode (batch statistics), at each model's main input size.
  if (key == name) {
    NoGradGuard no_grad;
    model->train();
    const Tensor out = (*model)(images(2, cfg));
    EXPECT_EQ(out.shape(), (Shape{2, cfg.num_classes})) << key;
    EXPECT_TRUE(all_finite(out)) << key;
  }
}

INSTANTIATE_TEST_SUITE_P(Cnn, ModelCounts, ::testing::ValuesIn(kCnnKeys), [](const auto& info) {
  std::string s = info.param;
  for (char& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
});

TEST(ModelsCnn, CountsFileCoversEveryCnn) {
  const std::vector<std::string> names = models::model_names();
  for (const std::string& m : kCnnModels) {
    EXPECT_NE(std::find(names.begin(), names.end(), m), names.end()) << m << " is not registered";
    EXPECT_TRUE(counts().contains(m)) << m << " is missing from golden/model_counts.json";
  }
  // An entry added to the file for a CNN must be tested above.
  for (auto it = counts().begin(); it != counts().end(); ++it) {
    if (kCnnModels.count(it.value().at("model").get<std::string>())) {
      EXPECT_NE(std::find(kCnnKeys.begin(), kCnnKeys.end(), it.key()), kCnnKeys.end())
          << it.key() << " is in model_counts.json but not in kCnnKeys";
    }
  }
  for (const auto& [key, check] : kStructureChecks)
    EXPECT_NE(std::find(kCnnKeys.begin(), kCnnKeys.end(), key), kCnnKeys.end()) << key;
}

TEST(ModelsCnn, BadConfigurations) {
  ModelConfig c = cifar();
  c.imagenet_stem = true;
  EXPECT_ERROR("resnet20|ImageNet stem", models::make_model("resnet20", c));
  EXPECT_ERROR("vgg16-bn|image size 100", models::make_model("vgg16-bn", cifar(100)));
  EXPECT_ERROR("vgg16-bn|image size 48", models::make_model("vgg16-bn", cifar(48)));
  EXPECT_ERROR("WideResNet|depth 27", models::WideResNet(27, 10, cifar()));
}

// ------------------------------------------------------------------ forward against PyTorch
void check_forward_golden(const std::string& name) {
  const std::string path = std::string(S2H_GOLDEN_BUILD_DIR) + "/" + name + "_forward.safetensors";
  if (!std::filesystem::exists(path)) {
    GTEST_SKIP() << path << " is missing: run ctest (the golden_models_forward fixture makes it)";
  }
  const SafetensorsFile f = load_safetensors(path);
  const ModelConfig cfg = config_for(f.metadata.at("input"), std::stoll(f.metadata.at("classes")));
  ModulePtr model = models::make_model(name, cfg);
  NamedTensors state;
  for (const auto& [n, t] : f.tensors)
    if (n != "input" && n != "output") state.emplace_back(n, t);
  model->load_state_dict(state);
  model->eval();
  NoGradGuard no_grad;
  const Tensor out = (*model)(f.at("input"));
  ASSERT_EQ(out.shape(), f.at("output").shape());
  const double err = scaled_error(out, f.at("output"));
  EXPECT_LT(err, 1e-4) << name << ": scaled error against PyTorch " << err;
}

TEST(ModelsCnn, Resnet20ForwardMatchesPyTorch) { check_forward_golden("resnet20"); }
TEST(ModelsCnn, MobileNetV3SmallForwardMatchesPyTorch) { check_forward_golden("mobilenetv3-small"); }

// ------------------------------------------------------------------ a training step
void check_train_step(const std::string& name) {
  const ModelConfig cfg = cifar(16);
  ModulePtr model = models::make_model(name, cfg);
  model->train();
  const Tensor y = Tensor::from_vector<int64_t>({0, 3, 7, 9}, {4});
  const Tensor loss = cross_entropy((*model)(images(4, cfg)), y);
  ASSERT_TRUE(std::isfinite(loss.item())) << name;
  loss.backward();
  int nonzero = 0;
  for (const auto& [n, p] : model->named_parameters()) {
    ASSERT_TRUE(p.grad().defined()) << name << ": no gradient for " << n;
    ASSERT_TRUE(all_finite(p.grad())) << name << ": gradient of " << n << " is not finite";
    double s = 0;
    for (double v : values(p.grad())) s += std::abs(v);
    nonzero += s > 0;
  }
  // Every parameter reaches the loss (a dead ReLU channel can zero a few, never most).
  EXPECT_GT(nonzero, static_cast<int>(model->named_parameters().size() * 9 / 10)) << name;
}

TEST(ModelsCnn, Resnet20TrainStep) { check_train_step("resnet20"); }
TEST(ModelsCnn, MobileNetV3SmallTrainStep) { check_train_step("mobilenetv3-small"); }

// ------------------------------------------------------------------ masks cut every path
// For one group and one channel c: with c's mask at 0 everywhere the group
// lists, nothing indexed by c (producers' output c, followers' channel c,
// consumers' input c, SE fc2's output c) may change the output; without the
// masks, the same perturbation must change it. So the masks sit on every path
// from the group's channels to the output, and the roles name the right
// tensors. Runs in training mode (batch statistics keep every channel live)
// with dropout off.
struct ChannelEntries {
  Tensor t;
  std::function<bool(int64_t)> selected;  // flat index -> entry belongs to channel c
};

std::vector<ChannelEntries> entries_of(const std::map<std::string, Module*>& mods, const ChannelGroup& g, int64_t c) {
  const int64_t width = g.channels * g.unit;
  std::vector<ChannelEntries> out;
  auto rows = [&](const Tensor& t) {  // output row c of a [O][...] tensor
    if (!t.defined()) return;
    const int64_t row = t.numel() / t.size(0);
    out.push_back({t, [=](int64_t i) { return i / row == c; }});
  };
  auto columns = [&](const Tensor& t) {  // input feature c (last axis; after an NHWC flatten, every width-th)
    const int64_t cols = t.size(-1);
    out.push_back({t, [=](int64_t i) { return (i % cols) % width == c; }});
  };
  auto out_channel = [&](Module* m) {
    if (auto* conv = dynamic_cast<Conv2d*>(m)) {
      rows(conv->weight);
      rows(conv->bias);
    } else if (auto* lin = dynamic_cast<Linear*>(m)) {
      rows(lin->weight);
      rows(lin->bias);
    } else {
      ADD_FAILURE() << g.name << ": " << m->describe() << " has no output channels";
    }
  };
  for (const auto& n : g.producers) out_channel(mods.at(n));
  for (const auto& n : g.followers) {
    Module* m = mods.at(n);
    if (auto* bn = dynamic_cast<BatchNorm*>(m)) {
      rows(bn->weight);
      rows(bn->bias);
    } else if (auto* se = dynamic_cast<models::SqueezeExcitation*>(m)) {
      out_channel(se->fc2.get());
    } else {
      out_channel(m);  // a depthwise conv
    }
  }
  for (const auto& n : g.consumers) {
    Module* m = mods.at(n);
    if (auto* conv = dynamic_cast<Conv2d*>(m)) {
      EXPECT_EQ(conv->options.groups, 1) << g.name << ": consumer " << n;
      columns(conv->weight);
    } else if (auto* lin = dynamic_cast<Linear*>(m)) {
      columns(lin->weight);
    }
  }
  return out;
}

void set_masks(const std::map<std::string, Module*>& mods, const ChannelGroup& g, int64_t c, bool on) {
  for (const auto& n : g.masks) {
    auto* mk = dynamic_cast<ChannelMask*>(mods.at(n));
    if (!on) {
      mk->scale = Tensor();
      continue;
    }
    std::vector<float> s(static_cast<size_t>(g.channels), 1.0f);
    s[static_cast<size_t>(c)] = 0.0f;
    mk->scale = Tensor::from_vector<float>(s, {g.channels});
  }
}

void check_masks_cut(Module& model, const ModelConfig& cfg, int64_t batch, const std::string& what) {
  NoGradGuard no_grad;
  model.train();
  const auto mods = modules_by_name(model);
  for (auto& [name, m] : mods)
    if (auto* d = dynamic_cast<Dropout*>(m)) d->p = 0.0;
  const Tensor x = images(batch, cfg);
  const Tensor plain = model(x);
  Generator gen(7);
  for (const ChannelGroup& g : models::channel_groups(model)) {
    const int64_t c = g.channels / 2;
    const std::vector<ChannelEntries> entries = entries_of(mods, g, c);
    std::vector<Tensor> saved;
    for (const auto& e : entries) saved.push_back(e.t.detach().clone());
    set_masks(mods, g, c, true);
    const Tensor masked = model(x);
    for (const auto& e : entries) {
      float* d = e.t.data<float>();
      for (int64_t i = 0; i < e.t.numel(); ++i)
        if (e.selected(i)) d[i] += static_cast<float>(0.5 + gen.uniform());
    }
    const Tensor masked_perturbed = model(x);
    EXPECT_LT(scaled_error(masked_perturbed, masked), 1e-6)
        << what << ": group " << g.name << ": with channel " << c << " masked, its weights still reach the output";
    set_masks(mods, g, c, false);
    const Tensor perturbed = model(x);
    EXPECT_GT(scaled_error(perturbed, plain), 1e-4)
        << what << ": group " << g.name << ": perturbing channel " << c << " changes nothing even unmasked";
    for (size_t k = 0; k < entries.size(); ++k) entries[k].t.detach().copy_(saved[k]);
  }
}

TEST(ModelsCnn, MasksCutResNets) {
  check_masks_cut(*models::make_model("resnet20", cifar(16)), cifar(16), 1, "resnet20");
  ModelConfig in = cifar(16);
  in.imagenet_stem = true;  // 7x7/2 conv and max-pool: 16 -> 4 before layer1, 1x1 in layer4
  check_masks_cut(*models::make_model("resnet50", in), in, 2, "resnet50 (ImageNet stem)");
  models::WideResNet wrn(16, 2, cifar(8));
  check_masks_cut(wrn, cifar(8), 1, "wrn16-2");
}

TEST(ModelsCnn, MasksCutMobileNets) {
  for (const std::string name : {"mobilenetv2", "mobilenetv3-large", "mobilenetv3-small"})
    check_masks_cut(*models::make_model(name, cifar(16)), cifar(16), 2, name);
}

TEST(ModelsCnn, MasksCutVgg) {
  check_masks_cut(*models::make_model("vgg16-bn", cifar(32)), cifar(32), 1, "vgg16-bn");
}


// The two ways a Conv2d becomes masked_conv2d (engine/layers.h): kept-channel
// indexes over the full weight (NarrowView's hard layers) and an input scale
// (a ChannelMask folded in): the same values and gradients as the unfused
// modules, and the full weight's gradient lands only in the kept rows/columns.
TEST(ModelsCnn, Conv2dKeptIndexesAndInputScale) {
  namespace s = s2h;
  for (int64_t k : {1, 3})
    for (int64_t stride : {1, 2}) {
      s::Conv2d c(6, 5, k, {stride, k / 2, 1, 1, true});
      const Tensor x_full = randn({2, 7, 7, 6}, DType::F32);
      const Tensor keep_out = Tensor::from_vector(std::vector<int64_t>{4, 1, 2}, {3});
      const Tensor keep_in = Tensor::from_vector(std::vector<int64_t>{5, 0, 3}, {3});
      const Tensor x = index_select(x_full, 3, keep_in);
      // Reference: the gathered weight through plain conv2d.
      const Tensor w_ref = c.weight.detach().clone().set_requires_grad(true);
      Conv2dOptions o;
      o.stride = {stride, stride};
      o.padding = {k / 2, k / 2};
      const Tensor y_ref =
          conv2d(x, index_select(index_select(w_ref, 0, keep_out), 3, keep_in), index_select(c.bias, 0, keep_out), o);
      // Narrow layer as NarrowView sets it up.
      c.keep_out = keep_out;
      c.keep_in = keep_in;
      const Tensor full_bias = c.bias;
      c.bias = index_select(full_bias, 0, keep_out);
      c.out_channels = 3;
      c.in_channels = 3;
      const Tensor y = c(x);
      expect_close(y, y_ref, 1e-5, 1e-6, fmt::format("hard conv k={} stride={}", k, stride));
      const Tensor r = randn(y.shape(), DType::F32);
      sum(mul(y, r)).backward();
      sum(mul(y_ref, r)).backward();
      expect_close(c.weight.grad(), w_ref.grad(), 1e-5, 1e-6, "full weight gradient");
      const std::vector<double> g = values(c.weight.grad());
      for (int64_t oi = 0; oi < 5; ++oi) {
        for (int64_t t = 0; t < k * k; ++t) {
          for (int64_t ci = 0; ci < 6; ++ci) {
            const bool kept = (oi == 4 || oi == 1 || oi == 2) && (ci == 5 || ci == 0 || ci == 3);
            if (!kept) {
              EXPECT_EQ(g[static_cast<size_t>((oi * k * k + t) * 6 + ci)], 0.0);
            }
          }
        }
      }

      // A folded input scale: conv(x * s) with the gradient of s.
      s::Conv2d d(6, 4, k, {stride, k / 2, 1, 1, false});
      const Tensor sc = uniform({6}, 0.1, 1.0, DType::F32).set_requires_grad(true);
      const Tensor sc_ref = sc.detach().clone().set_requires_grad(true);
      const Tensor y2_ref = d(mul(x_full, sc_ref));
      d.in_scale = sc;
      const Tensor y2 = d(x_full);
      d.in_scale = Tensor();
      expect_close(y2, y2_ref, 1e-5, 1e-6, "input-scaled conv");
      const Tensor r2 = randn(y2.shape(), DType::F32);
      sum(mul(y2, r2)).backward();
      sum(mul(y2_ref, r2)).backward();
      expect_close(sc.grad(), sc_ref.grad(), 1e-4, 1e-5, "input-scale gradient");
    }
}

}  // namespace
}  // namespace s2h::test
