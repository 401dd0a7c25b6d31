"""pixdex_losses: the built-in training losses.

``cross-entropy`` (a linear classifier), and three metric-learning losses whose embeddings
are compared by cosine: ``arcface`` (additive angular margin, Deng et al. 2019; it also
classifies), ``triplet`` (batch-hard triplets, Hermans et al. 2017) and ``supcon``
(supervised contrastive, Khosla et al. 2020). The last two ask the training loop for
P classes x K images per batch through ``.batch_sampler``.

Built in, but shaped exactly like a third-party plugin package: it talks to pixdex only
through :mod:`pixdex.hookspecs` and the ``register`` callable. This module holds only the
options and the registration (stdlib only); each loss lives in its own submodule, imported
by its factory, so ``pixdex --help`` stays fast.

A loss module maps ``(embeddings, labels) -> scalar``; its parameters (a classifier head,
class centres...) are saved as ``head.*`` in a run's weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pixdex.hookspecs import hookimpl
from pixdex.plugin_api import ConfigError

if TYPE_CHECKING:
    from pixdex.plugin_api import Register
    from pixdex_losses.arcface import ArcFace
    from pixdex_losses.cross_entropy import CrossEntropy
    from pixdex_losses.supcon import SupCon
    from pixdex_losses.triplet import BatchHardTriplet

__all__ = [
    "ArcFaceOptions",
    "CrossEntropyOptions",
    "SupConOptions",
    "TripletOptions",
    "make_arcface",
    "make_cross_entropy",
    "make_supcon",
    "make_triplet",
    "register_losses",
]


def _check_sizes(name: str, embed_dim: int, num_classes: int) -> None:
    """Shared by every loss: the context the core passes must describe a real problem."""
    if embed_dim < 1:
        raise ValueError(f"loss '{name}' needs embed_dim >= 1, got {embed_dim}")
    if num_classes < 1:
        raise ValueError(f"loss '{name}' needs at least one class, got num_classes={num_classes}")


@dataclass
class CrossEntropyOptions:
    """Options of the ``cross-entropy`` loss.

    ``label_smoothing`` in [0, 1): the share of each target spread uniformly over all
    classes (0 is plain cross-entropy).
    """

    label_smoothing: float = 0.0


def make_cross_entropy(options: CrossEntropyOptions | None, *, embed_dim: int, num_classes: int) -> CrossEntropy:
    """Factory for ``cross-entropy``: a linear classifier on the embeddings, trained with softmax cross-entropy."""
    options = options or CrossEntropyOptions()
    if not 0.0 <= options.label_smoothing < 1.0:
        raise ConfigError(
            f"loss 'cross-entropy' option 'label_smoothing' must be in [0, 1), got {options.label_smoothing}"
        )
    _check_sizes("cross-entropy", embed_dim, num_classes)
    from pixdex_losses.cross_entropy import CrossEntropy

    return CrossEntropy(embed_dim, num_classes, label_smoothing=options.label_smoothing)


def _check_number(
    name: str, key: str, value: float, *, low: float, low_open: bool = False, high: float | None = None
) -> None:
    """Refuse an option outside its range (NaN and infinities included) with a ConfigError."""
    too_low = value <= low if low_open else value < low
    if not math.isfinite(value) or too_low or (high is not None and value >= high):
        left = "(" if low_open else "["
        span = f"{left}{low:g}, {high:g})" if high is not None else f"{left}{low:g}, inf)"
        raise ConfigError(f"loss '{name}' option '{key}' must be in {span}, got {value}")


def _check_pk(name: str, classes_per_batch: int, images_per_class: int, num_classes: int) -> tuple[int, int]:
    """Validate a P x K batch request; return it with P capped at the number of classes.

    Both mining losses need at least two classes (for negatives) and two images per class
    (for positives) in every batch. P is capped rather than refused so the defaults work on
    a dataset with fewer than 16 classes: the batch then holds every class.
    """
    if classes_per_batch < 2:
        raise ConfigError(f"loss '{name}' option 'classes_per_batch' must be at least 2, got {classes_per_batch}")
    if images_per_class < 2:
        raise ConfigError(
            f"loss '{name}' option 'images_per_class' must be at least 2 (an anchor needs a "
            f"positive), got {images_per_class}"
        )
    if num_classes < 2:
        raise ConfigError(
            f"loss '{name}' needs at least 2 classes to contrast, got num_classes={num_classes}; "
            f"use 'cross-entropy' or add classes"
        )
    return min(classes_per_batch, num_classes), images_per_class


@dataclass
class ArcFaceOptions:
    """Options of the ``arcface`` loss (Deng et al. 2019).

    ``margin``: the additive angular margin m in radians, in [0, pi/2) (0 is a normalised
    softmax; the paper uses 0.5). ``scale``: s, the radius of the hypersphere the logits
    live on, > 0 (the paper uses 64 for millions of faces; 30 suits tens to thousands of
    classes). ``label_smoothing`` in [0, 1), as for ``cross-entropy``.
    """

    margin: float = 0.5
    scale: float = 30.0
    label_smoothing: float = 0.0


def make_arcface(options: ArcFaceOptions | None, *, embed_dim: int, num_classes: int) -> ArcFace:
    """Factory for ``arcface``: learnable class centres, cosine logits with an angular margin on the target."""
    options = options or ArcFaceOptions()
    # beyond pi/2 the margin makes every target logit negative: no longer a margin, just noise
    _check_number("arcface", "margin", options.margin, low=0.0, high=math.pi / 2)
    _check_number("arcface", "scale", options.scale, low=0.0, low_open=True)
    _check_number("arcface", "label_smoothing", options.label_smoothing, low=0.0, high=1.0)
    _check_sizes("arcface", embed_dim, num_classes)
    from pixdex_losses.arcface import ArcFace

    return ArcFace(
        embed_dim, num_classes, margin=options.margin, scale=options.scale, label_smoothing=options.label_smoothing
    )


@dataclass
class TripletOptions:
    """Options of the ``triplet`` loss (batch-hard mining, Hermans et al. 2017).

    ``margin`` >= 0: how much closer the hardest positive must be than the hardest
    negative. ``classes_per_batch`` (P, >= 2, capped at the number of classes) and
    ``images_per_class`` (K, >= 2): each training batch holds P classes x K images, so
    the batch size is P * K. ``distance``: "euclidean" (chord distance between
    L2-normalised embeddings, sqrt(2 - 2 cos), as in the paper) or "cosine" (1 - cos).
    """

    margin: float = 0.2
    classes_per_batch: int = 16
    images_per_class: int = 4
    distance: Literal["euclidean", "cosine"] = "euclidean"


def make_triplet(options: TripletOptions | None, *, embed_dim: int, num_classes: int) -> BatchHardTriplet:
    """Factory for ``triplet``: batch-hard triplet loss on normalised embeddings (no classifier)."""
    options = options or TripletOptions()
    _check_number("triplet", "margin", options.margin, low=0.0)
    _check_sizes("triplet", embed_dim, num_classes)
    p, k = _check_pk("triplet", options.classes_per_batch, options.images_per_class, num_classes)
    from pixdex_losses.triplet import BatchHardTriplet

    return BatchHardTriplet(margin=options.margin, classes_per_batch=p, images_per_class=k, distance=options.distance)


@dataclass
class SupConOptions:
    """Options of the ``supcon`` loss (supervised contrastive, Khosla et al. 2020).

    ``temperature`` > 0 divides the cosine similarities (smaller is sharper; the paper
    uses 0.1 for its best results). ``classes_per_batch`` (P, >= 2, capped at the number
    of classes) and ``images_per_class`` (K, >= 2) as for ``triplet``: every anchor then
    has K - 1 positives in its batch.
    """

    temperature: float = 0.1
    classes_per_batch: int = 16
    images_per_class: int = 4


def make_supcon(options: SupConOptions | None, *, embed_dim: int, num_classes: int) -> SupCon:
    """Factory for ``supcon``: supervised contrastive loss on normalised embeddings (no classifier)."""
    options = options or SupConOptions()
    _check_number("supcon", "temperature", options.temperature, low=0.0, low_open=True)
    _check_sizes("supcon", embed_dim, num_classes)
    p, k = _check_pk("supcon", options.classes_per_batch, options.images_per_class, num_classes)
    from pixdex_losses.supcon import SupCon

    return SupCon(temperature=options.temperature, classes_per_batch=p, images_per_class=k)


@hookimpl
def register_losses(register: Register) -> None:
    """Register the built-in losses."""
    register(
        "cross-entropy",
        make_cross_entropy,
        options=CrossEntropyOptions,
        description="linear classifier with softmax cross-entropy (optional label smoothing)",
    )
    register(
        "arcface",
        make_arcface,
        options=ArcFaceOptions,
        description="additive angular margin on learnable class centres (Deng et al. 2019); classifies; cosine",
    )
    register(
        "triplet",
        make_triplet,
        options=TripletOptions,
        description="batch-hard triplet loss on P x K batches (Hermans et al. 2017); cosine",
    )
    register(
        "supcon",
        make_supcon,
        options=SupConOptions,
        description="supervised contrastive loss on P x K batches (Khosla et al. 2020); cosine",
    )
