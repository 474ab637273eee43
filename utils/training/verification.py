"""Verification on insightface .bin pair sets (lfw, cfp_fp, agedb_30 ...) during training (the
files are read by utils/data/bin_sets.py).

Embedding = f(img) + f(flipped img), L2-normalised; squared L2 distance; thresholds 0..4 step
0.01; 10 folds in order: best threshold on 9 folds, accuracy on the held-out fold.
"""
from __future__ import annotations

import logging
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from utils.training.checkpoint import unwrap
from utils.training.distributed import check_on_rank0
from utils.data.bin_sets import find_bin, load_bin
from utils.data.loader import to_device

THRESHOLDS = np.arange(0, 4, 0.01)
EMBEDDING_BATCH_SIZE = 256


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

        def load_sets() -> None:
            for name, path in zip(names, paths):
                self.sets[name] = load_bin(path)
                logger.info(f"[{name}] loaded {len(self.sets[name][1])} pairs from {path}")
        # rank 0 reads the sets; a refused set (hostile pickle, bad image) stops every rank on its line
        check_on_rank0(load_sets)

    @property
    def active(self) -> bool:
        return bool(self.sets) or self.rank != 0

    def due(self, step: int, final: bool = False) -> bool:
        return final or (self.every > 0 and step % self.every == 0)

    def __call__(self, step: int, backbone: nn.Module) -> Dict[str, Tuple[float, float]]:
        """Evaluate every loaded set; returns {name: (mean, std)} on rank 0, {} elsewhere."""
        results: Dict[str, Tuple[float, float]] = {}

        def evaluate() -> None:
            model = unwrap(backbone)
            for name, (images, issame) in self.sets.items():
                mean, std = verify(model, images, issame, self.device, self.channels_last)
                self.best[name] = max(self.best.get(name, 0.0), mean)
                results[name] = (mean, std)
                self.logger.info(f"[{name}] step {step} accuracy {mean:.5f} +- {std:.5f} "
                                 f"(best {self.best[name]:.5f})")
                if self.monitor is not None:
                    self.monitor.add_scalar(f"verification/{name}", mean, step)
        check_on_rank0(evaluate)   # the other ranks wait here, and learn of a failure of rank 0
        return results

