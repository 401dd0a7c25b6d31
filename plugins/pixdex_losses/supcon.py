"""``supcon``: supervised contrastive loss.

Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu, Krishnan, "Supervised
Contrastive Learning", NeurIPS 2020 (arXiv:2004.11362), equation 2 (``L_out``: the
mean over positives taken outside the log, which the paper found to train better).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pixdex_losses._common import full_precision, pair_masks, zero_loss


class SupCon(nn.Module):
    """``L = mean_i -1/|P(i)| sum_{p in P(i)} log( exp(s_ip) / sum_{a != i} exp(s_ia) )``.

    ``s_ij = <z_i, z_j> / temperature`` with ``z = normalize(embeddings)``; ``P(i)`` are the
    other images of ``i``'s class in the batch. The mean runs over anchors with at least one
    positive; a batch with none gives a zero loss that still backpropagates.

    Unlike the authors' reference code there is no ``temperature / base_temperature``
    factor: the loss is equation 2 as printed. The same-class images it needs come from
    ``batch_sampler`` (P classes x K images). There is no classifier; ``metric`` is
    "cosine".
    """

    metric = "cosine"

    def __init__(self, *, temperature: float = 0.1, classes_per_batch: int = 16, images_per_class: int = 4) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.batch_sampler = ("pk", int(classes_per_batch), int(images_per_class))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Supervised contrastive loss; ``labels`` are int64 class indices [B]."""
        pos, _ = pair_masks(labels)
        has_pos = pos.any(1)
        if not bool(has_pos.any()):
            return zero_loss(embeddings)
        with full_precision(embeddings):
            z = F.normalize(embeddings.float(), dim=1)
            sim = (z @ z.T) / self.temperature
            eye = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
            # the anchor is not its own contrast: -inf drops it from the denominator. At
            # temperature 0.1, exp(sim) reaches e^10 and at 0.01 overflows float32; logsumexp
            # subtracts each row's maximum before exponentiating, so neither matters.
            sim = sim.masked_fill(eye, float("-inf"))
            log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
            # where(), not multiplication by the mask: the diagonal holds -inf and -inf * 0 is NaN
            pos_log_prob = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1)
            per_anchor = -pos_log_prob[has_pos] / pos[has_pos].sum(1)
            return per_anchor.mean()

    def extra_repr(self) -> str:
        _, p, k = self.batch_sampler
        return f"temperature={self.temperature}, batch_sampler=('pk', {p}, {k})"
