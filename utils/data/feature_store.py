"""Per-sample arrays (old features, labels, masks) read from a memory-mapped .npy, row by index.

The file is mapped lazily in each process and never pickled with the store, so DataLoader
workers share the page cache instead of holding a copy of a [N, d] feature matrix per rank.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import numpy as np

FLOAT_KINDS = "f"


def read_npy_header(path) -> Tuple[Tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from a .npy header, without reading the data."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                return np.lib.format.read_array_header_1_0(handle)
            if version == (2, 0):
                return np.lib.format.read_array_header_2_0(handle)
            raise ValueError(f"unsupported .npy version {version}")
    except FileNotFoundError:
        raise ValueError(f"{path}: array file not found") from None
    except ValueError as error:
        raise ValueError(f"{path}: not a readable .npy file ({error})") from None


class ArrayStore:
    """Row access to a .npy file: `store[indices]` -> rows as float32 (floating files) or the stored
    dtype (bool/integer masks and labels). `normalise_rows=True` L2-normalises float rows on read.
    """

    def __init__(self, path, normalise_rows: bool = False):
        self.path = Path(path)
        self.shape, _, self.dtype = read_npy_header(self.path)
        if self.dtype.hasobject:
            raise ValueError(f"{self.path}: object arrays cannot be memory-mapped")
        if len(self.shape) == 0:
            raise ValueError(f"{self.path}: a 0-d array has no rows")
        self.normalise_rows = normalise_rows
        if normalise_rows and (self.dtype.kind not in FLOAT_KINDS or len(self.shape) != 2):
            raise ValueError(f"{self.path}: row normalisation needs a 2-D float array, got {self.dtype} {self.shape}")
        self.read_dtype = np.dtype(np.float32) if self.dtype.kind in FLOAT_KINDS else self.dtype
        self._array, self._pid = None, None

    def _mapped(self) -> np.ndarray:
        if self._pid != os.getpid():
            self._array, self._pid = np.load(self.path, mmap_mode="r"), os.getpid()
        return self._array

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_array"], state["_pid"] = None, None
        return state

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, indices) -> np.ndarray:
        rows = np.asarray(self._mapped()[indices], dtype=self.read_dtype)
        if self.normalise_rows:
            norms = np.linalg.norm(rows, axis=-1, keepdims=True)
            rows = rows / np.maximum(norms, np.finfo(np.float32).tiny)
        return rows

    def __repr__(self) -> str:
        return f"ArrayStore({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"
