"""An old feature file read by the tools that derive artifacts from it, its content checksum
verified in the same pass that reads it.

Checking a 3.6 M x 512 float32 file (7.4 GB) against its manifest costs as much as reading it once
more: a tool that hashes the file first and then computes from it reads it twice. Here the first
pass over the rows hashes each 64 MiB block of the file (content_sha256's blocks, in a thread,
while the rows of the block are computed on) and, at its end, compares the tree digest with the
manifest's; a mismatch raises ArtifactMismatch before anything is written, and derive_artifact
refuses to publish a result whose input was not verified.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Mapping, Tuple

import numpy as np

from utils.common.checksums import CONTENT_BLOCK_BYTES, tree_top_digest


class VerifiedFeatures:
    """A memory-mapped [N, d] .npy whose bytes are checked against `manifest['content_sha256']`
    by the first complete pass of row_blocks(); shape, ndim, dtype and indexing as the array."""

    def __init__(self, path, manifest: Mapping, block_bytes: int = CONTENT_BLOCK_BYTES):
        from utils.artifacts.manifests import missing_checksum_error
        self.path = Path(path)
        self.recorded = manifest.get("content_sha256")
        if not self.recorded:
            raise missing_checksum_error(self.path, manifest)
        header = np.load(self.path, mmap_mode="r")
        if header.ndim != 2 or not header.flags.c_contiguous:
            raise ValueError(f"{self.path}: expected a C-ordered [N, d] array, got shape {header.shape}")
        # one mapping of the whole file serves the hash (bytes) and the rows (a view past the .npy
        # header): two mappings would count every page twice in the RSS
        self.size = os.path.getsize(self.path)
        self.raw = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.size,))
        self.offset = header.offset
        end = self.offset + header.shape[0] * header.strides[0]
        self.array = self.raw[self.offset:end].view(header.dtype).reshape(header.shape)
        del header
        self.block_bytes = block_bytes
        self.verified = False

    shape = property(lambda self: self.array.shape)
    ndim = property(lambda self: self.array.ndim)
    dtype = property(lambda self: self.array.dtype)

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, key):
        return self.array[key]

    def row_blocks(self, chunk_rows: int) -> Iterator[Tuple[slice, np.ndarray]]:
        """(rows, view) covering every row in order; the first complete pass also verifies."""
        if self.verified:
            for start in range(0, len(self.array), chunk_rows):
                rows = slice(start, min(start + chunk_rows, len(self.array)))
                yield rows, self.array[rows]
            return
        yield from self._verifying_blocks()

    def _verifying_blocks(self) -> Iterator[Tuple[slice, np.ndarray]]:
        from utils.artifacts.manifests import content_mismatch_error
        size, raw = self.size, self.raw
        row_bytes, offset, num_rows = self.array.strides[0], self.offset, len(self.array)
        digests, done = [], 0
        with ThreadPoolExecutor(max_workers=1) as hasher:     # hashlib releases the GIL
            for start in range(0, size, self.block_bytes):
                end = min(start + self.block_bytes, size)
                digest = hasher.submit(lambda block: hashlib.sha256(block).digest(), raw[start:end])
                complete = min(num_rows, max(0, (end - offset) // row_bytes))   # rows ending in this block
                if complete > done:
                    yield slice(done, complete), self.array[done:complete]
                    done = complete
                digests.append(digest.result())
        found = tree_top_digest(digests, self.block_bytes, size)
        if found != self.recorded:
            raise content_mismatch_error(self.path, found, self.recorded)
        self.verified = True
