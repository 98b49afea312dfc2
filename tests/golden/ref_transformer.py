"""PyTorch 1.13 mirrors of models/transformer.{h,cpp}: vit-tiny, vit-small, text-transformer.

Read by tests/golden/make_model_golden.py. Parameter names and shapes are those of
the C++ models (timm's VisionTransformer names, with separate attn.q / attn.k /
attn.v projections instead of a fused qkv). Layout differences: the only 4-D
weight, patch_embed.proj.weight, is [out][in][kh][kw] here and [out][kh][kw][in]
in s2h; the ViT here takes NCHW images, the C++ model the NHWC view of the same
tensor. Everything else (Linear weights [out][in], cls_token [1, 1, dim],
pos_embed [1, tokens, dim], token_embed.weight [vocab, dim]) is identical.

Exports:
  MODELS: name -> (builder(num_classes) -> nn.Module, input spec[, extras])
      specs: "CxHxW" (an NCHW float image) or "tokensL" (LongTensor ids [B, L]);
      extras: "classes" and the ModelConfig fields the C++ test must set.
  TORCHVISION_PARAMS: reference parameter counts (here timm's) that the driver checks.
  make_input(spec, batch, generator) -> the input tensor for a spec (for text:
      random ids in [1, VOCAB_SIZE) with trailing padding (id 0) in rows 1, 2, ...).
  Attention modules define extra_flops(inp, out): the q k^T and attention x v
      products (2 * 2 * B * L * L * dim), which forward hooks on nn.Linear miss.

The text reference is built with VOCAB_SIZE = 1000 and MAX_LEN = 64 (the C++
test builds text-transformer with the same ModelConfig values, from the extras).
"""
import math

import torch
import torch.nn as nn

VOCAB_SIZE = 1000
MAX_LEN = 64
LN_EPS = 1e-6
MASKED_LOGIT = -1e9  # added to the attention logits of padded keys (as the C++ kMaskedLogit)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, key_padding=None):
        """x [B, L, dim]; key_padding: bool [B, L], True where the key is padding."""
        b, n, _ = x.shape
        split = lambda t: t.reshape(b, n, self.heads, self.head_dim).permute(0, 2, 1, 3)  # [B, H, L, D]
        q = split(self.q(x) * (1.0 / math.sqrt(self.head_dim)))
        k, v = split(self.k(x)), split(self.v(x))
        logits = q @ k.transpose(-2, -1)
        if key_padding is not None:
            logits = logits + (key_padding.to(x.dtype) * MASKED_LOGIT)[:, None, None, :]
        out = (logits.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(b, n, self.dim)
        return self.proj(out)

    def extra_flops(self, inp, out):
        x = inp[0] if isinstance(inp, (tuple, list)) else inp
        b, n, _ = x.shape
        return 2 * 2 * b * n * n * self.dim


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_hidden):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x, key_padding=None):
        x = x + self.attn(self.norm1(x), key_padding)
        return x + self.mlp(self.norm2(x))


def init_weights(model):
    """timm's default, as the C++ models: Linear weights truncated normal 0.02 (cut at 2 std)
    and zero biases. (The goldens do not depend on it: the driver stores the weights it used.)"""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
            nn.init.zeros_(m.bias)


class PatchEmbed(nn.Module):
    def __init__(self, in_channels, dim, patch):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)

    def forward(self, x):  # NCHW -> [B, N, dim], patches row by row
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    def __init__(self, num_classes, image_size, in_channels, dim, depth, heads, mlp_hidden, patch=0):
        super().__init__()
        patch = patch or (16 if image_size >= 224 else image_size // 8)
        n = (image_size // patch) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 1e-6)
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1 + n, dim), std=0.02, a=-0.04, b=0.04))
        self.patch_embed = PatchEmbed(in_channels, dim, patch)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.head = nn.Linear(dim, num_classes)
        init_weights(self)

    def forward(self, x):
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
        t = self.norm(self.blocks(t))
        return self.head(t[:, 0])


class TextTransformer(nn.Module):
    """Token ids [B, L] (0 = padding) -> logits; the head reads the mean of the
    final-norm outputs over the non-padded tokens (zeros for a row of padding).
    The padding columns that end every row are cut first, so the FLOPs follow the
    longest row of the batch."""

    def __init__(self, num_classes, vocab_size=VOCAB_SIZE, max_len=MAX_LEN, dim=256, depth=4, heads=4,
                 mlp_hidden=1024):
        super().__init__()
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, max_len, dim), std=0.02, a=-0.04, b=0.04))
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.token_embed.weight, std=0.02, a=-0.04, b=0.04)
        init_weights(self)

    def forward(self, ids):
        used = (ids != 0).any(0).nonzero()
        ids = ids[:, :int(used.max()) + 1 if len(used) else 1]
        pad = ids == 0
        h = self.token_embed(ids) + self.pos_embed[:, :ids.shape[1]]
        key_padding = pad if bool(pad.any()) else None
        for blk in self.blocks:
            h = blk(h, key_padding)
        h = self.norm(h)
        keep = (~pad).to(h.dtype).unsqueeze(-1)
        pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.head(pooled)


def vit_tiny(num_classes, image_size=32, in_channels=3):
    return VisionTransformer(num_classes, image_size, in_channels, 192, 12, 3, 768)


def vit_small(num_classes, image_size=32, in_channels=3):
    return VisionTransformer(num_classes, image_size, in_channels, 384, 12, 6, 1536)


def text_transformer(num_classes):
    return TextTransformer(num_classes)


MODELS = {
    "vit-tiny": (vit_tiny, "3x32x32"),
    "vit-small": (vit_small, "3x32x32"),
    # The ImageNet size: patch 16, 197 tokens; the parameter count is timm's (below).
    "vit-tiny@224": (lambda classes: vit_tiny(classes, image_size=224), "3x224x224", {"classes": 1000}),
    "text-transformer": (text_transformer, "tokens64", {"classes": 2, "vocab_size": VOCAB_SIZE, "max_len": MAX_LEN}),
}

# Checked by make_model_golden.py: timm's vit_tiny_patch16_224 (fused qkv, the same parameters).
TORCHVISION_PARAMS = {"vit-tiny@224": 5717416}


def make_input(spec, batch, generator):
    """The input for a spec: "CxHxW" -> N(0, 1) NCHW floats; "tokensL" -> ids [batch, L] in
    [1, VOCAB_SIZE). Row 0 has no padding (so a batch spans all L columns and the text model's
    FLOPs are those of L tokens); row i > 0 ends in 1 + (L/4 + 3i) % (L-1) padding tokens."""
    if spec.startswith("tokens"):
        n = int(spec[len("tokens"):])
        ids = torch.randint(1, VOCAB_SIZE, (batch, n), generator=generator, dtype=torch.long)
        for i in range(1, batch):
            ids[i, n - 1 - (n // 4 + 3 * i) % (n - 1):] = 0
        return ids
    c, h, w = (int(s) for s in spec.split("x"))
    return torch.randn(batch, c, h, w, generator=generator)
