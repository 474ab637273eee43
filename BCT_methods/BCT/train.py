"""BCT: backward-compatible training through a frozen old classifier (Shen et al., CVPR 2020).

The old classifier is synthesised from old features: P [C, d] = the L2-normalised mean old feature
of every class of the new training set (tools/get_feature/get_avg_feature.py), so it also covers
classes the old model never saw. Eq. (3) of the paper, as the MixBCT reference computes it:

    loss = CE_arc(f_new) + bct_weight * CE(bct_scale * n(f_new) @ P^T, y)

bct_scale is 1 by default: the reference puts no scale on these cosine logits. P is a frozen
buffer of the method, never trained and never part of model.pt.

    python BCT_methods/BCT/train.py BCT_methods/BCT/configs/OPclass_ms1mv3_r18_to_r50_BCT_softmax_to_arc_f128.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from losses.compatibility import (check_feature_sizes, check_method_artifact, float32_region,  # noqa: E402
                                  normalized)
from utils.training.method import Method  # noqa: E402


def influence_loss(new_embeddings: torch.Tensor, class_prototypes: torch.Tensor,
                   labels: torch.Tensor, scale: float) -> torch.Tensor:
    """CE(scale * n(f_new) @ P^T, y): the new feature classified by the frozen old classifier."""
    with float32_region(new_embeddings.device):
        logits = scale * normalized(new_embeddings) @ class_prototypes.float().t()
        return F.cross_entropy(logits, labels)


class BCTMethod(Method):
    """ArcFace plus the influence loss through the frozen prototype classifier."""

    name = "BCT"

    def __init__(self, cfg, env):
        super().__init__(cfg, env)
        self.class_prototypes: torch.Tensor | None = None   # [C, d] on env.device, loaded at start-up

    def validate_inputs(self, dataset) -> None:
        check_feature_sizes(self.cfg, self.name)
        # n(f_new) @ P^T needs old prototype size == new embedding size
        check_method_artifact(self.cfg, "class_prototypes", "class_prototypes", dataset, self.name,
                              expected_dim=self.cfg.embedding_size, per_class=True)
        prototypes = np.load(self.cfg.class_prototypes)
        self.class_prototypes = torch.from_numpy(np.asarray(prototypes, dtype=np.float32)).to(self.env.device)

    def influence_weight(self, progress) -> float:
        return float(self.cfg.bct_weight)

    def loss(self, embeddings, batch, head, progress):
        classification = head(embeddings, batch["label"])
        influence = influence_loss(embeddings, self.class_prototypes, batch["label"], self.cfg.bct_scale)
        total = classification + self.influence_weight(progress) * influence
        return total, {"classification": classification.detach(), "influence": influence.detach()}


if __name__ == "__main__":
    from utils.training.engine import train
    train(BCTMethod)
