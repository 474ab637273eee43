"""Pieces shared by more than one compatible-training method (BCT_methods/<Method>/train.py).

What makes a method (its loss and hooks) lives in its own train.py; this module holds only what
two or more of them need: gradient scaling and reversal, float32 regions and row normalisation, and the start-up
guards that tie an old-model artifact named in the config to the training data.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, factor: float):
        ctx.factor = float(factor)
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def scale_gradient(tensor: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity in the forward pass; the backward pass multiplies the gradient by `factor`."""
    return _ScaleGradient.apply(tensor, factor)


def gradient_reverse(tensor: torch.Tensor, coefficient: float) -> torch.Tensor:
    """Gradient-reversal layer (Ganin & Lempitsky, 2015): identity forward, gradient x -coefficient."""
    return scale_gradient(tensor, -float(coefficient))


def float32_region(device: torch.device):
    """Autocast off: compatibility terms (s-scaled logit products, cosine logits) run in float32
    under AMP, as the reference computes them outside autocast."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


def normalized(embeddings: torch.Tensor) -> torch.Tensor:
    """n(v) = v / ||v||_2 per row, in float32 (compatibility terms stay float32 under AMP)."""
    return F.normalize(embeddings.float(), dim=1)


def required_path(cfg, key: str, method_name: str) -> Path:
    """The file a config key names; a clear error when the key is unset."""
    value = cfg.get(key)
    if not value:
        raise ValueError(f"{method_name} needs config key {key!r} (the {key.replace('_', ' ')} "
                         f"artifact written by tools/), but it is not set")
    return Path(value)


def check_feature_sizes(cfg, method_name: str) -> None:
    """Old and new embeddings are compared in one space: their sizes must be equal."""
    old_size = cfg.get("old_embedding_size")
    if old_size is not None and int(old_size) != int(cfg.embedding_size):
        raise ValueError(f"{method_name} compares old and new features directly: config "
                         f"old_embedding_size {old_size} != embedding_size {cfg.embedding_size}")


def check_method_artifact(cfg, key: str, kind: str, dataset, method_name: str,
                          expected_dim: Optional[int] = None,
                          per_class: bool = False) -> Dict[str, Any]:
    """check_artifact for the file under config `key` against the training data; returns the manifest.

    Rows must equal the image count (or the class count when `per_class`); `expected_dim` is the
    feature size the method needs; the old network recorded in the manifest must be config
    `old_network` when set; the file's bytes must match its manifest's checksum. An artifact derived
    from old features (prototypes, credible mask, class meta) must descend from the config's
    `old_features` file and its old model (check_lineage). Raises ArtifactMismatch naming both sides.
    """
    from utils.artifacts.manifests import (OLD_FEATURES, check_artifact, check_content, check_lineage,
                                           read_manifest, recorded_source)
    from utils.training.distributed import check_on_rank0
    path = required_path(cfg, key, method_name)
    fingerprint = dataset.fingerprint()
    rows = dataset.num_classes if per_class else len(dataset.labels)
    manifest = check_artifact(path, kind, fingerprint, expected_dim=expected_dim, expected_rows=rows,
                              expected_network=cfg.get("old_network"), verify_content=False)
    # the content hash (7 GB of MS1M features) is read once, by rank 0; every rank gets its verdict
    check_on_rank0(lambda: check_content(path, manifest))
    if kind != OLD_FEATURES:
        source = recorded_source(path, manifest)
        # a method that reads no old features (BCT) checks against the feature file the artifact
        # names, whenever that file is at hand
        features_path = Path(cfg.old_features) if cfg.get("old_features") else Path(str(source.get("path")))
        if cfg.get("old_features") or features_path.is_file():
            check_lineage(path, manifest, features_path, read_manifest(features_path))
    return manifest


def old_feature_store(cfg, normalise_rows: bool):
    """The per-image old features, memory-mapped and read by the loader workers."""
    from utils.data.feature_store import ArrayStore
    return ArrayStore(cfg.old_features, normalise_rows=normalise_rows)
