"""Batched, on-device training augmentation: every sample gets its own random parameters.

All randomness comes from torch's global RNG on the batch's device (``torch.rand(...,
device=x.device)``), so ``torch.manual_seed`` makes it repeatable and no per-batch
host-to-device copy (and the stream sync it can cause) is needed. The work is a handful of
whole-batch tensor operations, never a Python loop over samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ITU-R 601 luma, the weights torchvision's rgb_to_grayscale uses
_LUMA = (0.299, 0.587, 0.114)
# random erasing: rectangle area (fraction of the image) and aspect ratio, torchvision's defaults
_ERASE_AREA = (0.02, 0.2)
_ERASE_RATIO = (0.3, 3.3)


@dataclass(frozen=True)
class AugmentParams:
    """Validated settings of the ``augment`` transform (see ``AugmentOptions``)."""

    scale: tuple[float, float] = (0.6, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    jitter: float = 0.1
    erasing: float = 0.25


def _uniform(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * u


def augment_before_normalise(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """Random resized crop, horizontal flip and colour jitter of float[B, C, H, W] in [0, 1]."""
    b, c, h, w = x.shape
    u = torch.rand(b, 8, device=x.device)  # one draw for the batch: columns are the parameters below
    x = _resized_crop_and_flip(x, u[:, :5], p)
    if p.jitter > 0:
        x = _colour_jitter(x, u[:, 5:8], p.jitter)
    return x


def _resized_crop_and_flip(x: torch.Tensor, u: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    b, _, h, w = x.shape
    area = _uniform(u[:, 0], *p.scale)
    ratio = torch.exp(_uniform(u[:, 1], math.log(p.ratio[0]), math.log(p.ratio[1])))
    # crop width and height as fractions of the image's; a crop that would not fit is
    # clamped to the image side (torchvision retries instead, which cannot be batched)
    crop_w = torch.sqrt(area * ratio * h / w).clamp(max=1.0)
    crop_h = torch.sqrt(area / ratio * w / h).clamp(max=1.0)
    centre_x = (2 * u[:, 2] - 1) * (1 - crop_w)  # in grid coordinates, where the image spans [-1, 1]
    centre_y = (2 * u[:, 3] - 1) * (1 - crop_h)
    flip = torch.where(u[:, 4] < p.flip, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = crop_w * flip  # a negative x scale mirrors the crop
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = crop_h
    theta[:, 1, 2] = centre_y
    grid = F.affine_grid(theta, [b, x.shape[1], h, w], align_corners=False)
    # crops lie inside the image, so the padding mode only matters at rounding error
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _colour_jitter(x: torch.Tensor, u: torch.Tensor, jitter: float) -> torch.Tensor:
    factors = _uniform(u, 1 - jitter, 1 + jitter).view(-1, 3, 1, 1, 1)
    brightness, contrast, saturation = factors[:, 0], factors[:, 1], factors[:, 2]
    x = (x * brightness).clamp_(0, 1)
    grey = _grey(x)
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean).clamp_(0, 1)
    if x.shape[1] == 3:  # saturation is meaningless for one channel
        grey = _grey(x)
        x = ((x - grey) * saturation + grey).clamp_(0, 1)
    return x


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x.mean(dim=1, keepdim=True)
    weights = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def erase_after_normalise(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """Random erasing of normalised float[B, C, H, W]: one rectangle per chosen sample, set to 0."""
    if p.erasing <= 0:
        return x
    b, _, h, w = x.shape
    u = torch.rand(b, 5, device=x.device)
    apply = u[:, 0] < p.erasing
    area = _uniform(u[:, 1], *_ERASE_AREA) * (h * w)
    ratio = torch.exp(_uniform(u[:, 2], math.log(_ERASE_RATIO[0]), math.log(_ERASE_RATIO[1])))
    eh = torch.sqrt(area / ratio).round().clamp(1, h)
    ew = torch.sqrt(area * ratio).round().clamp(1, w)
    top = torch.floor(u[:, 3] * (h - eh + 1)).view(b, 1, 1)
    left = torch.floor(u[:, 4] * (w - ew + 1)).view(b, 1, 1)
    rows = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
    cols = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
    inside = (rows >= top) & (rows < top + eh.view(b, 1, 1)) & (cols >= left) & (cols < left + ew.view(b, 1, 1))
    mask = (inside & apply.view(b, 1, 1)).unsqueeze(1)  # [B, 1, H, W], broadcast over channels
    # 0 after normalisation is the dataset's mean colour, as in torchvision's RandomErasing
    return x.masked_fill(mask, 0.0)
