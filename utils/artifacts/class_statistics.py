"""The per-class statistics of old-model features that the methods consume (methods.md,
"Artifacts computed from the old model"): class prototypes (BCT, UniBCT), the credible mask
(MixBCT) and the class meta (AdvBCT).

Features may be a memory-mapped [N, d] array of millions of rows (or a VerifiedFeatures, whose
first pass also checks the file's checksum): every pass reads it in order, converts `chunk_rows`
rows at a time into one reused float64 buffer that stays in the CPU cache (float64 arithmetic,
memory flat), and adds rows into per-class sums in row order whatever the label order, so the
sums do not depend on the chunk size.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import torch

from utils.common.torch_threads import single_torch_thread

DEFAULT_CHUNK_ROWS = 1024     # x 512 x float64 = 4 MiB: a cache-sized buffer


def _row_chunks(num_rows: int, chunk_rows: int) -> Iterator[slice]:
    for start in range(0, num_rows, chunk_rows):
        yield slice(start, min(start + chunk_rows, num_rows))


def _float64_chunks(features, labels: np.ndarray, chunk_rows: Optional[int]
                    ) -> Iterator[Tuple[slice, torch.Tensor, torch.Tensor]]:
    """(rows, float64 copy [r, d], labels [r] int64) over every row in order. The copy is one
    buffer reused for every chunk: consume it (transforms may work in place) before the next."""
    chunk_rows = chunk_rows or DEFAULT_CHUNK_ROWS
    if hasattr(features, "row_blocks"):      # VerifiedFeatures: large blocks, verified while read
        blocks = features.row_blocks()
    else:
        blocks = ((rows, features[rows]) for rows in _row_chunks(features.shape[0], chunk_rows))
    buffer = torch.empty(min(chunk_rows, max(1, features.shape[0])), features.shape[1], dtype=torch.float64)
    # one thread (the consumer's ops run inside it too): see single_torch_thread; the verifying
    # reader hashes on another core meanwhile
    with single_torch_thread():
        for block_rows, block in blocks:
            for part in _row_chunks(len(block), chunk_rows):
                rows = slice(block_rows.start + part.start, block_rows.start + part.stop)
                copy = buffer[: part.stop - part.start]
                copy.numpy()[...] = block[part]         # read-only maps: numpy casts into the buffer
                yield rows, copy, torch.from_numpy(np.ascontiguousarray(labels[rows], dtype=np.int64))


def _safe_norm(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    # zero norms divide by 1 (sklearn.preprocessing.normalize does the same), keeping zero rows zero
    norm = tensor.norm(dim=dim, keepdim=True)
    return torch.where(norm == 0, torch.ones_like(norm), norm)


def l2_normalise_rows(tensor: torch.Tensor) -> torch.Tensor:
    return tensor / _safe_norm(tensor, dim=1)


def _normalise_rows_(block: torch.Tensor) -> torch.Tensor:
    """In place, for the float64 copies made by _float64_chunks."""
    return block.div_(_safe_norm(block, dim=1))


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Images per class, [C] int64; labels outside [0, C) are an error."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if labels.size == 0:
        raise ValueError("no labels: the features cover no image")
    if (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels span [{labels.min()}, {labels.max()}] but there are "
                         f"{num_classes} classes")
    return np.bincount(labels, minlength=num_classes).astype(np.int64)


def _check_rows(features, labels: np.ndarray) -> None:
    if features.ndim != 2 or features.shape[0] != len(labels):
        raise ValueError(f"features of shape {tuple(features.shape)} do not match "
                         f"{len(labels)} labels")


def class_sums(features, labels: np.ndarray, num_classes: int,
               transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
               chunk_rows: Optional[int] = DEFAULT_CHUNK_ROWS,
               column_squares: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-class sum of (transformed) feature rows, [C, d] float64; `column_squares` ([d] float64),
    when given, also receives the sum over all rows of each transformed column squared."""
    _check_rows(features, labels)
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64)
    for _, block, block_labels in _float64_chunks(features, labels, chunk_rows):
        block = transform(block) if transform else block
        sums.index_add_(0, block_labels, block)
        if column_squares is not None:
            column_squares += block.square().sum(dim=0)
    return sums


def _class_means(features, labels, counts, transform, chunk_rows, column_squares=None) -> torch.Tensor:
    sums = class_sums(features, labels, len(counts), transform, chunk_rows, column_squares)
    return sums / torch.from_numpy(np.maximum(counts, 1)).to(torch.float64)[:, None]


def _distances_to_class_means(features, labels, means, transform, chunk_rows) -> np.ndarray:
    """Euclidean distance of each transformed row to the mean of its class, [N] float64."""
    distances = np.empty(len(labels), dtype=np.float64)
    for rows, block, block_labels in _float64_chunks(features, labels, chunk_rows):
        distances[rows] = transform(block).sub_(means[block_labels]).norm(dim=1).numpy()
    return distances


def sort_within_classes(values: np.ndarray, labels: np.ndarray, counts: np.ndarray):
    """Order rows by (label, value), ties by row index; return (order, rank of each sorted row
    inside its class, class of each sorted row)."""
    order = np.lexsort((values, labels))  # lexsort is stable: equal values keep index order
    sorted_labels = labels[order]
    class_starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank_in_class = np.arange(len(order), dtype=np.int64) - class_starts[sorted_labels]
    return order, rank_in_class, sorted_labels


def class_prototypes(features, labels: np.ndarray, num_classes: int,
                     chunk_rows: Optional[int] = DEFAULT_CHUNK_ROWS) -> np.ndarray:
    """Per class, the mean of its raw old features, L2-normalised: [C, d] float32."""
    labels = np.asarray(labels)
    counts = class_counts(labels, num_classes)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        raise ValueError(f"{len(empty)} classes have no image (first: {empty[:5].tolist()}); "
                         f"a prototype needs at least one")
    means = _class_means(features, labels, counts, None, chunk_rows)
    return l2_normalise_rows(means).to(torch.float32).numpy()


def credible_distances(features, labels: np.ndarray, num_classes: int,
                       chunk_rows: Optional[int] = DEFAULT_CHUNK_ROWS) -> np.ndarray:
    """Distance of each row to its class mean after the reference's normalisation: rows to unit
    length, then each column to unit length over all samples (a per-dimension rescaling).

    Two passes: the column rescaling is one factor per column, so the class mean of the rescaled
    rows is the class mean of the unit rows rescaled; the first pass sums both the unit rows per
    class and their squared columns, the second measures the distances."""
    labels = np.asarray(labels)
    _check_rows(features, labels)
    counts = class_counts(labels, num_classes)
    squares = torch.zeros(features.shape[1], dtype=torch.float64)
    unit_means = _class_means(features, labels, counts, _normalise_rows_, chunk_rows, squares)
    norms = squares.sqrt()
    column_norms = torch.where(norms == 0, torch.ones_like(norms), norms)
    means = unit_means / column_norms

    def normalise(block: torch.Tensor) -> torch.Tensor:
        return _normalise_rows_(block).div_(column_norms)

    return _distances_to_class_means(features, labels, means, normalise, chunk_rows)


def credible_mask(features, labels: np.ndarray, threshold: float, num_classes: int,
                  chunk_rows: Optional[int] = DEFAULT_CHUNK_ROWS) -> np.ndarray:
    """MixBCT denoising: per class, the ceil(T * n_c) rows nearest the class mean are credible.
    Returns uint8 [N] (1 credible, 0 not); ties keep the lower dataset index."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold T must be in [0, 1], got {threshold}")
    labels = np.asarray(labels)
    distances = credible_distances(features, labels, num_classes, chunk_rows)
    counts = class_counts(labels, num_classes)
    # same float product as math.ceil(T * n) in the reference, so rounding agrees
    keep_per_class = np.ceil(threshold * counts.astype(np.float64)).astype(np.int64)
    order, rank_in_class, sorted_labels = sort_within_classes(distances, labels, counts)
    mask = np.zeros(len(labels), dtype=np.uint8)
    mask[order] = rank_in_class < keep_per_class[sorted_labels]
    return mask


def class_meta(features, labels: np.ndarray, num_classes: int,
               chunk_rows: Optional[int] = DEFAULT_CHUNK_ROWS) -> Dict[str, np.ndarray]:
    """AdvBCT class meta: center = mean of L2-normalised rows (not re-normalised); radius = the
    largest member distance to the centre after dropping 1.5-IQR outliers (classes with >= 4
    members); valid = more than one radius kept. Empty classes: zeros and valid False."""
    labels = np.asarray(labels)
    counts = class_counts(labels, num_classes)
    centers = _class_means(features, labels, counts, _normalise_rows_, chunk_rows)
    radii = _distances_to_class_means(features, labels, centers, _normalise_rows_, chunk_rows)

    order, _, sorted_labels = sort_within_classes(radii, labels, counts)
    sorted_radii = radii[order]
    class_starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    members = counts[sorted_labels]
    first = class_starts[sorted_labels]
    q1 = sorted_radii[first + members // 4]          # r[int(n/4)]
    q3 = sorted_radii[first + (3 * members) // 4]    # r[int(3n/4)]
    spread = 1.5 * (q3 - q1)
    kept = (members < 4) | ((sorted_radii >= q1 - spread) & (sorted_radii <= q3 + spread))

    kept_count = np.bincount(sorted_labels, weights=kept, minlength=num_classes).astype(np.int64)
    # rows are sorted by radius inside each class, so a class's last kept row has its largest radius
    kept_rows = np.flatnonzero(kept)
    kept_labels = sorted_labels[kept_rows]
    last_of_class = np.append(kept_labels[1:] != kept_labels[:-1], True)
    radius = np.zeros(num_classes, dtype=np.float64)
    radius[kept_labels[last_of_class]] = sorted_radii[kept_rows[last_of_class]]
    return {
        "center": centers.to(torch.float32).numpy(),
        "radius": radius.astype(np.float32),
        "kept_count": kept_count,
        "valid": kept_count > 1,
    }
