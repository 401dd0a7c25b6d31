"""The exported graph under ONNX Runtime against the PyTorch model, on real images.

Both see the same uint8 batches from pixdex's own loader (decoding, resize and crop done
once), so any difference is the graph's. Pass when every row's embedding has cosine
>= :data:`MIN_COSINE` with PyTorch's, every top-1 class is the same and, for an index, the
top-10 neighbours are the same ids rank by rank, except where two candidates' scores lie
within :data:`SCORE_TIE` (a swap between near-ties is not a difference).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from pixdex.export.graph import INPUT_NAME, DeployModule
from pixdex.pipeline.runs import LoadedRun

MIN_COSINE = 0.9999
SCORE_TIE = 1e-5
NEIGHBOURS = 10


@dataclass
class Probe:
    """The images the check runs on: keys for pixdex's loader, and how to open them."""

    keys: list[str]
    opener: Any = None
    source: str = ""  # what they are, for the report


def session(path: Path) -> Any:
    """An ONNX Runtime CPU session over ``path``."""
    from pixdex.optional import import_optional

    ort = import_optional("onnxruntime", "checking an ONNX export")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initialisers are not the user's concern
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return (a64 * b64).sum(1) / np.maximum(norms, 1e-30)


def same_neighbours(ids_a: np.ndarray, scores_a: np.ndarray, ids_b: np.ndarray, scores_b: np.ndarray) -> np.ndarray:
    """Per query row: the same ids at every rank, or a different id only where the two
    lists' scores at that rank are within :data:`SCORE_TIE` (near-ties may swap)."""
    differs = ids_a != ids_b
    tied = np.abs(scores_a - scores_b) <= SCORE_TIE
    return ~(differs & ~tied).any(axis=1)


def compare(
    run: LoadedRun,
    onnx_path: Path,
    probe: Probe,
    metric: str,
    *,
    index: Any = None,
    max_pixels: int,
    batch_size: int = 16,
    notify: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """Run both models on ``probe``; the figures, and ``passed``. Unreadable probe images
    are skipped, counted in the figures and reported through ``notify`` (path and reason)."""
    from pixdex.data.sources import make_source

    sess = session(onnx_path)
    names = [o.name for o in sess.get_outputs()]
    reference = DeployModule(run, metric).cpu().eval()
    runtime = {"batch_size": batch_size, "workers": 0}
    source = make_source(
        probe.keys, None, run.transform, runtime=runtime, device="cpu", max_pixels=max_pixels, opener=probe.opener
    )
    ours: dict[str, list[np.ndarray]] = {n: [] for n in names}
    theirs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    with torch.no_grad():
        for images, _, _ in source.batches(0, shuffle=False):
            for name, value in zip(names, sess.run(names, {INPUT_NAME: images.numpy()})):
                ours[name].append(np.asarray(value, dtype=np.float32))
            for name, value in zip(names, reference(images)):
                theirs[name].append(value.float().numpy())
    if source.skipped:
        lines = [f"  {skip['path']}: {skip['reason']}" for skip in source.skipped]
        notify("\n".join([f"pixdex: skipped {len(lines)} probe image(s):", *lines]))
    if not ours["embedding"]:
        return {"images": 0, "source": probe.source, "passed": False, "problems": ["no probe image could be read"]}
    got = {n: np.concatenate(v) for n, v in ours.items()}
    want = {n: np.concatenate(v) for n, v in theirs.items()}
    cosine = _row_cosine(got["embedding"], want["embedding"])
    report: dict[str, Any] = {
        "images": int(len(cosine)),
        "skipped": len(source.skipped),
        "source": probe.source,
        "min_cosine": float(cosine.min()),
        "max_abs_diff": {n: float(np.abs(got[n] - want[n]).max()) for n in names},
    }
    problems = []
    if cosine.min() < MIN_COSINE:
        problems.append(f"embedding cosine {cosine.min():.6f} < {MIN_COSINE} on {(cosine < MIN_COSINE).sum()} image(s)")
    if "logits" in got:
        agree = got["logits"].argmax(1) == want["logits"].argmax(1)
        report["top1_agreement"] = float(agree.mean())
        if not agree.all():
            problems.append(f"top-1 class differs on {(~agree).sum()} of {len(agree)} image(s)")
    if index is not None:
        report.update(_neighbour_agreement(index, got["embedding"], want["embedding"], problems))
    report["problems"] = problems
    report["passed"] = not problems
    return report


def _neighbour_agreement(index: Any, got: np.ndarray, want: np.ndarray, problems: list[str]) -> dict[str, Any]:
    k = min(NEIGHBOURS, int(index.manifest["count"]))
    ids_a, scores_a = index.ann.search(np.ascontiguousarray(got), k)
    ids_b, scores_b = index.ann.search(np.ascontiguousarray(want), k)
    same = same_neighbours(np.asarray(ids_a), np.asarray(scores_a), np.asarray(ids_b), np.asarray(scores_b))
    if not same.all():
        problems.append(f"top-{k} neighbours differ for {(~same).sum()} of {len(same)} queries")
    return {"neighbours_k": k, "neighbours_agreement": float(same.mean())}


def spread(keys: Sequence[str], limit: int) -> list[str]:
    """Up to ``limit`` keys spread evenly over ``keys`` (every class of a sorted folder)."""
    if len(keys) <= limit:
        return list(keys)
    step = len(keys) / limit
    return [keys[int(i * step)] for i in range(limit)]
