"""Model-parallel Partial FC (An et al., "Partial FC", ICCVW 2021): the normalised classifier
of C classes is split into contiguous row shards, one per rank; embeddings (and labels) of the
global batch are all-gathered, each rank computes cosine margin logits against its shard, and
the softmax cross-entropy is reduced across ranks (max and sum of exponentials), so no rank
ever holds the full [N, C] logit matrix.

Checkpoints are world-size independent: `state_dict()` holds the FULL weight [C, d] (gathered
from every rank, so it is a collective: call it on all ranks) and `load_state_dict()` accepts
the full weight and keeps this rank's rows. `full_state_dict()` / `load_full_state_dict()` name
the same thing explicitly; `gather_rows` / `shard_rows` do it for optimiser buffers.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from losses.margin import CombinedMarginLoss, check_labels
from utils.training.distributed import all_gather_no_grad, all_gather_with_grad, get_rank, get_world_size


def shard_range(num_classes: int, rank: int, world_size: int) -> Tuple[int, int]:
    """(class_start, num_local) of `rank`: the first C % world ranks take one extra class."""
    base, extra = divmod(num_classes, world_size)
    return rank * base + min(rank, extra), base + int(rank < extra)


def _all_reduce(tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if get_world_size() > 1:
        dist.all_reduce(tensor, op=op)
    return tensor


class ShardedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy over the global batch when each rank holds a column shard of
    the logits. Labels are shard-local (-1 when the target is on another rank). The gradient
    w.r.t. the local logits is (softmax - onehot) / N, exact across ranks."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, shard_labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        row_max = _all_reduce(logits.max(dim=1, keepdim=True).values, dist.ReduceOp.MAX)
        shifted = logits - row_max
        probabilities = shifted.exp()
        sum_exp = _all_reduce(probabilities.sum(dim=1, keepdim=True))
        probabilities.div_(sum_exp)
        has_target = shard_labels >= 0
        rows = torch.arange(logits.shape[0], device=logits.device)
        safe_labels = shard_labels.clamp_min(0)
        target_shifted = torch.where(has_target, shifted[rows, safe_labels],
                                     torch.zeros_like(shard_labels, dtype=shifted.dtype))
        target_shifted = _all_reduce(target_shifted)
        ctx.save_for_backward(probabilities, shard_labels)
        return (sum_exp.squeeze(1).log() - target_shifted).mean()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        probabilities, shard_labels = ctx.saved_tensors
        grad = probabilities.clone()
        # subtract the one-hot target by mask (0 where the target is on another rank): no
        # torch.nonzero, whose data-dependent size is a host sync on a GPU
        rows = torch.arange(grad.shape[0], device=grad.device)
        has_target = shard_labels >= 0
        grad[rows, shard_labels.clamp_min(0)] -= has_target.to(grad.dtype)
        grad.mul_(grad_loss / probabilities.shape[0])
        return grad, None


class PartialFC(nn.Module):
    """Sharded normalised classifier + margin + distributed cross-entropy.

    forward(local_embeddings [B, d], local_labels [B]) -> scalar loss (mean over the global
    batch, identical on every rank). With sample_rate < 1, each step uses every class that is a
    target in the global batch plus random others, num_local * sample_rate rows in all.
    """

    sharded = True   # the engine must not wrap this module in DDP: each rank owns other rows

    def __init__(self, margin_loss: CombinedMarginLoss, embedding_size: int, num_classes: int,
                 sample_rate: float = 1.0, init_seed: Optional[int] = None):
        super().__init__()
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if num_classes < 1 or embedding_size < 1:
            raise ValueError(f"PartialFC needs positive num_classes and embedding_size, got "
                             f"{num_classes} and {embedding_size}")
        self.margin_loss = margin_loss
        self.embedding_size = int(embedding_size)
        self.num_classes = int(num_classes)
        self.sample_rate = float(sample_rate)
        self.rank, self.world_size = get_rank(), get_world_size()
        self.class_start, self.num_local = shard_range(self.num_classes, self.rank, self.world_size)
        if self.num_local == 0:
            raise ValueError(f"PartialFC cannot shard {num_classes} classes over {self.world_size} ranks")
        self.num_sample = max(1, int(self.sample_rate * self.num_local))
        self.weight = nn.Parameter(self._initial_rows(init_seed))

    def _initial_rows(self, init_seed: Optional[int]) -> torch.Tensor:
        """N(0, 0.01) rows of this shard. With `init_seed`, the rows are those of one full [C, d]
        matrix drawn from that seed, so the classifier starts the same whatever the world size
        (W ranks then take exactly the steps of one process); without it, the global RNG."""
        shape = (self.num_local, self.embedding_size)
        if init_seed is None:
            return torch.normal(0.0, 0.01, shape)
        generator = torch.Generator().manual_seed(int(init_seed))
        full = torch.normal(0.0, 0.01, (self.num_classes, self.embedding_size), generator=generator)
        return full[self.class_start:self.class_start + self.num_local].clone()

    def extra_repr(self) -> str:
        return (f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "
                f"class_start={self.class_start}, num_local={self.num_local}, "
                f"sample_rate={self.sample_rate}")

    # ---- labels and sampling ---------------------------------------------------------------
    def shard_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Global class ids -> row in this shard, -1 where the class lives on another rank."""
        labels = labels.reshape(-1).long()
        in_shard = (labels >= self.class_start) & (labels < self.class_start + self.num_local)
        return torch.where(in_shard, labels - self.class_start, torch.full_like(labels, -1))

    def sample_classes(self, shard_labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(sorted shard rows to use, labels remapped to positions in them): all positive
        classes of the batch plus random negatives, num_sample rows (more if positives exceed).

        Only a batch holding at least num_sample labels can have that many positives: only then
        are they counted (torch.unique, a host sync). Otherwise the positives are marked by a
        scatter into the scores, so every size is known in advance and a GPU never waits for the
        host; the random draws and the rows are those of marking the unique positives."""
        selected = None
        if shard_labels.numel() >= self.num_sample:
            positives = torch.unique(shard_labels[shard_labels >= 0])
            if positives.numel() >= self.num_sample:
                selected = positives
        if selected is None:
            # positives get a score above every random one, so top-k always keeps them; a spare
            # slot takes the labels of other shards (-1): fixed sizes, no boolean mask
            scores = torch.rand(self.num_local, device=shard_labels.device)
            slots = torch.where(shard_labels >= 0, shard_labels, torch.full_like(shard_labels, self.num_local))
            scores = torch.cat([scores, scores.new_zeros(1)]).index_fill_(0, slots, 2.0)[:self.num_local]
            selected = scores.topk(self.num_sample).indices.sort().values
        remapped = torch.where(shard_labels >= 0,
                               torch.searchsorted(selected, shard_labels.clamp_min(0)),
                               shard_labels)
        return selected, remapped

    # ---- logits and loss -------------------------------------------------------------------
    def _check_embeddings(self, embeddings: torch.Tensor) -> None:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"PartialFC expects embeddings [N, {self.embedding_size}], got "
                             f"{tuple(embeddings.shape)}")

    def _check_label_range(self, labels: torch.Tensor) -> None:
        check_labels((labels >= 0) & (labels < self.num_classes),
                     lambda: f"PartialFC: labels must lie in [0, {self.num_classes}), got "
                             f"{int(labels.min())}..{int(labels.max())}")

    def _cosine(self, embeddings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # logits in float32 even under AMP; rounding can push |cos| slightly past 1
        cosine = F.linear(F.normalize(embeddings), F.normalize(weight)).float()
        return cosine.clamp(-1.0, 1.0)

    def forward(self, local_embeddings: torch.Tensor, local_labels: torch.Tensor) -> torch.Tensor:
        self._check_embeddings(local_embeddings)
        if local_labels.reshape(-1).shape[0] != local_embeddings.shape[0]:
            raise ValueError(f"PartialFC got {local_embeddings.shape[0]} embeddings but "
                             f"{local_labels.numel()} labels")
        # the loss is the global-batch mean on every rank: see all_gather_with_grad(global_loss=True)
        embeddings = all_gather_with_grad(local_embeddings, global_loss=True)
        labels = all_gather_no_grad(local_labels.reshape(-1).long())
        self._check_label_range(labels)
        shard_labels = self.shard_labels(labels)
        weight = self.weight
        if self.sample_rate < 1:
            selected, shard_labels = self.sample_classes(shard_labels)
            weight = self.weight[selected]
        logits = self.margin_loss(self._cosine(embeddings, weight), shard_labels)
        return ShardedCrossEntropy.apply(logits, shard_labels)

    def logits(self, global_embeddings: torch.Tensor,
               global_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """s-scaled logits [N, num_local] of this shard (all its classes, no sampling); the
        margin is applied to the target when `global_labels` (global class ids) are given."""
        self._check_embeddings(global_embeddings)
        cosine = self._cosine(global_embeddings, self.weight)
        if global_labels is None:
            return cosine * self.margin_loss.s
        return self.margin_loss(cosine, self.shard_labels(global_labels))

    # ---- world-size independent state ------------------------------------------------------
    def gather_rows(self, local_rows: torch.Tensor) -> torch.Tensor:
        """Concatenate per-rank row shards [num_local, ...] into the full [num_classes, ...]
        (collective; shards may differ by one row, so they are padded for the all_gather)."""
        if self.world_size == 1:
            return local_rows.detach().clone()
        longest = shard_range(self.num_classes, 0, self.world_size)[1]
        padded = local_rows.new_zeros((longest,) + tuple(local_rows.shape[1:]))
        padded[:local_rows.shape[0]] = local_rows.detach()
        gathered = all_gather_no_grad(padded)
        parts = [gathered[r * longest: r * longest + shard_range(self.num_classes, r, self.world_size)[1]]
                 for r in range(self.world_size)]
        return torch.cat(parts, dim=0)

    def shard_rows(self, full_rows: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a full [num_classes, ...] tensor."""
        if full_rows.shape[0] != self.num_classes:
            raise ValueError(f"expected {self.num_classes} rows (one per class), got {full_rows.shape[0]}")
        return full_rows[self.class_start:self.class_start + self.num_local]

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.gather_rows(self.weight)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
            return
        full_weight = state_dict[key]
        expected = (self.num_classes, self.embedding_size)
        if tuple(full_weight.shape) != expected:
            error_msgs.append(f"{key}: checkpoint holds {tuple(full_weight.shape)}, this head needs "
                              f"the full weight {expected} (num_classes x embedding_size)")
            return
        with torch.no_grad():
            self.weight.copy_(self.shard_rows(full_weight))
        for name in state_dict:
            if name.startswith(prefix) and name != key and "." not in name[len(prefix):]:
                unexpected_keys.append(name)

    def full_state_dict(self) -> Dict[str, torch.Tensor]:
        """{"weight": full [num_classes, d]} on every rank (collective)."""
        return {"weight": self.gather_rows(self.weight)}

    def load_full_state_dict(self, state_dict: Dict[str, torch.Tensor]) -> None:
        """Load a full-weight state dict written with any world size; keeps this rank's rows."""
        self.load_state_dict(state_dict)
