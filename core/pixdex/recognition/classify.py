"""Evaluate a trained run on labelled data, and predict labels for new images."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pixdex.contracts import Transform
from pixdex.device import Placement, placement
from pixdex.errors import PixdexError
from pixdex.data.images import DEFAULT_MAX_PIXELS
from pixdex.data.sources import FileSource, TensorSource
from pixdex.plugins import PluginSet
from pixdex.pipeline.runs import LoadedRun, load_run


@dataclass
class Outputs:
    """Per-item results of one inference pass, in source order."""

    indices: np.ndarray  # int64[N]: positions of the items that could be read
    embeddings: np.ndarray  # float32[N, D]
    logits: np.ndarray | None  # float32[N, C]
    skipped: list[dict[str, Any]] = field(default_factory=list)


def autocast(place: Placement) -> Any:
    if place.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=place.device_type, dtype=place.amp_dtype)


@torch.no_grad()
def run_inference(run: LoadedRun, source: TensorSource | FileSource, place: Placement, *,
                  want_logits: bool = True) -> Outputs:
    """Embeddings (and logits when the head classifies) for every readable item."""
    model = run.pipeline.to(place.device).eval()
    if place.channels_last:
        model = model.to(memory_format=torch.channels_last)
    idx_parts, emb_parts, logit_parts = [], [], []
    for x, _, idx in source.batches(0, shuffle=False):
        if place.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(place):
            emb = model(run.transform.batch(x))
            logits = model.logits(emb) if want_logits and model.has_classifier else None
        idx_parts.append(idx.numpy())
        emb_parts.append(emb.float().cpu().numpy())
        if logits is not None:
            logit_parts.append(logits.float().cpu().numpy())
    dim = int(run.pipeline.backbone.embed_dim)
    return Outputs(
        np.concatenate(idx_parts) if idx_parts else np.zeros(0, dtype=np.int64),
        np.concatenate(emb_parts) if emb_parts else np.zeros((0, dim), dtype=np.float32),
        np.concatenate(logit_parts) if logit_parts else None,
        list(source.skipped),
    )


def file_source(paths: list[str], transform: Transform, runtime: dict[str, Any], place: Placement,
                max_pixels: int, labels: list[int] | None = None, opener: Any = None) -> FileSource:
    return FileSource(paths, labels if labels is not None else [-1] * len(paths), transform,
                      batch_size=runtime["batch_size"], device=place.device, workers=runtime["workers"],
                      max_pixels=max_pixels, opener=opener)


def require_classifier(run: LoadedRun, command: str) -> None:
    if not run.has_classifier:
        loss = run.manifest["config"]["loss"]["name"]
        raise PixdexError(
            f"{command}: run {run.path} was trained with the '{loss}' loss, which has no classifier; "
            f"classify by nearest neighbours instead: `pixdex index build {run.path} DATA -o INDEX` "
            f"then `pixdex predict INDEX IMAGE...`"
        )


def evaluate(run_dir: str | Path, data_spec: str, pset: PluginSet, runtime: dict[str, Any], *,
             split: str | None = None, labels: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS,
             notify: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Top-1/top-5 accuracy, per-class precision/recall/F1 and the confusion matrix on
    DATA's test split (or all of DATA, or ``split``). Labels are matched by class name."""
    from pixdex.data.datasets import evaluation_split, map_labels
    from pixdex.recognition.metrics import classification_report
    from pixdex.data.prepare import open_labelled

    run = load_run(run_dir, pset)
    require_classifier(run, "evaluate")
    place = placement(runtime["device"], runtime["precision"], notify=notify)
    ds = open_labelled(data_spec, pset, labels)
    split_name = evaluation_split(ds, split)
    items = ds.items(split_name)
    if not items:
        raise PixdexError(f"{data_spec} has no images in its {split_name} split")
    targets = map_labels(items, run.classes)
    if hasattr(ds, "as_tensors"):
        images, _ = ds.as_tensors(split_name)
        source: TensorSource | FileSource = TensorSource(images, torch.tensor(targets), run.transform,
                                                         batch_size=runtime["batch_size"], device=place.device)
    else:
        source = file_source([k for k, _ in items], run.transform, runtime, place, max_pixels, targets,
                             opener=getattr(ds, "image", None))
    out = run_inference(run, source, place)
    skipped = list(ds.skipped) + out.skipped
    if len(out.indices) == 0:
        raise nothing_read(f"no image of {data_spec} ({split_name})", skipped)
    assert out.logits is not None
    k = min(5, out.logits.shape[1])
    topk = np.argsort(-out.logits, axis=1, kind="stable")[:, :k]
    report = classification_report(topk, np.asarray(targets)[out.indices], run.classes)
    report.update({"split": split_name, "data": data_spec, "run": str(run.path), "skipped": len(skipped)})
    report["_skipped_entries"] = skipped
    return report


def nothing_read(what: str, skipped: list[dict[str, Any]]) -> PixdexError:
    """The error when no image could be used, naming the first reason."""
    first = f"; first: {skipped[0]['path']}: {skipped[0]['reason']}" if skipped else ""
    return PixdexError(f"{what} could be read ({len(skipped)} skipped{first})")


def expand_inputs(inputs: list[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """Image files as given, folders listed recursively (symlink-loop safe)."""
    from pixdex.data.images import list_images

    paths: list[str] = []
    skipped: list[dict[str, Any]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found, skips = list_images(item)
            paths.extend(found)
            skipped.extend(skips)
        elif p.exists() or p.is_symlink():
            paths.append(item)
        else:
            raise PixdexError(f"{item} does not exist")
    return paths, skipped


def check_single_image(path: str, max_pixels: int) -> None:
    """Single-image work: a bad image is a clear error, not a skip."""
    from pixdex.data.images import ImageSkip, open_image

    try:
        open_image(path, max_pixels=max_pixels)
    except ImageSkip as exc:
        raise PixdexError(f"cannot read {path}: {exc.reason}" + (f" ({exc.detail})" if exc.detail else "")) from None


def predict(run_dir: str | Path, inputs: list[str], pset: PluginSet, runtime: dict[str, Any], *, k: int = 5,
            max_pixels: int = DEFAULT_MAX_PIXELS, notify: Callable[[str], None] | None = None
            ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Top-``k`` labels with probabilities for each image (files or folders)."""
    run = load_run(run_dir, pset)
    require_classifier(run, "predict")
    paths, skipped = expand_inputs(inputs)
    if len(inputs) == 1 and len(paths) == 1 and not Path(inputs[0]).is_dir():
        check_single_image(paths[0], max_pixels)
    if not paths:
        raise PixdexError("no images found in " + ", ".join(inputs))
    place = placement(runtime["device"], runtime["precision"], notify=notify)
    out = run_inference(run, file_source(paths, run.transform, runtime, place, max_pixels), place)
    skipped += out.skipped
    if len(out.indices) == 0:
        raise nothing_read(f"none of the {len(paths)} image(s)", skipped)
    assert out.logits is not None
    probs = torch.softmax(torch.from_numpy(out.logits), dim=1).numpy()
    k = min(k, probs.shape[1])
    rows = []
    for pos, p in zip(out.indices, probs):
        order = np.argsort(-p, kind="stable")[:k]
        top = [{"label": run.classes[i], "probability": float(p[i])} for i in order]
        rows.append({"path": paths[pos], "label": top[0]["label"], "probability": top[0]["probability"], "top": top})
    return rows, skipped


