"""Vision Transformer for 112x112 faces as in insightface arcface_torch: 9x9 patches (12x12 =
144 tokens, no class token), learned position embedding, pre-norm blocks (attention through
torch.nn.functional.scaled_dot_product_attention, ReLU6 MLP), stochastic depth, random token
masking while training, and an embedding head that flattens all tokens:
Linear(144*dim, dim) -> BN1d -> Linear(dim, d) -> BN1d.

Module names and registration order follow arcface_torch (`patch_embed.proj`, `blocks.<i>.norm1
/ norm2 / attn / mlp.fc1 / mlp.fc2`, `feature.<i>`), so its state dicts load with strict=True."""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from backbones.iresnet import checkpointed_call
from backbones.mobilefacenet import initialise_layers

# name -> (embed_dim, depth, num_heads, drop_path_rate, mask_ratio), insightface's names and settings
VIT_SIZES = {
    "vit_t": (256, 12, 8, 0.1, 0.1),
    "vit_t_dp005_mask0": (256, 12, 8, 0.05, 0.0),
    "vit_s": (512, 12, 8, 0.1, 0.1),
    "vit_s_dp005_mask_0": (512, 12, 8, 0.05, 0.0),
    "vit_b": (512, 24, 8, 0.1, 0.1),
    "vit_b_dp005_mask_005": (512, 24, 8, 0.05, 0.05),
    "vit_l_dp005_mask_005": (768, 24, 8, 0.05, 0.05),
}
# our earlier short names for insightface's networks
VIT_ALIASES = {"vit_l": "vit_l_dp005_mask_005"}


class DropPath(nn.Module):
    """Stochastic depth: zero a residual branch per sample with probability `rate` in training."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype)
        return x * mask.bernoulli_(keep) / keep


class Attention(nn.Module):
    """Multi-head self-attention; the product itself runs in scaled_dot_product_attention."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        # looked up at call time so tools.benchmark.flops can count the attention products
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(batch, tokens, dim)))


class Mlp(nn.Module):
    """Linear -> ReLU6 -> dropout -> Linear -> dropout (insightface names fc1 / fc2)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)), with stochastic depth."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        # registration order as in insightface, so state dicts list keys in the same order
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbedding(nn.Module):
    """Non-overlapping `patch_size` patches -> `embed_dim` tokens [B, patches, embed_dim]."""

    def __init__(self, embed_dim: int, patch_size: int, in_channels: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """ViT feature extractor: float [B, 3, 112, 112] -> embeddings [B, num_features]."""

    def __init__(self, num_features: int = 512, embed_dim: int = 512, depth: int = 12,
                 num_heads: int = 8, img_size: int = 112, patch_size: int = 9,
                 mlp_ratio: float = 4.0, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, mask_ratio: float = 0.1,
                 gradient_checkpointing: bool = False):
        super().__init__()
        self.gradient_checkpointing = gradient_checkpointing
        self.img_size = img_size
        self.mask_ratio = mask_ratio
        self.num_patches = (img_size // patch_size) ** 2
        self.patch_embed = PatchEmbedding(embed_dim, patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        drop_path_rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, drop_rate, attn_drop_rate, rate)
            for rate in drop_path_rates])
        self.norm = nn.LayerNorm(embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.feature = nn.Sequential(
            nn.Linear(embed_dim * self.num_patches, embed_dim, bias=False),
            nn.BatchNorm1d(embed_dim, eps=2e-5),
            nn.Linear(embed_dim, num_features, bias=False),
            nn.BatchNorm1d(num_features, eps=2e-5))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        initialise_layers(self, (nn.Linear,), (nn.LayerNorm,), partial(nn.init.trunc_normal_, std=0.02))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"ViT expects {self.img_size}x{self.img_size} input, got {tuple(x.shape[-2:])}")
        tokens = self.patch_embed(x) + self.pos_embed
        tokens = self.pos_drop(tokens)
        masking = self.training and self.mask_ratio > 0
        if masking:
            # token dropout: the blocks see a random subset, the rest return as the mask token
            batch, length, dim = tokens.shape
            order = torch.rand(batch, length, device=tokens.device).argsort(dim=1)
            keep = order[:, :int(length * (1 - self.mask_ratio))]
            tokens = tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, dim))
        for block in self.blocks:
            tokens = checkpointed_call(block, tokens) if self.gradient_checkpointing else block(tokens)
        tokens = self.norm(tokens)
        if masking:
            restored = self.mask_token.to(tokens.dtype).expand(batch, length, dim).clone()
            tokens = restored.scatter(1, keep.unsqueeze(-1).expand(-1, -1, dim), tokens)
        return self.feature(tokens.flatten(1))


def vision_transformer(name: str, num_features: int = 512, gradient_checkpointing: bool = False,
                       **kw) -> VisionTransformer:
    embed_dim, depth, num_heads, drop_path_rate, mask_ratio = VIT_SIZES[VIT_ALIASES.get(name, name)]
    settings = dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                    drop_path_rate=drop_path_rate, mask_ratio=mask_ratio)
    settings.update(kw)
    return VisionTransformer(num_features, gradient_checkpointing=gradient_checkpointing, **settings)
