"""MobileFaceNet as configured in insightface arcface_torch: "mbf" (blocks (1, 4, 6, 2), width
scale 2) and "mbf_large" (blocks (2, 8, 12, 4), width scale 4). A stride-2 stem,
inverted-residual depthwise stages down to 7x7, a 1x1 conv to 512 channels and a global
depthwise conv (GDC) embedding head.

Module nesting and names follow arcface_torch's state dicts (`layers.<i>.layers...`,
`conv_sep.layers...`, `features.layers...`), so an insightface mbf / mbf_large state dict
loads with strict=True and gives the same embeddings; gradient checkpointing is a forward-time
option only and adds no parameter names."""
from __future__ import annotations

from functools import partial
from typing import Callable, Sequence, Tuple, Type

import torch
from torch import nn

from backbones.iresnet import checkpointed_call


def initialise_layers(model: nn.Module, weighted_layers: Tuple[Type[nn.Module], ...],
                      norm_layers: Tuple[Type[nn.Module], ...],
                      initialise_weight: Callable[[torch.Tensor], object]) -> None:
    """In module order: `initialise_weight` on each weighted layer's weight (bias to zero), and
    each norm layer to the identity affine map (weight one, bias zero)."""
    for module in model.modules():
        if isinstance(module, weighted_layers):
            initialise_weight(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, norm_layers):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class ConvUnit(nn.Module):
    """Conv (no bias) + BN, then PReLU unless `activation` is False (a linear bottleneck).
    Wrapped in `.layers` because that is where insightface keeps these parameters."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1,
                 padding: int = 0, groups: int = 1, activation: bool = True):
        super().__init__()
        layers = [nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding,
                            groups=groups, bias=False),
                  nn.BatchNorm2d(out_channels)]
        if activation:
            layers.append(nn.PReLU(out_channels))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthwiseBlock(nn.Module):
    """1x1 expand to `expanded` -> 3x3 depthwise (stride) -> 1x1 linear projection; adds the
    input back when `residual`."""

    def __init__(self, in_channels: int, out_channels: int, expanded: int, stride: int = 1,
                 residual: bool = False):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvUnit(in_channels, expanded),
            ConvUnit(expanded, expanded, 3, stride=stride, padding=1, groups=expanded),
            ConvUnit(expanded, out_channels, activation=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class ResidualStage(nn.Module):
    """`num_blocks` residual depthwise blocks at constant width."""

    def __init__(self, channels: int, num_blocks: int, expanded: int):
        super().__init__()
        self.layers = nn.Sequential(*[DepthwiseBlock(channels, channels, expanded, residual=True)
                                      for _ in range(num_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GlobalDepthwiseHead(nn.Module):
    """7x7 depthwise conv + BN (a learned spatial weighting per channel instead of pooling),
    flatten, Linear(512, d) without bias, BatchNorm1d(d)."""

    def __init__(self, num_features: int, channels: int = 512):
        super().__init__()
        self.layers = nn.Sequential(
            ConvUnit(channels, channels, 7, groups=channels, activation=False),
            nn.Flatten(),
            nn.Linear(channels, num_features, bias=False),
            nn.BatchNorm1d(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """MobileFaceNet feature extractor: float [B, 3, 112, 112] -> embeddings [B, num_features]."""

    def __init__(self, num_features: int = 512, blocks: Sequence[int] = (1, 4, 6, 2),
                 scale: int = 2, gradient_checkpointing: bool = False):
        super().__init__()
        if len(blocks) != 4:
            raise ValueError(f"MobileFaceNet needs 4 stage block counts, got {list(blocks)}")
        self.gradient_checkpointing = gradient_checkpointing
        narrow, wide = 64 * scale, 128 * scale
        if blocks[0] == 1:
            # a single grouped 3x3 conv; insightface uses 64 groups here whatever the width
            first = ConvUnit(narrow, narrow, 3, padding=1, groups=64)
        else:
            first = ResidualStage(narrow, blocks[0], 128)
        self.layers = nn.ModuleList([
            ConvUnit(3, narrow, 3, stride=2, padding=1),              # 56x56
            first,
            DepthwiseBlock(narrow, narrow, 128, stride=2),           # 28x28
            ResidualStage(narrow, blocks[1], 128),
            DepthwiseBlock(narrow, wide, 256, stride=2),             # 14x14
            ResidualStage(wide, blocks[2], 256),
            DepthwiseBlock(wide, wide, 512, stride=2),               # 7x7
            ResidualStage(wide, blocks[3], 256),
        ])
        self.conv_sep = ConvUnit(wide, 512)
        self.features = GlobalDepthwiseHead(num_features)
        initialise_layers(self, (nn.Conv2d, nn.Linear), (nn.BatchNorm2d,),
                          partial(nn.init.kaiming_normal_, mode="fan_out", nonlinearity="relu"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.layers:
            x = checkpointed_call(stage, x) if self.gradient_checkpointing else stage(x)
        return self.features(self.conv_sep(x))


MOBILEFACENET_SIZES = {
    "mbf": ((1, 4, 6, 2), 2),
    "mbf_large": ((2, 8, 12, 4), 4),
}


def mobilefacenet(name: str = "mbf", num_features: int = 512, gradient_checkpointing: bool = False,
                  **kw) -> MobileFaceNet:
    blocks, scale = MOBILEFACENET_SIZES[name]
    settings = dict(blocks=blocks, scale=scale)
    settings.update(kw)
    return MobileFaceNet(num_features, gradient_checkpointing=gradient_checkpointing, **settings)
