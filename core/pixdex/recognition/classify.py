"""Evaluate a trained run on labelled data, and predict labels for new images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pixdex.data.image_args import check_single_image, expand_inputs, is_single_image, nothing_read
from pixdex.data.sources import make_source
from pixdex.device import placement
from pixdex.errors import PixdexError
from pixdex.export.engine import engine_parts
from pixdex.pipeline.inference import check_tta, run_inference
from pixdex.pipeline.runs import LoadedRun, load_run
from pixdex.plugins import PluginSet
from pixdex.settings import DEFAULT_MAX_PIXELS


def require_classifier(run: LoadedRun, command: str) -> None:
    if not run.has_classifier:
        loss = run.manifest["config"]["loss"]["name"]
        raise PixdexError(
            f"{command}: run {run.path} was trained with the '{loss}' loss, which has no classifier; "
            f"classify by nearest neighbours instead: `pixdex index build {run.path} DATA -o INDEX` "
            f"then `pixdex predict INDEX IMAGE...`"
        )


def evaluate(
    run_dir: str | Path,
    data_spec: str,
    pset: PluginSet,
    runtime: dict[str, Any],
    *,
    split: str | None = None,
    labels: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    notify: Callable[[str], None] | None = None,
    tta: str = "none",
) -> dict[str, Any]:
    """Top-1/top-5 accuracy, per-class precision/recall/F1 and the confusion matrix on
    DATA's test split (or all of DATA, or ``split``). Labels are matched by class name.
    ``tta="flip"`` averages each image with its mirror image (recorded as ``tta``)."""
    from pixdex.data.datasets import evaluation_split, map_labels
    from pixdex.data.prepare import open_labelled
    from pixdex.recognition.metrics import classification_report

    run = load_run(run_dir, pset)
    require_classifier(run, "evaluate")
    check_tta(run, tta, notify)
    place = placement(runtime["device"], runtime["precision"], notify=notify)
    ds = open_labelled(data_spec, pset, labels)
    split_name = evaluation_split(ds, split)
    items = ds.items(split_name)
    if not items:
        raise PixdexError(f"{data_spec} has no images in its {split_name} split")
    targets = map_labels(items, run.classes)
    images = ds.as_tensors(split_name)[0] if hasattr(ds, "as_tensors") else None
    keys, opener = [k for k, _ in items], getattr(ds, "image", None)
    model, transform, runtime = engine_parts(
        run, runtime, place, keys=keys, opener=opener, max_pixels=max_pixels, notify=notify, tta=tta
    )
    source = make_source(
        keys,
        targets,
        transform,
        runtime=runtime,
        device=place.device,
        max_pixels=max_pixels,
        opener=opener,
        images=images,
    )
    out = run_inference(model, transform, source, place, tta=tta)
    skipped = list(ds.skipped) + out.skipped
    if len(out.indices) == 0:
        raise nothing_read(f"no image of {data_spec} ({split_name})", skipped)
    assert out.logits is not None
    k = min(5, out.logits.shape[1])
    topk = np.argsort(-out.logits, axis=1, kind="stable")[:, :k]
    report = classification_report(topk, np.asarray(targets)[out.indices], run.classes)
    report.update({"split": split_name, "data": data_spec, "run": str(run.path), "skipped": len(skipped), "tta": tta})
    report["_skipped_entries"] = skipped
    return report


def predict(
    run_dir: str | Path,
    inputs: list[str],
    pset: PluginSet,
    runtime: dict[str, Any],
    *,
    k: int = 5,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    notify: Callable[[str], None] | None = None,
    tta: str = "none",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Top-``k`` labels with probabilities for each image (files or folders); ``tta`` as
    for :func:`evaluate`, recorded in each row."""
    run = load_run(run_dir, pset)
    require_classifier(run, "predict")
    check_tta(run, tta, notify)
    paths, skipped = expand_inputs(inputs)
    if is_single_image(inputs, paths):
        check_single_image(paths[0], max_pixels)
    if not paths:
        raise PixdexError("no images found in " + ", ".join(inputs))
    place = placement(runtime["device"], runtime["precision"], notify=notify)
    model, transform, runtime = engine_parts(
        run, runtime, place, keys=paths, max_pixels=max_pixels, notify=notify, tta=tta
    )
    source = make_source(paths, None, transform, runtime=runtime, device=place.device, max_pixels=max_pixels)
    out = run_inference(model, transform, source, place, tta=tta)
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
        rows.append(
            {"path": paths[pos], "label": top[0]["label"], "probability": top[0]["probability"], "top": top, "tta": tta}
        )
    return rows, skipped
