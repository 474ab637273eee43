"""L2 and weakened L2 compatible training (methods.md, "L2 and weakened L2").

    loss = CE_arc(f_new) + lambda * mean_i max(0, ||n(f_old_i) - n(f_new_i)||_2 - th)

lambda = l2_weight (10); th = l2_threshold: 0 gives plain L2, 0.2 the weakened L2 of the MixBCT
paper (the new feature may move up to th away from the old one for free).

    python BCT_methods/L2/train.py BCT_methods/L2/configs/OPclass_ms1mv3_r18_to_r50_L2_softmax_to_arc_f128.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from losses.compatibility import (check_feature_sizes, check_method_artifact,  # noqa: E402
                                  normalized, old_feature_store)
from utils.training.method import Method  # noqa: E402


def thresholded_l2_loss(new_embeddings: torch.Tensor, old_features: torch.Tensor,
                        threshold: float) -> torch.Tensor:
    """mean_i max(0, ||n(f_old_i) - n(f_new_i)|| - threshold)."""
    distances = (normalized(old_features) - normalized(new_embeddings)).norm(dim=1)
    return torch.clamp(distances - threshold, min=0).mean()


class L2Method(Method):
    """ArcFace plus a pull of each new feature onto its image's old feature."""

    name = "L2"

    def validate_inputs(self, dataset) -> None:
        check_feature_sizes(self.cfg, self.name)
        check_method_artifact(self.cfg, "old_features", "old_features", dataset, self.name,
                              expected_dim=self.cfg.embedding_size)

    def per_sample_arrays(self):
        return {"old_features": old_feature_store(self.cfg, normalise_rows=True)}

    def loss(self, embeddings, batch, head, progress):
        classification = head(embeddings, batch["label"])
        feature_distance = thresholded_l2_loss(embeddings, batch["old_features"], self.cfg.l2_threshold)
        total = classification + self.cfg.l2_weight * feature_distance
        return total, {"classification": classification.detach(),
                       "feature_distance": feature_distance.detach()}


if __name__ == "__main__":
    from utils.training.engine import train
    train(L2Method)
