"""The Transform object shared by ``standard`` and ``augment``: per-image load, per-batch finish."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from pixdex_transforms.augment import AugmentParams, augment_before_normalise, erase_after_normalise

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


def match_channels(values: Sequence[float], in_chans: int, what: str) -> tuple[float, ...]:
    """Per-channel statistics fitted to ``in_chans``: 1 -> C replicates, C -> 1 averages."""
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    if in_chans == 1:
        return (sum(values) / len(values),)
    raise ValueError(f"data_config '{what}' has {len(values)} values, the input has {in_chans} channels")


class ImageTransform:
    """Turns PIL images into uint8 tensors (:meth:`load`) and batches into model input (:meth:`batch`).

    Holds only plain Python values (the per-device constants are a cache dropped when
    pickled), so it crosses into data-loader worker processes cheaply.
    """

    def __init__(
        self,
        *,
        in_chans: int,
        size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: str = "bilinear",
        crop_pct: float = 1.0,
        train: bool = False,
        augment: AugmentParams | None = None,
    ) -> None:
        if in_chans not in (1, 3):
            raise ValueError(f"transforms convert images to 1 or 3 channels, got in_chans={in_chans}")
        if interpolation not in _RESAMPLE:
            raise ValueError(f"unknown interpolation {interpolation!r}: use one of {', '.join(_RESAMPLE)}")
        if not 0.0 < crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        height, width = (int(s) for s in size)
        if height < 1 or width < 1:
            raise ValueError(f"input size must be positive, got {size}")
        self.in_chans = in_chans
        self.size = (height, width)
        self.mean = match_channels(mean, in_chans, "mean")
        self.std = match_channels(std, in_chans, "std")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"data_config 'std' must be positive, got {self.std}")
        self.interpolation = interpolation
        self.crop_pct = float(crop_pct)
        self.train = bool(train)
        self.augment = augment
        self._constants: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_data_config(
        cls, data_config: dict[str, Any], *, train: bool, interpolation: str = "", augment: AugmentParams | None = None
    ) -> ImageTransform:
        """Build from a backbone's ``data_config``; a non-empty ``interpolation`` overrides its own."""
        in_chans, height, width = data_config["input_size"]
        return cls(
            in_chans=int(in_chans),
            size=(int(height), int(width)),
            mean=data_config["mean"],
            std=data_config["std"],
            interpolation=interpolation or data_config.get("interpolation", "bilinear"),
            crop_pct=float(data_config.get("crop_pct", 1.0)),
            train=train,
            augment=augment,
        )

    # -- per image, in data-loader workers -------------------------------------------------

    def load(self, image: Image.Image) -> torch.Tensor:
        """PIL image (any mode PIL converts; normally L or RGB) -> uint8[C, H, W].

        Converts to ``in_chans`` channels, resizes (keeping the aspect ratio) so the image
        just covers ``size / crop_pct``, then crops the centre ``size``.
        """
        mode = "L" if self.in_chans == 1 else "RGB"
        if image.mode != mode:
            image = image.convert(mode)
        image = self._resize(image)
        image = self._centre_crop(image)
        array = np.asarray(image, dtype=np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        # copy: np.asarray of a PIL image can be read-only, and torch warns on those
        return torch.from_numpy(array.transpose(2, 0, 1).copy())

    def _resize(self, image: Image.Image) -> Image.Image:
        height, width = self.size
        cover_h, cover_w = round(height / self.crop_pct), round(width / self.crop_pct)
        w, h = image.size
        # one scale for both sides keeps the aspect ratio; max() makes the image cover the
        # target in both directions (for a square target: the shorter side becomes cover_h)
        scale = max(cover_h / h, cover_w / w)
        new_h, new_w = max(cover_h, round(h * scale)), max(cover_w, round(w * scale))
        if (new_h, new_w) == (h, w):
            return image
        # reducing_gap: shrink big images by whole factors first (cheap box reduction),
        # then resample the last step with the chosen filter; within ~1 grey level of a
        # direct resize at a fraction of the cost for multi-megapixel photos
        return image.resize((new_w, new_h), resample=_RESAMPLE[self.interpolation], reducing_gap=3.0)

    def _centre_crop(self, image: Image.Image) -> Image.Image:
        height, width = self.size
        w, h = image.size
        if (h, w) == (height, width):
            return image
        # torchvision's rounding, so crops match its CenterCrop pixel for pixel
        top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
        return image.crop((left, top, left + width, top + height))

    # -- per batch, on the device --------------------------------------------------------

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        """uint8[B, C, H, W] on any device -> float32[B, C, H, W]: augmented when training, normalised."""
        if images.ndim != 4 or images.shape[1] != self.in_chans:
            raise ValueError(f"expected uint8[B, {self.in_chans}, H, W], got {list(images.shape)}")
        x = images.float().div_(255.0)
        # an empty batch (the tail of a sharded split) has nothing to augment; affine_grid refuses it
        augment = self.augment if x.shape[0] > 0 else None
        if augment is not None:
            x = augment_before_normalise(x, augment)
        mean, std = self._device_constants(x.device)
        x = (x - mean) / std
        if augment is not None:
            x = erase_after_normalise(x, augment)
        return x

    def _device_constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # built once per device: a fresh host-to-device copy every batch would cost a sync
        if device not in self._constants:
            shape = (1, self.in_chans, 1, 1)
            self._constants[device] = (
                torch.tensor(self.mean, dtype=torch.float32, device=device).view(shape),
                torch.tensor(self.std, dtype=torch.float32, device=device).view(shape),
            )
        return self._constants[device]

    # -- pickling and display -------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_constants"] = {}  # device tensors do not belong in a worker's copy
        return state

    def __repr__(self) -> str:
        kind = "augment" if self.augment is not None else "standard"
        return (
            f"ImageTransform({kind}, train={self.train}, in_chans={self.in_chans}, size={self.size}, "
            f"interpolation={self.interpolation!r}, crop_pct={self.crop_pct})"
        )
