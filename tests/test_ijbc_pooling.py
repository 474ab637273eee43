"""Alignment, the N/D/F variants and template pooling of tools/ijbc_eval against loops and
skimage."""
import numpy as np
import pytest
from skimage.transform import SimilarityTransform

from tools.ijbc_eval.alignment import REFERENCE_POINTS, similarity_transforms, warp_face
from tools.ijbc_eval.pooling import Variant, all_variants, template_features, template_rows


def apply(transform, points):
    return points @ transform[:, :2].T + transform[:, 2]


def test_reference_points_map_onto_themselves():
    transform = similarity_transforms(REFERENCE_POINTS[None])[0]
    np.testing.assert_allclose(transform, [[1, 0, 0], [0, 1, 0]], atol=1e-9)


def test_rotated_scaled_points_map_back_to_reference():
    angle, scale, shift = 0.4, 2.3, np.array([31.0, -7.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = scale * REFERENCE_POINTS @ rotation.T + shift
    transform = similarity_transforms(moved[None])[0]
    np.testing.assert_allclose(apply(transform, moved), REFERENCE_POINTS, atol=1e-9)


def skimage_similarity(source, target=REFERENCE_POINTS):
    """skimage's least-squares similarity fit as a 2x3 matrix."""
    if hasattr(SimilarityTransform, "from_estimate"):   # skimage >= 0.26
        return SimilarityTransform.from_estimate(source, target).params[:2]
    fit = SimilarityTransform()
    fit.estimate(source, target)
    return fit.params[:2]


def test_least_squares_fit_matches_skimage():
    points = np.random.default_rng(0).uniform(0, 250, (6, 5, 2))
    transforms = similarity_transforms(points)
    for source, transform in zip(points, transforms):
        np.testing.assert_allclose(transform, skimage_similarity(source), atol=1e-9)


def test_degenerate_landmarks_are_an_error():
    points = np.stack([REFERENCE_POINTS, np.ones((5, 2))])
    with pytest.raises(ValueError, match="rows 2"):
        similarity_transforms(points)


def test_warp_gives_rgb_112_with_black_border():
    image = np.zeros((60, 60, 3), dtype=np.uint8)
    image[:, :] = (255, 0, 0)  # pure blue in OpenCV's BGR order
    shift_half = np.array([[1.0, 0, 26], [0, 1.0, 26]])  # the image covers 26..86 of the output
    aligned = warp_face(image, shift_half)
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
    assert tuple(aligned[56, 56]) == (0, 0, 255)
    assert tuple(aligned[2, 2]) == (0, 0, 0)
    assert warp_face(image[:, :, 0], shift_half).shape == (112, 112, 3)


def test_variant_names_round_trip_in_reference_order():
    names = [variant.name for variant in all_variants()]
    assert names[0] == "N1D1F1" and names[-1] == "N0D0F0" and len(set(names)) == 8
    assert Variant.parse("N0D1F1") == Variant(normalise=False, faceness_weight=True, flip_sum=True)
    with pytest.raises(ValueError, match="unknown variant"):
        Variant.parse("N2D0F0")


def naive_templates(embeddings, flips, faceness, variant, templates, medias):
    """Loops over templates and medias, as written in the reference."""
    features = embeddings + flips if variant.flip_sum else embeddings.copy()
    if variant.normalise:
        features = features / np.linalg.norm(features, axis=1, keepdims=True)
    if variant.faceness_weight:
        features = features * faceness[:, None]
    result = {}
    for template in np.unique(templates):
        rows = np.flatnonzero(templates == template)
        media_means = [features[rows[medias[rows] == media]].mean(axis=0)
                       for media in np.unique(medias[rows])]
        total = np.sum(media_means, axis=0)
        result[template] = total / np.linalg.norm(total)
    return result


@pytest.mark.parametrize("variant", all_variants(), ids=lambda v: v.name)
def test_template_pooling_matches_loops(variant):
    rng = np.random.default_rng(1)
    count = 300
    embeddings = rng.normal(size=(count, 8)).astype(np.float32)
    flips = rng.normal(size=(count, 8)).astype(np.float32)
    faceness = rng.uniform(0.1, 1, count).astype(np.float32)
    templates = rng.choice([3, 17, 40, 41, 900], count)
    medias = rng.integers(0, 12, count)   # medias shared across templates, as in IJB-C
    template_ids, features = template_features(embeddings, flips, faceness, variant, templates,
                                               medias, chunk_rows=64)
    expected = naive_templates(embeddings.astype(np.float64), flips, faceness, variant, templates, medias)
    assert template_ids.tolist() == sorted(expected)
    np.testing.assert_allclose(features.numpy(), np.stack([expected[t] for t in template_ids]), atol=1e-5)


def test_template_rows_lookup_and_unknown_ids():
    template_ids = np.array([4, 9, 200])
    assert template_rows(template_ids, np.array([200, 4, 9, 9])).tolist() == [2, 0, 1, 1]
    assert template_rows(np.array([-5, 1 << 40]), np.array([1 << 40, -5])).tolist() == [1, 0]
    with pytest.raises(ValueError, match="1 templates have no images"):
        template_rows(template_ids, np.array([4, 5]))
