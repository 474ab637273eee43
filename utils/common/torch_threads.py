"""One torch intra-op thread for a block of small, memory-bound CPU ops.

Row-by-row ops (index_add_ adds one row at a time) and ops on cache-sized chunks gain nothing from
intra-op threads, and on a busy machine their synchronisation costs 2-10x (measured on the 2-core
scale-rehearsal machine: a 262k x 512 class sum 1.0 s with 2 threads, 0.1 s with 1).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def single_torch_thread(device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the block with torch.set_num_threads(1) when it computes on the CPU; restore after."""
    if torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
