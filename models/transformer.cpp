#include "models/transformer.h"

#include <cmath>
#include <vector>

#include "engine/autograd.h"
#include "engine/random.h"

namespace s2h::models {

namespace {

constexpr double kLayerNormEps = 1e-6;  // timm's ViT

// Normal(0, std) cut at +-2 std by resampling (timm's trunc_normal_ with its default bounds
// [-2, 2] does not cut at all for std 0.02; cutting at 2 std keeps the same scale).
void init_trunc_normal(Tensor& t, double std) {
  Generator& gen = default_generator();
  std::vector<double> v(static_cast<size_t>(t.numel()));
  for (double& x : v) {
    double z;
    do z = gen.normal();
    while (std::abs(z) > 2.0);
    x = z * std;
  }
  NoGradGuard guard;
  t.detach().copy_(Tensor::from_vector(v, t.shape()));
}

std::shared_ptr<Linear> make_linear(int64_t in, int64_t out) {
  auto l = std::make_shared<Linear>(in, out);
  init_trunc_normal(l->weight, 0.02);
  NoGradGuard guard;
  l->bias.detach().zero_();
  return l;
}

// Sets the key padding of every attention layer for one forward call and clears it after,
// also when the call throws.
class KeyPaddingScope {
 public:
  KeyPaddingScope(const TransformerBase& model, const Tensor& padding) {
    for (int64_t i = 0; i < model.size.depth; ++i) {
      attns_.push_back(model.block(i).attn.get());
      attns_.back()->key_padding = padding;
    }
  }
  ~KeyPaddingScope() {
    for (MultiheadSelfAttention* a : attns_) a->key_padding = Tensor();
  }
  KeyPaddingScope(const KeyPaddingScope&) = delete;
  KeyPaddingScope& operator=(const KeyPaddingScope&) = delete;

 private:
  std::vector<MultiheadSelfAttention*> attns_;
};

}  // namespace

// ------------------------------------------------------------------ attention
MultiheadSelfAttention::MultiheadSelfAttention(int64_t dim, int64_t num_heads)
    : dim(dim), num_heads(num_heads), head_dim(num_heads > 0 ? dim / num_heads : 0) {
  S2H_CHECK(dim > 0 && num_heads > 0 && dim % num_heads == 0,
            "MultiheadSelfAttention: dim {} must be a positive multiple of the number of heads {}", dim, num_heads);
  q = register_module("q", make_linear(dim, dim));
  k = register_module("k", make_linear(dim, dim));
  v = register_module("v", make_linear(dim, dim));
  head_mask = register_module("head_mask", std::make_shared<ChannelMask>(num_heads, head_dim));
  proj = register_module("proj", make_linear(dim, dim));
}

Tensor MultiheadSelfAttention::forward(const Tensor& x) {
  S2H_CHECK(x.dim() == 3 && x.size(2) == dim, "{}: expected input [B, L, {}], got {}", describe(), dim, x.str());
  const int64_t B = x.size(0), L = x.size(1), H = num_heads, D = head_dim;
  if (key_padding.defined())
    S2H_CHECK(key_padding.dtype() == DType::U8 && key_padding.dim() == 2 && key_padding.size(0) == B &&
                  key_padding.size(1) == L,
              "{}: key padding must be u8 [{}, {}], got {}", describe(), B, L, key_padding.str());
  // One attention op over [B, L, H, D] views of the projections (a fused
  // kernel on CUDA under bf16); the soft head mask is its per-head output
  // scale. H*D < dim when heads are pruned.
  AttentionOptions o;
  o.softmax_scale = 1.0 / std::sqrt(static_cast<double>(D));
  o.key_padding = key_padding;
  if (head_mask->scale.defined()) {
    S2H_CHECK(head_mask->scale.numel() == H, "{}: head mask has {} values, expected {}", describe(),
              head_mask->scale.numel(), H);
    o.head_scale = head_mask->scale;
  }
  auto heads = [&](const Tensor& t) { return t.reshape({B, L, H, D}); };
  const Tensor out = attention(heads((*q)(x)), heads((*k)(x)), heads((*v)(x)), o);
  return (*proj)(out.reshape({B, L, H * D}));
}

int64_t MultiheadSelfAttention::flops(const Tensor& in, const Tensor& out) const {
  (void)out;
  const int64_t B = in.size(0), L = in.size(1);
  return 2 * 2 * B * L * L * num_heads * head_dim;
}

std::string MultiheadSelfAttention::describe() const {
  return fmt::format("MultiheadSelfAttention(dim={}, heads={})", dim, num_heads);
}

// ------------------------------------------------------------------ MLP, block, patch embedding
Mlp::Mlp(int64_t dim, int64_t hidden) {
  fc1 = register_module("fc1", make_linear(dim, hidden));
  act = register_module("act", std::make_shared<Activation>(ActKind::GELU));
  mask = register_module("mask", std::make_shared<ChannelMask>(hidden));
  fc2 = register_module("fc2", make_linear(hidden, dim));
}

Tensor Mlp::forward(const Tensor& x) { return (*fc2)((*mask)((*act)((*fc1)(x)))); }

std::string Mlp::describe() const { return fmt::format("Mlp({}, hidden={})", fc1->in_features, fc1->out_features); }

TransformerBlock::TransformerBlock(int64_t dim, int64_t num_heads, int64_t mlp_hidden) {
  norm1 = register_module("norm1", std::make_shared<LayerNorm>(dim, kLayerNormEps));
  attn = register_module("attn", std::make_shared<MultiheadSelfAttention>(dim, num_heads));
  norm2 = register_module("norm2", std::make_shared<LayerNorm>(dim, kLayerNormEps));
  mlp = register_module("mlp", std::make_shared<Mlp>(dim, mlp_hidden));
}

Tensor TransformerBlock::forward(const Tensor& x) {
  Tensor h = add(x, (*attn)((*norm1)(x)));
  return add(h, (*mlp)((*norm2)(h)));
}

std::string TransformerBlock::describe() const { return "TransformerBlock"; }

PatchEmbed::PatchEmbed(int64_t in_channels, int64_t dim, int64_t patch) : patch(patch) {
  Conv2d::Options o;
  o.stride = patch;
  proj = register_module("proj", std::make_shared<Conv2d>(in_channels, dim, patch, o));
}

Tensor PatchEmbed::forward(const Tensor& x) {
  Tensor y = (*proj)(x);  // [B, H/p, W/p, dim]
  return y.reshape({y.size(0), y.size(1) * y.size(2), y.size(3)});
}

std::string PatchEmbed::describe() const { return fmt::format("PatchEmbed(p={})", patch); }

// ------------------------------------------------------------------ the models
TransformerSize transformer_size(const std::string& name) {
  if (name == "vit-tiny") return {192, 12, 3, 768};
  if (name == "vit-small") return {384, 12, 6, 1536};
  if (name == "text-transformer") return {256, 4, 4, 1024};
  S2H_FAIL("unknown transformer '{}' (available: text-transformer, vit-small, vit-tiny)", name);
}

TransformerBase::TransformerBase(const TransformerSize& s) : size(s) {
  S2H_CHECK(s.dim > 0 && s.depth > 0 && s.heads > 0 && s.mlp_hidden > 0 && s.dim % s.heads == 0,
            "transformer: dim {}, depth {}, heads {}, MLP {}: sizes must be positive and dim a multiple of heads",
            s.dim, s.depth, s.heads, s.mlp_hidden);
}

void TransformerBase::build_encoder(int64_t num_classes) {
  blocks = register_module("blocks", std::make_shared<Sequential>());
  for (int64_t i = 0; i < size.depth; ++i)
    blocks->add(std::make_shared<TransformerBlock>(size.dim, size.heads, size.mlp_hidden));
  norm = register_module("norm", std::make_shared<LayerNorm>(size.dim, kLayerNormEps));
  head = register_module("head", make_linear(size.dim, num_classes));
}

TransformerBlock& TransformerBase::block(int64_t i) const {
  S2H_CHECK(i >= 0 && i < size.depth, "transformer: block {} of {}", i, size.depth);
  return static_cast<TransformerBlock&>(*blocks->children()[static_cast<size_t>(i)].second);
}

std::vector<ChannelGroup> TransformerBase::channel_groups() const {
  std::vector<ChannelGroup> groups;
  ChannelGroup embed;
  embed.name = "embed";
  embed.kind = GroupKind::Embed;
  embed.channels = size.dim;
  embed.producers = embed_producers_;
  for (int64_t i = 0; i < size.depth; ++i) {
    const std::string b = fmt::format("blocks.{}.", i);
    ChannelGroup heads;
    heads.name = b + "attn.heads";
    heads.kind = GroupKind::Heads;
    heads.channels = size.heads;
    heads.unit = size.dim / size.heads;
    heads.producers = {b + "attn.q", b + "attn.k", b + "attn.v"};
    heads.consumers = {b + "attn.proj"};
    heads.masks = {b + "attn.head_mask"};
    heads.note = "unit h is features h*head_dim..(h+1)*head_dim-1 of q, k, v (rows) and of proj (columns)";
    groups.push_back(heads);
    ChannelGroup hidden;
    hidden.name = b + "mlp.hidden";
    hidden.kind = GroupKind::Hidden;
    hidden.channels = size.mlp_hidden;
    hidden.producers = {b + "mlp.fc1"};
    hidden.consumers = {b + "mlp.fc2"};
    hidden.masks = {b + "mlp.mask"};
    groups.push_back(hidden);
    embed.producers.insert(embed.producers.end(), {b + "attn.proj", b + "mlp.fc2"});
    embed.consumers.insert(embed.consumers.end(), {b + "attn.q", b + "attn.k", b + "attn.v", b + "mlp.fc1"});
    embed.followers.insert(embed.followers.end(), {b + "norm1", b + "norm2"});
  }
  embed.consumers.push_back("head");
  embed.followers.push_back("norm");
  embed.prunable = false;
  embed.note = embed_note_ +
               " hold the width on their last axis and must be sliced with this group (a group has no role for raw "
               "parameters); the stream has no mask point (one after the embedding and after every attn.proj and "
               "mlp.fc2 would be needed); and a masked LayerNorm input is not a narrower LayerNorm (its mean and "
               "variance run over all dim features), so soft and hard networks would differ beyond the mask";
  groups.push_back(embed);
  return groups;
}

VisionTransformer::VisionTransformer(const ModelConfig& c, const TransformerSize& s)
    : TransformerBase(s), image_size(c.image_size), in_channels(c.in_channels) {
  S2H_CHECK(c.image_size > 0 && c.in_channels > 0, "vision transformer: image size {} and channels {} must be positive",
            c.image_size, c.in_channels);
  patch_size = c.patch_size > 0 ? c.patch_size : c.image_size >= 224 ? 16 : c.image_size / 8;
  S2H_CHECK(patch_size > 0,
            "vision transformer: image size {} is too small for the default patch size (image size / 8)",
            c.image_size);
  S2H_CHECK(c.image_size % patch_size == 0,
            "vision transformer: image size {} is not divisible by the patch size {}{}", c.image_size, patch_size,
            c.patch_size > 0 ? "" : " (the default: 16 from 224 up, else image size / 8; set patch_size)");
  num_patches = (c.image_size / patch_size) * (c.image_size / patch_size);
  cls_token = register_parameter("cls_token", Tensor::empty({1, 1, s.dim}));
  init_normal(cls_token, 0.0, 1e-6);
  pos_embed = register_parameter("pos_embed", Tensor::empty({1, 1 + num_patches, s.dim}));
  init_trunc_normal(pos_embed, 0.02);
  patch_embed = register_module("patch_embed", std::make_shared<PatchEmbed>(c.in_channels, s.dim, patch_size));
  build_encoder(c.num_classes);
  embed_producers_ = {"patch_embed.proj"};
  embed_note_ = "cls_token and pos_embed";
}

Tensor VisionTransformer::forward(const Tensor& x) {
  S2H_CHECK(x.dim() == 4 && x.size(1) == image_size && x.size(2) == image_size && x.size(3) == in_channels,
            "{}: expected NHWC images [B, {}, {}, {}], got {}", describe(), image_size, image_size, in_channels,
            x.str());
  Tensor t = (*patch_embed)(x);  // [B, N, dim]
  const int64_t B = t.size(0);
  t = add(concat({expand(cls_token, {B, 1, size.dim}), t}, 1), pos_embed);
  t = (*norm)((*blocks)(t));
  return (*head)(t.slice(1, 0, 1).reshape({B, size.dim}));
}

std::string VisionTransformer::describe() const {
  return fmt::format("VisionTransformer(dim={}, depth={}, heads={}, patch={})", size.dim, size.depth, size.heads,
                     patch_size);
}

TextTransformer::TextTransformer(const ModelConfig& c, const TransformerSize& s)
    : TransformerBase(s), vocab_size(c.vocab_size), max_len(c.max_len) {
  S2H_CHECK(c.vocab_size > 0, "text transformer: the vocabulary size must be set (positive), got {}", c.vocab_size);
  S2H_CHECK(c.max_len > 0, "text transformer: the maximum sequence length must be set (positive), got {}", c.max_len);
  token_embed = register_module("token_embed", std::make_shared<Embedding>(c.vocab_size, s.dim));
  init_trunc_normal(token_embed->weight, 0.02);
  pos_embed = register_parameter("pos_embed", Tensor::empty({1, c.max_len, s.dim}));
  init_trunc_normal(pos_embed, 0.02);
  build_encoder(c.num_classes);
  embed_note_ = "token_embed.weight and pos_embed";
}

Tensor TextTransformer::forward(const Tensor& ids_in) {
  S2H_CHECK(ids_in.dtype() == DType::I64 && ids_in.dim() == 2 && ids_in.size(1) >= 1 && ids_in.size(1) <= max_len,
            "{}: expected i64 token ids [B, L] with 1 <= L <= {}, got {}", describe(), max_len, ids_in.str());
  // Token ids are read on the host (padding, range checks); the embedding
  // lookup runs where the model is.
  const Device dev = pos_embed.device();
  Tensor ids = ids_in.contiguous().to(Device::cpu());
  const int64_t B = ids.size(0);
  // Cut the columns of padding that end every row: exact (padded keys are ignored and the
  // pooling skips padded tokens), and the work then follows the longest row of the batch.
  const int64_t width = ids.size(1);
  int64_t L = 1;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = width - 1; i >= L; --i)
      if (ids.data<int64_t>()[b * width + i] != 0) {
        L = i + 1;
        break;
      }
  if (L < width) ids = ids.slice(1, 0, L).contiguous();
  const int64_t* id = ids.data<int64_t>();
  Tensor padding = Tensor::zeros({B, L}, DType::U8);
  uint8_t* pad = padding.data<uint8_t>();
  std::vector<double> keep(static_cast<size_t>(B * L)), count(static_cast<size_t>(B), 0.0);
  bool any_pad = false;
  for (int64_t i = 0; i < B * L; ++i) {
    S2H_CHECK(id[i] >= 0 && id[i] < vocab_size, "{}: token id {} at [{}, {}] is outside the vocabulary [0, {})",
              describe(), id[i], i / L, i % L, vocab_size);
    pad[i] = id[i] == 0;
    any_pad = any_pad || pad[i];
    keep[static_cast<size_t>(i)] = pad[i] ? 0.0 : 1.0;
    count[static_cast<size_t>(i / L)] += keep[static_cast<size_t>(i)];
  }
  for (double& n : count) n = std::max(n, 1.0);  // a row of padding only pools to zeros

  Tensor h = (*token_embed)(ids.to(dev));
  h = add(h, pos_embed.slice(1, 0, L));
  {
    KeyPaddingScope scope(*this, any_pad ? padding.to(dev) : Tensor());
    h = (*blocks)(h);
  }
  h = (*norm)(h);
  // Mean over the non-padded tokens.
  Tensor pooled = div(sum(mul(h, Tensor::from_vector(keep, {B, L, 1}).to(dev).to(h.dtype())), {1}),
                      Tensor::from_vector(count, {B, 1}).to(dev).to(h.dtype()));
  return (*head)(pooled);
}

std::string TextTransformer::describe() const {
  return fmt::format("TextTransformer(dim={}, depth={}, heads={}, vocab={}, max_len={})", size.dim, size.depth,
                     size.heads, vocab_size, max_len);
}

ModulePtr make_transformer(const std::string& name, const ModelConfig& config) {
  const TransformerSize s = transformer_size(name);
  if (name == "text-transformer") return std::make_shared<TextTransformer>(config, s);
  return std::make_shared<VisionTransformer>(config, s);
}

}  // namespace s2h::models
