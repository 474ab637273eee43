"""IResNet (the insightface "improved ResNet" for 112x112 faces) and the checkpointing helper
every backbone of this package shares.

Layout and parameter names follow insightface arcface_torch, so its r18/r34/r50/r100/r200
state dicts load unchanged: 3x3 stem (stride 1) + BN + PReLU, four stages of pre-activation
basic blocks (BN-conv3x3-BN-PReLU-conv3x3(stride 2 in the first block)-BN), widths
64/128/256/512, then BN2d -> flatten -> dropout -> Linear(512*7*7, d) -> BatchNorm1d(d) whose
scale is fixed at 1.
"""
from __future__ import annotations

import contextlib
from typing import List, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

IRESNET_LAYERS = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
STAGE_WIDTHS = (64, 128, 256, 512)


class _KeepNormStatistics:
    """Restores BatchNorm running statistics after a checkpoint recomputation, so a
    checkpointed stage updates them once per step, exactly like the plain forward."""

    def __init__(self, module: nn.Module):
        self.norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.saved: List[List[torch.Tensor]] = []

    def __enter__(self):
        self.saved = [[b.clone() for b in norm.buffers()] for norm in self.norms]
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for norm, saved in zip(self.norms, self.saved):
                for buffer, value in zip(norm.buffers(), saved):
                    buffer.copy_(value)
        self.saved = []
        return False


def checkpointed_call(module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """Run `module(*inputs)` under activation checkpointing (non-reentrant); the backward
    recomputation reuses the RNG state and leaves BatchNorm running statistics untouched."""
    if not torch.is_grad_enabled():
        return module(*inputs)

    def contexts():
        return contextlib.nullcontext(), _KeepNormStatistics(module)

    return checkpoint(module, *inputs, use_reentrant=False, context_fn=contexts)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation basic block: BN-conv3x3-BN-PReLU-conv3x3(stride)-BN + shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.conv1 = conv3x3(in_channels, channels)
        self.bn2 = nn.BatchNorm2d(channels, eps=1e-5)
        self.prelu = nn.PReLU(channels)
        self.conv2 = conv3x3(channels, channels, stride)
        self.bn3 = nn.BatchNorm2d(channels, eps=1e-5)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """IResNet feature extractor: float [B, 3, 112, 112] -> embeddings [B, num_features]."""

    spatial_size = 7   # 112 / 2**4

    def __init__(self, layers: Sequence[int], num_features: int = 512, dropout: float = 0.0,
                 gradient_checkpointing: bool = False):
        super().__init__()
        if len(layers) != len(STAGE_WIDTHS):
            raise ValueError(f"IResNet needs {len(STAGE_WIDTHS)} stage depths, got {list(layers)}")
        self.gradient_checkpointing = gradient_checkpointing
        self.conv1 = conv3x3(3, STAGE_WIDTHS[0])
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0], eps=1e-5)
        self.prelu = nn.PReLU(STAGE_WIDTHS[0])
        in_channels = STAGE_WIDTHS[0]
        for stage, (depth, width) in enumerate(zip(layers, STAGE_WIDTHS), start=1):
            blocks = [IBasicBlock(in_channels, width, stride=2)]
            blocks += [IBasicBlock(width, width) for _ in range(depth - 1)]
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
            in_channels = width
        self.bn2 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_channels * self.spatial_size ** 2, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # insightface convention: the embedding BN only centres and shifts, its scale stays 1
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad_(False)

    @property
    def stages(self) -> List[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        for stage in self.stages:
            x = checkpointed_call(stage, x) if self.gradient_checkpointing else stage(x)
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def iresnet(name: str, num_features: int = 512, gradient_checkpointing: bool = False,
            dropout: float = 0.0) -> IResNet:
    return IResNet(IRESNET_LAYERS[name], num_features, dropout, gradient_checkpointing)
