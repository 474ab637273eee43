"""The two plain trainings used for old models and independent new models.

ArcFaceMethod: ArcFace margin logits through model-parallel Partial FC (the shared recipe).
SoftmaxMethod: the reference `train_old_softmax.py`: a Linear(d, C) with bias + cross-entropy.
Neither adds anything to the backbone, so model.pt stays a plain backbone.
"""
from __future__ import annotations

import logging

from utils.training.method import Method, TrainEnv

logger = logging.getLogger("bct")


class _FixedHeadMethod(Method):
    """Plain classification whose script fixes the head kind, whatever the config says."""

    head_kind = ""

    def __init__(self, cfg, env: TrainEnv):
        if cfg.head != self.head_kind:
            logger.warning(f"{self.name} training uses head {self.head_kind!r} (config says {cfg.head!r})")
            cfg.head = self.head_kind
        super().__init__(cfg, env)


class ArcFaceMethod(_FixedHeadMethod):
    """loss = Partial FC ArcFace cross-entropy of the new embeddings."""

    name = "arcface"
    head_kind = "partial_fc"


class SoftmaxMethod(_FixedHeadMethod):
    """loss = cross-entropy of a biased linear classifier (the reference old softmax models)."""

    name = "softmax"
    head_kind = "softmax"
