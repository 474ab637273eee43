"""95 % bootstrap intervals over subjects for the compatibility report's headline metrics.

One replicate draws the protocol's subjects with replacement; a subject drawn k times counts k
times. A genuine 1:1 pair of subject s then weighs k_s, an impostor pair of subjects s and t
weighs k_s * k_t (the pairs among the drawn subjects), and a mated 1:N probe weighs its subject's
k (galleries stay as they are). Every metric is recomputed on the weighted pairs / probes: top-1
with the report's rule (mean over the galleries), TAR@FAR at the ROC point nearest the target
among all the ROC's points (the table's rule first drops points between equal steps, as sklearn
does, which can move the chosen point by a step; the interval is about sampling noise, which is
orders of magnitude larger at the reported operating points). Rows evaluated
with the same replicate counts are paired, so the interval of a difference (new/old - old/old)
shows whether the difference is more than subject sampling noise.

1:1 subjects are the connected components of the genuine-pair graph: the protocol files alone
define them (IJB-C lists no subject for its 1:1 templates) and on the synthetic set, where every
two templates of a subject form a genuine pair, they are exactly the subjects.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

REPLICATES = 1000
CONFIDENCE = 0.95
CHUNK = 64   # replicates per vectorised block (memory: CHUNK x pairs float64)


def pair_subjects(pair_templates: np.ndarray, pair_labels: np.ndarray) -> Tuple[np.ndarray, int]:
    """([P, 2] subject index of each pair side, number of subjects): subjects are the connected
    components of the graph whose edges are the genuine pairs."""
    template_ids, sides = np.unique(pair_templates, return_inverse=True)
    sides = sides.reshape(pair_templates.shape)
    genuine = np.asarray(pair_labels).astype(bool)
    graph = coo_matrix((np.ones(int(genuine.sum())), (sides[genuine, 0], sides[genuine, 1])),
                       shape=(len(template_ids), len(template_ids)))
    count, component = connected_components(graph, directed=False)
    return component[sides], int(count)


def subject_counts(num_subjects: int, replicates: int = REPLICATES, seed: int = 0) -> np.ndarray:
    """[R, S] how often each subject is drawn in each replicate (S draws with replacement)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_subjects, size=(replicates, num_subjects))
    offsets = (np.arange(replicates) * num_subjects)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=replicates * num_subjects).reshape(
        replicates, num_subjects).astype(np.float64)


def nearest_point_tar(tpr: np.ndarray, fpr: np.ndarray, far: float) -> np.ndarray:
    """[R] TAR of the point nearest `far` on each row of ROC points [R, K] (fpr rising along a
    row, ties: the later point): the last point at or below the target, or the last point of
    the run of the first value above it."""
    rows = np.arange(len(fpr))
    at_or_below = (fpr <= far).sum(axis=1) - 1
    above_value = fpr[rows, np.minimum(at_or_below + 1, fpr.shape[1] - 1)]
    last_above = (fpr <= above_value[:, None]).sum(axis=1) - 1
    use_above = np.abs(above_value - far) <= np.abs(fpr[rows, at_or_below] - far)
    return tpr[rows, np.where(use_above, last_above, at_or_below)]


def descending(scores: np.ndarray, labels: np.ndarray):
    """(pair order by descending score, genuine flags in that order, run ends: only the last
    pair of a run of equal scores is an ROC point)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    ordered = np.asarray(scores)[order]
    return order, np.asarray(labels).astype(bool)[order], np.r_[ordered[1:] != ordered[:-1], True]


def tar_from_prefix(genuine: np.ndarray, run_end: np.ndarray, prefix_weights: Callable[[int], np.ndarray],
                    totals: Tuple[np.ndarray, np.ndarray], far: float) -> np.ndarray:
    """[R] nearest-point TAR from pairs in descending score order; `prefix_weights(L)` gives the
    [R, L] weights of the first L pairs and `totals` the weighted genuine and impostor sums. The
    prefix is extended until every row has passed the run just above the target."""
    genuine_total, impostor_total = totals
    length = min(len(genuine), max(64, int(4 * far * len(genuine))))
    while True:
        block = prefix_weights(length)
        true_positive = np.cumsum(np.where(genuine[:length], block, 0.0), axis=1)[:, run_end[:length]]
        false_positive = np.cumsum(np.where(genuine[:length], 0.0, block), axis=1)[:, run_end[:length]]
        zeros = np.zeros((len(block), 1))
        tpr = np.concatenate([zeros, true_positive], axis=1) / genuine_total[:, None]
        fpr = np.concatenate([zeros, false_positive], axis=1) / impostor_total[:, None]
        first_above = np.minimum((fpr <= far).sum(axis=1), fpr.shape[1] - 1)
        if length == len(genuine) or (fpr[:, -1] > fpr[np.arange(len(fpr)), first_above]).all():
            return nearest_point_tar(tpr, fpr, far)
        length = min(len(genuine), 2 * length)


def bootstrap_tar_at_far(scores: np.ndarray, labels: np.ndarray, sides: np.ndarray,
                         counts: np.ndarray, far: float) -> np.ndarray:
    """[R] TAR@FAR under each replicate's subject counts [R, S] (pair weights as above)."""
    order, genuine, run_end = descending(scores, labels)
    first, second = sides[order, 0], sides[order, 1]
    subjects = counts.shape[1]
    # weighted totals without the [R, P] weights: genuine pairs per subject, impostor pairs per
    # subject pair (a quadratic form of the counts)
    genuine_per_subject = np.bincount(first[genuine], minlength=subjects).astype(np.float64)
    impostor_pairs = np.zeros((subjects, subjects))
    np.add.at(impostor_pairs, (first[~genuine], second[~genuine]), 1.0)
    values = []
    for start in range(0, len(counts), CHUNK):
        block = counts[start:start + CHUNK]
        totals = (block @ genuine_per_subject, ((block @ impostor_pairs) * block).sum(axis=1))

        def prefix_weights(length: int, block=block) -> np.ndarray:
            weights = block[:, first[:length]]
            return np.where(genuine[:length], weights, weights * block[:, second[:length]])
        values.append(tar_from_prefix(genuine, run_end, prefix_weights, totals, far))
    return np.concatenate(values)


def bootstrap_top1(correct: Dict[str, np.ndarray], subjects: Dict[str, np.ndarray],
                   counts: np.ndarray, subject_index: Dict[int, int]) -> np.ndarray:
    """[R] top-1 (mean over galleries) under each replicate's subject counts [R, S]: `correct`
    and `subjects` give, per gallery, each mated probe's rank-1 hit and subject id."""
    per_gallery = []
    for name, hits in correct.items():
        weights = counts[:, [subject_index[int(s)] for s in subjects[name]]]
        per_gallery.append((weights * hits).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-12))
    return np.mean(per_gallery, axis=0)


def interval(values: np.ndarray, confidence: float = CONFIDENCE) -> Tuple[float, float]:
    """Percentile interval of the replicate values."""
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def identification_subjects(subject_ids: Sequence[int]) -> Dict[int, int]:
    """Probe subject id -> column of the 1:N replicate counts."""
    return {int(subject): column for column, subject in enumerate(np.unique(np.asarray(subject_ids)))}
