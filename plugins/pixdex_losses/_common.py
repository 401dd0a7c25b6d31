"""Helpers shared by the metric-learning losses (torch is imported here, never by ``__init__``)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def full_precision(like: torch.Tensor) -> Iterator[None]:
    """Run the enclosed ops in float32 even inside the training loop's autocast.

    The loop calls ``head(emb, y)`` under autocast (bf16 on CUDA). Casting the inputs with
    ``.float()`` is not enough: autocast would cast them back to bf16 for every matmul.
    Normalised dot products, ``exp(s / T)`` and margins of a few hundredths need the full
    mantissa, so autocast is switched off for the loss's own arithmetic.
    """
    with torch.autocast(device_type=like.device.type, enabled=False):
        yield


def pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bool[B, B] masks of positives (same label, not the anchor itself) and negatives."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def zero_loss(embeddings: torch.Tensor) -> torch.Tensor:
    """A float32 zero still attached to the graph, for batches with nothing to learn from.

    ``loss.backward()`` must keep working (and give zero gradients) when a batch happens
    to hold no usable anchor, so the zero is built from the embeddings, not a constant.
    """
    return embeddings.float().sum() * 0.0
