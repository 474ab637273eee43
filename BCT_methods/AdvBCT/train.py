"""AdvBCT: adversarial compatible training with an elastic boundary (Pan et al., CVPR 2023).

    L_adv = NLL(D(GRL_a(n(f_new))), 0) + NLL(D(n(f_old)), 1),   a = 2 / (1 + exp(-10 p)) - 1
            scaled by advbct_adv_weight * (E - e + 1) / E   (p: training progress in [0, 1];
            e: the 0-based epoch and E the epoch count, as the reference's loop computes it)
    b_c = |r_c - th| sigmoid(w_c),  R_c = r_c + b_c if r_c < th else r_c - b_c     (th = 0.4)
    L_p2s = advbct_p2s_weight * mean over violating i of (||n(f_new_i) - center_y|| - R_y)
            (violating: positive, classes with valid class meta only; 0 when none)
    loss = CE_arc + L_p2s + L_adv
D is Linear(d, 100) -> BatchNorm1d -> ReLU -> Linear(100, 2) -> LogSoftmax; D and the boundary
logits w [C] (init U(-1, 1)) train with the backbone and are not part of model.pt. center_c and
r_c (largest kept radius) come from the class meta artifact (tools/get_feature/get_class_meta.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import math  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from losses.compatibility import (check_feature_sizes, check_method_artifact, float32_region,  # noqa: E402
                                  gradient_reverse, normalized, old_feature_store)
from utils.training.distributed import all_reduce_sum, get_world_size  # noqa: E402
from utils.training.method import Method  # noqa: E402

CLASS_META_ARRAYS = ("center", "radius", "valid")


def build_discriminator(embedding_size: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(embedding_size, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, 2), nn.LogSoftmax(dim=1))


class ElasticBoundary(nn.Module):
    """Learnable per-class boundary b_c = |r_c - th| * sigmoid(w_c)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes).uniform_(-1, 1))

    def forward(self, base_radius: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
        """The elastic radius R_y of each sample's class."""
        boundary = (base_radius - threshold).abs() * torch.sigmoid(self.weight[labels])
        return torch.where(base_radius < threshold, base_radius + boundary, base_radius - boundary)


def reversal_coefficient(progress_fraction: float) -> float:
    return 2.0 / (1.0 + math.exp(-10.0 * progress_fraction)) - 1.0


def adversarial_loss(discriminator: nn.Module, new_embeddings: torch.Tensor, old_features: torch.Tensor,
                     coefficient: float) -> torch.Tensor:
    """New features (label 0) through the gradient-reversal layer, old features (label 1) directly."""
    new_scores = discriminator(gradient_reverse(normalized(new_embeddings), coefficient))
    old_scores = discriminator(normalized(old_features))
    new_side = torch.zeros(new_scores.shape[0], dtype=torch.long, device=new_scores.device)
    return F.nll_loss(new_scores, new_side) + F.nll_loss(old_scores, new_side + 1)


def point_to_set_loss(new_embeddings: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor,
                      elastic_radius: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ||n(f_new) - center_y|| - R_y over the samples outside their class boundary, taken
    over the global batch: the count of violating samples is summed over ranks, so W ranks x B
    take the step of one process x W*B (a per-rank mean would weight ranks with few violators up)."""
    excess = (normalized(new_embeddings) - centers[labels]).norm(dim=1) - elastic_radius
    violating = (excess > 0) & valid[labels]
    local_sum = (excess * violating).sum()
    totals = all_reduce_sum(torch.stack([local_sum.detach(), violating.sum().to(local_sum.dtype)]))
    # value: the global mean; gradient: W x this rank's share, which DDP's average turns into the global mean's
    share = get_world_size() * (local_sum - local_sum.detach())
    return (share + totals[0]) / totals[1].clamp(min=1)


class AdvBCTMethod(Method):
    name = "AdvBCT"

    def __init__(self, cfg, env):
        super().__init__(cfg, env)
        self.trainable_modules = nn.ModuleDict({
            "discriminator": build_discriminator(cfg.embedding_size, cfg.advbct_hidden),
            "boundary": ElasticBoundary(env.num_classes),
        }).to(env.device)
        self.class_centers = self.class_radius = self.class_valid = None

    def validate_inputs(self, dataset) -> None:
        check_feature_sizes(self.cfg, self.name)
        check_method_artifact(self.cfg, "old_features", "old_features", dataset, self.name,
                              expected_dim=self.cfg.embedding_size)
        check_method_artifact(self.cfg, "class_meta", "class_meta", dataset, self.name,
                              expected_dim=self.cfg.embedding_size, per_class=True)
        with np.load(self.cfg.class_meta) as meta:
            missing = [name for name in CLASS_META_ARRAYS if name not in meta.files]
            if missing:
                raise ValueError(f"class meta {self.cfg.class_meta} lacks arrays {missing} "
                                 f"(has {meta.files})")
            device = self.env.device
            self.class_centers = torch.from_numpy(np.asarray(meta["center"], dtype=np.float32)).to(device)
            self.class_radius = torch.from_numpy(np.asarray(meta["radius"], dtype=np.float32)).to(device)
            self.class_valid = torch.from_numpy(np.asarray(meta["valid"], dtype=bool)).to(device)

    def per_sample_arrays(self):
        return {"old_features": old_feature_store(self.cfg, normalise_rows=True)}

    def extra_modules(self) -> nn.ModuleDict:
        return self.trainable_modules

    def loss(self, embeddings, batch, head, progress):
        labels = batch["label"]
        classification = head(embeddings, labels)
        discriminator, boundary = self.trainable_modules["discriminator"], self.trainable_modules["boundary"]
        with float32_region(embeddings.device):
            adversarial = adversarial_loss(discriminator, embeddings, batch["old_features"],
                                           reversal_coefficient(progress.fraction))
            elastic_radius = boundary(self.class_radius[labels], labels, self.cfg.advbct_boundary_threshold)
            point_to_set = point_to_set_loss(embeddings, labels, self.class_centers, elastic_radius,
                                             self.class_valid)
        epochs = progress.num_epochs
        adversarial = self.cfg.advbct_adv_weight * (epochs - progress.epoch + 1) / epochs * adversarial
        point_to_set = self.cfg.advbct_p2s_weight * point_to_set
        total = classification + point_to_set + adversarial
        return total, {"classification": classification.detach(), "point_to_set": point_to_set.detach(),
                       "adversarial": adversarial.detach()}


if __name__ == "__main__":
    from utils.training.engine import train
    train(AdvBCTMethod)
