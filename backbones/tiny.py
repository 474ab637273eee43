"""A small IResNet-style network for CPU demos and tests: a 4x4 stride-4 patch stem (112 -> 28;
high-resolution convolutions are what costs most on a CPU), two stride-2 stages of
pre-activation basic blocks down to 7x7, and the IResNet embedding head (BN2d -> flatten ->
Linear -> BatchNorm1d with scale fixed at 1). About 0.06 GFLOPs at 112x112."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from backbones.iresnet import IBasicBlock, checkpointed_call


class TinyFaceNet(nn.Module):
    """Tiny feature extractor: float [B, 3, 112, 112] -> embeddings [B, num_features]."""

    spatial_size = 7

    def __init__(self, num_features: int = 512, widths: Sequence[int] = (32, 48, 96),
                 gradient_checkpointing: bool = False):
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"tiny needs 3 widths (stem, stage 1, stage 2), got {list(widths)}")
        self.gradient_checkpointing = gradient_checkpointing
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 4, stride=4, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.PReLU(widths[0]))
        self.stages = nn.ModuleList([IBasicBlock(in_channels, channels, stride=2)
                                     for in_channels, channels in zip(widths[:-1], widths[1:])])
        self.bn = nn.BatchNorm2d(widths[-1])
        self.fc = nn.Linear(widths[-1] * self.spatial_size ** 2, num_features)
        self.features = nn.BatchNorm1d(num_features)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = checkpointed_call(stage, x) if self.gradient_checkpointing else stage(x)
        return self.features(self.fc(torch.flatten(self.bn(x), 1)))


def tiny(num_features: int = 512, gradient_checkpointing: bool = False,
         widths: Sequence[int] = (32, 48, 96)) -> TinyFaceNet:
    return TinyFaceNet(num_features, widths, gradient_checkpointing)
