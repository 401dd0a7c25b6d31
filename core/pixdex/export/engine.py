"""``runtime.engine``: inference through ONNX Runtime instead of PyTorch, on the CPU.

``torch`` runs the PyTorch model; ``onnx`` runs the model's export (made on first use,
verified like every `pixdex export`, into a user cache keyed by the weights' sha256 and the
metric: never into the run or index folder); ``auto`` (the default) is :func:`auto_engine`:
``onnx`` where it can run and was measured faster, else ``torch``.

The ONNX model plugs into the one inference loop (:mod:`pixdex.pipeline.inference`) as a
pair: :class:`OnnxModel` in place of the placed pipeline, and :class:`UInt8Transform`
in place of the eval transform (it decodes and resizes exactly as the model's transform
does, and leaves the uint8 batch for the graph, which normalises inside).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from pixdex.artifacts import atomic_write_bytes
from pixdex.cache_dir import cache_root
from pixdex.contracts import Transform
from pixdex.device import Placement
from pixdex.errors import ArtifactError, PixdexError, UsageError
from pixdex.pipeline.inference import inference_runtime, place_model
from pixdex.pipeline.runs import LoadedRun, model_fingerprint

ENGINES = ("auto", "torch", "onnx")
EXPORT_MODULES = ("onnx", "onnxscript", "onnxruntime")  # the [export] extra


def auto_engine(device_type: str, tta: str = "none") -> tuple[str, str]:
    """What ``engine = auto`` runs, and why (one clause for the notice line).

    ONNX Runtime on the CPU: bench/export.py measured it 2.2-5.5x PyTorch eager for every
    model and batch size it runs (docs/deploying.md). PyTorch everywhere else: on an
    accelerator, without the ``[export]`` extra, for test-time augmentation (the graph
    includes the classifier, TTA averages before it) and under torchrun (the processes of
    one machine would export into one cache entry at once)."""
    if device_type != "cpu":
        return "torch", f"the model runs on {device_type}"
    if tta != "none":
        return "torch", "test-time augmentation averages embeddings in PyTorch"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "torch", "torchrun processes run PyTorch"
    missing = [m for m in EXPORT_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return "torch", f"{', '.join(missing)} not installed (pip install 'pixdex[export]')"
    return "onnx", "ONNX Runtime on the CPU"


def resolve_engine(engine: str, device_type: str, tta: str = "none") -> str:
    """The engine to run: ``torch`` or ``onnx``. An explicit ``onnx`` is refused off the
    CPU and with ``tta``, in one line; ``auto`` is :func:`auto_engine`."""
    if engine not in ENGINES:
        raise UsageError(f"unknown engine '{engine}': use {', '.join(ENGINES)}")
    if engine == "auto":
        return auto_engine(device_type, tta)[0]
    if engine == "onnx":
        if device_type != "cpu":
            raise UsageError(
                f"--engine onnx runs on the CPU only (ONNX Runtime's CPU provider), not {device_type}; "
                "use --device cpu, or --engine torch on the accelerator"
            )
        if tta != "none":
            raise UsageError(
                "test-time augmentation (--tta, or an index built with it) averages embeddings in PyTorch: "
                "use --engine torch"
            )
        from pixdex.export.graph import require_export_libraries

        require_export_libraries()
    return engine


class UInt8Transform:
    """The model's eval transform for decoding and resizing (``load`` and every attribute),
    with a ``batch`` that keeps the uint8 images: the ONNX graph normalises them itself."""

    def __init__(self, transform: Any) -> None:
        self._inner = transform

    def __getattr__(self, name: str) -> Any:
        if name == "_inner":  # not set yet (while unpickling in a worker): no recursion
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers pickle the transform
        return {"_inner": self._inner}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._inner = state["_inner"]

    def load(self, image: Any) -> torch.Tensor:
        return self._inner.load(image)

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        return images


class _Backbone:
    def __init__(self, embed_dim: int) -> None:
        self.embed_dim = embed_dim


class OnnxModel:
    """An ONNX Runtime session that answers like a placed pixdex pipeline: called on a
    uint8 batch it returns the raw embeddings; :meth:`logits` gives the logits of the batch
    it just ran (the graph computes both in one pass)."""

    def __init__(self, session: Any, embed_dim: int) -> None:
        self.session = session
        self.names = [o.name for o in session.get_outputs()]
        self.backbone = _Backbone(embed_dim)
        self.has_classifier = "logits" in self.names
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def to(self, *args: Any, **kwargs: Any) -> "OnnxModel":
        return self  # always the CPU

    def eval(self) -> "OnnxModel":
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        outputs = self.session.run(None, {"images": np.ascontiguousarray(images.cpu().numpy())})
        embedding = torch.from_numpy(outputs[0])
        if self.has_classifier:
            self._last = (embedding, torch.from_numpy(outputs[self.names.index("logits")]))
        return embedding

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        if self._last is None or self._last[0] is not embeddings:
            raise PixdexError(
                "the ONNX engine gives logits only for the embeddings of the batch it just ran "
                "(test-time augmentation averages embeddings: use --engine torch with --tta)"
            )
        return self._last[1]


def cache_entry(run: LoadedRun) -> Path:
    """The cache folder of ``run``'s export (``NAME.failed.txt`` beside it when auto found
    that it cannot export)."""
    metric = str(run.manifest.get("metric") or "cosine")
    return cache_root() / "onnx" / f"{model_fingerprint(run)}-{metric}"


def onnx_pair(
    run: LoadedRun,
    probe: Any,
    *,
    max_pixels: int,
    notify: Callable[[str], None] = lambda m: None,
    folder: Path | None = None,
) -> tuple[OnnxModel, UInt8Transform]:
    """The ONNX model and transform for ``run``, exporting it into the cache on first use
    (verified on ``probe``, a :class:`pixdex.export.verify.Probe` of the images at hand)."""
    import shutil

    from pixdex.export.folder import Source, export_folder, verify_files
    from pixdex.export.verify import session

    metric = str(run.manifest.get("metric") or "cosine")
    folder = folder or cache_entry(run)  # the entry's name hashes every weight: callers pass it
    fresh = not (folder / "manifest.json").is_file()
    if not fresh:
        try:
            verify_files(folder)
        except ArtifactError as exc:  # a damaged cache entry is rebuilt, never run
            notify(f"pixdex: note: rebuilding the damaged ONNX cache entry {folder}: {exc}")
            shutil.rmtree(folder)
            fresh = True
    if fresh:
        notify(f"pixdex: engine onnx: exporting the model once into {folder}")
        source = Source("run", str(run.path), run, metric)
        export_folder(source, folder, probe, max_pixels=max_pixels, force=True, notify=notify)
    model = OnnxModel(session(folder / "model.onnx"), int(run.pipeline.backbone.embed_dim))
    return model, UInt8Transform(run.transform)


def auto_onnx_pair(
    run: LoadedRun, probe: Any, *, max_pixels: int, notify: Callable[[str], None]
) -> tuple[OnnxModel, UInt8Transform] | None:
    """:func:`onnx_pair` for ``engine = auto``: None (PyTorch, with a note) when this model
    does not export or does not verify, remembered in the cache so that later commands do
    not pay for the attempt again. An explicit ``--engine onnx`` fails instead."""
    folder = cache_entry(run)
    marker = folder.with_name(folder.name + ".failed.txt")
    if marker.is_file():
        notify(f"pixdex: engine auto: PyTorch, this model did not export to ONNX before (delete {marker} to retry)")
        return None
    try:
        return onnx_pair(run, probe, max_pixels=max_pixels, notify=notify, folder=folder)
    except Exception as exc:  # noqa: BLE001 - any exporter failure means "run PyTorch", said aloud
        text = str(exc) if isinstance(exc, PixdexError) else f"{type(exc).__name__}: {exc}"
        reason = (text.strip().splitlines() or [type(exc).__name__])[0][:300]
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(marker, (reason + "\n").encode())
        notify(f"pixdex: engine auto: running PyTorch: {reason} (--engine torch skips the attempt)")
        return None


def engine_parts(
    run: Any,
    runtime: dict[str, Any],
    place: Placement,
    *,
    keys: Sequence[str],
    opener: Any = None,
    max_pixels: int,
    notify: Callable[[str], None] | None = None,
    tta: str = "none",
) -> tuple[Any, Transform, dict[str, Any]]:
    """``(model, transform, runtime)`` for ``runtime["engine"]``: the placed PyTorch pipeline
    and the run's transform, or for ``onnx`` the run's ONNX export (made once into a user
    cache, verified on up to 64 of ``keys``) and a transform that leaves the normalisation
    to the graph. ``runtime`` comes back with a concrete batch size."""
    engine = resolve_engine(runtime.get("engine", "torch"), place.device_type, tta)
    if engine == "onnx":
        from pixdex.export.verify import Probe, spread

        probe = Probe(spread(list(keys), 64), opener, "the images at hand")
        pair = onnx_or_fallback(runtime, run, probe, max_pixels=max_pixels, notify=notify or (lambda m: None))
        if pair is not None:
            batch = runtime["batch_size"]
            return *pair, {**runtime, "batch_size": INFERENCE_BATCH_ONNX if batch == "auto" else batch}
    model = place_model(run.pipeline, place)
    return model, run.transform, inference_runtime(runtime, model, run.transform, place)


def onnx_or_fallback(
    runtime: dict[str, Any], run: LoadedRun, probe: Any, *, max_pixels: int, notify: Callable[[str], None]
) -> tuple[OnnxModel, UInt8Transform] | None:
    """The ONNX pair for an engine that resolved to ``onnx``: an explicit ``onnx`` fails
    with the exporter's error, ``auto`` falls back to PyTorch (None) with a note."""
    if runtime.get("engine") == "auto":
        return auto_onnx_pair(run, probe, max_pixels=max_pixels, notify=notify)
    return onnx_pair(run, probe, max_pixels=max_pixels, notify=notify)


INFERENCE_BATCH_ONNX = 64  # ONNX Runtime holds no autograd state: a fixed batch fits any CPU
