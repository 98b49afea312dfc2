// Transformer models (models/transformer.h): parameter and FLOPs counts against
// PyTorch (tests/golden/model_counts.json), channel groups, shapes and errors,
// the key padding mask, a finite-difference check of the attention, a few
// training steps, and a forward golden of vit-tiny against PyTorch.
#include <fmt/ranges.h>

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "models/registry.h"
#include "models/transformer.h"
#include "tests/test_util.h"

namespace s2h::test {
namespace {

using models::ModelConfig;

// The configurations of tests/golden/ref_transformer.py.
ModelConfig vit_config(int64_t num_classes) {
  ModelConfig c;
  c.num_classes = num_classes;
  c.in_channels = 3;
  c.image_size = 32;
  return c;
}

ModelConfig text_config(int64_t num_classes, int64_t vocab = 1000, int64_t max_len = 64) {
  ModelConfig c;
  c.num_classes = num_classes;
  c.vocab_size = vocab;
  c.max_len = max_len;
  return c;
}

// Token ids [rows.size(), L]: each row's tokens, then padding (0) up to L.
Tensor token_ids(const std::vector<std::vector<int64_t>>& rows, int64_t L) {
  std::vector<int64_t> v(rows.size() * static_cast<size_t>(L), 0);
  for (size_t r = 0; r < rows.size(); ++r) {
    S2H_CHECK(static_cast<int64_t>(rows[r].size()) <= L, "token_ids: row {} has more than {} tokens", r, L);
    std::copy(rows[r].begin(), rows[r].end(), v.begin() + r * L);
  }
  return Tensor::from_vector(v, {static_cast<int64_t>(rows.size()), L});
}

std::vector<int64_t> random_tokens(int64_t n, int64_t vocab) {
  std::vector<int64_t> t(static_cast<size_t>(n));
  for (int64_t& x : t) x = 1 + static_cast<int64_t>(test_generator().below(static_cast<uint64_t>(vocab - 1)));
  return t;
}

// The three models as ref_transformer.py builds them (10 classes for the ViTs, 2 for text),
// in evaluation mode, built once: a ViT-Small takes seconds to initialise.
Module& shared_model(const std::string& name) {
  static std::map<std::string, ModulePtr> cache;
  ModulePtr& m = cache[name];
  if (!m) {
    m = models::make_model(name, name == "text-transformer" ? text_config(2) : vit_config(10));
    m->eval();
  }
  return *m;
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : values(t)) m = std::max(m, std::abs(v));
  return m;
}

// ------------------------------------------------------------------ counts against PyTorch
// Every entry of model_counts.json for these models (make_model_golden.py writes it from
// ref_transformer.py): {"model", "input" ("CxHxW" or "tokensL"), "classes", "params", "flops",
// and the ModelConfig fields vocab_size, max_len, patch_size where set}.
TEST(Transformer, ParamsAndFlopsMatchPyTorch) {
  const std::string path = source_dir() + "/golden/model_counts.json";
  const std::string rerun = "run /usr/bin/python3 tests/golden/make_model_golden.py";
  std::ifstream in(path);
  ASSERT_TRUE(in.good()) << path << " is missing: " << rerun;
  const nlohmann::json counts = nlohmann::json::parse(in);
  for (const char* name : {"vit-tiny", "vit-small", "text-transformer"})
    EXPECT_TRUE(counts.contains(name)) << path << " has no entry for " << name << ": " << rerun;
  int checked = 0;
  for (const auto& [key, e] : counts.items()) {
    const std::string name = e.at("model");
    if (name != "vit-tiny" && name != "vit-small" && name != "text-transformer") continue;
    SCOPED_TRACE(key);
    ModelConfig c;
    c.num_classes = e.at("classes");
    c.vocab_size = e.value("vocab_size", int64_t{0});
    c.max_len = e.value("max_len", int64_t{0});
    c.patch_size = e.value("patch_size", int64_t{0});
    const std::string spec = e.at("input");
    Tensor x;
    if (spec.rfind("tokens", 0) == 0) {
      // The driver feeds ids without padding (the FLOPs of L tokens).
      x = token_ids({random_tokens(std::stoll(spec.substr(6)), c.vocab_size)}, std::stoll(spec.substr(6)));
    } else {
      int64_t h = 0, w = 0;
      ASSERT_EQ(std::sscanf(spec.c_str(), "%" SCNd64 "x%" SCNd64 "x%" SCNd64, &c.in_channels, &h, &w), 3) << spec;
      c.image_size = h;
      x = randn({1, h, w, c.in_channels}, DType::F32);
    }
    ModulePtr model = models::make_model(name, c);
    model->eval();
    NoGradGuard guard;
    ModuleTracer tracer(*model);
    EXPECT_EQ((*model)(x).shape(), (Shape{1, c.num_classes}));
    int64_t traced_params = 0;
    for (const TraceRecord& r : tracer.records()) traced_params += r.params;
    EXPECT_EQ(traced_params, model->num_parameters()) << "some module with parameters was not called";
    EXPECT_EQ(model->num_parameters(), e.at("params").get<int64_t>());
    EXPECT_EQ(tracer.total_flops(), e.at("flops").get<int64_t>());
    ++checked;
  }
  EXPECT_GE(checked, 3);
}

// ------------------------------------------------------------------ channel groups
TEST(Transformer, ChannelGroupsValidate) {
  for (const std::string name : {"vit-tiny", "vit-small", "text-transformer"}) {
    SCOPED_TRACE(name);
    const bool text = name == "text-transformer";
    const Module& model = shared_model(name);
    const std::vector<models::ChannelGroup> groups = models::channel_groups(model);
    EXPECT_NO_THROW(models::validate_channel_groups(model, groups));
    const models::TransformerSize s = models::transformer_size(name);
    ASSERT_EQ(groups.size(), static_cast<size_t>(2 * s.depth + 1));
    const models::ChannelGroup& heads = groups[2 * (s.depth - 1)];
    EXPECT_EQ(heads.name, fmt::format("blocks.{}.attn.heads", s.depth - 1));
    EXPECT_EQ(heads.kind, models::GroupKind::Heads);
    EXPECT_EQ(heads.channels, s.heads);
    EXPECT_EQ(heads.unit, s.dim / s.heads);
    EXPECT_TRUE(heads.prunable);
    const models::ChannelGroup& hidden = groups[2 * s.depth - 1];
    EXPECT_EQ(hidden.name, fmt::format("blocks.{}.mlp.hidden", s.depth - 1));
    EXPECT_EQ(hidden.kind, models::GroupKind::Hidden);
    EXPECT_EQ(hidden.channels, s.mlp_hidden);
    const models::ChannelGroup& embed = groups.back();
    EXPECT_EQ(embed.kind, models::GroupKind::Embed);
    EXPECT_EQ(embed.channels, s.dim);
    EXPECT_FALSE(embed.prunable);
    EXPECT_FALSE(embed.note.empty());
    EXPECT_EQ(embed.producers.size(), static_cast<size_t>(2 * s.depth + (text ? 0 : 1)));
    EXPECT_EQ(embed.consumers.size(), static_cast<size_t>(4 * s.depth + 1));
    EXPECT_EQ(embed.followers.size(), static_cast<size_t>(2 * s.depth + 1));
  }
}

// ------------------------------------------------------------------ shapes and errors
TEST(Transformer, ShapesAndPatchSizes) {
  NoGradGuard guard;
  auto vit = std::dynamic_pointer_cast<models::VisionTransformer>(models::make_model("vit-tiny", vit_config(7)));
  ASSERT_TRUE(vit);
  EXPECT_EQ(vit->patch_size, 4);
  EXPECT_EQ(vit->pos_embed.shape(), (Shape{1, 65, 192}));
  EXPECT_EQ(vit->cls_token.shape(), (Shape{1, 1, 192}));
  EXPECT_EQ(vit->patch_embed->proj->weight.shape(), (Shape{192, 4, 4, 3}));
  EXPECT_EQ((*vit)(randn({2, 32, 32, 3}, DType::F32)).shape(), (Shape{2, 7}));

  ModelConfig c = vit_config(5);
  c.image_size = 64;
  auto vit64 = std::dynamic_pointer_cast<models::VisionTransformer>(models::make_model("vit-tiny", c));
  EXPECT_EQ(vit64->patch_size, 8);
  EXPECT_EQ(vit64->pos_embed.shape(), (Shape{1, 65, 192}));
  c.image_size = 224;
  auto vit224 = std::dynamic_pointer_cast<models::VisionTransformer>(models::make_model("vit-tiny", c));
  EXPECT_EQ(vit224->patch_size, 16);
  EXPECT_EQ(vit224->pos_embed.shape(), (Shape{1, 197, 192}));
  c.image_size = 32;
  c.patch_size = 8;
  auto vit_p8 = std::dynamic_pointer_cast<models::VisionTransformer>(models::make_model("vit-tiny", c));
  EXPECT_EQ(vit_p8->pos_embed.shape(), (Shape{1, 17, 192}));
  EXPECT_EQ((*vit_p8)(randn({1, 32, 32, 3}, DType::F32)).shape(), (Shape{1, 5}));

  ModulePtr text = models::make_model("text-transformer", text_config(3, 100, 16));
  EXPECT_EQ((*text)(token_ids({{5, 6, 7}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}}, 10)).shape(), (Shape{2, 3}));
  EXPECT_EQ((*text)(token_ids({random_tokens(16, 100)}, 16)).shape(), (Shape{1, 3}));
}

TEST(Transformer, ClearErrors) {
  NoGradGuard guard;
  ModelConfig c = vit_config(10);
  c.image_size = 33;
  EXPECT_ERROR("image size 33|patch size 4", models::make_model("vit-tiny", c));
  c.image_size = 32;
  c.patch_size = 5;
  EXPECT_ERROR("not divisible|patch size 5", models::make_model("vit-tiny", c));
  c.patch_size = 0;
  c.image_size = 4;
  EXPECT_ERROR("image size 4|too small", models::make_model("vit-tiny", c));
  EXPECT_ERROR("vocabulary size", models::make_model("text-transformer", text_config(2, 0, 16)));
  EXPECT_ERROR("maximum sequence length", models::make_model("text-transformer", text_config(2, 100, 0)));

  EXPECT_ERROR("NHWC|[B, 32, 32, 3]", shared_model("vit-tiny")(randn({1, 3, 32, 32}, DType::F32)));
  ModulePtr text = models::make_model("text-transformer", text_config(2, 100, 16));
  EXPECT_ERROR("i64 token ids|L <= 16", (*text)(token_ids({{1, 2}}, 17)));
  EXPECT_ERROR("i64 token ids", (*text)(randn({1, 8}, DType::F32)));
  EXPECT_ERROR("token id 100|[0, 1]|vocabulary", (*text)(token_ids({{1, 100}}, 4)));
  EXPECT_ERROR("token id -1", (*text)(token_ids({{-1}}, 4)));
}

// ------------------------------------------------------------------ key padding
TEST(Transformer, PaddingIsIgnored) {
  NoGradGuard guard;
  auto model = std::dynamic_pointer_cast<models::TextTransformer>(
      models::make_model("text-transformer", text_config(4, 200, 32)));
  model->eval();
  const std::vector<int64_t> a = random_tokens(9, 200), b = random_tokens(20, 200);
  const Tensor ref = (*model)(token_ids({a, b}, 24));

  // More padding, or the same row in another batch, gives the same logits.
  expect_close((*model)(token_ids({a}, 32)), ref.slice(0, 0, 1), 1e-5, 1e-5, "row a padded to 32");
  expect_close((*model)(token_ids({a}, 9)), ref.slice(0, 0, 1), 1e-5, 1e-5, "row a without padding");
  expect_close((*model)(token_ids({b, a, {}}, 20)).slice(0, 0, 1), ref.slice(0, 1, 2), 1e-5, 1e-5,
               "row b in another batch");

  // What sits at the padded positions (the padding token's embedding) does not matter.
  Tensor pad_row = model->token_embed->weight.slice(0, 0, 1);
  pad_row.detach().copy_(randn({1, 256}, DType::F32, 3.0));
  expect_close((*model)(token_ids({a, b}, 24)), ref, 1e-5, 1e-5, "another padding embedding");

  // A real token anywhere does change them (the check above is not vacuous).
  std::vector<int64_t> a2 = a;
  a2.back() = a.back() % 199 + 1;
  EXPECT_GT(scaled_error((*model)(token_ids({a2}, 24)), ref.slice(0, 0, 1)), 1e-4);

  // Columns of padding only are cut: the work follows the longest row.
  auto traced_flops = [&](const Tensor& ids) {
    ModuleTracer tracer(*model);
    (*model)(ids);
    return tracer.total_flops();
  };
  EXPECT_EQ(traced_flops(token_ids({a, b}, 32)), traced_flops(token_ids({a, b}, 20)));
  EXPECT_LT(traced_flops(token_ids({a, b}, 32)), traced_flops(token_ids({a, random_tokens(32, 200)}, 32)));

  // A row of padding only: finite logits (the head's bias).
  const std::vector<float> empty = (*model)(token_ids({{}, a}, 24)).to_vector<float>();
  for (float v : empty) EXPECT_TRUE(std::isfinite(v));
  const std::vector<float> bias = model->head->bias.to_vector<float>();
  for (size_t i = 0; i < bias.size(); ++i) EXPECT_NEAR(empty[i], bias[i], 1e-6);
  for (float v : (*model)(token_ids({{}, {}}, 8)).to_vector<float>()) EXPECT_TRUE(std::isfinite(v));
}

// ------------------------------------------------------------------ attention
// Sets the module's weights from `in` (x, then q, k, v, proj weight and bias, then the head mask scale).
Tensor run_attention(models::MultiheadSelfAttention& attn, const std::vector<Tensor>& in) {
  std::shared_ptr<Linear> lin[] = {attn.q, attn.k, attn.v, attn.proj};
  for (size_t i = 0; i < 4; ++i) {
    lin[i]->weight = in[1 + 2 * i];
    lin[i]->bias = in[2 + 2 * i];
  }
  attn.head_mask->scale = in[9];
  return attn(in[0]);
}

TEST(Transformer, AttentionGradcheck) {
  const int64_t dim = 6, heads = 2, B = 2, L = 4;
  models::MultiheadSelfAttention attn(dim, heads);
  std::vector<Tensor> in{leaf({B, L, dim})};
  for (int i = 0; i < 4; ++i) {
    in.push_back(leaf({dim, dim}, DType::F64, 0.5));
    in.push_back(leaf({dim}, DType::F64, 0.5));
  }
  // k's bias adds q.b to every logit of a row, which softmax ignores: its gradient is 0.
  in[4] = randn({dim}, DType::F64, 0.5);
  in.push_back(leaf_uniform({heads}, 0.3, 1.0));
  auto fn = [&](const std::vector<Tensor>& v) { return run_attention(attn, v); };
  gradcheck("attention", fn, in);

  // Row 1 ignores its last two keys.
  Tensor padding = Tensor::zeros({B, L}, DType::U8);
  padding.data<uint8_t>()[L + 2] = padding.data<uint8_t>()[L + 3] = 1;
  attn.key_padding = padding;
  gradcheck("attention with key padding", fn, in);

  // So new inputs at those positions leave row 1's first two outputs as they were
  // (and change them when nothing is padded).
  NoGradGuard guard;
  std::vector<Tensor> in2 = in;
  in2[0] = in[0].detach().clone();
  in2[0].slice(0, 1, 2).slice(1, 2, 4).copy_(randn({1, 2, dim}));
  auto kept = [&](const std::vector<Tensor>& v) { return run_attention(attn, v).slice(0, 1, 2).slice(1, 0, 2); };
  expect_close(kept(in2), kept(in), 1e-12, 1e-12, "outputs after new padded keys");
  attn.key_padding = Tensor();
  EXPECT_GT(scaled_error(kept(in2), kept(in)), 1e-6);
}

TEST(Transformer, AttentionHeadMaskAndFlops) {
  NoGradGuard guard;
  const int64_t dim = 8, heads = 2, B = 3, L = 5;
  models::MultiheadSelfAttention attn(dim, heads);
  Tensor x = randn({B, L, dim}, DType::F32);
  // Head 1 masked out: its q, k, v weights no longer matter.
  attn.head_mask->scale = Tensor::from_vector<float>({1.0f, 0.0f}, {2});
  const Tensor ref = attn(x);
  for (auto& lin : {attn.q, attn.k, attn.v}) lin->weight.detach().slice(0, 4, 8).copy_(randn({4, dim}, DType::F32));
  expect_close(attn(x), ref, 1e-6, 1e-6, "masked head changed");
  attn.head_mask->scale = Tensor();

  ModuleTracer tracer(attn);
  attn(x);
  EXPECT_EQ(tracer.records().back().flops, 2 * 2 * B * L * L * dim);
  EXPECT_EQ(tracer.total_flops(), 2 * 2 * B * L * L * dim + 4 * 2 * dim * dim * B * L);
}

// ------------------------------------------------------------------ training
TEST(Transformer, EveryParameterGetsAGradient) {
  ModelConfig c = vit_config(3);
  c.patch_size = 8;  // 17 tokens: fast
  const Tensor image = randn({2, 32, 32, 3}, DType::F32);
  const Tensor ids = token_ids({{4, 5, 6}, {7, 8}}, 4);
  for (const auto& [model, x] : {std::pair{models::make_model("vit-tiny", c), image},
                                 std::pair{models::make_model("text-transformer", text_config(2, 10, 4)), ids}}) {
    SCOPED_TRACE(model->describe());
    sum(square((*model)(x))).backward();
    for (const auto& [name, p] : model->named_parameters()) {
      ASSERT_TRUE(p.grad().defined()) << name;
      EXPECT_GT(max_abs(p.grad()), 0.0) << name;
    }
  }
}


TEST(Transformer, TextModelTrains) {
  manual_seed(run_seed());
  ModulePtr model = models::make_model("text-transformer", text_config(2, 50, 12));
  std::vector<std::vector<int64_t>> rows;
  std::vector<int64_t> labels;
  for (int i = 0; i < 8; ++i) {
    rows.push_back(random_tokens(3 + i, 50));
    labels.push_back(i % 2);
  }
  const Tensor ids = token_ids(rows, 12), y = Tensor::from_vector(labels, {8});
  AdamW opt(model->parameters(), AdamWOptions{.lr = 3e-4, .weight_decay = 0.0});
  std::vector<double> losses;
  for (int step = 0; step < 6; ++step) {
    opt.zero_grad();
    Tensor loss = cross_entropy((*model)(ids), y);
    loss.backward();
    opt.step();
    losses.push_back(loss.item());
  }
  EXPECT_LT(losses.back(), losses.front() * 0.7) << "losses " << fmt::format("{}", fmt::join(losses, ", "));
}

// ------------------------------------------------------------------ forward golden
TEST(Transformer, VitTinyForwardMatchesPyTorch) {
  const std::string path = std::string(S2H_GOLDEN_BUILD_DIR) + "/vit-tiny_forward.safetensors";
  if (!std::ifstream(path).good()) {
    GTEST_SKIP() << path << " is missing: run ctest (the golden_models_forward fixture makes it)";
  }
  const SafetensorsFile f = load_safetensors(path);
  const Tensor& input = f.at("input");
  const Tensor& output = f.at("output");
  ModulePtr model = models::make_model("vit-tiny", vit_config(output.size(1)));
  NamedTensors weights;
  for (const auto& [name, t] : f.tensors)
    if (name != "input" && name != "output") weights.emplace_back(name, t);
  model->load_state_dict(weights);
  model->eval();
  NoGradGuard guard;
  const Tensor out = (*model)(input);
  ASSERT_EQ(out.shape(), output.shape());
  EXPECT_LT(scaled_error(out, output), 1e-4);
}

}  // namespace
}  // namespace s2h::test
