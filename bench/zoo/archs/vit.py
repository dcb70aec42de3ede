"""Vision Transformer sized for small images (Dosovitskiy et al. 2021, arXiv:2010.11929),
with the training tricks studies compare as options.

The image is cut into (image_size / patch_size)² patches, each projected to a ``width``-dim
token by one conv with kernel = stride = patch size (``patch_embed``); an optional class
token is prepended; a position embedding is added; ``depth`` pre-norm blocks follow,

    x ← x + α · DropPath(Attention(Norm(x)))
    x ← x + α · DropPath(MLP(Norm(x))),          MLP = Linear → act → Linear (width·mlp_ratio hidden)

then a final norm, the class token (or the mean of the patch tokens) and the head. The
MLP's activation is GELU unless the config chooses another (``activation``), applied to
the hidden units of each token as a vector (``dims=1``, on (B·N, hidden)); so a spatial
activation (FReLU) is refused. The conv stem's ReLUs and the MLP head's tanh are part of
those options' designs and stay.

Options:

- ``vit_pos_embed``: ``learned`` (a parameter, truncated normal σ = 0.02) or ``sincos``,
  the fixed 2-D sin-cos embedding of MoCo v3 (Chen, Xie & He 2021, arXiv:2104.02057):
  a buffer, never trained; the class token's position is the zero vector.
- ``vit_cls_token``: classify from a class token; false: from the mean of the patch tokens.
- ``vit_freeze_patch``: MoCo v3's stabilizer, the patch projection frozen at its random
  init (requires_grad False on every parameter of ``patch_embed``, so the optimizer never
  sees them: no update, no weight decay).
- ``vit_conv_stem``: LV-ViT's patch embedding (Jiang et al. 2021, "All Tokens Matter",
  arXiv:2104.10858; their ``PatchEmbed4_2``): three convs with a norm and ReLU each (the
  first with stride 2, all 3×3 here instead of LV-ViT's 7×7 first conv, the images being
  small; width/2 channels), then a projection with kernel = stride = patch_size / 2, so
  the tokens still cover patch_size × patch_size pixels, from overlapping receptive fields.
  Needs an even patch size.
- ``vit_residual_scale``: α above, LV-ViT's residual-branch scaling (their code divides the
  branch by ``skip_lam``; α = 1 / skip_lam, so their skip_lam = 2 is α = 0.5).
- ``drop_path``: stochastic depth (Huang et al. 2016, arXiv:1603.09382), the drop rate
  rising linearly from 0 in the first block to ``drop_path`` in the last (timm's rule);
  inactive in eval mode.
- ``vit_mlp_head``: the pre-training head of the ViT paper, Linear(width, width) → tanh →
  classifier; else one linear classifier.

Norms come from the harness's registry through the :class:`NormFactory` the builder gets.
Batch-statistics norms (registry tag ``batch``: bn, bn-ghost, brn, ...) see the tokens as a
1-wide feature map (B, C, N, 1): statistics per channel over the images and all their
tokens, virtual batches made of whole images. Every other norm sees each token as a
vector of C features (``dims=1``): ``ln`` is the ViT's LayerNorm, ``gn`` a GroupNorm over
each token's channel groups, ``none`` the identity. InstanceNorm and model-level norms
(MimicNorm) are refused. Note that the standard ViT is ``norm: ln``; the config's default
norm is bn. The conv stem's norms act on conv features (``dims=2``).

Every conv and linear comes from the :class:`ConvFactory`, so weight reparametrizations
apply here too (which is why the attention and MLP are written here rather than taken
from timm, whose blocks build plain ``nn.Linear``s); timm supplies DropPath, the
truncated-normal init and the sin-cos embedding. Linear weights start as in timm's ViT,
``trunc_normal_(std=0.02)`` (bounds ±2 in absolute value, so in effect N(0, 0.02²)), with
zero bias, unless a reparametrization owns them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath, build_sincos2d_pos_embed, trunc_normal_
from torch import Tensor, nn

from bench.errors import ConfigError
from bench.zoo.activations import ActivationFactory
from bench.zoo.convs import ConvFactory
from bench.zoo.norms import NormFactory
from bench.zoo.registry import ARCHS, NORMS, Option

POS_EMBEDS = ("learned", "sincos")


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


class TokenNorm(nn.Module):
    """A registry norm on tokens (B, N, C): batch-statistics norms over (B, C, N, 1) feature
    maps, the others per token on (B·N, C) vectors (see the module docstring)."""

    def __init__(self, norm: NormFactory, width: int):
        super().__init__()
        self.over_tokens = "batch" in NORMS.entry(norm.name).tags
        self.norm = norm(width, dims=2 if self.over_tokens else 1)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        if self.over_tokens:
            return self.norm(x.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)
        return self.norm(x.reshape(b * n, c)).reshape(b, n, c)


class Attention(nn.Module):
    """Multi-head self-attention: qkv projection, softmax(q kᵀ / √d) v per head, output projection."""

    def __init__(self, width: int, heads: int, conv: ConvFactory):
        super().__init__()
        self.heads = heads
        self.qkv = conv.linear(width, 3 * width)
        self.proj = conv.linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Linear → act → Linear on tokens (B, N, C); the activation sees (B·N, hidden) vectors."""

    def __init__(self, width: int, hidden: int, conv: ConvFactory, activation: ActivationFactory):
        super().__init__()
        self.fc1, self.act, self.fc2 = conv.linear(width, hidden), activation(hidden, dims=1), conv.linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        return self.fc2(self.act(h.reshape(-1, h.shape[-1])).reshape(h.shape))


class Block(nn.Module):
    """Pre-norm transformer block with residual branches scaled by α and stochastic depth."""

    def __init__(
        self, width: int, heads: int, hidden: int, norm: NormFactory, conv: ConvFactory, activation: ActivationFactory,
        alpha: float, drop: float,
    ):
        super().__init__()
        self.alpha = alpha
        self.norm1, self.attn = TokenNorm(norm, width), Attention(width, heads, conv)
        self.norm2, self.mlp = TokenNorm(norm, width), Mlp(width, hidden, conv, activation)
        self.drop_path = DropPath(drop) if drop > 0 else nn.Identity()

    def _branch(self, out: Tensor) -> Tensor:
        return self.drop_path(out if self.alpha == 1.0 else self.alpha * out)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self._branch(self.attn(self.norm1(x)))
        return x + self._branch(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class ConvStem(nn.Module):
    """LV-ViT-style overlapping stem: (3×3 conv → norm → ReLU) × 3, the first with stride 2,
    then a projection with kernel = stride = patch_size / 2."""

    def __init__(self, in_channels: int, width: int, patch_size: int, norm: NormFactory, conv: ConvFactory):
        super().__init__()
        hidden, bias = max(1, width // 2), norm.name == "none"
        layers: list[nn.Module] = []
        for i, cin in enumerate((in_channels, hidden, hidden)):
            stride = 2 if i == 0 else 1
            layers += [conv.conv(cin, hidden, 3, stride=stride, padding=1, bias=bias), norm(hidden), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.proj = conv.conv(hidden, width, patch_size // 2, stride=patch_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.convs(x))


class ViT(nn.Module):
    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        norm: NormFactory,
        conv: ConvFactory,
        activation: ActivationFactory,
        width: int,
        depth: int,
        patch_size: int,
        heads: int,
        mlp_ratio: float,
        pos_embed: str,
        cls_token: bool,
        freeze_patch: bool,
        conv_stem: bool,
        residual_scale: float,
        drop_path: float,
        mlp_head: bool,
    ):
        super().__init__()
        grid = image_size // patch_size
        self.patch_embed: nn.Module = (
            ConvStem(in_channels, width, patch_size, norm, conv)
            if conv_stem
            else conv.conv(in_channels, width, patch_size, stride=patch_size)
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if cls_token else None
        tokens = grid * grid + int(cls_token)
        if pos_embed == "learned":  # timm's init; σ = 0.02 as for the linears
            self.pos_embed = nn.Parameter(torch.zeros(1, tokens, width))
            trunc_normal_(self.pos_embed, std=0.02)
        else:
            table = build_sincos2d_pos_embed([grid, grid], dim=width)
            if cls_token:
                table = torch.cat([table.new_zeros(1, width), table])
            self.register_buffer("pos_embed", table.unsqueeze(0), persistent=False)
        rates = [drop_path * i / (depth - 1) if depth > 1 else drop_path for i in range(depth)]
        hidden = max(1, round(width * mlp_ratio))
        self.blocks = nn.Sequential(*(Block(width, heads, hidden, norm, conv, activation, residual_scale, r) for r in rates))
        self.norm = TokenNorm(norm, width)
        classifier = conv.linear(width, num_classes)
        classifier.is_classifier = True
        self.head: nn.Module = (
            nn.Sequential(conv.linear(width, width), nn.Tanh(), classifier) if mlp_head else classifier
        )
        self.apply(_init_linear)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if freeze_patch:
            self.patch_embed.requires_grad_(False)

    def no_weight_decay(self) -> set[str]:
        """Parameters exempt from decay with ``wd_exclude_1d`` (timm's convention): the
        learned position embedding and the class token are not weights of a map."""
        return {name for name in ("pos_embed", "cls_token") if isinstance(getattr(self, name, None), nn.Parameter)}

    def first_layer(self) -> nn.Module:
        """The layer that sees the pixels (its gradient norm is the one MoCo v3 watches)."""
        return self.patch_embed.convs[0] if isinstance(self.patch_embed, ConvStem) else self.patch_embed

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, C), row-major patches
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        tokens = self.norm(self.blocks(tokens + self.pos_embed))
        pooled = tokens[:, 0] if self.cls_token is not None else tokens.mean(dim=1)
        return self.head(pooled)


VIT_OPTIONS = (
    Option("patch_size", int, 4, "pixels per side of a patch (one token); must divide the image size", ge=1),
    Option("vit_heads", int, 4, "attention heads; must divide width", ge=1),
    Option("vit_mlp_ratio", float, 2.0, "MLP hidden units per embedding dimension", gt=0),
    Option("vit_pos_embed", str, "learned", "position embedding: learned, or fixed 2-D sin-cos (MoCo v3)",
           choices=POS_EMBEDS),
    Option("vit_cls_token", bool, True, "classify from a class token (false: the mean of the patch tokens)"),
    Option("vit_freeze_patch", bool, False, "MoCo v3: the patch projection frozen at its random init"),
    Option("vit_conv_stem", bool, False, "LV-ViT: an overlapping conv stem before the patch projection"),
    Option("vit_residual_scale", float, 1.0, "LV-ViT α: x + α·f(x) on every residual branch", gt=0),
    Option("drop_path", float, 0.0, "stochastic depth rate of the last block (linear from 0 in the first)", ge=0, lt=1),
    Option("vit_mlp_head", bool, False, "a tanh hidden layer before the classifier (the ViT pre-training head)"),
)


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear) and isinstance(module.weight, nn.Parameter):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _check(
    norm: NormFactory, image_size: int, width: int, depth: int, patch_size: int, heads: int, mlp_ratio: float,
    pos_embed: str, conv_stem: bool, residual_scale: float, drop_path: float,
) -> None:
    entry = NORMS.entry(norm.name)
    if "model" in entry.tags or norm.name == "in":
        raise ConfigError(
            f"arch=vit cannot use norm={norm.name!r}: " + (
                "InstanceNorm normalizes each channel over spatial positions of conv features, and transformer "
                "blocks have token features." if norm.name == "in" else
                "it changes a conv network as a whole (centred convs, one BatchNorm on the logits), and a ViT "
                "is built of linear layers."
            ) + " For the ViT choose ln (its standard LayerNorm), bn (BatchNorm over tokens), gn, another batch "
            "norm, or none."
        )
    if depth < 1:
        raise ConfigError(f"arch=vit needs depth ≥ 1 transformer blocks; got depth={depth}.")
    if heads < 1 or width % heads:
        raise ConfigError(
            f"arch=vit splits width={width} (the embedding dimension) into vit_heads={heads} heads, so the number "
            f"of heads must divide it. Valid vit_heads for width {width}: {_divisors(width)}."
        )
    if patch_size < 1 or image_size % patch_size:
        raise ConfigError(
            f"arch=vit cuts {image_size}×{image_size} images into patches of patch_size={patch_size} pixels, which "
            f"must divide the image size. Valid patch sizes for {image_size}-pixel images: {_divisors(image_size)}."
        )
    if conv_stem and patch_size % 2:
        raise ConfigError(
            f"vit_conv_stem=true reaches a patch of patch_size={patch_size} pixels with a stride-2 conv and a "
            "projection of stride patch_size/2, so the patch size must be even."
        )
    if pos_embed not in POS_EMBEDS:
        raise ConfigError(f"vit_pos_embed must be one of {', '.join(POS_EMBEDS)}; got {pos_embed!r}.")
    if pos_embed == "sincos" and width % 4:
        raise ConfigError(
            f"vit_pos_embed=sincos splits width={width} into sin and cos of the row and the column, so width must "
            "be a multiple of 4."
        )
    if not mlp_ratio > 0 or not math.isfinite(mlp_ratio):
        raise ConfigError(f"vit_mlp_ratio must be a finite number > 0; got {mlp_ratio}.")
    if not residual_scale > 0 or not math.isfinite(residual_scale):
        raise ConfigError(f"vit_residual_scale (α on residual branches) must be a finite number > 0; got {residual_scale}.")
    if not 0 <= drop_path < 1:
        raise ConfigError(f"drop_path (stochastic depth rate) must lie in [0, 1); got {drop_path}.")


@ARCHS.register(
    "vit",
    "Vision Transformer for small images: patch_size patches, width-dim tokens, depth blocks, vit_heads heads "
    "(defaults 4, 64, 6, 4); options vit_* (sin-cos positions, class token or pooling, frozen patch projection, "
    "LV-ViT conv stem and residual scale α, MLP head) and drop_path. The standard ViT uses norm=ln.",
    paper="Dosovitskiy et al. 2021, arXiv:2010.11929; Chen et al. 2021 (MoCo v3), arXiv:2104.02057; "
    "Jiang et al. 2021 (LV-ViT), arXiv:2104.10858",
    options=VIT_OPTIONS,
)
def build_vit(
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    norm: NormFactory,
    conv: ConvFactory = ConvFactory(),
    activation: ActivationFactory = ActivationFactory("gelu"),
    width: int = 64,
    depth: int = 6,
    patch_size: int = 4,
    vit_heads: int = 4,
    vit_mlp_ratio: float = 2.0,
    vit_pos_embed: str = "learned",
    vit_cls_token: bool = True,
    vit_freeze_patch: bool = False,
    vit_conv_stem: bool = False,
    vit_residual_scale: float = 1.0,
    drop_path: float = 0.0,
    vit_mlp_head: bool = False,
) -> nn.Module:
    _check(norm, image_size, width, depth, patch_size, vit_heads, vit_mlp_ratio, vit_pos_embed, vit_conv_stem,
           vit_residual_scale, drop_path)
    return ViT(
        in_channels=in_channels, num_classes=num_classes, image_size=image_size, norm=norm, conv=conv, activation=activation,
        width=width,
        depth=depth, patch_size=patch_size, heads=vit_heads, mlp_ratio=vit_mlp_ratio, pos_embed=vit_pos_embed,
        cls_token=vit_cls_token, freeze_patch=vit_freeze_patch, conv_stem=vit_conv_stem,
        residual_scale=vit_residual_scale, drop_path=drop_path, mlp_head=vit_mlp_head,
    )
