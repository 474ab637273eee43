"""Atomic checkpoint files: model.pt (the plain backbone state_dict) and checkpoint.pt (full state).

checkpoint.pt holds everything a run needs to continue exactly:
  backbone, head (full_state_dict for the sharded Partial FC: world-size independent), extra
  modules, method state (rank 0's), optimizer, scheduler, scaler, epoch / step / position in the
  epoch, config, `head_optimizer` for a sharded head: the optimizer state of its parameters with
  every per-row buffer (momentum ...) gathered to all classes, so any world size can re-shard it,
  and `per_rank`: one entry per rank with its RNG states (CUDA: the rank's own device only) and its
  method state (None where it equals rank 0's, e.g. replicated prototypes, so they are stored once).
Everything is tensors and plain containers: the file loads with torch.load(weights_only=True).
The optimizer state of replicated parameters is rank 0's. Resuming with the same world size is
exact; with another world size the per-rank RNG restarts and every rank gets rank 0's method state.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import random
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from utils.common.atomic_files import atomic_write
from utils.common.errors import one_line_reason

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
DEBUG_CHECKPOINT_FILE = "checkpoint_nonfinite.pt"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through a temporary file unique to this writer, then rename: readers never see a
    half-written file, and a failed write (disk full) leaves nothing and raises one-line WriteError."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


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


def rng_state(device: Optional[torch.device] = None) -> Dict[str, Any]:
    """This process's RNG states as tensors and numbers (a weights_only load reads them back).

    The CUDA state is the one of `device` only (this rank's GPU), so a resume may see another
    number of visible GPUs per process."""
    version, python_state, gauss_next = random.getstate()
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    cuda = device is not None and torch.device(device).type == "cuda"
    return {
        "python": {"version": int(version), "state": torch.tensor(python_state, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if cuda else None,
    }


def set_rng_state(state: Dict[str, Any], device: Optional[torch.device] = None) -> None:
    """Restore rng_state(); the CUDA state goes to `device` (this rank's GPU) when both have one."""
    python, numpy_state = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss_next"]))
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _ordered_parameters(optimizer: torch.optim.Optimizer) -> List[nn.Parameter]:
    """Parameters in state-dict index order (the order of the optimizer's param groups)."""
    return [parameter for group in optimizer.param_groups for parameter in group["params"]]


def full_head_optimizer_state(optimizer: torch.optim.Optimizer, head: nn.Module) -> Dict[int, Dict[str, Any]]:
    """{state-dict index: state} of a sharded head's parameters on the CPU, every per-row buffer
    (momentum, Adam moments) gathered to [num_classes, ...] with head.gather_rows (collective:
    every rank calls, and every rank gets the full state)."""
    head_parameters = {id(parameter) for parameter in head.parameters()}
    full = {}
    for index, parameter in enumerate(_ordered_parameters(optimizer)):
        if id(parameter) not in head_parameters or parameter not in optimizer.state:
            continue
        full[index] = {}
        for name, value in optimizer.state[parameter].items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape == parameter.shape:
                value = head.gather_rows(value)
            full[index][name] = value.detach().to("cpu", copy=True) if torch.is_tensor(value) else value
    return full


def sharded_head_optimizer_state(full_state: Dict[int, Dict[str, Any]], optimizer: torch.optim.Optimizer,
                                 head: nn.Module) -> Dict[int, Dict[str, Any]]:
    """This rank's rows of a full_head_optimizer_state() result written with any world size."""
    ordered = _ordered_parameters(optimizer)
    sharded = {}
    for index, entry in full_state.items():
        full_shape = (head.num_classes,) + tuple(ordered[index].shape[1:])
        sharded[index] = {name: head.shard_rows(value).clone()
                          if torch.is_tensor(value) and tuple(value.shape) == full_shape else value
                          for name, value in entry.items()}
    return sharded


def state_digest(value: Any) -> str:
    """sha256 of nested dicts / lists / tensors / plain values: tells equal method states apart cheaply."""
    digest = hashlib.sha256()

    def feed(item: Any) -> None:
        if torch.is_tensor(item):
            item = item.detach().cpu().contiguous()
            digest.update(f"tensor{item.dtype}{tuple(item.shape)}".encode())
            digest.update(item.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(item, dict):
            digest.update(f"dict{len(item)}".encode())
            for key in sorted(item, key=repr):
                feed(key)
                feed(item[key])
        elif isinstance(item, (list, tuple)):
            digest.update(f"{type(item).__name__}{len(item)}".encode())
            for element in item:
                feed(element)
        else:
            digest.update(repr(item).encode())

    feed(value)
    return digest.hexdigest()


def parameter_indices(optimizer: torch.optim.Optimizer, parameters: Sequence[nn.Parameter]) -> List[int]:
    """State-dict indices (order of the optimizer's param groups) of `parameters`."""
    wanted = {id(parameter) for parameter in parameters}
    return [index for index, parameter in enumerate(_ordered_parameters(optimizer)) if id(parameter) in wanted]


def load_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    """checkpoint.pt read with weights_only=True: tensors and plain containers only, so a file
    crafted to run code when unpickled is refused (one line) instead of executed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"refusing checkpoint {path}: it holds more than tensors and plain values "
                         f"({one_line_reason(error)}); only checkpoints written by this library load") from None
    except Exception as error:
        raise ValueError(f"cannot read checkpoint {path}: {type(error).__name__}: "
                         f"{one_line_reason(error)}") from None
    if not isinstance(state, dict) or not {"backbone", "config", "per_rank"} <= set(state):
        raise ValueError(f"{path} is not a full-state checkpoint of this library (no backbone, config "
                         f"and per-rank entries)")
    return state
