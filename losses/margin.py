"""Combined angular margin on cosine logits: target logit cos(m1*theta + m2) - m3, all logits
scaled by s. ArcFace is (1, 0.5, 0), CosFace (1, 0, 0.35), SphereFace-style m1 > 1.

ArcFace (m1 = 1, m2 > 0) is evaluated as cos(t)cos(m) - sin(t)sin(m) with sin(t) = sqrt(1-cos^2),
so autograd gives the exact derivative of cos(theta + m) (insightface's in-place arccos/cos under
no_grad passes the gradient straight through instead). Where theta + m would pass pi, i.e.
cos(theta) <= cos(pi - m), the target falls back to cos(theta) - m*sin(pi - m), keeping the
target monotonic in theta (ArcFace paper, "easy margin" off).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

# floor of sin^2(theta): keeps d/dcos finite when rounding gives |cos| = 1 (value error < 1e-5 * sin m)
_MIN_SIN_SQUARED = 1e-10


def reads_on_host(device: torch.device) -> bool:
    """Whether a check may read a value on the host: on the CPU it costs nothing; on an accelerator
    it would stall every step (the engine reads the host once per optimiser step, _agree_on_step)."""
    return torch.device(device).type == "cpu"


def check_labels(valid: torch.Tensor, message: Callable[[], str]) -> None:
    """ValueError(message()) unless every entry of the boolean tensor `valid` is true; on an
    accelerator an asynchronous device assert instead (the engine's labels are also checked once
    at start-up, utils.data.datasets.check_dataset)."""
    if reads_on_host(valid.device):
        if not bool(valid.all()):
            raise ValueError(message())
        return
    torch._assert_async(valid.all(), "labels out of range for the classifier")


class CombinedMarginLoss(nn.Module):
    """(cosine_logits [N, C_local], labels [N] with -1 = "target not in this shard")
    -> s-scaled margin logits [N, C_local] (float32)."""

    def __init__(self, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0,
                 interclass_filtering_threshold: float = 0.0):
        super().__init__()
        if s <= 0 or m1 <= 0 or m3 < 0 or not 0 <= m2 < math.pi:
            raise ValueError(f"invalid margin: s={s} (> 0), m1={m1} (> 0), m2={m2} (in [0, pi)), "
                             f"m3={m3} (>= 0)")
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.interclass_filtering_threshold = float(interclass_filtering_threshold)
        self.cos_m, self.sin_m = math.cos(self.m2), math.sin(self.m2)
        self.fallback_threshold = math.cos(math.pi - self.m2)
        self.fallback_offset = math.sin(math.pi - self.m2) * self.m2

    def extra_repr(self) -> str:
        return (f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, "
                f"interclass_filtering_threshold={self.interclass_filtering_threshold}")

    def target_logit(self, cosine: torch.Tensor) -> torch.Tensor:
        """cos(m1*theta + m2) - m3 of target cosines (unscaled)."""
        if self.m1 == 1.0:
            if self.m2 > 0:
                sine = (1.0 - cosine * cosine).clamp_min(_MIN_SIN_SQUARED).sqrt()
                with_margin = cosine * self.cos_m - sine * self.sin_m
                cosine = torch.where(cosine > self.fallback_threshold, with_margin,
                                     cosine - self.fallback_offset)
        else:
            limit = 1.0 - 1e-7
            theta = torch.arccos(cosine.clamp(-limit, limit))
            cosine = torch.cos(self.m1 * theta + self.m2)
        return cosine - self.m3

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.reshape(-1)
        if cosine.dim() != 2 or labels.shape[0] != cosine.shape[0]:
            raise ValueError(f"margin loss needs cosine [N, C] and labels [N], got "
                             f"{tuple(cosine.shape)} and {tuple(labels.shape)}")
        cosine = cosine.float()
        # masks, not a list of the rows with a target (torch.nonzero): no host sync on a GPU
        has_target = labels >= 0
        check_labels(labels < cosine.shape[1],
                     lambda: f"label {int(labels.max())} out of range for {cosine.shape[1]} classes")
        rows = torch.arange(labels.shape[0], device=labels.device)
        cols = torch.where(has_target, labels, torch.zeros_like(labels)).long()   # any column where none
        if self.interclass_filtering_threshold > 0:
            # negatives this close to the sample are likely the same identity: drop them (set 0)
            with torch.no_grad():
                suspicious = cosine > self.interclass_filtering_threshold
                suspicious[rows, cols] &= ~has_target
            cosine = cosine.masked_fill(suspicious, 0.0)
        current = cosine[rows, cols]
        # rows without a target here get their own value back
        target = torch.where(has_target, self.target_logit(current), current)
        return cosine.index_put((rows, cols), target) * self.s
