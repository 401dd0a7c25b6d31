"""pixdex_losses: the built-in training losses (``cross-entropy``; metric-learning losses to come).

Built in, but shaped exactly like a third-party plugin package: it talks to pixdex only
through :mod:`pixdex.hookspecs` and the ``register`` callable. This module holds only the
options and the registration (stdlib only); each loss lives in its own submodule, imported
by its factory, so ``pixdex --help`` stays fast.

A loss module maps ``(embeddings, labels) -> scalar``; its parameters (a classifier head,
class centres...) are saved as ``head.*`` in a run's weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pixdex.errors import ConfigError
from pixdex.hookspecs import hookimpl

if TYPE_CHECKING:
    from pixdex.components import Register
    from pixdex_losses.cross_entropy import CrossEntropy

__all__ = ["CrossEntropyOptions", "make_cross_entropy", "register_losses"]


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
        raise ConfigError(f"loss 'cross-entropy' option 'label_smoothing' must be in [0, 1), got {options.label_smoothing}")
    _check_sizes("cross-entropy", embed_dim, num_classes)
    from pixdex_losses.cross_entropy import CrossEntropy

    return CrossEntropy(embed_dim, num_classes, label_smoothing=options.label_smoothing)


@hookimpl
def register_losses(register: Register) -> None:
    """Register the built-in losses."""
    register("cross-entropy", make_cross_entropy, options=CrossEntropyOptions,
             description="linear classifier with softmax cross-entropy (optional label smoothing)")
