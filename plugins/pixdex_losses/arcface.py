"""``arcface``: additive angular margin loss.

Deng, Guo, Xue, Zafeiriou, "ArcFace: Additive Angular Margin Loss for Deep Face
Recognition", CVPR 2019 (arXiv:1801.07698). The numerically safe form with the
``th``/``mm`` fallback follows the authors' insightface implementation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pixdex_losses._common import full_precision


class ArcFace(nn.Module):
    """Softmax cross-entropy over ``s * cos`` with the target angle widened by ``m``.

    With ``cos_j = <normalize(e), normalize(W_j)>`` and ``theta_y = arccos(cos_y)``, the
    target logit is ``s * cos(theta_y + m)`` and every other logit ``s * cos_j``. When
    ``theta_y + m > pi`` the cosine stops decreasing in ``theta`` (it would *reward* moving
    away from the centre), so past that point the target logit is ``s * (cos_y - m*sin(m))``
    instead, which keeps the penalty monotonic (insightface's ``th``/``mm`` trick).

    ``weight`` (float[num_classes, D]) holds the learnable class centres; only their
    direction matters. ``.logits`` is ``s * cos`` without the margin, so a trained run
    predicts labels by nearest centre. Embeddings are compared by angle: ``metric`` is
    "cosine".
    """

    metric = "cosine"

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        *,
        margin: float = 0.5,
        scale: float = 30.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.xavier_uniform_(self.weight)  # insightface's initialisation; the scale is irrelevant after normalising
        self.margin = float(margin)
        self.scale = float(scale)
        self.label_smoothing = float(label_smoothing)
        # cos(theta + m) = cos*cos(m) - sin*sin(m); past theta = pi - m (cos < th) use cos - mm
        self._cos_m, self._sin_m = math.cos(self.margin), math.sin(self.margin)
        self._th = math.cos(math.pi - self.margin)
        self._mm = math.sin(math.pi - self.margin) * self.margin  # == m * sin(m)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """float[B, D] -> float32[B, num_classes]: cosine of each embedding to each class centre."""
        with full_precision(embeddings):
            e = F.normalize(embeddings.float(), dim=1)
            w = F.normalize(self.weight.float(), dim=1)
            # rounding can push |cos| a hair past 1, where sqrt(1 - cos^2) below is NaN
            return (e @ w.T).clamp(-1.0, 1.0)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """float[B, D] -> float32[B, num_classes] class scores ``s * cos`` (no margin at inference)."""
        return self.scale * self.cosine(embeddings)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean margin cross-entropy over the batch; ``labels`` are int64 class indices [B]."""
        cos = self.cosine(embeddings)
        with full_precision(embeddings):
            target = cos.gather(1, labels[:, None])
            # the clamp keeps the gradient of sqrt finite when an embedding sits exactly on its
            # centre (sin = 0); it changes sin by at most 1e-6 there, where the loss is ~0 anyway
            sin = (1.0 - target * target).clamp_min(1e-12).sqrt()
            phi = target * self._cos_m - sin * self._sin_m
            phi = torch.where(target > self._th, phi, target - self._mm)
            logits = cos.scatter(1, labels[:, None], phi) * self.scale
            return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        return (
            f"classes={self.weight.shape[0]}, embed_dim={self.weight.shape[1]}, margin={self.margin}, "
            f"scale={self.scale}, label_smoothing={self.label_smoothing}"
        )
