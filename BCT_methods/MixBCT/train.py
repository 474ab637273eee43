"""MixBCT: mixed-feature compatible training (MixBCT, arXiv 2308.06948).

Each step, among the batch positions whose old feature is credible (credible mask = 1, from
tools/denoising/denoise_credible.py), k = int(B * mix_ratio) positions are drawn at random without
replacement (all of them when fewer are credible) and the new embedding there is REPLACED by the
L2-normalised old feature of the same image. No interpolation and no extra term:

    loss = CE_arc(mixed batch)

Replaced rows give the backbone no gradient; they train the shared classifier to accept old
features, which pulls the new feature space onto the old one.

    python BCT_methods/MixBCT/train.py BCT_methods/MixBCT/configs/OPclass_ms1mv3_r18_to_r50_MixBCT_softmax_to_arc_f128.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from typing import Tuple  # noqa: E402

import torch  # noqa: E402

from losses.compatibility import check_feature_sizes, check_method_artifact, old_feature_store  # noqa: E402
from utils.data.feature_store import ArrayStore  # noqa: E402
from utils.training.method import Method  # noqa: E402


def mix_old_features(new_embeddings: torch.Tensor, old_features: torch.Tensor, credible_mask: torch.Tensor,
                     mix_ratio: float, generator: torch.Generator | None = None
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Replace min(k, #credible) random credible rows by the old features; k = int(B * mix_ratio).

    Returns (mixed embeddings, replaced [B] bool). Random scores rank the credible rows first in a
    random order; the first k of that order are replaced (no host sync, no Python loop).
    """
    batch_size = new_embeddings.shape[0]
    count = int(batch_size * mix_ratio)
    credible = credible_mask.to(device=new_embeddings.device).bool().reshape(-1)
    scores = torch.rand(batch_size, generator=generator, device=new_embeddings.device)
    scores = torch.where(credible, scores, torch.full_like(scores, 2.0))
    order = torch.argsort(scores)
    rank_of_position = torch.empty_like(order)
    rank_of_position[order] = torch.arange(batch_size, device=order.device)
    replaced = credible & (rank_of_position < count)
    old = old_features.to(device=new_embeddings.device, dtype=new_embeddings.dtype)
    return torch.where(replaced[:, None], old, new_embeddings), replaced


class MixBCTMethod(Method):
    name = "MixBCT"

    def validate_inputs(self, dataset) -> None:
        check_feature_sizes(self.cfg, self.name)
        # old features stand in for new embeddings in the classifier: same size required
        check_method_artifact(self.cfg, "old_features", "old_features", dataset, self.name,
                              expected_dim=self.cfg.embedding_size)
        check_method_artifact(self.cfg, "credible_mask", "credible_mask", dataset, self.name)

    def per_sample_arrays(self):
        return {"old_features": old_feature_store(self.cfg, normalise_rows=True),
                "credible_mask": ArrayStore(self.cfg.credible_mask)}

    def loss(self, embeddings, batch, head, progress):
        mixed, replaced = mix_old_features(embeddings, batch["old_features"], batch["credible_mask"],
                                           self.cfg.mix_ratio)
        classification = head(mixed, batch["label"])
        return classification, {"classification": classification.detach(),
                                "replaced": replaced.sum().detach()}


if __name__ == "__main__":
    from utils.training.engine import train
    train(MixBCTMethod)
