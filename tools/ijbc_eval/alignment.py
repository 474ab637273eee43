"""Face alignment of IJB loose crops: a least-squares similarity transform (Umeyama 1991) from
the 5 detected landmarks to the ArcFace reference points, then a 112x112 warp."""
from __future__ import annotations

import cv2
import numpy as np

ALIGNED_SIZE = 112
# ArcFace 112x112 reference: left eye, right eye, nose, left mouth corner, right mouth corner
REFERENCE_POINTS = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def similarity_transforms(source_points: np.ndarray,
                          target_points: np.ndarray = REFERENCE_POINTS) -> np.ndarray:
    """[N, 2, 3] affine matrices of the similarity transforms (scale, rotation, translation)
    mapping each source point set [N, K, 2] onto `target_points` [K, 2] in the least-squares
    sense (Umeyama, eqs. 34-43), for all N sets at once.

    Raises ValueError (with the row numbers) when a point set has no spread."""
    source = np.asarray(source_points, dtype=np.float64)
    target = np.asarray(target_points, dtype=np.float64)
    source_mean = source.mean(axis=1)                                 # [N, 2]
    target_mean = target.mean(axis=0)                                 # [2]
    source_centered = source - source_mean[:, None, :]
    target_centered = target - target_mean
    source_variance = np.square(source_centered).sum(axis=(1, 2)) / source.shape[1]
    degenerate = np.flatnonzero(~(source_variance > 1e-12))
    if degenerate.size:
        raise ValueError(f"{degenerate.size} landmark sets have all points equal (rows "
                         f"{', '.join(str(r + 1) for r in degenerate[:5])})")
    covariance = np.einsum("ki,nkj->nij", target_centered, source_centered) / source.shape[1]
    left, singular, right = np.linalg.svd(covariance)
    # a reflection would fit better for mirrored points; Umeyama keeps a proper rotation
    reflection = np.sign(np.linalg.det(left) * np.linalg.det(right))
    reflection[reflection == 0] = 1.0
    correction = np.ones((source.shape[0], 2))
    correction[:, 1] = reflection
    rotation = np.einsum("nij,nj,njk->nik", left, correction, right)
    scale = (singular * correction).sum(axis=1) / source_variance
    translation = target_mean - scale[:, None] * np.einsum("nij,nj->ni", rotation, source_mean)
    return np.concatenate([scale[:, None, None] * rotation, translation[:, :, None]], axis=2)


def warp_face(image_bgr: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Aligned RGB uint8 [112, 112, 3] from a BGR (or grey) loose crop and its 2x3 transform."""
    aligned = cv2.warpAffine(image_bgr, transform, (ALIGNED_SIZE, ALIGNED_SIZE), borderValue=0.0)
    if aligned.ndim == 2:
        return np.repeat(aligned[:, :, None], 3, axis=2)
    return cv2.cvtColor(aligned, cv2.COLOR_BGR2RGB)
