"""Decoded-image cache for small training sets.

A small rec (`CACHE_MIN_IMAGES` images or more, at most `CACHE_LIMIT_BYTES` of decoded pixels,
e.g. the demo's few thousand faces)
is decoded once into one uint8 RGB array [N, 3, H, W] saved as
`<rec folder>/.decoded_images/<key>.npy`; every later training on the same rec, and every loader
worker, memory-maps that file (one copy in the page cache) instead of decoding JPEGs each epoch.
The key is the content: the checksums of the index and of every byte of the rec (content_sha256),
so any change to either, an in-place edit that keeps the size and modification time included,
means decoding again, and a touch without a change does not. Hashing the whole rec is cheap beside
what the cache saves: on the demo's full rec (7,237 images, 38.5 MiB) 32-49 ms from the page cache
against 0.87 s to decode it, every epoch, without the cache (2 shared CPU cores). Items are
byte-identical to the decoding dataset's: training is unchanged.
Where the folder is read-only the array is decoded into memory for this process instead.
"""
from __future__ import annotations

import copy
import hashlib
import random
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from utils.common.atomic_files import WriteError, atomic_write
from utils.common.checksums import content_sha256
from utils.data.datasets import FaceRecDataset

CACHE_LIMIT_BYTES = 1 << 30       # decoded pixels; MS1M-size sets keep decoding in the workers
# below this, decoding costs milliseconds per epoch: not worth a file (nor writing into the
# small fixture recs of a test suite)
CACHE_MIN_IMAGES = 1000
CACHE_FOLDER = ".decoded_images"


def cache_key(dataset: FaceRecDataset) -> str:
    """The cache file's name: the index's and the whole rec's checksums (a sample of records would
    miss an edit elsewhere, and the rec's size and mtime can be kept by an in-place edit)."""
    text = f"rec-content:{dataset.fingerprint()['index_sha256']}:{content_sha256(dataset.rec_path)}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def decode_all(dataset: FaceRecDataset, shape: Tuple[int, int, int]) -> Optional[np.ndarray]:
    """Every image of an unflipped set as [N, *shape] uint8 RGB, or None if one has another shape."""
    images = np.empty((len(dataset), *shape), dtype=np.uint8)
    for index in range(len(dataset)):
        image = dataset[index][0]
        if tuple(image.shape) != shape:
            return None
        images[index] = image.numpy()
    return images


class DecodedFaceRecDataset(FaceRecDataset):
    """A FaceRecDataset whose items come from the decoded-image cache (same items, same order).
    Built from the decoding `dataset` itself: its index is not read again."""

    def __init__(self, dataset: FaceRecDataset, images_path: Optional[Path], images: Optional[np.ndarray]):
        self.__dict__.update(dataset.__dict__)
        self.images_path = images_path
        self._images = images       # None: memory-map images_path lazily in each process

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.images_path is not None:
            state["_images"] = None  # a worker maps the file itself rather than receive a copy
        return state

    def __getitem__(self, index: int):
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
        image = torch.from_numpy(np.array(self._images[index]))
        if self.flip and random.random() < 0.5:   # the decoding dataset's draw
            image = image.flip(-1)
        return image, int(self.labels[index]), index


def with_image_cache(dataset, limit_bytes: int = CACHE_LIMIT_BYTES, min_images: int = CACHE_MIN_IMAGES):
    """`dataset` served from the decoded-image cache when it is a FaceRecDataset of at least
    `min_images` images whose decoded pixels fit in `limit_bytes` and all have the first image's
    shape; otherwise unchanged."""
    if type(dataset) is not FaceRecDataset or len(dataset) == 0 or len(dataset) < min_images:
        return dataset
    unflipped = copy.copy(dataset)   # shares the index already read
    unflipped.flip = False
    shape = tuple(unflipped[0][0].shape)
    if len(dataset) * int(np.prod(shape)) > limit_bytes:
        return dataset
    path = dataset.rec_path.parent / CACHE_FOLDER / f"{cache_key(dataset)}.npy"
    if path.is_file():
        mapped = np.load(path, mmap_mode="r")
        if mapped.shape == (len(dataset), *shape) and mapped.dtype == np.uint8:
            return DecodedFaceRecDataset(dataset, path, None)
    images = decode_all(unflipped, shape)
    if images is None:
        return dataset
    try:
        # a temporary unique to this writer, then a rename: concurrent writers of the same
        # content are harmless and a reader never sees a partial file
        atomic_write(path, lambda handle: np.save(handle, images))
    except WriteError:   # read-only data folder: keep this process's copy
        return DecodedFaceRecDataset(dataset, None, images)
    return DecodedFaceRecDataset(dataset, path, None)
