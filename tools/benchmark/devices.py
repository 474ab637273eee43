"""The --device argument every benchmark takes, and device synchronisation for honest timings."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda -> torch.device; cuda without a visible GPU is an error, never a silent CPU run."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"{Path(sys.argv[0]).name}: error: --device cuda but no CUDA device is visible")
    return torch.device(name)


def synchronise(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"
