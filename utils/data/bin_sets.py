"""insightface .bin pair sets (lfw, cfp_fp, agedb_30 ...): finding and reading them.

A .bin is a pickle of (bins, issame_list): 2N encoded images, pair k = (bins[2k], bins[2k+1]).
It is read with a restricted unpickler that builds only what such a file holds (bytes, booleans,
lists, tuples, numpy arrays): a pickle that asks for any other callable is refused, never run.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Tuple

import cv2
import numpy as np
import torch


def _decode(encoded, path: Path, position: int, image_size: Tuple[int, int]) -> np.ndarray:
    buffer = np.frombuffer(bytes(encoded) if not isinstance(encoded, np.ndarray) else encoded.tobytes(),
                           dtype=np.uint8)
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    except cv2.error:   # OpenCV refuses some byte strings outright instead of returning None
        image = None
    if image is None:
        raise ValueError(f"{path}: image {position} cannot be decoded")
    if image.shape[:2] != tuple(image_size):
        image = cv2.resize(image, (image_size[1], image_size[0]))
    return image[:, :, ::-1]  # BGR -> RGB


class _BinUnpickler(pickle.Unpickler):
    """Unpickler for insightface .bin files: the only globals it resolves are the ones numpy arrays
    and Python-2 / protocol-2 byte strings need; every other global is refused before it is called."""

    ALLOWED_GLOBALS = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("codecs", "encode"),
    })

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it asks for {module}.{name}, which an insightface .bin never holds")


def _unpickle_bin(raw: bytes, path: Path):
    """(bins, issame_list) from the bytes of a .bin, through _BinUnpickler only."""
    try:
        try:
            return _BinUnpickler(io.BytesIO(raw)).load()
        except UnicodeDecodeError:  # Python-2 pickles: their str objects are the encoded images
            return _BinUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as error:
        raise ValueError(f"refusing verification set {path}: {error}") from None
    except Exception as error:
        raise ValueError(f"{path}: not a (bins, issame_list) pickle: {type(error).__name__}: {error}") from None


def _as_pairs(loaded, path: Path) -> Tuple[list, np.ndarray]:
    """Check the unpickled object is (sequence of encoded images, booleans)."""
    if not isinstance(loaded, (tuple, list)) or len(loaded) != 2:
        raise ValueError(f"{path}: expected a pickled (bins, issame_list) pair, got {type(loaded).__name__}")
    bins, issame_list = loaded
    if not isinstance(bins, (list, tuple, np.ndarray)) or not all(
            isinstance(encoded, (bytes, bytearray, np.ndarray)) for encoded in bins):
        raise ValueError(f"{path}: bins must be a sequence of encoded images (bytes)")
    issame = np.asarray(issame_list)
    if issame.dtype != bool and not (np.issubdtype(issame.dtype, np.integer) and np.isin(issame, (0, 1)).all()):
        raise ValueError(f"{path}: issame_list must hold booleans, got {issame.dtype}")
    return list(bins), issame.astype(bool).reshape(-1)


def load_bin(path: str | Path, image_size: Tuple[int, int] = (112, 112)) -> Tuple[torch.Tensor, np.ndarray]:
    """(uint8 images [2N, 3, H, W] RGB, issame bool [N]) from an insightface .bin file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"verification set not found: {path}")
    bins, issame = _as_pairs(_unpickle_bin(path.read_bytes(), path), path)
    if len(bins) != 2 * len(issame):
        raise ValueError(f"{path}: {len(bins)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    images = np.stack([_decode(encoded, path, position, image_size) for position, encoded in enumerate(bins)])
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))), issame


def find_bin(rec: str, name: str) -> Path:
    """<rec>/<name>.bin, or in the parent folder: split subsets live inside the full set's folder."""
    candidates = [Path(rec) / f"{name}.bin", Path(rec).parent / f"{name}.bin"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"verification set {name!r} not found: no {candidates[0]} nor {candidates[1]}")
