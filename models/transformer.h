// Transformers: ViT-Tiny / ViT-Small for images and a small encoder for text.
//
// Module names follow timm's VisionTransformer (patch_embed.proj, cls_token,
// pos_embed, blocks.N.norm1, blocks.N.attn.*, blocks.N.norm2, blocks.N.mlp.fc1,
// blocks.N.mlp.fc2, norm, head), except that attention has separate q, k and v
// projections (blocks.N.attn.q / .k / .v) instead of timm's fused qkv: each of
// them then has exactly heads*head_dim outputs, so the heads are an ordinary
// channel group (a timm checkpoint loads by splitting qkv.weight in three).
//
// Blocks are pre-norm,
//   x += attn.proj(attn.head_mask(attention of attn.q, attn.k, attn.v over norm1(x)))
//   x += mlp.fc2(mlp.mask(gelu(mlp.fc1(norm2(x))))),
// with LayerNorm eps 1e-6, exact GELU, no dropout. ChannelMask modules (identity
// unless a pruning method sets them) sit on the concatenated head outputs before
// proj (unit = head dim) and after the MLP's GELU.
//
// Initialisation as timm's default: Linear weights truncated normal (std 0.02,
// cut at 2 std), biases 0; pos_embed (and the text token embedding) truncated
// normal 0.02; cls_token normal 1e-6; the patch-embedding conv keeps PyTorch's
// default; LayerNorm weight 1, bias 0.
//
// vit-tiny:  dim 192, depth 12, 3 heads, MLP 768.
// vit-small: dim 384, depth 12, 6 heads, MLP 1536.
//   Input NHWC images [B, S, S, C] with S = config.image_size, C = config.in_channels.
//   Patch size config.patch_size, or when 0: 16 for S >= 224, else S/8 (4 for 32x32,
//   8 for 64x64). Tokens: the class token, then the patches row by row; pos_embed
//   is [1, 1 + (S/p)^2, dim]; the head reads the class token after the final norm.
// text-transformer: dim 256, depth 4, 4 heads, MLP 1024.
//   Input i64 token ids [B, L], 1 <= L <= config.max_len, id 0 = padding,
//   ids < config.vocab_size. token_embed(ids) + pos_embed[:, :L] ([1, max_len, dim]);
//   attention ignores padded keys (an additive -1e9 on their logits); after the
//   final norm the head reads the mean over the non-padded tokens (a row of
//   padding only gives a zero vector there, so its logits are the head's bias).
//   The columns of padding at the end of every row of a batch are cut first (this
//   changes nothing but the work): time and traced FLOPs follow the batch's longest
//   row, so trace an input without padding for the FLOPs at max_len.
#pragma once

#include <memory>
#include <string>

#include "engine/layers.h"
#include "models/groups.h"
#include "models/registry.h"

namespace s2h::models {

// Added to the attention logits of padded keys.
inline constexpr double kMaskedLogit = -1e9;

// Multi-head self-attention over x [B, L, dim] -> [B, L, dim]:
// softmax(q k^T / sqrt(head_dim) + key bias) v per head, the heads concatenated
// (head h holds features h*head_dim .. (h+1)*head_dim-1 of q, k, v and of proj's input),
// then head_mask, then proj.
class MultiheadSelfAttention : public Module {
 public:
  MultiheadSelfAttention(int64_t dim, int64_t num_heads);
  Tensor forward(const Tensor& x) override;
  // The attention products only (q k^T and attention x v): 2 * 2 * B * L * L * num_heads * head_dim
  // (= dim unless heads were pruned).
  // The q, k, v and proj Linears count themselves.
  int64_t flops(const Tensor& in, const Tensor& out) const override;
  std::string describe() const override;

  int64_t dim, num_heads, head_dim;
  std::shared_ptr<Linear> q, k, v, proj;
  std::shared_ptr<ChannelMask> head_mask;  // ChannelMask(num_heads, head_dim)
  // Keys to ignore: u8 [B, L], 1 where the key is padding; undefined attends to every key.
  // Set by the owning model for the duration of one forward call.
  Tensor key_padding;
};

// fc1 -> GELU -> mask -> fc2.
class Mlp : public Module {
 public:
  Mlp(int64_t dim, int64_t hidden);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  std::shared_ptr<Linear> fc1, fc2;
  std::shared_ptr<Activation> act;
  std::shared_ptr<ChannelMask> mask;  // ChannelMask(hidden)
};

// Pre-norm encoder block.
class TransformerBlock : public Module {
 public:
  TransformerBlock(int64_t dim, int64_t num_heads, int64_t mlp_hidden);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  std::shared_ptr<LayerNorm> norm1, norm2;
  std::shared_ptr<MultiheadSelfAttention> attn;
  std::shared_ptr<Mlp> mlp;
};

// NHWC image [B, H, W, C] -> patch tokens [B, (H/p)*(W/p), dim] through Conv2d(C, dim, k=p, stride=p).
class PatchEmbed : public Module {
 public:
  PatchEmbed(int64_t in_channels, int64_t dim, int64_t patch);
  Tensor forward(const Tensor& x) override;
  std::string describe() const override;
  int64_t patch;
  std::shared_ptr<Conv2d> proj;
};

struct TransformerSize {
  int64_t dim = 0, depth = 0, heads = 0, mlp_hidden = 0;
};
// The sizes of vit-tiny, vit-small and text-transformer; throws for other names.
TransformerSize transformer_size(const std::string& name);

// The encoder blocks shared by both models, registered as "blocks.0", "blocks.1", ...
class TransformerBase : public Module, public HasChannelGroups {
 public:
  // Per block: "blocks.N.attn.heads" (Heads) and "blocks.N.mlp.hidden" (Hidden); then "embed" (Embed,
  // not prunable) with the stream's producers (`embed_producers` first, then every attn.proj and
  // mlp.fc2), consumers (every q, k, v, fc1 and the head) and followers (every LayerNorm).
  std::vector<ChannelGroup> channel_groups() const override;
  const TransformerSize size;
  std::shared_ptr<Sequential> blocks;
  std::shared_ptr<LayerNorm> norm;
  std::shared_ptr<Linear> head;
  TransformerBlock& block(int64_t i) const;

 protected:
  explicit TransformerBase(const TransformerSize& size);
  // Registers blocks, norm and head; called by the models after their embedding modules.
  void build_encoder(int64_t num_classes);
  std::vector<std::string> embed_producers_;
  std::string embed_note_;
};

class VisionTransformer : public TransformerBase {
 public:
  VisionTransformer(const ModelConfig& config, const TransformerSize& size);
  Tensor forward(const Tensor& x) override;  // [B, S, S, C] -> logits [B, classes]
  std::string describe() const override;
  int64_t image_size, in_channels, patch_size, num_patches;
  std::shared_ptr<PatchEmbed> patch_embed;
  Tensor cls_token;  // [1, 1, dim]
  Tensor pos_embed;  // [1, 1 + num_patches, dim]
};

class TextTransformer : public TransformerBase {
 public:
  TextTransformer(const ModelConfig& config, const TransformerSize& size);
  Tensor forward(const Tensor& ids) override;  // i64 [B, L] -> logits [B, classes]
  std::string describe() const override;
  int64_t vocab_size, max_len;
  std::shared_ptr<Embedding> token_embed;
  Tensor pos_embed;  // [1, max_len, dim]
};

// "vit-tiny", "vit-small" or "text-transformer" with its default size.
ModulePtr make_transformer(const std::string& name, const ModelConfig& config);

}  // namespace s2h::models
