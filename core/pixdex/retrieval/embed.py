"""Batched embedding of an image collection, with the facts an index keeps per item.

Decoding runs in DataLoader workers, the transform and model on the chosen device;
results stream back in item order. Bad images and non-finite embeddings are skipped and
reported, never kept.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from pixdex.contracts import Dataset, Item
from pixdex.data.sources import make_source
from pixdex.device import Placement
from pixdex.errors import PixdexError
from pixdex.export.engine import engine_parts
from pixdex.pipeline.inference import forward_batches
from pixdex.pipeline.runs import LoadedRun
from pixdex.plugins import PluginSet
from pixdex.settings import DEFAULT_MAX_PIXELS


@dataclass
class Collection:
    """The items of DATA to embed, and how to open keys that are not file paths."""

    items: list[Item]
    dataset: Dataset | None
    skipped: list[dict[str, Any]] = field(default_factory=list)
    spec: str = ""  # the DATA argument, recorded for keys that only their dataset can open

    @property
    def opener(self) -> Any:
        return getattr(self.dataset, "image", None)


def collect(data_spec: str, pset: PluginSet, *, labels: str = "auto", split: str | None = None) -> Collection:
    """Every item of DATA (all splits unless ``split``), labels where DATA has them."""
    from pixdex.data.datasets import open_dataset

    ds = open_dataset(data_spec, pset.registry, labels=labels)
    if split is not None and split not in ds.splits():
        raise PixdexError(f"{data_spec} has no split '{split}' (it has: {', '.join(ds.splits())})")
    names = [split] if split else ds.splits()
    items: list[Item] = []
    for name in names:
        items.extend(ds.items(name))
    return Collection(items, ds, list(ds.skipped), absolute_spec(data_spec))


def absolute_spec(data_spec: str) -> str:
    """``idx:data/fm`` -> ``idx:/abs/data/fm``, so the spec still opens from another folder."""
    prefix, sep, rest = data_spec.partition(":")
    if sep and prefix.isidentifier() and len(prefix) > 1 and os.path.exists(rest):
        return f"{prefix}:{os.path.abspath(rest)}"
    return os.path.abspath(data_spec) if os.path.exists(data_spec) else data_spec


def file_facts(key: str, opener: Any = None) -> dict[str, Any]:
    """size, mtime and sha256 of a file (or of the decoded pixels of a dataset key)."""
    if os.path.isfile(key):
        digest = hashlib.sha256()
        try:
            with open(key, "rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
            st = os.stat(key)
        except OSError as exc:
            return {"size": None, "mtime": None, "sha256": None, "error": exc.strerror or str(exc)}
        return {"size": st.st_size, "mtime": round(st.st_mtime, 3), "sha256": digest.hexdigest()}
    if opener is not None:
        try:
            image = opener(key)
        except Exception as exc:  # reported by the embedding pass as a skip; here only facts fail
            return {"size": None, "mtime": None, "sha256": None, "error": str(exc)}
        return {"size": None, "mtime": None, "sha256": hashlib.sha256(image.tobytes()).hexdigest()}
    return {"size": None, "mtime": None, "sha256": None}


@dataclass
class Embedded:
    """Rows that were embedded: ``positions`` index the input keys."""

    embeddings: np.ndarray  # float32[M, D]
    positions: np.ndarray  # int64[M]
    skipped: list[dict[str, Any]]


def embed_keys(
    run: LoadedRun,
    keys: Sequence[str],
    runtime: dict[str, Any],
    place: Placement,
    *,
    opener: Any = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
    desc: str = "embedding",
    notify: Callable[[str], None] | None = None,
) -> Embedded:
    """Embed ``keys`` in order; every readable image exactly once (with PyTorch or, for
    ``runtime["engine"] = "onnx"``, the model's ONNX export), with the run's test-time
    augmentation (``run.tta``)."""
    model, transform, runtime = engine_parts(
        run, runtime, place, keys=keys, opener=opener, max_pixels=max_pixels, notify=notify, tta=run.tta
    )
    source = make_source(
        keys, None, transform, runtime=runtime, device=place.device, max_pixels=max_pixels, opener=opener
    )
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(keys), desc=desc, unit="img", file=sys.stderr, leave=False, dynamic_ncols=True)
    dim = int(run.pipeline.backbone.embed_dim)
    # filled in place: one matrix, never a list of batches and their concatenation; the
    # rows of skipped images are never written, so their pages are never touched
    emb_all = np.empty((len(keys), dim), dtype=np.float32)
    pos_all = np.empty(len(keys), dtype=np.int64)
    skipped: list[dict[str, Any]] = []
    filled = done = 0
    for emb, _, idx, _ in forward_batches(model, transform, source, place, tta=run.tta):
        emb = emb.float().cpu().numpy()
        finite = np.isfinite(emb).all(axis=1)
        for pos in idx[~torch.from_numpy(finite)].tolist():
            skipped.append({"path": keys[pos], "reason": "non-finite", "detail": "the model produced NaN or inf"})
        kept = int(finite.sum())
        emb_all[filled : filled + kept] = emb[finite]
        pos_all[filled : filled + kept] = idx.numpy()[finite]
        filled += kept
        if bar is not None:
            bar.update(len(idx) + (len(source.skipped) - done))
            done = len(source.skipped)
    if bar is not None:
        bar.close()
    return Embedded(emb_all[:filled], pos_all[:filled], list(source.skipped) + skipped)


def save_npy(writer: Any, name: str, array: np.ndarray) -> None:
    """Stream an array into a folder being committed (no in-memory copy of the file)."""
    with open(writer.path_for(name), "wb") as fh:
        np.save(fh, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)


def npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()
