"""NCCL: neighbourhood-consensus contrastive learning (Wu et al., AAAI 2022).

Per step, over the global batch (gathered from all ranks):
    e_old = n(f_old), z_old = margin logits of e_old from the new classifier (no gradient)
    e_new = n(f_new), z_new = margin logits of f_new from the same classifier
A FIFO queue Q of the last K = nccl_queue_size samples holds (e_old, z_old, y); the whole global
batch is pushed BEFORE the loss, so every sample is its own positive. Empty slots are zero rows
with label -1 that still count in the softmax denominator. For each local sample i:
    w_ij = 0.5 (e_old_i . Q_e_j + 1),  mask_ij = [y_i == Q_y_j]
    l1 = -mean_i sum_j mask_ij w_ij log_softmax_j(e_new_i . Q_e_j / t) / sum_j mask_ij     Eq. (4)
    l2 = the same with z_new_i . Q_z_j                                                       Eq. (5)
    loss = CE_arc + alpha l1 + beta l2
The classifier is sharded over ranks (Partial FC), so each rank keeps only its class shard of
Q_z ([K, num_local], float16): z_new . Q_z is a partial sum per rank, summed by an all-reduce.
Quirks of the reference, reproduced by default: with fp16 the z logits are the s-scaled margin
logits clamped to [-1, 1] (nccl_clamp_logits_quirk), and z_new reaches l2 through a gradient-free
all_gather, so l2 is logged but trains nothing (nccl_logit_term_gradient = False).
Data parallel: l1 and l2 are means over the local batch whose gradients are scaled so that W
ranks x B take the step of one process x W*B (backbone and classifier shards alike). The
reference computes l1 through the Partial FC all-gather, whose backward multiplies by W: its l1
trains with weight alpha * W at W GPUs. nccl_reference_world_size_factor = True reproduces that
(the MS1M-V3 grid configs set it; it changes nothing on one process).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import math  # noqa: E402
import warnings  # noqa: E402
from typing import Dict, Optional  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from losses.compatibility import (check_feature_sizes, check_method_artifact, float32_region,  # noqa: E402
                                  normalized, old_feature_store, scale_gradient)
from utils.training.distributed import all_gather_no_grad, all_gather_with_grad, get_rank, get_world_size
from utils.training.method import Method  # noqa: E402


class NeighbourQueue:
    """FIFO ring buffer of (e_old [K, d] float32, z_old [K, num_local] float16, y [K]) on the device."""

    def __init__(self, size: int, embedding_size: int, num_local_classes: int, device):
        self.size = int(size)
        self.embeddings = torch.zeros(size, embedding_size, device=device)
        self.logits = torch.zeros(size, num_local_classes, dtype=torch.float16, device=device)
        self.labels = torch.full((size,), -1, dtype=torch.long, device=device)
        self.pointer = 0

    @torch.no_grad()
    def push(self, embeddings: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Write the rows at pointer, pointer+1, ... (mod K); with more than K rows the last K win."""
        count = labels.shape[0]
        kept = min(count, self.size)
        positions = (self.pointer + count - kept + torch.arange(kept, device=labels.device)) % self.size
        self.embeddings[positions] = embeddings[count - kept:].to(self.embeddings.dtype)
        self.logits[positions] = logits[count - kept:].to(self.logits.dtype)
        self.labels[positions] = labels[count - kept:]
        self.pointer = (self.pointer + count) % self.size

    def state_dict(self) -> Dict[str, object]:
        return {"embeddings": self.embeddings.cpu(), "logits": self.logits.cpu(),
                "labels": self.labels.cpu(), "pointer": self.pointer}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        for name in ("embeddings", "logits", "labels"):
            tensor, saved = getattr(self, name), state[name]
            if tuple(saved.shape) != tuple(tensor.shape):
                raise ValueError(f"NCCL queue {name} in the checkpoint has shape {list(saved.shape)}, "
                                 f"this run needs {list(tensor.shape)} (queue size, feature size or "
                                 f"class shard changed)")
            tensor.copy_(saved)
        self.pointer = int(state["pointer"])


def neighbourhood_consensus_loss(similarities: torch.Tensor, positives: torch.Tensor,
                                 weights: torch.Tensor, temperature: float) -> torch.Tensor:
    """-mean_i [sum_j mask w log_softmax_j(s / t) / sum_j mask] over anchors with a positive."""
    log_probabilities = torch.log_softmax(similarities / temperature, dim=1)
    positive_counts = positives.sum(dim=1)
    per_anchor = (positives * weights * log_probabilities).sum(dim=1) / positive_counts.clamp(min=1)
    has_positive = positive_counts > 0
    return -(per_anchor * has_positive).sum() / has_positive.sum().clamp(min=1)


def entropy_credible(old_embeddings: torch.Tensor, class_prototypes: torch.Tensor,
                     threshold: float) -> torch.Tensor:
    """Optional "highly credible" filter: entropy of softmax(-d(e_old, P_c) / var_c d) <= threshold."""
    distances = torch.cdist(old_embeddings, class_prototypes)
    variance = distances.var(dim=1, keepdim=True) + 1e-10
    probabilities = torch.softmax(-distances / variance, dim=1)
    entropy = -(probabilities * torch.log(probabilities + 1e-10)).sum(dim=1)
    return entropy <= threshold


def summed_over_shards(partial: torch.Tensor, keep_gradient: bool) -> torch.Tensor:
    """All-reduce (sum) of per-shard partial dot products; differentiable when asked."""
    if get_world_size() == 1:
        return partial
    if keep_gradient:
        from torch.distributed.nn.functional import all_reduce
        return all_reduce(partial, op=dist.ReduceOp.SUM)
    partial = partial.detach().contiguous()
    dist.all_reduce(partial, op=dist.ReduceOp.SUM)
    return partial


class NCCLMethod(Method):
    name = "NCCL"

    def __init__(self, cfg, env):
        super().__init__(cfg, env)
        self.queue: Optional[NeighbourQueue] = None      # built with the head (its class shard)
        self.class_shard = (0, 0)                          # (class_start, num_local) of this rank
        self.class_prototypes: Optional[torch.Tensor] = None   # only for the entropy filter

    def validate_inputs(self, dataset) -> None:
        check_feature_sizes(self.cfg, self.name)
        if self.cfg.head != "partial_fc":
            raise ValueError(f"NCCL needs the classifier's margin logits: config head must be "
                             f"'partial_fc', got {self.cfg.head!r}")
        global_batch = self.cfg.batch_size * self.env.world_size
        if self.cfg.nccl_queue_size < global_batch:
            raise ValueError(f"config nccl_queue_size {self.cfg.nccl_queue_size} is smaller than the "
                             f"global batch {global_batch}: samples would lose themselves as positives")
        check_method_artifact(self.cfg, "old_features", "old_features", dataset, self.name,
                              expected_dim=self.cfg.embedding_size)
        if self.cfg.nccl_entropy_filter is not None:
            check_method_artifact(self.cfg, "class_prototypes", "class_prototypes", dataset, self.name,
                                  expected_dim=self.cfg.embedding_size, per_class=True)
            prototypes = np.asarray(np.load(self.cfg.class_prototypes), dtype=np.float32)
            self.class_prototypes = torch.from_numpy(prototypes).to(self.env.device)

    def per_sample_arrays(self):
        return {"old_features": old_feature_store(self.cfg, normalise_rows=True)}

    def build_head(self):
        """The classifier (Partial FC), and the queue sized to its local class shard."""
        head = super().build_head()
        self.class_shard = (int(head.class_start), int(head.num_local))
        self.queue = NeighbourQueue(self.cfg.nccl_queue_size, self.cfg.embedding_size, head.num_local,
                                    self.env.device)
        return head

    def entropy_threshold(self) -> float:
        threshold = self.cfg.nccl_entropy_filter
        # "auto": U = log(C) / 2 of the NCCL paper
        return math.log(self.env.num_classes) / 2 if threshold == "auto" else float(threshold)

    def queue_logits(self, head, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Margin logits of the local class shard, [N, num_local], with the reference's fp16 clamp."""
        logits = head.logits(embeddings, labels).float()
        if self.cfg.fp16 and self.cfg.nccl_clamp_logits_quirk:
            logits = logits.clamp(-1, 1)
        return logits

    def push_global_batch(self, head, old_local: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Gather (e_old, y) over ranks, compute z_old, push all into the queue; return global labels."""
        global_labels = all_gather_no_grad(labels)
        global_old = all_gather_no_grad(old_local)
        with torch.no_grad():
            old_logits = self.queue_logits(head, global_old, global_labels)
        queue_labels = global_labels
        if self.class_prototypes is not None:
            credible = entropy_credible(old_local, self.class_prototypes, self.entropy_threshold())
            # a filtered sample is nobody's positive (label -1, like an empty slot)
            credible = all_gather_no_grad(credible.to(torch.uint8)).bool()
            queue_labels = torch.where(credible, global_labels, torch.full_like(global_labels, -1))
        self.queue.push(global_old, old_logits, queue_labels)
        return global_labels

    def loss(self, embeddings, batch, head, progress):
        labels = batch["label"]
        classification = head(embeddings, labels)
        with float32_region(embeddings.device):
            old_local = normalized(batch["old_features"])
            global_labels = self.push_global_batch(head, old_local, labels)
            positives = labels[:, None] == self.queue.labels[None, :]
            weights = 0.5 * (old_local @ self.queue.embeddings.t() + 1)
            temperature = self.cfg.nccl_temperature
            anchors = embeddings
            if self.cfg.nccl_reference_world_size_factor:
                anchors = scale_gradient(embeddings, get_world_size())
            embedding_term = neighbourhood_consensus_loss(normalized(anchors) @ self.queue.embeddings.t(),
                                                          positives, weights, temperature)
            keep_gradient = bool(self.cfg.nccl_logit_term_gradient)
            with torch.set_grad_enabled(keep_gradient and torch.is_grad_enabled()):
                new_logits = self.queue_logits(head, all_gather_with_grad(embeddings.float(), global_loss=True),
                                               global_labels)
                similarities = summed_over_shards(new_logits @ self.queue.logits.float().t(), keep_gradient)
                if keep_gradient and get_world_size() > 1:
                    # the all-reduce's backward sums every rank's l2 gradient into each class shard:
                    # / W makes it the gradient of the global mean (one process); the gather above
                    # gives the embeddings their W back
                    similarities = scale_gradient(similarities, 1.0 / get_world_size())
            local_rows = slice(get_rank() * labels.shape[0], (get_rank() + 1) * labels.shape[0])
            logit_term = neighbourhood_consensus_loss(similarities[local_rows], positives, weights, temperature)
        total = classification + self.cfg.nccl_alpha * embedding_term + self.cfg.nccl_beta * logit_term
        return total, {"classification": classification.detach(), "embedding_term": embedding_term.detach(),
                       "logit_term": logit_term.detach()}

    def extra_state(self):
        return {"queue": self.queue.state_dict(), "class_shard": self.class_shard}

    def load_extra_state(self, state) -> None:
        if "queue" not in state:
            raise ValueError(f"NCCL checkpoint state lacks the queue, got keys {sorted(state)}")
        queue_state = dict(state["queue"])
        if tuple(state.get("class_shard", ())) != self.class_shard:
            # the saved z part belongs to another class shard (other rank or world size): restart it
            warnings.warn(f"NCCL: checkpoint queue logits are for classes {state.get('class_shard')}, this rank "
                          f"holds {self.class_shard}; the logit part of the queue restarts from zeros")
            queue_state["logits"] = torch.zeros_like(self.queue.logits)
        self.queue.load_state_dict(queue_state)


if __name__ == "__main__":
    from utils.training.engine import train
    train(NCCLMethod)
