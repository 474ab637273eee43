"""1:1 verification: pair scores from template features, ROC, TAR@FAR (two rules) and AUC.

Rules for TAR@FAR (both reported, labelled):
- "nearest ROC point" (the reference's, for parity with published tables): the ROC of
  sklearn.metrics.roc_curve (drop_intermediate=True); the TAR of the ROC point whose FPR is
  nearest the target, the largest TAR among equally near points.
- "threshold": accept a pair when its score is strictly above the threshold; the threshold is
  the smallest one with FAR <= target, i.e. the (floor(target * impostors) + 1)-th largest
  impostor score.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
import torch

FAR_TARGETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
# a dense [unique first templates x unique second templates] score block is used when it costs
# at most this many dot products per pair (BLAS beats gathering 2 x d floats per pair)
DENSE_WORK_PER_PAIR = 16
DENSE_BLOCK_ELEMENTS = 1 << 28  # 1 GiB of float32 scores per block (int32 flat indices below 2^31)
SPARSE_CHUNK_PAIRS = 1 << 16


def pair_scores(first_features: torch.Tensor, second_features: torch.Tensor,
                first_rows: np.ndarray, second_rows: np.ndarray) -> np.ndarray:
    """float32 [P] dot products first_features[first_rows[p]] . second_features[second_rows[p]].

    Pairs reuse few distinct templates (IJB-C: 3.5k x 19.6k for 15.7M pairs), so the scores of
    all distinct combinations are computed as matrix products in blocks and then looked up."""
    first_unique, first_index = _compact(first_rows, len(first_features))
    second_unique, second_index = _compact(second_rows, len(second_features))
    if len(first_unique) * len(second_unique) > DENSE_WORK_PER_PAIR * len(first_rows):
        scores = np.empty(len(first_rows), dtype=np.float32)
        return _sparse_pair_scores(first_features, second_features, first_rows, second_rows, scores)
    first_block = first_features[torch.from_numpy(first_unique)]
    second_block_t = second_features[torch.from_numpy(second_unique)].T.contiguous()
    rows_per_block = max(1, DENSE_BLOCK_ELEMENTS // max(1, len(second_unique)))
    if rows_per_block >= len(first_unique):
        table = (first_block @ second_block_t).numpy().reshape(-1)
        # one flat int32 index per pair: half the memory traffic of two int64 fancy indices
        return np.take(table, first_index * np.int32(len(second_unique)) + second_index)
    scores = np.empty(len(first_rows), dtype=np.float32)
    # pairs grouped by their first template so each block of the table is looked up once
    order = np.argsort(first_index, kind="stable")
    boundaries = np.searchsorted(first_index[order], np.arange(0, len(first_unique) + rows_per_block,
                                                               rows_per_block))
    for block, start in enumerate(range(0, len(first_unique), rows_per_block)):
        table = (first_block[start:start + rows_per_block] @ second_block_t).numpy()
        members = order[boundaries[block]:boundaries[block + 1]]
        scores[members] = table[first_index[members] - start, second_index[members]]
    return scores


def _compact(rows: np.ndarray, num_rows: int) -> Tuple[np.ndarray, np.ndarray]:
    """(sorted distinct rows, int32 position of each row among them): np.unique without a sort."""
    present = np.zeros(num_rows, dtype=bool)
    present[rows] = True
    position = np.cumsum(present, dtype=np.int32) - 1
    return np.flatnonzero(present), position[rows]


def _sparse_pair_scores(first_features, second_features, first_rows, second_rows, scores):
    for start in range(0, len(first_rows), SPARSE_CHUNK_PAIRS):
        stop = start + SPARSE_CHUNK_PAIRS
        first = first_features[torch.from_numpy(first_rows[start:stop]).long()]
        second = second_features[torch.from_numpy(second_rows[start:stop]).long()]
        scores[start:stop] = (first * second).sum(dim=1).numpy()
    return scores


def _check_labels(labels: np.ndarray) -> Tuple[int, int]:
    genuine = int(np.count_nonzero(labels))
    impostor = int(labels.size - genuine)
    if genuine == 0 or impostor == 0:
        raise ValueError(f"1:1 needs genuine and impostor pairs, got {genuine} genuine and "
                         f"{impostor} impostor")
    return genuine, impostor


def roc_curve(labels: np.ndarray, scores: np.ndarray,
              drop_intermediate: bool = True) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) equal to sklearn.metrics.roc_curve's, from one sort of the scores.

    Point i counts the pairs scoring >= thresholds[i]; the first point is (0, 0) at +inf."""
    labels = np.asarray(labels).astype(bool, copy=False)
    scores = np.asarray(scores)
    genuine_count, impostor_count = _check_labels(labels)
    descending = np.sort(scores)[::-1]
    # last position of each run of equal scores: everything up to it scores >= that value
    run_ends = np.flatnonzero(np.r_[descending[1:] != descending[:-1], True]).astype(np.int32)
    thresholds = descending[run_ends]
    # each genuine score counts at the end of its run; a cumulative sum gives true positives
    genuine_descending = np.sort(scores[labels])[::-1]
    genuine_run_end = descending.size - np.searchsorted(descending[::-1], genuine_descending, side="left") - 1
    true_positives = np.cumsum(np.bincount(genuine_run_end, minlength=descending.size),
                               dtype=np.int32)[run_ends]
    false_positives = run_ends + 1 - true_positives
    if drop_intermediate and true_positives.size > 2:
        # drop points collinear with their neighbours (no change of slope): same curve, same AUC
        corners = np.r_[True, np.logical_or(np.diff(false_positives, 2), np.diff(true_positives, 2)),
                        True]
        true_positives, false_positives = true_positives[corners], false_positives[corners]
        thresholds = thresholds[corners]
    true_positives = np.r_[0.0, true_positives]
    false_positives = np.r_[0.0, false_positives]
    thresholds = np.r_[np.inf, thresholds]
    return false_positives / impostor_count, true_positives / genuine_count, thresholds


def roc_auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.trapezoid(tpr, fpr))


def tar_at_far_nearest(fpr: np.ndarray, tpr: np.ndarray, fars: Sequence[float]) -> np.ndarray:
    """The reference rule: TAR of the ROC point whose FPR is nearest each target (ties: the
    point with the largest TAR, i.e. the last in ROC order)."""
    distance = np.abs(fpr[None, :] - np.asarray(fars, dtype=np.float64)[:, None])
    last_nearest = distance.shape[1] - 1 - np.argmin(distance[:, ::-1], axis=1)
    return tpr[last_nearest]


def tar_at_far_threshold(labels: np.ndarray, scores: np.ndarray,
                         fars: Sequence[float]) -> Dict[str, np.ndarray]:
    """The threshold rule: {'tar', 'threshold', 'far'} (the achieved FAR) for each target."""
    labels = np.asarray(labels).astype(bool, copy=False)
    genuine_count, impostor_count = _check_labels(labels)
    impostors = np.asarray(scores)[~labels]
    genuine_ascending = np.sort(np.asarray(scores)[labels])
    allowed = np.floor(np.asarray(fars, dtype=np.float64) * impostor_count).astype(np.int64)
    # the (allowed + 1)-th largest impostor score, by selection instead of a full sort
    ascending_rank = np.clip(impostor_count - 1 - allowed, 0, impostor_count - 1)
    selected = np.partition(impostors, np.unique(ascending_rank))[ascending_rank]
    thresholds = np.where(allowed < impostor_count, selected.astype(np.float64), -np.inf)
    accepted_genuine = genuine_count - np.searchsorted(genuine_ascending, thresholds, side="right")
    accepted_impostors = np.array([np.count_nonzero(impostors > threshold) for threshold in thresholds])
    return {"tar": accepted_genuine / genuine_count, "threshold": thresholds,
            "far": accepted_impostors / impostor_count}


def verification_metrics(labels: np.ndarray, scores: np.ndarray,
                         fars: Sequence[float] = FAR_TARGETS) -> Dict[str, object]:
    """Every 1:1 number: both TAR@FAR rules, AUC, pair counts; plus the ROC for plotting."""
    labels = np.asarray(labels).astype(bool, copy=False)
    fpr, tpr, _ = roc_curve(labels, scores)
    exact = tar_at_far_threshold(labels, scores, fars)
    return {
        "num_genuine": int(labels.sum()), "num_impostor": int((~labels).sum()),
        "far_targets": [float(f) for f in fars],
        "tar_nearest_roc_point": tar_at_far_nearest(fpr, tpr, fars).tolist(),
        "tar_threshold": exact["tar"].tolist(),
        "threshold": exact["threshold"].tolist(),
        "achieved_far": exact["far"].tolist(),
        "auc": roc_auc(fpr, tpr),
        "roc": (fpr, tpr),
    }
