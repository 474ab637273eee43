"""Bootstrap over subjects: checked against a naive resampling loop that builds each replicate's
pair and probe lists explicitly and applies the evaluation's ROC and nearest-point functions."""
import numpy as np
import pytest

from tools.ijbc_eval.bootstrap import (bootstrap_tar_at_far, bootstrap_top1, identification_subjects, interval,
                                       pair_subjects, subject_counts)
from tools.ijbc_eval.verification import roc_curve, tar_at_far_nearest


def synthetic_protocol(rng, subjects=12, templates_per_subject=3):
    """Every template pair of a subject is genuine; a random half of the others are impostors.
    Scores rounded to 2 decimals so that ties occur."""
    template_subject = np.repeat(np.arange(subjects), templates_per_subject)
    first, second = np.triu_indices(len(template_subject), k=1)
    same = template_subject[first] == template_subject[second]
    keep = same | (rng.random(len(first)) < 0.5)
    first, second, same = first[keep], second[keep], same[keep]
    scores = np.round(np.where(same, rng.normal(0.6, 0.2, len(first)), rng.normal(0.2, 0.2, len(first))), 2)
    return np.column_stack([first + 100, second + 100]), same.astype(np.int64), scores, template_subject


def naive_tar(scores, labels, subject_of_side, counts, far):
    """Expand the replicate: a genuine pair of s k_s times, an impostor pair of s, t k_s * k_t times."""
    repeats = np.where(labels == 1, counts[subject_of_side[:, 0]],
                       counts[subject_of_side[:, 0]] * counts[subject_of_side[:, 1]]).astype(int)
    fpr, tpr, _ = roc_curve(np.repeat(labels, repeats), np.repeat(scores, repeats), drop_intermediate=False)
    return tar_at_far_nearest(fpr, tpr, [far])[0]


def test_components_of_the_genuine_graph_are_the_subjects():
    pairs = np.array([[1, 2], [3, 4], [4, 5], [1, 3], [2, 5], [6, 1]])
    labels = np.array([1, 1, 1, 0, 0, 0])
    sides, count = pair_subjects(pairs, labels)
    assert count == 3                       # {1, 2}, {3, 4, 5}, {6}
    assert sides[0, 0] == sides[0, 1] and sides[1, 0] == sides[1, 1] == sides[2, 1]
    assert len({sides[0, 0], sides[1, 0], sides[5, 0]}) == 3


def test_subject_counts_draw_every_row_with_replacement():
    counts = subject_counts(7, replicates=50, seed=3)
    assert counts.shape == (50, 7) and (counts.sum(axis=1) == 7).all()
    assert (counts >= 0).all() and (counts == 0).any() and (counts >= 2).any()
    assert np.array_equal(counts, subject_counts(7, replicates=50, seed=3))


@pytest.mark.parametrize("far", [0.01, 0.05, 0.2])
def test_unit_weights_give_the_nearest_point_of_the_full_roc(far):
    rng = np.random.default_rng(0)
    pairs, labels, scores, _ = synthetic_protocol(rng)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    expected = tar_at_far_nearest(fpr, tpr, [far])[0]
    sides, count = pair_subjects(pairs, labels)   # every subject drawn once: every pair weighs 1
    assert bootstrap_tar_at_far(scores, labels, sides, np.ones((1, count)), far)[0] == pytest.approx(expected)


@pytest.mark.parametrize("far", [0.01, 0.1])
def test_replicates_equal_a_naive_resampling_loop(far):
    rng = np.random.default_rng(1)
    pairs, labels, scores, template_subject = synthetic_protocol(rng)
    sides, count = pair_subjects(pairs, labels)
    assert count == 12
    counts = subject_counts(count, replicates=70, seed=5)   # more than one block of replicates
    values = bootstrap_tar_at_far(scores, labels, sides, counts, far)
    naive = [naive_tar(scores, labels, sides, row, far) for row in counts]
    assert np.allclose(values, naive)


def test_top1_replicates_equal_a_naive_resampling_loop():
    rng = np.random.default_rng(2)
    subjects = {"G1": rng.integers(10, 20, 40), "G2": rng.integers(10, 20, 30)}
    hits = {name: rng.random(len(s)) < 0.6 for name, s in subjects.items()}
    columns = identification_subjects(np.concatenate(list(subjects.values())))
    counts = subject_counts(len(columns), replicates=20, seed=0)
    values = bootstrap_top1(hits, subjects, counts, columns)
    for replicate, row in enumerate(counts):
        per_gallery = []
        for name in subjects:
            expanded = [hit for hit, subject in zip(hits[name], subjects[name])
                        for _ in range(int(row[columns[int(subject)]]))]
            per_gallery.append(np.mean(expanded))
        assert values[replicate] == pytest.approx(np.mean(per_gallery))
    unit = bootstrap_top1(hits, subjects, np.ones((1, len(columns))), columns)[0]
    assert unit == pytest.approx(np.mean([hits["G1"].mean(), hits["G2"].mean()]))


def test_interval_is_the_central_95_percent():
    # 0..999: the 2.5th percentile lies 0.025 * 999 = 24.975 along the sorted values
    assert interval(np.arange(1000.0)[::-1]) == pytest.approx((24.975, 974.025))
