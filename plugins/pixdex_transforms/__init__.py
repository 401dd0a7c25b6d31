"""pixdex_transforms: the built-in ``standard`` and ``augment`` image transforms.

Built in, but shaped exactly like a third-party plugin package: it talks to pixdex only
through :mod:`pixdex.hookspecs` and the ``register`` callable. This module holds only the
options and the registration (stdlib only); torch is imported by the factories, so
``pixdex --help`` stays fast.

Both transforms share one split of the work:

* ``load`` (per image, in data-loader workers): channel conversion, resize so the image
  covers ``input_size / crop_pct``, centre crop. Deterministic, the same for train and eval.
* ``batch`` (per batch, on the device): for ``augment`` in training, random resized crop,
  horizontal flip, colour jitter and random erasing, drawn from torch's global RNG (so
  ``torch.manual_seed`` makes a run repeatable); then normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pixdex.hookspecs import hookimpl
from pixdex.plugin_api import ConfigError

if TYPE_CHECKING:
    from pixdex.plugin_api import Register
    from pixdex_transforms.transform import ImageTransform

__all__ = [
    "INTERPOLATIONS",
    "StandardOptions",
    "AugmentOptions",
    "make_standard",
    "make_augment",
    "register_transforms",
]

# the resampling filters PIL offers (timm's data configs name them the same way)
INTERPOLATIONS: tuple[str, ...] = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


@dataclass
class StandardOptions:
    """Options of the ``standard`` transform.

    ``interpolation`` overrides the backbone's resampling filter for the resize in
    ``load`` (one of nearest, bilinear, bicubic, box, hamming, lanczos); empty keeps the
    backbone's.
    """

    interpolation: str = ""


@dataclass
class AugmentOptions:
    """Options of the ``augment`` transform (augmentation applies only when training).

    ``scale``: area range of the random resized crop, as fractions of the image;
    ``ratio``: its aspect-ratio range (width / height); ``flip``: probability of a
    horizontal flip; ``jitter``: brightness, contrast and saturation factors are drawn from
    [1 - jitter, 1 + jitter] (0 turns jitter off); ``erasing``: probability of erasing one
    rectangle of 2% to 20% of the image (set to the mean colour); ``interpolation`` as for
    ``standard``.
    """

    scale: list[float] = field(default_factory=lambda: [0.6, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    flip: float = 0.5
    jitter: float = 0.1
    erasing: float = 0.25
    interpolation: str = ""


def _check_interpolation(kind: str, value: str) -> None:
    if value and value not in INTERPOLATIONS:
        raise ConfigError(
            f"transform '{kind}' option 'interpolation' must be empty or one of "
            f"{', '.join(INTERPOLATIONS)}, got {value!r}"
        )


def _check_augment(options: AugmentOptions) -> None:
    problems = []
    scale, ratio = options.scale, options.ratio
    if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
        problems.append(f"'scale' must be [low, high] with 0 < low <= high <= 1, got {scale}")
    if len(ratio) != 2 or not 0.0 < ratio[0] <= ratio[1]:
        problems.append(f"'ratio' must be [low, high] with 0 < low <= high, got {ratio}")
    for key in ("flip", "erasing"):
        if not 0.0 <= getattr(options, key) <= 1.0:
            problems.append(f"'{key}' must be a probability in [0, 1], got {getattr(options, key)}")
    if not 0.0 <= options.jitter < 1.0:
        problems.append(f"'jitter' must be in [0, 1), got {options.jitter}")
    if problems:
        raise ConfigError("transform 'augment' option " + "; ".join(problems))


def make_standard(options: StandardOptions | None, *, train: bool, data_config: dict[str, Any]) -> ImageTransform:
    """Factory for ``standard``: resize, centre crop and normalise; never augments."""
    options = options or StandardOptions()
    _check_interpolation("standard", options.interpolation)
    from pixdex_transforms.transform import ImageTransform

    return ImageTransform.from_data_config(data_config, train=train, interpolation=options.interpolation)


def make_augment(options: AugmentOptions | None, *, train: bool, data_config: dict[str, Any]) -> ImageTransform:
    """Factory for ``augment``: like ``standard``, plus batched on-device augmentation when ``train``."""
    options = options or AugmentOptions()
    _check_interpolation("augment", options.interpolation)
    _check_augment(options)
    from pixdex_transforms.augment import AugmentParams
    from pixdex_transforms.transform import ImageTransform

    # with train=False there is no augmentation object at all, so the code path (and the
    # output, bit for bit) is exactly that of `standard`
    params = None
    if train:
        params = AugmentParams(
            scale=tuple(options.scale),
            ratio=tuple(options.ratio),
            flip=options.flip,
            jitter=options.jitter,
            erasing=options.erasing,
        )
    return ImageTransform.from_data_config(
        data_config, train=train, interpolation=options.interpolation, augment=params
    )


@hookimpl
def register_transforms(register: Register) -> None:
    """Register the ``standard`` and ``augment`` transforms."""
    register(
        "standard",
        make_standard,
        options=StandardOptions,
        description="resize, centre crop and normalise (no augmentation)",
    )
    register(
        "augment",
        make_augment,
        options=AugmentOptions,
        description="standard plus on-device random resized crop, flip, colour jitter and erasing when training",
    )
