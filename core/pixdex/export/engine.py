"""``runtime.engine``: inference through ONNX Runtime instead of PyTorch, on the CPU.

``torch`` runs the PyTorch model; ``onnx`` runs the model's export (made on first use,
verified like every `pixdex export`, into a user cache keyed by the weights' sha256 and the
metric: never into the run or index folder); ``auto`` is :data:`AUTO_ENGINE_RULE`.

The ONNX model plugs into the one inference loop (:mod:`pixdex.pipeline.inference`) as a
pair: :class:`OnnxModel` in place of the placed pipeline, and :class:`UInt8Transform`
in place of the eval transform (it decodes and resizes exactly as the model's transform
does, and leaves the uint8 batch for the graph, which normalises inside).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from pixdex.contracts import Transform
from pixdex.device import Placement
from pixdex.errors import ArtifactError, PixdexError, UsageError
from pixdex.pipeline.inference import inference_runtime, place_model
from pixdex.pipeline.runs import LoadedRun, model_fingerprint

ENGINES = ("auto", "torch", "onnx")
# bench/export.py measured ONNX Runtime 2.2-5.5x faster than eager on the 2-core CPU, but
# the first use exports into the user's cache; auto stays torch until that is the default
# (docs/deploying.md)
AUTO_ENGINE_RULE = "torch"


def cache_root() -> Path:
    """Where exports made for ``--engine onnx`` live: $PIXDEX_CACHE_DIR, else
    $XDG_CACHE_HOME/pixdex, else ~/.cache/pixdex."""
    if os.environ.get("PIXDEX_CACHE_DIR"):
        return Path(os.environ["PIXDEX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pixdex"


def resolve_engine(engine: str, device_type: str) -> str:
    """The engine to run: ``torch`` or ``onnx`` (refused off the CPU, in one line)."""
    if engine not in ENGINES:
        raise UsageError(f"unknown engine '{engine}': use {', '.join(ENGINES)}")
    if engine == "onnx":
        if device_type != "cpu":
            raise UsageError(
                f"--engine onnx runs on the CPU only (ONNX Runtime's CPU provider), not {device_type}; "
                "use --device cpu, or --engine torch on the accelerator"
            )
        from pixdex.export.graph import require_export_libraries

        require_export_libraries()
        return "onnx"
    return "torch"  # auto: AUTO_ENGINE_RULE


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


def onnx_pair(
    run: LoadedRun, probe: Any, *, max_pixels: int, notify: Callable[[str], None] = lambda m: None
) -> tuple[OnnxModel, UInt8Transform]:
    """The ONNX model and transform for ``run``, exporting it into the cache on first use
    (verified on ``probe``, a :class:`pixdex.export.verify.Probe` of the images at hand)."""
    import shutil

    from pixdex.export.folder import Source, export_folder, verify_files
    from pixdex.export.verify import session

    metric = str(run.manifest.get("metric") or "cosine")
    folder = cache_root() / "onnx" / f"{model_fingerprint(run)}-{metric}"
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
    engine = runtime.get("engine", "torch")
    if engine != "torch" and resolve_engine(engine, place.device_type) == "onnx":
        from pixdex.export.verify import Probe, spread

        if tta != "none":
            raise UsageError("--tta averages embeddings before the classifier: use it with --engine torch")
        probe = Probe(spread(list(keys), 64), opener, "the images at hand")
        model, transform = onnx_pair(run, probe, max_pixels=max_pixels, notify=notify or (lambda m: None))
        batch = runtime["batch_size"]
        return model, transform, {**runtime, "batch_size": INFERENCE_BATCH_ONNX if batch == "auto" else batch}
    model = place_model(run.pipeline, place)
    return model, run.transform, inference_runtime(runtime, model, run.transform, place)


INFERENCE_BATCH_ONNX = 64  # ONNX Runtime holds no autograd state: a fixed batch fits any CPU
