"""Classifier heads: ArcFace (combined margin) through model-parallel Partial FC, and the plain
softmax head of the old softmax models."""
from __future__ import annotations

from torch import nn

from losses.margin import CombinedMarginLoss
from losses.partial_fc import PartialFC
from losses.softmax_head import SoftmaxHead

HEAD_NAMES = ("partial_fc", "softmax")


def build_head(cfg, env) -> nn.Module:
    """The head named by `cfg.head` for `env.num_classes` classes, on `env.device`."""
    if cfg.head == "partial_fc":
        if len(cfg.margin_list) != 3:
            raise ValueError(f"config key margin_list needs (m1, m2, m3), got {cfg.margin_list}")
        margin = CombinedMarginLoss(cfg.scale, *cfg.margin_list, cfg.interclass_filtering_threshold)
        # seeded from the config, not the rank: the same initial classifier for any world size
        head = PartialFC(margin, cfg.embedding_size, env.num_classes, cfg.sample_rate, init_seed=cfg.seed)
    elif cfg.head == "softmax":
        head = SoftmaxHead(cfg.embedding_size, env.num_classes)
    else:
        raise ValueError(f"config key head: unknown head {cfg.head!r}; choose one of {', '.join(HEAD_NAMES)}")
    return head.to(env.device)
