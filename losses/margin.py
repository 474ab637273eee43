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

import torch
from torch import nn

# floor of sin^2(theta): keeps d/dcos finite when rounding gives |cos| = 1 (value error < 1e-5 * sin m)
_MIN_SIN_SQUARED = 1e-10


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
        rows = torch.nonzero(labels >= 0).squeeze(1)
        cols = labels[rows].long()
        if cols.numel() and int(cols.max()) >= cosine.shape[1]:
            raise ValueError(f"label {int(cols.max())} out of range for {cosine.shape[1]} classes")
        if self.interclass_filtering_threshold > 0:
            # negatives this close to the sample are likely the same identity: drop them (set 0)
            with torch.no_grad():
                suspicious = cosine > self.interclass_filtering_threshold
                suspicious[rows, cols] = False
            cosine = cosine.masked_fill(suspicious, 0.0)
        target = self.target_logit(cosine[rows, cols])
        return cosine.index_put((rows, cols), target) * self.s
