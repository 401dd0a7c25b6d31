"""``cross-entropy``: a linear classifier head trained with softmax cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossEntropy(nn.Module):
    """``loss(embeddings, labels)`` = cross-entropy of ``self.fc(embeddings)`` against ``labels``.

    ``.logits`` makes a trained run able to predict labels. The embeddings feed a linear
    classifier, so their direction carries the class: ``metric`` is "cosine".
    """

    metric = "cosine"
    soft_targets = True  # forward also takes float[B, C] class probabilities (mixup, cutmix)

    def __init__(self, embed_dim: int, num_classes: int, *, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.fc = nn.Linear(embed_dim, num_classes)
        self.label_smoothing = float(label_smoothing)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """float[B, D] -> float[B, num_classes] class scores (before softmax)."""
        return self.fc(embeddings)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the batch; ``labels`` are int64 class indices [B], or
        float[B, C] class probabilities (soft targets)."""
        return F.cross_entropy(self.fc(embeddings), labels, label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"
