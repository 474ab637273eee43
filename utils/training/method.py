"""The interface between the one training engine (utils/training/engine.py) and a training method.

The plain ArcFace and softmax trainings are methods too (utils/training/plain_methods.py); each of the six
compatible-training methods lives in BCT_methods/<Method>/train.py as a subclass of `Method`.
The engine calls, in this order:

    method = MethodClass(cfg, env)                 # env: TrainEnv below
    method.validate_inputs(dataset)                # manifests vs training data, before step 1
    arrays = method.per_sample_arrays()            # attached to each batch by dataset index
    head = method.build_head()                     # classifier head (Partial FC ArcFace default)
    modules = method.extra_modules()               # trainable, optimised with the backbone
    scheduler: method.lr_lambda(steps_per_epoch, total_steps) or the config's schedule
    per epoch: method.on_epoch_start(epoch, trainer)
    per step:  loss, terms = method.loss(embeddings, batch, head, progress)
    checkpoint: method.extra_state() / method.load_extra_state(state)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn


@dataclass
class TrainEnv:
    """What a method may know about the run it is part of."""
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    num_classes: int
    num_image: int


@dataclass
class Progress:
    """Where training stands when a loss is computed."""
    step: int            # global optimiser step, 0-based
    total_steps: int
    epoch: int           # 0-based
    num_epochs: int

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / max(1, self.total_steps))


class Method:
    """Base class: plain classification training with the configured head and nothing else."""

    name = "base"

    def __init__(self, cfg, env: TrainEnv):
        self.cfg = cfg
        self.env = env

    # ---- start-up -------------------------------------------------------------------------
    def validate_inputs(self, dataset) -> None:
        """Check every artifact this method reads against the training data; raise ValueError."""

    def per_sample_arrays(self) -> Dict[str, Any]:
        """Name -> array-like (e.g. utils.data.feature_store.ArrayStore) indexed by dataset index.

        The loader adds `batch[name] = torch.from_numpy(array[batch_indices])` in its workers.
        """
        return {}

    def build_head(self) -> nn.Module:
        from losses import build_head
        return build_head(self.cfg, self.env)

    def extra_modules(self) -> nn.ModuleDict:
        """Trainable modules besides backbone and head (discriminator, boundary ...)."""
        return nn.ModuleDict()

    def lr_lambda(self, steps_per_epoch: int, total_steps: int) -> Optional[Callable[[int], float]]:
        """Return a step -> LR factor function to replace the config's schedule, or None."""
        return None

    # ---- training -------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, trainer) -> None:
        """Hook run on every rank before the first step of each epoch (also after a resume)."""

    def loss(self, embeddings: torch.Tensor, batch: Dict[str, torch.Tensor], head: nn.Module,
             progress: Progress) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Total loss and its named terms (floats or 0-d tensors) for logging."""
        classification = head(embeddings, batch["label"])
        return classification, {"classification": classification.detach()}

    # ---- checkpointing --------------------------------------------------------------------
    def extra_state(self) -> Dict[str, Any]:
        """Non-trainable method state to checkpoint (queues, refined prototypes)."""
        return {}

    def load_extra_state(self, state: Dict[str, Any]) -> None:
        if state:
            raise ValueError(f"method {self.name!r} has no state to restore, got keys {sorted(state)}")
