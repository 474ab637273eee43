"""Verification on insightface .bin pair sets (lfw, cfp_fp, agedb_30 ...) during training.

A .bin is a pickle of (bins, issame_list): 2N encoded images, pair k = (bins[2k], bins[2k+1]).
It is read with a restricted unpickler that builds only what such a file holds (bytes, booleans,
lists, tuples, numpy arrays): a pickle that asks for any other callable is refused, never run.
Embedding = f(img) + f(flipped img), L2-normalised; squared L2 distance; thresholds 0..4 step
0.01; 10 folds in order: best threshold on 9 folds, accuracy on the held-out fold.
"""
from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path
from typing import Dict, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch import nn

from utils.checkpoint import unwrap
from utils.distributed import barrier
from utils.loader import to_device

THRESHOLDS = np.arange(0, 4, 0.01)
EMBEDDING_BATCH_SIZE = 256


def _decode(encoded, path: Path, position: int, image_size: Tuple[int, int]) -> np.ndarray:
    buffer = np.frombuffer(bytes(encoded) if not isinstance(encoded, np.ndarray) else encoded.tobytes(),
                           dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
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


@torch.no_grad()
def embed_images(backbone: nn.Module, images: torch.Tensor, device: torch.device,
                 batch_size: int = EMBEDDING_BATCH_SIZE, channels_last: bool = False) -> np.ndarray:
    """L2-normalised f(img) + f(flip(img)) for uint8 images [M, 3, H, W], in eval mode."""
    was_training = backbone.training
    backbone.eval()
    outputs = []
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = to_device({"image": images[start:start + batch_size]}, device, channels_last)["image"]
            summed = backbone(batch).float() + backbone(torch.flip(batch, dims=[3])).float()
            outputs.append(nn.functional.normalize(summed, dim=1).cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(outputs).numpy()


def ordered_folds(count: int, folds: int) -> list:
    """Test rows of each fold, contiguous and in order: exactly sklearn KFold(shuffle=False), whose
    import alone costs seconds in every training process."""
    return np.array_split(np.arange(count), folds)


def kfold_accuracy(embeddings1: np.ndarray, embeddings2: np.ndarray, issame: np.ndarray,
                   thresholds: np.ndarray = THRESHOLDS, folds: int = 10) -> Tuple[np.ndarray, np.ndarray]:
    """Per-fold test accuracy and chosen threshold (squared L2 distance < threshold = same)."""
    distances = np.sum(np.square(embeddings1 - embeddings2), axis=1)
    predictions = distances[None, :] < thresholds[:, None]           # [T, N]
    correct = predictions == np.asarray(issame, dtype=bool)[None, :]  # [T, N]
    accuracies, best_thresholds = np.zeros(folds), np.zeros(folds)
    for fold, test_rows in enumerate(ordered_folds(len(distances), folds)):
        train_rows = np.setdiff1d(np.arange(len(distances)), test_rows)
        best = int(np.argmax(correct[:, train_rows].mean(axis=1)))
        best_thresholds[fold] = thresholds[best]
        accuracies[fold] = correct[best, test_rows].mean()
    return accuracies, best_thresholds


def verify(backbone: nn.Module, images: torch.Tensor, issame: np.ndarray, device: torch.device,
           channels_last: bool = False) -> Tuple[float, float]:
    """(mean, std) of the 10-fold accuracy of `backbone` on one loaded .bin set."""
    embeddings = embed_images(backbone, images, device, channels_last=channels_last)
    accuracies, _ = kfold_accuracy(embeddings[0::2], embeddings[1::2], issame)
    return float(accuracies.mean()), float(accuracies.std())


def find_bin(rec: str, name: str) -> Path:
    """<rec>/<name>.bin, or in the parent folder: split subsets live inside the full set's folder."""
    candidates = [Path(rec) / f"{name}.bin", Path(rec).parent / f"{name}.bin"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"verification set {name!r} not found: no {candidates[0]} nor {candidates[1]}")


class VerificationCallback:
    """Runs the .bin verification every `verbose` steps and at the end on rank 0; others wait."""

    def __init__(self, cfg, rank: int, device: torch.device, logger: logging.Logger, monitor=None):
        self.rank, self.device, self.logger, self.monitor = rank, device, logger, monitor
        self.every, self.channels_last = int(cfg.verbose or 0), bool(cfg.channels_last)
        self.sets: Dict[str, Tuple[torch.Tensor, np.ndarray]] = {}
        self.best: Dict[str, float] = {}
        names: Sequence[str] = list(cfg.val_targets or [])
        if names and not cfg.rec:
            raise ValueError("val_targets need `rec` (the .bin files sit next to train.rec)")
        paths = [find_bin(cfg.rec, name) for name in names]
        if rank == 0:
            for name, path in zip(names, paths):
                self.sets[name] = load_bin(path)
                logger.info(f"[{name}] loaded {len(self.sets[name][1])} pairs from {path}")

    @property
    def active(self) -> bool:
        return bool(self.sets) or self.rank != 0

    def due(self, step: int, final: bool = False) -> bool:
        return final or (self.every > 0 and step % self.every == 0)

    def __call__(self, step: int, backbone: nn.Module) -> Dict[str, Tuple[float, float]]:
        """Evaluate every loaded set; returns {name: (mean, std)} on rank 0, {} elsewhere."""
        results: Dict[str, Tuple[float, float]] = {}
        if self.rank == 0:
            model = unwrap(backbone)
            for name, (images, issame) in self.sets.items():
                mean, std = verify(model, images, issame, self.device, self.channels_last)
                self.best[name] = max(self.best.get(name, 0.0), mean)
                results[name] = (mean, std)
                self.logger.info(f"[{name}] step {step} accuracy {mean:.5f} +- {std:.5f} "
                                 f"(best {self.best[name]:.5f})")
                if self.monitor is not None:
                    self.monitor.add_scalar(f"verification/{name}", mean, step)
        barrier()
        return results

