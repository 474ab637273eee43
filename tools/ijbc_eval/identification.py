"""1:N open-set identification: CMC top-k over mated probes and TPIR@FPIR, per gallery.

Semantics (those of the reference, made explicit):
- a probe is mated in a gallery when its subject has a template there; its mated score is the
  best score over those templates, and it is rank-r correct when fewer than r non-mated gallery
  templates score at least as high (ties count against the probe);
- TPIR@FPIR: the threshold is the `max(int(n_nonmated * FPIR) - 1, 0)`-th largest (0-based) of
  the non-mated probes' best scores; TPIR is the fraction of mated probes that are rank-1
  correct and whose mated score is strictly above the threshold.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch

RANKS = (1, 5, 10)
# the reference's grid: 100 log-spaced FPIRs from 1e-4 (step 10^0.04) plus 1.0
FPIR_GRID = np.concatenate([10.0 ** np.arange(-4, 0, 4 / 100), [1.0]])
FPIR_SHOWN = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def shown_rows(grid: np.ndarray = FPIR_GRID, shown: Sequence[float] = FPIR_SHOWN) -> np.ndarray:
    """Rows of the grid nearest the FPIRs shown in tables."""
    return np.abs(np.log10(grid)[None, :] - np.log10(shown)[:, None]).argmin(axis=1)


def _mated_scores(similarity: torch.Tensor, probe_subjects: np.ndarray,
                  gallery_subjects: np.ndarray):
    """(is mated [P] bool, best mated score [M], number of non-mated gallery scores >= it [M])
    for the M mated probes."""
    subjects, first_column, counts = np.unique(gallery_subjects, return_index=True, return_counts=True)
    slot = np.minimum(np.searchsorted(subjects, probe_subjects), len(subjects) - 1)
    is_mated = subjects[slot] == probe_subjects
    mated_rows = torch.from_numpy(is_mated)
    if counts.max() == 1:
        # one template per subject (IJB galleries): the mated score is a single lookup, and
        # non-mated rows get +inf so one pass over the whole matrix counts what outranks it
        score_or_inf = similarity.gather(1, torch.from_numpy(first_column[slot])[:, None])[:, 0]
        score_or_inf[~mated_rows] = torch.inf
        outranking = (similarity >= score_or_inf[:, None]).sum(dim=1) - 1
        return is_mated, score_or_inf[mated_rows], outranking[mated_rows]
    similarity = similarity[mated_rows]
    mated = torch.from_numpy(probe_subjects[is_mated][:, None] == gallery_subjects[None, :])
    minus_inf = torch.tensor(-torch.inf, dtype=similarity.dtype)
    mated_score = torch.where(mated, similarity, minus_inf).max(dim=1).values
    outranking = (torch.where(mated, minus_inf, similarity) >= mated_score[:, None]).sum(dim=1)
    return is_mated, mated_score, outranking


def rank_accuracy(similarity: torch.Tensor, probe_subjects: np.ndarray,
                  gallery_subjects: np.ndarray, gallery_name: str,
                  ranks: Sequence[int] = RANKS) -> Dict[str, object]:
    """{'num_mated', 'top_k': {k: fraction of mated probes rank-k correct}}."""
    is_mated, _, outranking = _mated_scores(similarity, probe_subjects, gallery_subjects)
    if not is_mated.any():
        raise ValueError(f"1:N gallery {gallery_name}: no probe has a mate in the gallery")
    return {"num_mated": int(is_mated.sum()),
            "top_k": {int(k): float((outranking < k).double().mean()) for k in ranks}}


def open_set_metrics(similarity: torch.Tensor, probe_subjects: np.ndarray,
                     gallery_subjects: np.ndarray, gallery_name: str,
                     fpir_grid: np.ndarray = FPIR_GRID, ranks: Sequence[int] = RANKS) -> Dict[str, object]:
    """Top-k and TPIR at every FPIR of the grid for one gallery; similarity is [probes, gallery]."""
    is_mated, mated_score, outranking = _mated_scores(similarity, probe_subjects, gallery_subjects)
    num_mated, num_nonmated = int(is_mated.sum()), int((~is_mated).sum())
    if num_mated == 0:
        raise ValueError(f"1:N gallery {gallery_name}: no probe has a mate in the gallery")
    if num_nonmated == 0:
        raise ValueError(f"1:N gallery {gallery_name}: every probe is mated; open-set TPIR@FPIR "
                         f"needs non-mated probes")
    nonmated_best = similarity.max(dim=1).values[torch.from_numpy(~is_mated)]
    nonmated_descending = torch.sort(nonmated_best, descending=True).values.numpy()
    threshold_rows = np.maximum((num_nonmated * np.asarray(fpir_grid)).astype(np.int64) - 1, 0)
    thresholds = nonmated_descending[np.minimum(threshold_rows, num_nonmated - 1)]
    rank_one = (outranking == 0).numpy()
    above = mated_score.numpy()[None, :] > thresholds[:, None]
    tpir = (above & rank_one[None, :]).mean(axis=1)
    return {"num_mated": num_mated, "num_nonmated": num_nonmated,
            "top_k": {int(k): float((outranking < k).double().mean()) for k in ranks},
            "fpir": np.asarray(fpir_grid, dtype=np.float64).tolist(),
            "tpir": tpir.tolist(), "threshold": thresholds.astype(np.float64).tolist()}


def identification_metrics(probe_features: torch.Tensor, probe_subjects: np.ndarray,
                           galleries: Dict[str, tuple]) -> Dict[str, object]:
    """Per gallery (name -> (features, subjects)) open-set metrics, the mean TPIR over the
    galleries, and top-k of all galleries merged into one."""
    results, similarities = {}, []
    for name, (gallery_features, gallery_subjects) in galleries.items():
        similarities.append(probe_features @ gallery_features.T)
        results[name] = open_set_metrics(similarities[-1], probe_subjects, gallery_subjects, name)
    results["mean_tpir"] = np.mean([results[name]["tpir"] for name in galleries], axis=0).tolist()
    merged_subjects = np.concatenate([subjects for _, subjects in galleries.values()])
    merged_name = "+".join(galleries)
    results["merged"] = {"name": merged_name, **rank_accuracy(
        torch.cat(similarities, dim=1), probe_subjects, merged_subjects, merged_name)}
    return results
