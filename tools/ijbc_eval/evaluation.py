"""Self-test and cross-test on one IJB subset, from raw embeddings to metrics.

Cross-test (backward compatibility): in 1:1 the first template of every pair is described by
the old model and the second by the new one; in 1:N the galleries come from the old model and
the probes from the new one. Self-test is the same with old = new.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from tools.ijbc_eval.embed import ModelEmbeddings
from tools.ijbc_eval.identification import identification_metrics
from tools.ijbc_eval.pooling import Variant, template_features, template_rows
from tools.ijbc_eval.protocol import IdentificationProtocol, VerificationProtocol
from tools.ijbc_eval.verification import pair_scores, verification_metrics


def check_compatible_sizes(old: ModelEmbeddings, new: ModelEmbeddings) -> None:
    if old.num_features != new.num_features:
        raise ValueError(f"cross-test needs equal feature sizes: old model {old.path} gives "
                         f"{old.num_features}-d features, new model {new.path} gives "
                         f"{new.num_features}-d")


def model_templates(protocol: VerificationProtocol, model: ModelEmbeddings,
                    variant: Variant) -> Tuple[np.ndarray, torch.Tensor]:
    return template_features(model.embeddings, model.flip_embeddings, protocol.faceness, variant,
                             protocol.image_templates, protocol.image_medias)


def _query_and_reference_templates(protocol, new, old, variant):
    """(template ids, features for the new-model side, features for the old-model side)."""
    template_ids, new_features = model_templates(protocol, new, variant)
    if old is None or old.model_sha256 == new.model_sha256 and old.network == new.network:
        return template_ids, new_features, new_features
    check_compatible_sizes(old, new)
    _, old_features = model_templates(protocol, old, variant)
    return template_ids, new_features, old_features


def run_verification(protocol: VerificationProtocol, new: ModelEmbeddings,
                     old: Optional[ModelEmbeddings], variants: Sequence[Variant]):
    """({variant: metrics incl. 'roc'}, {variant: pair scores float32 [P]})."""
    metrics, scores = {}, {}
    # template features come in sorted template id order for every variant
    template_ids = np.unique(protocol.image_templates)
    first_rows = template_rows(template_ids, protocol.pair_templates[:, 0])
    second_rows = template_rows(template_ids, protocol.pair_templates[:, 1])
    for variant in variants:
        _, new_features, old_features = _query_and_reference_templates(protocol, new, old, variant)
        scores[variant.name] = pair_scores(old_features, new_features, first_rows, second_rows)
        metrics[variant.name] = verification_metrics(protocol.pair_labels, scores[variant.name])
    return metrics, scores


def run_identification(protocol: VerificationProtocol, identification: IdentificationProtocol,
                       new: ModelEmbeddings, old: Optional[ModelEmbeddings],
                       variants: Sequence[Variant]) -> Dict[str, dict]:
    """{variant: per-gallery open-set metrics, mean TPIR and merged-gallery top-k}."""
    results = {}
    for variant in variants:
        template_ids, new_features, old_features = _query_and_reference_templates(
            protocol, new, old, variant)
        probes = identification.probes
        probe_features = new_features[torch.from_numpy(template_rows(template_ids, probes.template_ids)).long()]
        galleries = {
            name: (old_features[torch.from_numpy(template_rows(template_ids, gallery.template_ids)).long()],
                   gallery.subject_ids)
            for name, gallery in identification.galleries.items()}
        results[variant.name] = identification_metrics(probe_features, probes.subject_ids, galleries)
    return results
