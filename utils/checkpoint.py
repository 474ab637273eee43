"""Atomic checkpoint files: model.pt (the plain backbone state_dict) and checkpoint.pt (full state).

checkpoint.pt holds everything a run needs to continue exactly:
  backbone, head (full_state_dict for the sharded Partial FC: world-size independent), extra
  modules, method state, optimizer, scheduler, scaler, epoch / step / position in the epoch,
  config, and `per_rank`: one entry per rank with its RNG states and, for a sharded head, the
  optimizer state of that rank's head parameters (momentum of its class rows).
The optimizer state of replicated parameters is rank 0's. Resuming with the same world size is
exact; with another world size the sharded head's momentum and the per-rank RNG restart.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from torch import nn

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
DEBUG_CHECKPOINT_FILE = "checkpoint_nonfinite.pt"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to `<path>.tmp`, then rename: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(module, "module") and isinstance(module.module, nn.Module):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


def backbone_state_dict(backbone: nn.Module) -> Dict[str, torch.Tensor]:
    """CPU copy of the plain backbone weights (no DDP / compile prefixes)."""
    return {name: tensor.detach().cpu().clone() for name, tensor in unwrap(backbone).state_dict().items()}


def save_model(backbone: nn.Module, output: str | os.PathLike) -> Path:
    path = Path(output) / MODEL_FILE
    atomic_torch_save(backbone_state_dict(backbone), path)
    return path


def head_state(head: nn.Module) -> Dict[str, torch.Tensor]:
    """World-size independent head state (Partial FC gathers its shards; call on every rank)."""
    state = head.full_state_dict() if hasattr(head, "full_state_dict") else head.state_dict()
    return {name: tensor.detach().cpu() for name, tensor in state.items()}


def load_head_state(head: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    if hasattr(head, "load_full_state_dict"):
        head.load_full_state_dict(state)
    else:
        head.load_state_dict(state)


def rng_state() -> Dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def optimizer_entries(optimizer: torch.optim.Optimizer, parameter_ids: Sequence[int]) -> Dict[int, Any]:
    """The optimizer state (momentum ...) of the parameters at these state-dict indices."""
    state = optimizer.state_dict()["state"]
    return {index: state[index] for index in parameter_ids if index in state}


def parameter_indices(optimizer: torch.optim.Optimizer, parameters: Sequence[nn.Parameter]) -> List[int]:
    """State-dict indices (order of the optimizer's param groups) of `parameters`."""
    wanted = {id(parameter) for parameter in parameters}
    ordered = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    return [index for index, parameter in enumerate(ordered) if id(parameter) in wanted]


def load_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from: {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise ValueError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}") from error
