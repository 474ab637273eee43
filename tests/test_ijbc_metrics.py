"""1:1 and 1:N metrics of tools/ijbc_eval against sklearn, naive loops and hand-computed cases."""
import numpy as np
import pytest
import torch
from sklearn.metrics import auc as sklearn_auc
from sklearn.metrics import roc_curve as sklearn_roc_curve

from tools.ijbc_eval import verification
from tools.ijbc_eval.identification import FPIR_GRID, identification_metrics, open_set_metrics
from tools.ijbc_eval.verification import (pair_scores, roc_auc, roc_curve, tar_at_far_nearest,
                                          tar_at_far_threshold, verification_metrics)


def random_scores(seed, count=4000, genuine_fraction=0.05, decimals=None):
    rng = np.random.default_rng(seed)
    labels = (rng.random(count) < genuine_fraction).astype(np.int8)
    scores = (rng.normal(0, 1, count) + 2.5 * labels).astype(np.float32)
    if decimals is not None:  # many ties
        scores = np.round(scores, decimals).astype(np.float32)
    return labels, scores


@pytest.mark.parametrize("decimals", [None, 1])
@pytest.mark.parametrize("drop", [True, False])
def test_roc_equals_sklearn(decimals, drop):
    labels, scores = random_scores(1, decimals=decimals)
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=drop)
    expected_fpr, expected_tpr, expected_thresholds = sklearn_roc_curve(labels, scores,
                                                                        drop_intermediate=drop)
    np.testing.assert_array_equal(fpr, expected_fpr)
    np.testing.assert_array_equal(tpr, expected_tpr)
    np.testing.assert_array_equal(thresholds, expected_thresholds)
    assert roc_auc(fpr, tpr) == pytest.approx(sklearn_auc(expected_fpr, expected_tpr), abs=1e-12)


def test_tar_nearest_matches_reference_formula():
    labels, scores = random_scores(2, count=20000, decimals=2)
    fars = [10.0 ** -k for k in range(1, 7)]
    fpr, tpr, _ = sklearn_roc_curve(labels, scores)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    expected = [tpr[np.argmin(abs(fpr - far))] for far in fars]
    ours_fpr, ours_tpr, _ = roc_curve(labels, scores)
    np.testing.assert_array_equal(tar_at_far_nearest(ours_fpr, ours_tpr, fars), expected)


def test_tar_threshold_matches_naive_search():
    labels, scores = random_scores(3, count=3000, decimals=1)
    fars = [1e-3, 1e-2, 0.05, 0.1, 0.5, 1.0]
    result = tar_at_far_threshold(labels, scores, fars)
    genuine, impostor = scores[labels == 1], scores[labels == 0]
    candidates = np.r_[-np.inf, np.unique(impostor)]
    for index, far in enumerate(fars):
        # smallest threshold whose false accept rate (score > threshold) stays within the target
        ok = [t for t in candidates if np.mean(impostor > t) <= far]
        threshold = min(ok)
        assert result["threshold"][index] == threshold
        assert result["tar"][index] == pytest.approx(np.mean(genuine > threshold))
        assert result["far"][index] == pytest.approx(np.mean(impostor > threshold))
        assert result["far"][index] <= far


def test_no_genuine_pairs_is_an_error():
    with pytest.raises(ValueError, match="0 genuine"):
        verification_metrics(np.zeros(10, dtype=np.int8), np.arange(10, dtype=np.float32))


@pytest.mark.parametrize("mode", ["dense", "blocks", "sparse"])
def test_pair_scores_equal_naive_dot_products(mode, monkeypatch):
    if mode == "blocks":
        monkeypatch.setattr(verification, "DENSE_BLOCK_ELEMENTS", 7)
    if mode == "sparse":
        monkeypatch.setattr(verification, "DENSE_WORK_PER_PAIR", 0)
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(12, 8, generator=generator)
    second = torch.randn(12, 8, generator=generator)
    rng = np.random.default_rng(4)
    first_rows, second_rows = rng.integers(0, 5, 300), rng.integers(3, 12, 300)
    expected = [float(first[a] @ second[b]) for a, b in zip(first_rows, second_rows)]
    np.testing.assert_allclose(pair_scores(first, second, first_rows, second_rows), expected, atol=1e-5)


def test_open_set_known_answer():
    similarity = torch.tensor([[0.9, 0.2, 0.1],     # subject 10: rank 1
                               [0.5, 0.4, 0.3],     # subject 20: outranked once
                               [0.1, 0.2, 0.6],     # subject 30: rank 1
                               [0.7, 0.1, 0.0],     # non-mated, best 0.7
                               [0.3, 0.55, 0.2]])   # non-mated, best 0.55
    result = open_set_metrics(similarity, np.array([10, 20, 30, 99, 98]), np.array([10, 20, 30]),
                              "G", fpir_grid=np.array([0.01, 0.5, 1.0]), ranks=(1, 2))
    assert result["num_mated"] == 3 and result["num_nonmated"] == 2
    assert result["top_k"] == {1: pytest.approx(2 / 3), 2: 1.0}
    # thresholds: index max(int(2 * fpir) - 1, 0) of [0.7, 0.55]
    np.testing.assert_allclose(result["threshold"], [0.7, 0.7, 0.55])
    np.testing.assert_allclose(result["tpir"], [1 / 3, 1 / 3, 2 / 3])


def test_open_set_tie_counts_against_the_probe():
    similarity = torch.tensor([[0.5, 0.5], [0.1, 0.9]])
    result = open_set_metrics(similarity, np.array([1, 7]), np.array([1, 2]), "G",
                              fpir_grid=np.array([1.0]), ranks=(1,))
    assert result["top_k"][1] == 0.0


def reference_style_one_to_n(similarity, probe_subjects, gallery_subjects, fpirs):
    """Loop over probes as the reference does (one gallery template per subject)."""
    top1 = top5 = 0
    positives, best_negatives, nonmated_best = [], [], []
    for row, subject in enumerate(probe_subjects):
        if subject in gallery_subjects:
            column = int(np.argwhere(gallery_subjects == subject)[0, 0])
            order = np.argsort(similarity[row])[::-1]
            top1 += column in order[:1]
            top5 += column in order[:5]
            positives.append(similarity[row, column])
            best_negatives.append(similarity[row][gallery_subjects != subject].max())
        else:
            nonmated_best.append(similarity[row].max())
    positives, best_negatives = np.array(positives), np.array(best_negatives)
    nonmated_sorted = np.sort(nonmated_best)[::-1]
    tpirs = []
    for fpir in fpirs:
        threshold = nonmated_sorted[max(int(len(nonmated_sorted) * fpir) - 1, 0)]
        tpirs.append(np.mean((positives > best_negatives) & (positives > threshold)))
    return top1 / len(positives), top5 / len(positives), np.array(tpirs)


def test_identification_matches_reference_loops():
    rng = np.random.default_rng(5)
    gallery_1, gallery_2 = rng.normal(size=(15, 16)), rng.normal(size=(12, 16))
    subjects_1, subjects_2 = np.arange(15), np.arange(100, 112)
    probe_subjects = rng.choice(np.r_[subjects_1, subjects_2], 90)
    all_gallery = np.r_[gallery_1, gallery_2]
    all_subjects = np.r_[subjects_1, subjects_2]
    probes = all_gallery[np.searchsorted(all_subjects, probe_subjects)] + rng.normal(0, 1.2, (90, 16))
    tensor = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    result = identification_metrics(tensor(probes), probe_subjects,
                                     {"G1": (tensor(gallery_1), subjects_1), "G2": (tensor(gallery_2), subjects_2)})
    tpirs = []
    for name, features, subjects in (("G1", gallery_1, subjects_1), ("G2", gallery_2, subjects_2)):
        top1, top5, tpir = reference_style_one_to_n(probes @ features.T, probe_subjects, subjects, FPIR_GRID)
        assert result[name]["top_k"][1] == pytest.approx(top1)
        assert result[name]["top_k"][5] == pytest.approx(top5)
        np.testing.assert_allclose(result[name]["tpir"], tpir)
        tpirs.append(tpir)
    np.testing.assert_allclose(result["mean_tpir"], np.mean(tpirs, axis=0))
    top1, top5, _ = reference_style_one_to_n(probes @ all_gallery.T, probe_subjects, all_subjects, [])
    assert result["merged"]["top_k"][1] == pytest.approx(top1)
    assert result["merged"]["top_k"][5] == pytest.approx(top5)


def test_gallery_without_mated_probes_is_an_error():
    with pytest.raises(ValueError, match="no probe has a mate"):
        open_set_metrics(torch.rand(3, 2), np.array([5, 6, 7]), np.array([1, 2]), "G1")


def test_gallery_with_several_templates_per_subject():
    similarity = torch.tensor([[0.3, 0.8, 0.5],      # subject 1: best mated 0.8, nothing above
                               [0.6, 0.1, 0.55],     # subject 2: outranked by 0.6 (subject 1)
                               [0.2, 0.3, 0.4]])     # non-mated, best 0.4
    result = open_set_metrics(similarity, np.array([1, 2, 9]), np.array([1, 1, 2]), "G",
                              fpir_grid=np.array([1.0]), ranks=(1, 2))
    assert result["top_k"] == {1: 0.5, 2: 1.0}
    assert result["threshold"] == [pytest.approx(0.4)] and result["tpir"] == [0.5]


def report_counts(impostor_pairs, nonmated_probes, gallery_sizes):
    galleries = {f"G{i + 1}": {"templates": size, "mated_probes": 10, "nonmated_probes": nonmated}
                 for i, (size, nonmated) in enumerate(zip(gallery_sizes, nonmated_probes))}
    return {"genuine_pairs": 40, "impostor_pairs": impostor_pairs, "probes": 99, "galleries": galleries}


def test_report_resolvability_needs_one_allowed_false_accept():
    from tools.ijbc_eval.compat_report import resolvable_metrics
    # 10,000 impostors: FAR 1e-4 allows exactly one false accept; 9,999 allow none
    assert resolvable_metrics(report_counts(10_000, [100, 100], [5, 5])) == {
        "TAR@FAR=1e-5": False, "TAR@FAR=1e-4": True, "TAR@FAR=1e-3": True, "TAR@FAR=1e-2": True,
        "1:N top-1": True, "1:N top-5": True, "TPIR@FPIR=1e-2": True}
    resolvable = resolvable_metrics(report_counts(9_999, [100, 99], [5, 5]))
    assert not resolvable["TAR@FAR=1e-4"] and resolvable["TAR@FAR=1e-3"]
    assert not resolvable["TPIR@FPIR=1e-2"]  # G2 has 99 non-mated probes: 0.99 allowed


def test_report_chance_levels_match_random_scores():
    from tools.ijbc_eval.compat_report import chance_levels
    chance = chance_levels(report_counts(1000, [50, 50], [4, 10]))
    assert chance["1:N top-1"] == pytest.approx((1 / 4 + 1 / 10) / 2)
    assert chance["1:N top-5"] == pytest.approx((1.0 + 5 / 10) / 2)   # top-5 of 4 templates: always
    assert chance["TPIR@FPIR=1e-2"] == pytest.approx((0.01 / 4 + 0.01 / 10) / 2)
    assert chance["TAR@FAR=1e-3"] == 1e-3
    # the same levels measured on random similarities (one gallery of 4, FPIR 0.1 from the grid)
    rng = np.random.default_rng(9)
    probes = 40_000
    subjects = np.where(rng.random(probes) < 0.5, rng.integers(0, 4, probes), 99)
    result = open_set_metrics(torch.tensor(rng.random((probes, 4))), subjects, np.arange(4), "G",
                              fpir_grid=np.array([0.1]), ranks=(1,))
    assert result["top_k"][1] == pytest.approx(1 / 4, abs=0.01)
    assert result["tpir"][0] == pytest.approx(0.1 / 4, abs=0.004)
