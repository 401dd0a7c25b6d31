"""The one batched inference loop: embed (and score) every readable item of a source.

Shared by evaluate and predict (logits), embedding and search (embeddings) and training's
validation (loss and accuracy), so that placement, channels_last, autocast and the eval
transform are applied the same way everywhere.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch

from pixdex.contracts import Transform
from pixdex.data.sources import FileSource, TensorSource
from pixdex.device import Placement
from pixdex.errors import UsageError

if TYPE_CHECKING:
    from pixdex.pipeline.runs import LoadedRun


def autocast(place: Placement) -> Any:
    """Mixed precision for ``place`` (bf16/fp16), or a no-op context for fp32."""
    if place.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=place.device_type, dtype=place.amp_dtype)


def place_model(model: torch.nn.Module, place: Placement) -> torch.nn.Module:
    """``model`` on the placement's device, in eval mode, channels_last where that is used."""
    model = model.to(place.device).eval()
    if place.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def inference_runtime(
    runtime: dict[str, Any], pipeline: torch.nn.Module, transform: Transform, place: Placement
) -> dict[str, Any]:
    """``runtime`` with a concrete ``batch_size``: as set, or for ``auto`` the inference
    batch that fits the memory budget (:func:`pixdex.pipeline.memory.inference_batch`)."""
    if runtime["batch_size"] != "auto":
        return runtime
    from pixdex.pipeline.memory import inference_batch

    return {**runtime, "batch_size": inference_batch(place_model(pipeline, place), transform, place, runtime)}


BatchFn = Callable[[torch.Tensor, torch.Tensor], Any]
TTA_MODES = ("none", "flip", "crops", "flip-crops")
# the "crops" views: centre crops of 95% and 90% of each side (90% and 81% of the area),
# resized back to the input size; inside the crops of 80-100% of the area that the
# `strong` preset trains with (docs/recognition.md, "Test-time augmentation")
TTA_CROP_SIDES = (0.95, 0.9)


def centre_zoom(images: torch.Tensor, side: float) -> torch.Tensor:
    """The centre crop of ``side`` of each side of float[B, C, H, W], resized back to H x W
    (bilinear, as the training crops of the ``augment`` transform are resampled)."""
    theta = torch.zeros(images.shape[0], 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = side
    theta[:, 1, 1] = side
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def tta_views(images: torch.Tensor, tta: str) -> Iterator[torch.Tensor]:
    """The views ``tta`` averages over: the images, [their centre crops,] [and the mirror
    image of each of these]."""
    if tta not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {tta!r}; use one of {', '.join(TTA_MODES)}")
    scales = [images]
    if tta in ("crops", "flip-crops"):
        scales += [centre_zoom(images, side) for side in TTA_CROP_SIDES]
    for view in scales:
        yield view
        if tta in ("flip", "flip-crops"):
            yield view.flip(-1)


def embed_batch(model: torch.nn.Module, images: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """``model(images)``, or the mean of the embeddings of the views ``tta`` names: "flip"
    (the images and their mirror images, so an image and its mirror get the same
    embedding, and the same logits), "crops" (the images and their centre crops of
    ``TTA_CROP_SIDES``), "flip-crops" (both: six views)."""
    if tta == "none":
        return model(images)
    total, count = None, 0
    for view in tta_views(images, tta):
        emb = model(view)
        total = emb if total is None else total + emb
        count += 1
    assert total is not None
    return total / count


def check_tta(run: LoadedRun, tta: str, notify: Callable[[str], None] | None) -> None:
    """Refuse an unknown mode; warn when flips are averaged for a run that never saw a flip
    in training (orientation may be the class there: arrows, digits, left and right), or
    crops for a run that never saw a random crop (the zoomed views are images it never saw)."""
    if tta not in TTA_MODES:
        raise UsageError(f"unknown --tta {tta!r}; use one of {', '.join(TTA_MODES)}")
    if notify is None:
        return
    transform = run.manifest["config"].get("transform") or {}
    flip = transform.get("flip")
    if "flip" in tta and not flip:
        notify(
            f"pixdex: warning: {run.path} was trained without flips (transform.flip = {flip}); "
            f"--tta {tta} averages mirror images and can cost accuracy where orientation matters"
        )
    scale = transform.get("scale")
    if "crops" in tta and not (scale and float(scale[0]) < 1.0):
        notify(
            f"pixdex: warning: {run.path} was trained without random crops (transform.scale = {scale}); "
            f"--tta {tta} averages zoomed views it never saw and can cost accuracy"
        )


@torch.no_grad()
def forward_batches(
    model: torch.nn.Module,
    transform: Transform,
    source: TensorSource | FileSource,
    place: Placement,
    *,
    order: torch.Tensor | None = None,
    also: BatchFn | None = None,
    tta: str = "none",
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]]:
    """``(embeddings, labels, item indices, also(embeddings, labels))`` for every batch.

    ``model`` must already be placed (:func:`place_model`) and in eval mode. ``also`` runs
    inside the same autocast region as the forward pass (logits, a loss), so its numbers
    are those of one forward pass, not of a second one in another precision. ``tta``: see
    :func:`embed_batch`.
    """
    for x, y, idx in source.batches(0, shuffle=False, order=order):
        if place.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(place):
            emb = embed_batch(model, transform.batch(x), tta)
            extra = also(emb, y) if also is not None else None
        yield emb, y, idx, extra


@dataclass
class Outputs:
    """Per-item results of one inference pass, in source order."""

    indices: np.ndarray  # int64[N]: positions of the items that could be read
    embeddings: np.ndarray  # float32[N, D]
    logits: np.ndarray | None  # float32[N, C]
    skipped: list[dict[str, Any]] = field(default_factory=list)


def run_inference(
    pipeline: Any,
    transform: Transform,
    source: TensorSource | FileSource,
    place: Placement,
    *,
    want_logits: bool = True,
    tta: str = "none",
) -> Outputs:
    """Embeddings (and logits when the pipeline classifies) for every readable item;
    ``tta`` averages each image's embedding over the views :func:`embed_batch` names."""
    model = place_model(pipeline, place)

    def logits(emb: torch.Tensor, _: torch.Tensor) -> torch.Tensor | None:
        return model.logits(emb) if want_logits and model.has_classifier else None

    idx_parts, emb_parts, logit_parts = [], [], []
    for emb, _, idx, batch_logits in forward_batches(model, transform, source, place, also=logits, tta=tta):
        idx_parts.append(idx.numpy())
        emb_parts.append(emb.float().cpu().numpy())
        if batch_logits is not None:
            logit_parts.append(batch_logits.float().cpu().numpy())
    dim = int(pipeline.backbone.embed_dim)
    return Outputs(
        np.concatenate(idx_parts) if idx_parts else np.zeros(0, dtype=np.int64),
        np.concatenate(emb_parts) if emb_parts else np.zeros((0, dim), dtype=np.float32),
        np.concatenate(logit_parts) if logit_parts else None,
        list(source.skipped),
    )
