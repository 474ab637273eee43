"""MobileFaceNet as configured in insightface arcface_torch ("mbf": blocks (1, 4, 6, 2), width
scale 2): stride-2 stem, inverted-residual depthwise stages down to 7x7, a 1x1 conv to 512
channels and a global depthwise conv (GDC) embedding head."""
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


def conv_bn(in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1,
            groups: int = 1, activation: bool = True, padding: int = -1) -> nn.Sequential:
    """Conv (no bias; "same" padding unless `padding` >= 0) + BN, then PReLU unless
    `activation` is False (linear bottleneck)."""
    padding = kernel // 2 if padding < 0 else padding
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding,
                        groups=groups, bias=False),
              nn.BatchNorm2d(out_channels)]
    if activation:
        layers.append(nn.PReLU(out_channels))
    return nn.Sequential(*layers)


class DepthwiseBlock(nn.Module):
    """1x1 expand -> 3x3 depthwise (stride) -> 1x1 linear projection, residual when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, expanded: int, stride: int = 1,
                 residual: bool = False):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            conv_bn(in_channels, expanded),
            conv_bn(expanded, expanded, 3, stride=stride, groups=expanded),
            conv_bn(expanded, out_channels, activation=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


def residual_stage(channels: int, num_blocks: int, expanded: int) -> nn.Sequential:
    return nn.Sequential(*[DepthwiseBlock(channels, channels, expanded, residual=True)
                           for _ in range(num_blocks)])


class MobileFaceNet(nn.Module):
    """MobileFaceNet feature extractor: float [B, 3, 112, 112] -> embeddings [B, num_features]."""

    def __init__(self, num_features: int = 512, blocks: Sequence[int] = (1, 4, 6, 2),
                 scale: int = 2, gradient_checkpointing: bool = False):
        super().__init__()
        self.gradient_checkpointing = gradient_checkpointing
        narrow, wide = 64 * scale, 128 * scale
        if blocks[0] == 1:
            # insightface uses 64 groups here whatever the width
            first = conv_bn(narrow, narrow, 3, groups=64)
        else:
            first = residual_stage(narrow, blocks[0], 128)
        self.stages = nn.ModuleList([
            conv_bn(3, narrow, 3, stride=2),                          # 56x56
            first,
            DepthwiseBlock(narrow, narrow, 128, stride=2),           # 28x28
            residual_stage(narrow, blocks[1], 128),
            DepthwiseBlock(narrow, wide, 256, stride=2),             # 14x14
            residual_stage(wide, blocks[2], 256),
            DepthwiseBlock(wide, wide, 512, stride=2),               # 7x7
            residual_stage(wide, blocks[3], 256),
        ])
        self.conv_sep = conv_bn(wide, 512)
        # global depthwise conv: a learned 7x7 spatial weighting per channel instead of pooling
        self.gdc = conv_bn(512, 512, 7, groups=512, activation=False, padding=0)
        self.fc = nn.Linear(512, num_features, bias=False)
        self.features = nn.BatchNorm1d(num_features)
        initialise_layers(self, (nn.Conv2d, nn.Linear), (nn.BatchNorm2d,),
                          partial(nn.init.kaiming_normal_, mode="fan_out", nonlinearity="relu"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = checkpointed_call(stage, x) if self.gradient_checkpointing else stage(x)
        x = self.gdc(self.conv_sep(x))
        return self.features(self.fc(torch.flatten(x, 1)))


def mobilefacenet(num_features: int = 512, gradient_checkpointing: bool = False,
                  blocks: Sequence[int] = (1, 4, 6, 2), scale: int = 2) -> MobileFaceNet:
    return MobileFaceNet(num_features, blocks, scale, gradient_checkpointing)
