"""Plain softmax classifier of the old softmax models (the reference's `cls_fc`): a Linear layer
with bias on the raw embeddings and cross-entropy. Replicated, not sharded: every rank holds
the whole layer, so its gradients must be averaged like the backbone's (wrap it in DDP)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SoftmaxHead(nn.Module):
    """forward(embeddings [B, d], labels [B]) -> mean cross-entropy; logits(e) -> [B, C]."""

    sharded = False

    def __init__(self, embedding_size: int, num_classes: int):
        super().__init__()
        if num_classes < 1 or embedding_size < 1:
            raise ValueError(f"SoftmaxHead needs positive embedding_size and num_classes, got "
                             f"{embedding_size} and {num_classes}")
        self.embedding_size = int(embedding_size)
        self.num_classes = int(num_classes)
        self.cls_fc = nn.Linear(self.embedding_size, self.num_classes, bias=True)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"SoftmaxHead expects embeddings [N, {self.embedding_size}], got "
                             f"{tuple(embeddings.shape)}")
        return self.cls_fc(embeddings)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # cross-entropy in float32 even when the logits come out of autocast in half precision
        return F.cross_entropy(self.logits(embeddings).float(), labels.reshape(-1).long())
