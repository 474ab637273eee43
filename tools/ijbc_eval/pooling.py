"""Image features from raw embeddings (the N/D/F variants) and template pooling.

A variant name `N{0,1}D{0,1}F{0,1}` says whether each image embedding is L2-normalised (N),
weighted by the detector's faceness score (D), and summed with the embedding of the flipped
image (F). The reference default is N0D1F1: the un-normalised norm acts as a quality weight.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from utils.common.torch_threads import single_torch_thread

DEFAULT_VARIANT = "N0D1F1"
LOOKUP_TABLE_LIMIT = 1 << 26
POOLING_CHUNK_ROWS = 1 << 15


@dataclass(frozen=True)
class Variant:
    normalise: bool
    faceness_weight: bool
    flip_sum: bool

    @property
    def name(self) -> str:
        return f"N{int(self.normalise)}D{int(self.faceness_weight)}F{int(self.flip_sum)}"

    @classmethod
    def parse(cls, name: str) -> "Variant":
        valid = [variant.name for variant in all_variants()]
        if name not in valid:
            raise ValueError(f"unknown variant {name!r}: expected one of {', '.join(valid)}")
        return cls(name[1] == "1", name[3] == "1", name[5] == "1")


def all_variants() -> List[Variant]:
    """The eight variants in the reference's order (N1D1F1, N1D1F0, ..., N0D0F0)."""
    return [Variant(*flags) for flags in itertools.product((True, False), repeat=3)]


def image_features(embeddings: np.ndarray, flip_embeddings: np.ndarray, faceness: np.ndarray,
                   variant: Variant) -> torch.Tensor:
    """[N, d] float32 image features of one variant from f(img) and f(flip(img)) (a new tensor)."""
    features = torch.from_numpy(np.asarray(embeddings, dtype=np.float32))
    if variant.flip_sum:
        features = features + torch.from_numpy(np.asarray(flip_embeddings, dtype=np.float32))
    else:
        features = features.clone()
    if variant.normalise:
        features = F.normalize(features, dim=1)
    if variant.faceness_weight:
        features.mul_(torch.from_numpy(np.asarray(faceness, dtype=np.float32))[:, None])
    return features


def media_weights(image_templates: np.ndarray, image_medias: np.ndarray):
    """(sorted template ids [T], template row of each image [N], 1 / size of the image's
    (template, media) group [N]): summing weighted images gives the sum of media averages."""
    template_ids, template_of_image = np.unique(image_templates, return_inverse=True)
    _, media_of_image = np.unique(image_medias, return_inverse=True)
    group_key = template_of_image.astype(np.int64) * (int(media_of_image.max()) + 1) + media_of_image
    _, group_of_image, group_sizes = np.unique(group_key, return_inverse=True, return_counts=True)
    return template_ids, template_of_image.reshape(-1), 1.0 / group_sizes[group_of_image.reshape(-1)]


def template_features(embeddings: np.ndarray, flip_embeddings: np.ndarray, faceness: np.ndarray,
                      variant: Variant, image_templates: np.ndarray, image_medias: np.ndarray,
                      chunk_rows: int = POOLING_CHUNK_ROWS) -> Tuple[np.ndarray, torch.Tensor]:
    """(sorted template ids [T], L2-normalised template features [T, d]) of one variant.

    Within a template the images of one media (frames of a video, or a single still) are
    averaged; the template is the sum of its media averages, then L2-normalised. Images are
    processed in chunks, so no [N, d] feature matrix is ever held."""
    template_ids, template_of_image, weights = media_weights(image_templates, image_medias)
    # faceness and the media weight are both per-image factors applied after normalising
    scale = torch.from_numpy((weights * faceness if variant.faceness_weight else weights).astype(np.float32))
    unweighted = dataclasses.replace(variant, faceness_weight=False)
    template_sums = torch.zeros(len(template_ids), np.shape(embeddings)[1], dtype=torch.float32)
    with single_torch_thread():      # row-by-row index_add_ on chunks: threads only synchronise
        for start in range(0, len(template_of_image), chunk_rows):
            rows = slice(start, start + chunk_rows)
            features = image_features(embeddings[rows], flip_embeddings[rows], faceness[rows], unweighted)
            features.mul_(scale[rows, None])
            template_sums.index_add_(0, torch.from_numpy(template_of_image[rows]), features)
    return template_ids, F.normalize(template_sums, dim=1)


def template_rows(template_ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row of each wanted template id in the sorted `template_ids` (all must be present)."""
    wanted = np.asarray(wanted)
    if (template_ids[0] >= 0 and template_ids[-1] < LOOKUP_TABLE_LIMIT and wanted.size
            and wanted.min() >= 0 and wanted.max() <= template_ids[-1]):
        # ids are small integers (IJB): one table lookup per pair instead of a binary search
        table = np.full(int(template_ids[-1]) + 1, -1, dtype=np.int32)
        table[template_ids] = np.arange(len(template_ids), dtype=np.int32)
        rows = table[wanted]
        missing = rows < 0
    else:
        rows = np.minimum(np.searchsorted(template_ids, wanted), len(template_ids) - 1)
        missing = template_ids[rows] != wanted
    if missing.any():
        raise ValueError(f"{int(missing.sum())} templates have no images, e.g. "
                         f"{np.asarray(wanted)[missing][:5].tolist()}")
    return rows
