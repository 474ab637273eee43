"""Distributed, resumable batching: sampler, DataLoader construction, and the move to the device.

Batches are dicts {"image": uint8 [B,3,H,W], "label": int64 [B], "index": int64 [B], <name>: rows
of each per-sample array for those indices}, collated in the workers (the uint8 image batch may
be in channels_last layout); `to_device` turns the images into normalised floats on the device,
in the memory layout asked for.
"""
from __future__ import annotations

import math
import random
import signal
from typing import Dict, Iterator, Optional

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

# See utils/data/recordio.py: no OpenCV thread pool in a process that forks loader workers.
cv2.setNumThreads(1)

PIXEL_MEAN = 127.5
PIXEL_SCALE = 127.5


class ResumableDistributedSampler(Sampler):
    """Same seeded permutation on every rank (seed + epoch); rank r takes positions r, r+W, ...

    drop_last=True trims the permutation to a multiple of the world size, otherwise it is padded
    by wrapping around, so every rank gets the same number of samples. `set_start(k)` skips the first
    k samples of this rank's share, for the current epoch only (resuming mid-epoch).
    """

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.n, self.num_replicas, self.rank, self.seed = int(n), int(num_replicas), int(rank), int(seed)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.num_samples = self.n // self.num_replicas if drop_last else math.ceil(self.n / self.num_replicas)
        self.epoch = 0
        self._start, self._start_epoch = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, position: int) -> None:
        """Skip the first `position` samples of this rank's share in the current epoch."""
        if not 0 <= position <= self.num_samples:
            raise ValueError(f"start {position} is outside 0..{self.num_samples} (samples per rank)")
        self._start, self._start_epoch = int(position), self.epoch

    @property
    def start(self) -> int:
        return self._start if self._start_epoch == self.epoch else 0

    def rank_indices(self) -> torch.Tensor:
        """This rank's whole share for the current epoch (ignores the start)."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.arange(self.n)
        total = self.num_samples * self.num_replicas
        if total > self.n:
            order = order.repeat(math.ceil(total / max(self.n, 1)))
        return order[self.rank:total:self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_indices()[self.start:].tolist())

    def __len__(self) -> int:
        return self.num_samples - self.start


def stack_images(images) -> torch.Tensor:
    """[3, H, W] items -> [B, 3, H, W]; items that are views of HxWx3 arrays are stacked as HWC
    (a plain memcpy, 8x faster than a transposing copy) and returned in channels_last layout."""
    channel_last_views = [image.permute(1, 2, 0) for image in images]
    if all(view.is_contiguous() for view in channel_last_views):
        return torch.stack(channel_last_views).permute(0, 3, 1, 2)
    return torch.stack(images)


class BatchCollator:
    """Stacks (image, label, index) items and adds per-sample array rows (runs in the workers)."""

    def __init__(self, per_sample_arrays: Optional[Dict] = None):
        self.per_sample_arrays = dict(per_sample_arrays or {})
        reserved = {"image", "label", "index"} & set(self.per_sample_arrays)
        if reserved:
            raise ValueError(f"per-sample array names {sorted(reserved)} clash with the batch keys")

    def __call__(self, items) -> Dict[str, torch.Tensor]:
        images, labels, indices = zip(*items)
        shapes = {tuple(image.shape) for image in images}
        if len(shapes) != 1:
            raise ValueError(f"images of one batch differ in shape {sorted(shapes)} (dataset indices "
                             f"{list(indices)[:8]}...): the data set must hold images of one size")
        index_array = np.asarray(indices, dtype=np.int64)
        batch = {"image": stack_images(images), "label": torch.as_tensor(labels, dtype=torch.int64),
                 "index": torch.from_numpy(index_array)}
        for name, array in self.per_sample_arrays.items():
            batch[name] = torch.from_numpy(np.ascontiguousarray(array[index_array]))
        return batch


def worker_error_line(error: BaseException) -> Optional[str]:
    """The worker's own one-line message out of the error DataLoader re-raises in the main process
    (whose message carries the worker's whole traceback); None for an error of the main process."""
    text = str(error)
    if not text.startswith("Caught ") or "Traceback" not in text:
        return None
    last = [line for line in text.splitlines() if line.strip()][-1].strip()
    name, separator, message = last.partition(": ")
    return message if separator and " " not in name else last


class _OneLineWorkerErrors:
    """Iterator wrapper: bad input met in a loader worker (ValueError, OSError, e.g. a corrupt
    record) is raised again in the main process with the worker's one-line message only."""

    def __init__(self, iterator):
        self.iterator = iterator

    def __iter__(self):
        return self

    def __len__(self) -> int:
        return len(self.iterator)

    def __next__(self):
        try:
            return next(self.iterator)
        except (ValueError, OSError) as error:
            line = worker_error_line(error)
            if line is None:
                raise
            try:
                replacement = type(error)(line)
            except TypeError:
                replacement = ValueError(line)
            raise replacement from None


class OneLineErrorLoader(DataLoader):
    """DataLoader whose worker errors on bad data end as one line (see _OneLineWorkerErrors)."""

    def __iter__(self):
        return _OneLineWorkerErrors(super().__iter__())


def seed_worker(worker_id: int) -> None:
    """One decode thread per worker; python/numpy RNGs from the per-worker torch seed; Ctrl-C
    ignored (the terminal sends it to the workers too): the main process decides when to stop
    (utils/training/interrupt.py) and shuts its workers down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)
    seed = torch.initial_seed() % 2 ** 32
    random.seed(seed)
    np.random.seed(seed)


def build_loader(dataset, batch_size: int, rank: int, world_size: int, seed: int, num_workers: int,
                 per_sample_arrays: Optional[Dict] = None, start: int = 0, drop_last: bool = True):
    """-> (DataLoader of dict batches, ResumableDistributedSampler); `start` = samples of this
    rank's share already consumed in the sampler's current epoch."""
    for name, array in (per_sample_arrays or {}).items():
        if len(array) != len(dataset):
            raise ValueError(f"per-sample array {name!r} has {len(array)} rows, "
                             f"the data set has {len(dataset)} images")
    sampler = ResumableDistributedSampler(len(dataset), world_size, rank, seed, shuffle=True, drop_last=True)
    if start:
        sampler.set_start(start)
    generator = torch.Generator().manual_seed(seed + rank)
    loader = OneLineErrorLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        collate_fn=BatchCollator(per_sample_arrays), pin_memory=torch.cuda.is_available(),
                        drop_last=drop_last, persistent_workers=num_workers > 0,
                        worker_init_fn=seed_worker, generator=generator,
                        prefetch_factor=4 if num_workers > 0 else None)
    return loader, sampler


def to_device(batch: Dict[str, torch.Tensor], device, channels_last: bool = False,
              pixel_scale: float = PIXEL_SCALE) -> Dict[str, torch.Tensor]:
    """uint8 images -> float (x - 127.5) / pixel_scale (training's 127.5 unless asked otherwise)
    on the device; the other tensors moved as they are."""
    moved = {name: value.to(device, non_blocking=True) if torch.is_tensor(value) else value
             for name, value in batch.items()}
    image = moved["image"].float().sub_(PIXEL_MEAN).div_(pixel_scale)
    moved["image"] = image.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return moved
