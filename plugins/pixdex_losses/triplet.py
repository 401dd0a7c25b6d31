"""``triplet``: triplet loss with batch-hard mining.

Hermans, Beyer, Leibe, "In Defense of the Triplet Loss for Person Re-Identification",
2017 (arXiv:1703.07737), section 2 ("Batch Hard"), on L2-normalised embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pixdex_losses._common import full_precision, pair_masks, zero_loss


class BatchHardTriplet(nn.Module):
    """``mean_a relu(max_p d(a, p) - min_n d(a, n) + margin)`` over the anchors of a batch.

    For each anchor ``a`` the hardest positive is the farthest image of its class (not
    itself) and the hardest negative the closest image of another class. Anchors without
    a positive or without a negative in the batch are left out of the mean; a batch with
    none left gives a zero loss that still backpropagates (to zero gradients).

    Embeddings are L2-normalised first, so ``d`` is the chord distance
    ``||za - zb|| = sqrt(2 - 2 cos)`` ("euclidean", in [0, 2]) or ``1 - cos`` ("cosine",
    in [0, 2]); either way only the angle matters and ``metric`` is "cosine".

    The loss needs several images per class in a batch, hence ``batch_sampler``: the
    training loop draws P classes and K images of each. There is no classifier.
    """

    metric = "cosine"

    def __init__(
        self,
        *,
        margin: float = 0.2,
        classes_per_batch: int = 16,
        images_per_class: int = 4,
        distance: str = "euclidean",
    ) -> None:
        super().__init__()
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
        self.margin = float(margin)
        self.distance = distance
        self.batch_sampler = ("pk", int(classes_per_batch), int(images_per_class))

    def distances(self, embeddings: torch.Tensor) -> torch.Tensor:
        """float[B, D] -> float32[B, B] pairwise distances of the normalised embeddings."""
        with full_precision(embeddings):
            z = F.normalize(embeddings.float(), dim=1)
            cos = (z @ z.T).clamp(-1.0, 1.0)
            if self.distance == "cosine":
                return 1.0 - cos
            # ||a - b||^2 = 2 - 2 cos for unit vectors: one matmul instead of a [B, B, D]
            # difference tensor. The floor keeps sqrt's gradient finite on the diagonal and
            # for duplicate images (d = 0), whose gradient is then 0 rather than NaN.
            return (2.0 - 2.0 * cos).clamp_min(1e-12).sqrt()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Batch-hard triplet loss; ``labels`` are int64 class indices [B]."""
        dist = self.distances(embeddings)
        pos, neg = pair_masks(labels)
        valid = pos.any(1) & neg.any(1)
        if not bool(valid.any()):
            return zero_loss(embeddings)
        with full_precision(embeddings):
            # masked entries can never win the max/min, so only real pairs get a gradient
            hardest_pos = dist.masked_fill(~pos, float("-inf")).amax(1)
            hardest_neg = dist.masked_fill(~neg, float("inf")).amin(1)
            losses = F.relu(hardest_pos[valid] - hardest_neg[valid] + self.margin)
            return losses.mean()

    def extra_repr(self) -> str:
        _, p, k = self.batch_sampler
        return f"margin={self.margin}, distance={self.distance!r}, batch_sampler=('pk', {p}, {k})"
