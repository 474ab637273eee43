"""An old feature file read by the tools that derive artifacts from it, its content checksum
verified in the same pass that reads it.

Checking a 3.6 M x 512 float32 file (7.4 GB) against its manifest costs as much as reading it once
more: a tool that hashes the file first and then computes from it reads it twice. Here the first
pass over the rows hashes each 64 MiB block of the file (content_sha256's blocks, in a thread,
while the rows of the block are computed on) and, at its end, compares the tree digest with the
manifest's; a mismatch raises ArtifactMismatch before anything is written, and derive_artifact
refuses to publish a result whose input was not verified. A file verified before and unchanged
since (utils/common/verified_stamp.py) is not hashed again.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Mapping, Tuple

import numpy as np

from utils.artifacts.errors import content_mismatch_error, missing_checksum_error
from utils.common.checksums import CONTENT_BLOCK_BYTES, tree_top_digest
from utils.common.verified_stamp import is_stamped, stamp


class VerifiedFeatures:
    """An [N, d] .npy whose bytes are checked against `manifest['content_sha256']` by the first
    complete pass of row_blocks(); shape, ndim, dtype as the array, rows by indexing (a map).

    Passes read the file with pread into one reused buffer of a hash block (64 MiB): in a VM a
    page fault on a mapped file costs more than copying the page, and a mapped 7.4 GB file also
    counts 7.4 GB of RSS; this way a pass costs a memcpy from the page cache and RSS stays flat."""

    def __init__(self, path, manifest: Mapping, block_bytes: int = CONTENT_BLOCK_BYTES):
        self.path = Path(path)
        self.recorded = manifest.get("content_sha256")
        if not self.recorded:
            raise missing_checksum_error(self.path, manifest)
        self.array = np.load(self.path, mmap_mode="r")
        if self.array.ndim != 2 or not self.array.flags.c_contiguous:
            raise ValueError(f"{self.path}: expected a C-ordered [N, d] array, got shape {self.array.shape}")
        self.block_bytes = block_bytes
        self.verified = is_stamped(self.path, self.recorded)   # verified by an earlier reader, unchanged

    shape = property(lambda self: self.array.shape)
    ndim = property(lambda self: self.array.ndim)
    dtype = property(lambda self: self.array.dtype)

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, key):
        return self.array[key]

    def row_blocks(self) -> Iterator[Tuple[slice, np.ndarray]]:
        """(rows, rows' values) covering every row in order, read a hash block at a time (the
        values live in a reused buffer: use them before the next block); the first complete pass
        also verifies the checksum and raises ArtifactMismatch at its end if it differs."""
        verify = not self.verified
        size = os.path.getsize(self.path)
        row_bytes, offset, num_rows = self.array.strides[0], self.array.offset, len(self.array)
        width, dtype = self.array.shape[1], self.array.dtype
        buffer = np.empty(self.block_bytes + row_bytes, dtype=np.uint8)
        digests, done, carried = [], 0, 0         # carried: bytes of a split row at the front
        descriptor = os.open(self.path, os.O_RDONLY)
        try:
            with ThreadPoolExecutor(max_workers=1) as hasher:     # hashlib releases the GIL
                for start in range(0, size, self.block_bytes):
                    length = min(self.block_bytes, size - start)
                    block = buffer[carried:carried + length]
                    if os.preadv(descriptor, [block], start) != length:
                        raise OSError(f"{self.path} shrank while being read")
                    digest = hasher.submit(lambda data: hashlib.sha256(data).digest(), block) if verify else None
                    data_start = min(offset - start, length) if start < offset else 0
                    complete = min(num_rows - done, (carried + length - data_start) // row_bytes)
                    if complete:
                        values = buffer[data_start:data_start + complete * row_bytes].view(dtype)
                        yield slice(done, done + complete), values.reshape(complete, width)
                        done += complete
                    if digest is not None:
                        digests.append(digest.result())
                    used = data_start + complete * row_bytes
                    carried = max(0, carried + length - used)
                    buffer[:carried] = buffer[used:used + carried]
        finally:
            os.close(descriptor)
        if done != num_rows:
            raise OSError(f"{self.path}: read {done} of {num_rows} rows")
        if verify:
            found = tree_top_digest(digests, self.block_bytes, size)
            if found != self.recorded:
                raise content_mismatch_error(self.path, found, self.recorded)
            self.verified = True
            stamp(self.path, found)
