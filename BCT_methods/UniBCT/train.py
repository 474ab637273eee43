"""UniBCT: BCT with structurally refined prototypes (Zhang et al., IJCAI 2022).

As BCT (BCT_methods/BCT/train.py), plus:
- the influence term has weight 0 for epochs < unibct_start_epoch (10) and bct_weight after;
- at the start of each epoch in unibct_refine_epochs (10, 20) every class prototype is refined
  from the old features O_c [n, d] and the current new features N_c [n, d] of its images
  (eval mode, raw features, as the reference):
      E = softmax_dim0(N_c N_c^T / tau) with the diagonal set to -1e9         (tau = 0.05)
      O'_c = (1 - lam) (I - lam E)^-1 O_c                                     Eq. (9), lam = 0.9
      prototype_c = mean of the rows of O'_c (not re-normalised)              Eq. (10)
  which equals the mean of the rows of O_c (E's columns sum to 1; see refine_class_prototypes),
  computed so (the reference re-solves the system once per image); the feature extraction and
  the classes are spread over the ranks;
- the LR decays x decay_rate after each epoch in decay_epoch (20, 26, 32) instead of poly.
The refined prototypes are method state: a resume does not refine again.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import logging  # noqa: E402
import time  # noqa: E402
from typing import List, Tuple  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from BCT_methods.BCT.train import BCTMethod  # noqa: E402
from losses.compatibility import check_method_artifact, old_feature_store  # noqa: E402
from utils.training.distributed import get_rank, get_world_size  # noqa: E402
from utils.common.logging_utils import LOGGER_NAME  # noqa: E402
from utils.common.torch_threads import single_torch_thread  # noqa: E402
from utils.training.schedulers import StepDecayFactor  # noqa: E402

logger = logging.getLogger(LOGGER_NAME)
# images whose new features are extracted (by all ranks) and refined at a time: memory stays flat
REFINE_CHUNK_IMAGES = 1 << 17
# rows summed in float64 at a time
REFINE_SUM_ROWS = 4096
def refine_class_prototypes(old_features: torch.Tensor, new_features: torch.Tensor, labels: torch.Tensor,
                            tau: float, lam: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Refined prototype of every class present in `labels` (rows of the two feature tensors),
    Eq. (9)-(10) in closed form. Returns (class ids [k] ascending, prototypes [k, d]).

    The softmax over dim 0 makes every column of E sum to 1, so 1^T (I - lam E) = (1 - lam) 1^T,
    hence 1^T (1 - lam)(I - lam E)^-1 = 1^T: the mean of the rows of O'_c = (1 - lam)(I - lam E)^-1 O_c
    is the mean of the rows of O_c, whatever the new features, tau and lam (lam != 1). Solving the
    n x n system per class (the reference solves it once per image) gives the same prototype up to
    rounding (7e-8 at float32, 3.6 M x 512; the test compares with that loop) at O(n^3 + n^2 d) a
    class instead of O(n d): 330 s instead of under 1 s at MS1M-V3 class70 on this machine.
    """
    if new_features.shape != old_features.shape or len(labels) != len(old_features):
        raise ValueError(f"old features {list(old_features.shape)}, new features {list(new_features.shape)} and "
                         f"{len(labels)} labels must describe the same images")
    if lam == 1:
        raise ValueError("UniBCT lambda = 1 makes I - lambda E singular (every column of E sums to 1)")
    device = old_features.device
    if len(labels) == 0:
        return labels.new_empty(0), old_features.new_empty(0, old_features.shape[1])
    # callers pass runs of whole classes: a dense range of class ids, no sort needed
    lowest = labels.min()
    offsets = (labels - lowest).to(device)
    span = int(offsets.max()) + 1
    sums = torch.zeros(span, old_features.shape[1], dtype=torch.float64, device=device)
    with single_torch_thread(device):
        for start in range(0, len(labels), REFINE_SUM_ROWS):      # float64 copies stay cache-sized
            rows = slice(start, start + REFINE_SUM_ROWS)
            sums.index_add_(0, offsets[rows], old_features[rows].to(torch.float64))
    counts = torch.bincount(offsets, minlength=span)
    present = torch.nonzero(counts).squeeze(1)
    prototypes = sums[present] / counts[present, None].to(torch.float64)
    return present + lowest.to(device), prototypes.to(old_features.dtype)


def classes_of_rank(class_sizes: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Boolean [C]: the classes this rank refines (largest first, dealt round-robin: balanced work)."""
    by_size = np.argsort(-class_sizes, kind="stable")
    owned = np.zeros(len(class_sizes), dtype=bool)
    owned[by_size[rank::world_size]] = True
    return owned & (class_sizes > 0)


def image_chunks(class_ids: np.ndarray, class_sizes: np.ndarray, limit: int) -> List[np.ndarray]:
    """Split classes into runs whose image counts add up to about `limit` (whole classes only)."""
    boundaries = np.cumsum(class_sizes[class_ids]) // max(1, limit)
    return [class_ids[boundaries == value] for value in np.unique(boundaries)]


class UniBCTMethod(BCTMethod):
    name = "UniBCT"

    def __init__(self, cfg, env):
        super().__init__(cfg, env)
        self.dataset_labels: np.ndarray | None = None
        self.refined_epochs: List[int] = []

    def validate_inputs(self, dataset) -> None:
        super().validate_inputs(dataset)
        # refinement mixes old features into prototypes used against n(f_new): same size
        check_method_artifact(self.cfg, "old_features", "old_features", dataset, self.name,
                              expected_dim=self.cfg.embedding_size)
        self.dataset_labels = np.asarray(dataset.labels, dtype=np.int64)

    def influence_weight(self, progress) -> float:
        return 0.0 if progress.epoch < self.cfg.unibct_start_epoch else float(self.cfg.bct_weight)

    def lr_lambda(self, steps_per_epoch, total_steps):
        # UniBCT's own step decay whatever lr_schedule says (the reference ignores warmup_epoch here)
        return StepDecayFactor(steps_per_epoch, self.cfg.decay_epoch, float(self.cfg.decay_rate))

    def on_epoch_start(self, epoch, trainer) -> None:
        if epoch not in tuple(self.cfg.unibct_refine_epochs) or epoch in self.refined_epochs:
            return
        start = time.time()
        self.class_prototypes = self.refined_prototypes(trainer)
        self.refined_epochs.append(int(epoch))
        logger.info(f"UniBCT: refined {len(self.class_prototypes)} class prototypes at the start of epoch "
                    f"{epoch} in {time.time() - start:.1f} s")

    @torch.no_grad()
    def refined_prototypes(self, trainer) -> torch.Tensor:
        """Refine every class: features are extracted by all ranks together (trainer.extract_features
        is collective), each rank solves its share of the classes, the disjoint shares are summed."""
        labels = self.dataset_labels
        class_sizes = np.bincount(labels, minlength=len(self.class_prototypes))
        owned = classes_of_rank(class_sizes, get_rank(), get_world_size())
        old_store = old_feature_store(self.cfg, normalise_rows=False)
        refined = torch.zeros_like(self.class_prototypes)
        device = refined.device
        # the same chunks on every rank: extract_features is a collective call
        chunks = image_chunks(np.nonzero(class_sizes)[0], class_sizes, REFINE_CHUNK_IMAGES)
        done = 0
        for number, chunk in enumerate(chunks, start=1):
            in_chunk = np.zeros(len(class_sizes), dtype=bool)
            in_chunk[chunk] = True
            indices = np.nonzero(in_chunk[labels])[0]
            new_features = trainer.extract_features(indices, batch_size=self.cfg.unibct_refine_batch_size)
            done += len(indices)
            logger.info(f"UniBCT refinement: chunk {number}/{len(chunks)}, {done}/{len(labels)} images embedded")
            mine = owned[labels[indices]]
            if not mine.any():
                continue
            old_features = torch.from_numpy(np.asarray(old_store[indices[mine]], dtype=np.float32)).to(device)
            class_ids, prototypes = refine_class_prototypes(
                old_features, new_features[torch.from_numpy(mine).to(new_features.device)].float().to(device),
                torch.from_numpy(labels[indices[mine]]).to(device),
                self.cfg.unibct_tau, self.cfg.unibct_lambda)
            refined[class_ids] = prototypes
        if get_world_size() > 1:
            dist.all_reduce(refined, op=dist.ReduceOp.SUM)
        # a class with no image keeps its current prototype
        empty = torch.from_numpy(class_sizes == 0).to(device)
        return torch.where(empty[:, None], self.class_prototypes, refined)

    def extra_state(self):
        return {"class_prototypes": self.class_prototypes.detach().cpu(),
                "refined_epochs": list(self.refined_epochs)}

    def load_extra_state(self, state) -> None:
        missing = {"class_prototypes", "refined_epochs"} - set(state)
        if missing:
            raise ValueError(f"UniBCT checkpoint state lacks {sorted(missing)}")
        prototypes = state["class_prototypes"]
        if self.class_prototypes is not None and prototypes.shape != self.class_prototypes.shape:
            raise ValueError(f"UniBCT checkpoint prototypes have shape {list(prototypes.shape)}, "
                             f"the run expects {list(self.class_prototypes.shape)}")
        device = self.env.device
        self.class_prototypes = prototypes.float().to(device)
        self.refined_epochs = [int(epoch) for epoch in state["refined_epochs"]]


if __name__ == "__main__":
    from utils.training.engine import train
    train(UniBCTMethod)
