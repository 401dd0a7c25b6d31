"""Mixup and CutMix: blend pairs of training images and their labels, on the device.

They run in the training loop rather than in a transform because they change the labels:
a transform's ``.batch`` sees images only. The loop calls :meth:`BatchMixer.mix` on each
normalised batch; it returns the mixed images and soft targets ``float[B, C]``, which only
losses that declare ``.soft_targets = True`` accept (cross-entropy; the metric-learning
losses compare labels for equality, which a blend of two classes does not have).

* **Mixup** (Zhang et al., 2018): ``x = lam * x + (1 - lam) * x[perm]``, ``lam ~ Beta(a, a)``.
* **CutMix** (Yun et al., 2019): a box of area ``(1 - lam)`` of each image is pasted from
  its partner; ``lam`` is corrected to the box actually pasted after clipping at the border.

Random draws (whether to mix, which kind, ``lam``, the pairing, the box) come from torch's
CPU generator, which the loop seeds per (seed, epoch, process): a resumed run mixes exactly
as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class MixSettings:
    """``mixup_alpha`` / ``cutmix_alpha``: Beta parameters, 0 = off. ``prob``: chance that a
    batch is mixed at all; ``switch_prob``: with both on, the chance of CutMix over Mixup."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int, float]:
    """A box ``(top, bottom, left, right)`` covering about ``1 - lam`` of the image, centred
    at a random point and clipped at the border, and the ``lam`` it really leaves."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(torch.randint(height, ()).item()), int(torch.randint(width, ()).item())
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right, 1.0 - (bottom - top) * (right - left) / float(height * width)


class BatchMixer:
    """Mixes batches by :class:`MixSettings`; see the module docstring."""

    def __init__(self, settings: MixSettings, num_classes: int) -> None:
        self.settings, self.num_classes = settings, num_classes

    def _draw(self) -> tuple[str, float]:
        s = self.settings
        if float(torch.rand(())) >= s.prob:
            return "none", 1.0
        use_cutmix = s.cutmix_alpha > 0 and (s.mixup_alpha <= 0 or float(torch.rand(())) < s.switch_prob)
        alpha = s.cutmix_alpha if use_cutmix else s.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        return ("cutmix" if use_cutmix else "mixup"), lam

    def mix(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mixed images, soft targets float[B, C], dominant labels int64[B])``; the
        dominant label (the larger share) is what training accuracy is counted against."""
        kind, lam = self._draw()
        onehot = F.one_hot(labels, self.num_classes).float()
        if kind == "none":
            return images, onehot, labels
        perm = torch.randperm(images.shape[0]).to(images.device)
        if kind == "mixup":
            mixed = images * lam + images[perm] * (1.0 - lam)
        else:
            top, bottom, left, right, lam = cutmix_box(images.shape[-2], images.shape[-1], lam)
            mixed = images.clone()
            mixed[..., top:bottom, left:right] = images[perm][..., top:bottom, left:right]
        targets = onehot * lam + onehot[perm] * (1.0 - lam)
        dominant = labels if lam >= 0.5 else labels[perm]
        return mixed, targets, dominant
