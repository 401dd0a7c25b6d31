"""The warm state behind `pixdex serve`: a model and (for an index folder) its index, loaded
once, queried by many threads, and swapped atomically when the folder commits a new version.

Thread model: the forward pass runs under one lock (a CPU model already uses every core
it is given, and a GPU serialises anyway); ANN searches, "more like this" and
recommendations need no model and run concurrently. A request takes the current
:class:`Snapshot` once and uses only it, so a hot reload never changes what a request in
flight sees: it finishes on the old version, and the old files stay readable (they are
memory-mapped, and a commit renames new files over them rather than rewriting them).
"""

from __future__ import annotations

import dataclasses
import io
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pixdex.artifacts import atomic_write_bytes
from pixdex.data.images import ImageSkip, decode_image_bytes, open_image
from pixdex.device import Placement, placement
from pixdex.errors import PixdexError, UsageError
from pixdex.pipeline.inference import autocast, embed_batch, place_model
from pixdex.pipeline.runs import LoadedRun, load_run, model_fingerprint
from pixdex.plugins import PluginSet
from pixdex.retrieval import by_item
from pixdex.retrieval.index_folder import OpenIndex, open_index
from pixdex.retrieval.search import index_model, neighbours, ranked_matches, recorded_tta, vote

THUMB_SIZE = 160
# how a refused upload maps onto HTTP: the image is too big, not an image, or broken
SKIP_STATUS = {"too-large": 413, "not-an-image": 415}


class ServeError(PixdexError):
    """A request that cannot be answered: ``status`` is its HTTP status code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pixdex/thumbs`` (``~/.cache/pixdex/thumbs``): never inside an index."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pixdex" / "thumbs"


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when a folder commits: its manifest is replaced by a rename."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass
class Snapshot:
    """One loaded version of the served folder. Never mutated after loading."""

    kind: str  # "index" or "run"
    path: Path
    run: LoadedRun
    model: torch.nn.Module  # placed, eval mode
    index: OpenIndex | None
    digest: str  # the index manifest's digest, or the run's weights' sha256
    signature: tuple[int, int, int] | None
    version: int  # 1 for the first load, +1 per hot reload
    model_sha256: str
    transform: Any  # the model's eval transform (for the ONNX engine: one that keeps uint8)
    loaded_at: float = field(default_factory=time.time)


@dataclass
class Upload:
    """One uploaded file: the name the client gave it and its bytes."""

    name: str
    data: bytes


class Service:
    """Queries against the served folder; every public method is safe to call from threads.

    ``log`` receives the one-line messages (loads, reloads, refused versions).
    """

    def __init__(
        self,
        folder: str | Path,
        pset: PluginSet,
        runtime: dict[str, Any],
        *,
        max_k: int = 100,
        cache_dir: str | Path | None = None,
        log: Callable[[str], None] = lambda m: None,
    ) -> None:
        self.folder = Path(folder)
        self.pset = pset
        self.runtime = runtime
        self.max_pixels = int(runtime["max_pixels"])
        self.default_k = min(int(runtime.get("k", 10)), max_k)
        self.max_k = max_k
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.log = log
        self.place: Placement = placement(runtime["device"], runtime["precision"], notify=log)
        self._forward_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._thumb_lock = threading.Lock()  # one writer per thumbnail (temporary names are per process)
        self._refused: tuple[int, int, int] | None = None  # the broken version last refused
        self._datasets: dict[str, Any] = {}
        self.reloads = 0
        self.snapshot = self._load(version=1)

    # --- loading and hot reload ----------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        if (self.folder / "manifest.json").exists():
            return self.folder / "manifest.json"
        return self.folder / "pixdex.json"

    def _load(self, version: int, previous: Snapshot | None = None) -> Snapshot:
        signature = _signature(self.manifest_path)
        if (self.folder / "manifest.json").exists():
            index = open_index(self.folder, self.pset)  # verifies every file first
            sha = index.manifest["model"]["sha256"]
            if (
                previous is not None
                and previous.model_sha256 == sha
                and previous.run.tta == recorded_tta(index.manifest)
            ):
                # the same weights, embedding the same way: no reload of the model
                run, model, transform = previous.run, previous.model, previous.transform
            else:
                run = index_model(index, self.pset, purpose="serve (it embeds uploads)")
                model, transform = self._engine(run, index)
            digest = index.manifest["digest"]
            return Snapshot("index", self.folder, run, model, index, digest, signature, version, sha, transform)
        if (self.folder / "pixdex.json").exists():
            run = load_run(self.folder, self.pset)
            sha = model_fingerprint(run)
            model, transform = self._engine(run, None)
            return Snapshot("run", self.folder, run, model, None, sha, signature, version, sha, transform)
        raise PixdexError(
            f"{self.folder} is neither an index folder (manifest.json) nor a run folder (pixdex.json); "
            "serve what `pixdex index build` or `pixdex train` wrote"
        )

    def _engine(self, run: LoadedRun, index: OpenIndex | None) -> tuple[Any, Any]:
        """The placed PyTorch model and its transform, or for ``runtime.engine = onnx`` the
        model's ONNX export (made once into the user cache, verified on the index's items
        or the run's data) and a transform that leaves the normalisation to the graph."""
        from pixdex.export.engine import onnx_or_fallback, resolve_engine

        if resolve_engine(self.runtime.get("engine", "torch"), self.place.device_type, run.tta) == "onnx":
            from pixdex.export.folder import Source
            from pixdex.export.sources import default_probe

            metric = index.metric if index is not None else str(run.manifest.get("metric") or "cosine")
            probe = default_probe(Source("run", str(run.path), run, metric, index), self.pset, None)
            pair = onnx_or_fallback(self.runtime, run, probe, max_pixels=self.max_pixels, notify=self.log)
            if pair is not None:
                return pair
        return place_model(run.pipeline, self.place), run.transform

    def reload_if_changed(self) -> str | None:
        """Load a newly committed version beside the current one and swap it in.

        Returns ``"reloaded"``, ``"refused"`` (the new version failed verification: the old
        one keeps serving) or None (nothing changed). One log line for either event.
        """
        with self._reload_lock:
            current = self.snapshot
            signature = _signature(self.manifest_path)
            if signature is None or signature == current.signature or signature == self._refused:
                return None
            try:
                fresh = self._load(current.version + 1, previous=current)
            except PixdexError as exc:
                self._refused = signature
                self.log(
                    f"pixdex: serve: refused the new version of {self.folder}, still serving version "
                    f"{current.version}: {exc}"
                )
                return "refused"
            if fresh.digest == current.digest:  # rewritten with the same content: nothing to swap
                self.snapshot = dataclasses.replace(current, signature=fresh.signature)
                return None
            self.snapshot = fresh  # one reference assignment: requests see the old or the new, whole
            self.reloads += 1
            count = f"{fresh.index.manifest['count']} items" if fresh.index is not None else "run"
            self.log(f"pixdex: serve: reloaded {self.folder} (version {fresh.version}, {count})")
            return "reloaded"

    def watch(self, interval: float, stop: threading.Event) -> None:
        """Poll for new versions every ``interval`` seconds until ``stop`` is set (a thread)."""
        while not stop.wait(interval):
            try:
                self.reload_if_changed()
            except Exception as exc:  # a watcher that died silently would stop all reloads
                self.log(f"pixdex: serve: reload check failed: {type(exc).__name__}: {exc}")

    # --- queries ---------------------------------------------------------------------------

    def check_k(self, k: Any) -> int:
        if k is None or k == "":
            return self.default_k
        try:
            value = int(k)
        except (TypeError, ValueError):
            raise ServeError(400, f"k must be an integer from 1 to {self.max_k}; got {k!r}") from None
        if isinstance(k, bool) or not 1 <= value <= self.max_k:
            raise ServeError(400, f"k must be an integer from 1 to {self.max_k}; got {k!r}")
        return value

    def _need_index(self, snap: Snapshot, what: str) -> OpenIndex:
        if snap.index is None:
            raise ServeError(
                404,
                f"{what} needs an index, and {snap.path} is a run folder; build one with "
                f"`pixdex index build {snap.path} DATA -o INDEX` and serve INDEX",
            )
        return snap.index

    def _decode(self, uploads: list[Upload]) -> list[Any]:
        if not uploads:
            raise ServeError(400, "no image uploaded: send one or more files in the multipart field 'image'")
        images = []
        for up in uploads:
            try:
                images.append(decode_image_bytes(up.data, up.name, max_pixels=self.max_pixels))
            except ImageSkip as skip:
                raise ServeError(
                    SKIP_STATUS.get(skip.reason, 400), f"{up.name}: {skip.reason}: {skip.detail}"
                ) from None
        return images

    def _forward(self, snap: Snapshot, images: list[Any], want_logits: bool) -> tuple[np.ndarray, np.ndarray | None]:
        transform = snap.transform
        x = torch.stack([transform.load(im) for im in images]).to(self.place.device)
        if self.place.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._forward_lock, torch.inference_mode(), autocast(self.place):
            emb = embed_batch(snap.model, transform.batch(x), snap.run.tta)
            logits = snap.model.logits(emb) if want_logits and snap.model.has_classifier else None
        emb_np = emb.float().cpu().numpy()
        if not np.isfinite(emb_np).all():
            raise ServeError(400, "the model's embedding of an uploaded image is not finite (NaN or inf)")
        return emb_np, None if logits is None else logits.float().cpu().numpy()

    def search(self, uploads: list[Upload], k: Any = None) -> list[dict[str, Any]]:
        """Rows of `pixdex search --format json`: ``{query, matches: [{rank, id, path, label, score}]}``."""
        k = self.check_k(k)
        snap = self.snapshot
        index = self._need_index(snap, "search")
        vectors, _ = self._forward(snap, self._decode(uploads), want_logits=False)
        ids, scores = neighbours(index, vectors, k)
        return [{"query": up.name, "matches": ranked_matches(index, i, s)} for up, i, s in zip(uploads, ids, scores)]

    def similar(self, item_id: int, k: Any = None) -> list[dict[str, Any]]:
        """ "More like this" for an indexed item (its stored embedding; nothing is decoded)."""
        k = self.check_k(k)
        index = self._need_index(self.snapshot, "more like this")
        return [self._by_item(lambda: by_item.similar(index, item_id, k))]

    def recommend(self, positive: Any, negative: Any = None, k: Any = None) -> list[dict[str, Any]]:
        """Items like ``positive`` and unlike ``negative`` (ids), excluding all of them."""
        k = self.check_k(k)
        index = self._need_index(self.snapshot, "recommend")
        for name, ids in (("positive", positive), ("negative", negative)):
            if ids is not None and (not isinstance(ids, list) or len(ids) > 1000):
                raise ServeError(400, f"'{name}' must be a list of item ids (at most 1000)")
        return [self._by_item(lambda: by_item.recommend(index, positive or [], negative, k))]

    @staticmethod
    def _by_item(query: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        try:
            return query()
        except by_item.UnknownItemError as exc:
            raise ServeError(404, str(exc)) from None
        except UsageError as exc:
            raise ServeError(400, str(exc)) from None

    def predict(self, uploads: list[Upload], k: Any = None) -> list[dict[str, Any]]:
        """Rows of `pixdex predict --json`: the top-``k`` labels of a run's classifier, or for
        an index the similarity-weighted vote of the ``retrieval.k`` nearest labelled items."""
        k = self.check_k(k)
        snap = self.snapshot
        images = self._decode(uploads)
        rows = []
        if snap.index is None:
            if not snap.run.has_classifier:
                loss = snap.run.manifest["config"]["loss"]["name"]
                raise ServeError(
                    404,
                    f"{snap.path} was trained with the '{loss}' loss, which has no classifier; serve an index "
                    f"built with it to predict by neighbours",
                )
            _, logits = self._forward(snap, images, want_logits=True)
            assert logits is not None
            probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
            for up, p in zip(uploads, probs):
                order = np.argsort(-p, kind="stable")[: min(k, len(p))]
                top = [{"label": snap.run.classes[i], "probability": float(p[i])} for i in order]
                rows.append(prediction_row(up.name, top))
            return rows
        index = snap.index
        vectors, _ = self._forward(snap, images, want_logits=False)
        ids, scores = neighbours(index, vectors, self.default_k)
        for up, i, s in zip(uploads, ids, scores):
            top = vote(ranked_matches(index, i, s), index.metric)[:k]
            if not top:
                raise ServeError(422, f"{up.name}: none of its nearest items has a label, so they cannot vote on one")
            rows.append(prediction_row(up.name, top))
        return rows

    def info(self) -> dict[str, Any]:
        """What is served: the manifest's summary, the model, and the server's limits."""
        snap = self.snapshot
        manifest = snap.run.manifest
        model = {
            "sha256": snap.model_sha256,
            "backbone": manifest["config"]["backbone"]["name"],
            "loss": manifest["config"]["loss"]["name"],
            "embed_dim": int(snap.run.pipeline.backbone.embed_dim),
            "classes": list(snap.run.classes) if snap.run.has_classifier else None,
        }
        out: dict[str, Any] = {
            "kind": snap.kind,
            "path": str(snap.path),
            "version": snap.version,
            "digest": snap.digest,
            "loaded_at": snap.loaded_at,
            "count": None,
            "dim": model["embed_dim"],
            "metric": None,
            "index": None,
            "recall_at_10": None,
            "model": model,
            "max_k": self.max_k,
            "default_k": self.default_k,
            "device": self.place.device,
        }
        if snap.index is not None:
            m = snap.index.manifest
            params = m["index"].get("params", {})
            out.update(
                count=int(m["count"]),
                dim=int(m["dim"]),
                metric=m["metric"],
                index=m["index"]["name"],
                recall_at_10=params.get("recall_at_10", params.get("measured_recall")),
            )
        return out

    # --- thumbnails ------------------------------------------------------------------------

    def thumbnail(self, item_id: int) -> tuple[bytes, str, bool]:
        """``(bytes, media type, is_placeholder)`` of an item's thumbnail, made once and
        cached under ``cache_dir/<manifest digest>/``. An unreadable item gets a placeholder."""
        snap = self.snapshot
        index = self._need_index(snap, "thumbnails")
        row = self._by_item(lambda: {"row": by_item.rows_of(index, [item_id])[0]})["row"]
        folder = self.cache_dir / snap.digest[:32]

        def cached() -> tuple[bytes, str, bool] | None:
            for ext, media in ((".png", "image/png"), (".jpg", "image/jpeg")):
                if (folder / f"{item_id}{ext}").is_file():
                    return (folder / f"{item_id}{ext}").read_bytes(), media, False
            return None

        hit = cached()
        if hit is not None:
            return hit
        with self._thumb_lock:
            hit = cached()  # another request may have made it meanwhile
            if hit is not None:
                return hit
            image = self._open_item(index.items[row])
            if image is None:
                return placeholder_png(), "image/png", True
            data, ext, media = encode_thumbnail(image)
            atomic_write_bytes(folder / f"{item_id}{ext}", data)
        return data, media, False

    def _open_item(self, item: dict[str, Any]) -> Any:
        path = item["path"]
        try:
            if item.get("dataset"):
                return self._dataset(item["dataset"]).image(path)
            if os.path.isfile(path):
                return open_image(path, max_pixels=self.max_pixels)
        except (ImageSkip, PixdexError, OSError, KeyError, ValueError):
            return None
        return None

    def _dataset(self, spec: str) -> Any:
        if spec not in self._datasets:
            from pixdex.data.datasets import open_dataset

            self._datasets[spec] = open_dataset(spec, self.pset.registry)
        return self._datasets[spec]


def prediction_row(name: str, top: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of `pixdex predict --format json` for an upload (no test-time augmentation)."""
    return {"path": name, "label": top[0]["label"], "probability": top[0]["probability"], "top": top, "tta": "none"}


def encode_thumbnail(image: Any) -> tuple[bytes, str, str]:
    """A thumbnail at most THUMB_SIZE on its long side: PNG for small or greyscale images
    (sharp, and small anyway), JPEG for colour photos."""
    image = image.copy()
    image.thumbnail((THUMB_SIZE, THUMB_SIZE))
    buf = io.BytesIO()
    if image.mode == "RGB" and min(image.size) >= 64:
        image.save(buf, format="JPEG", quality=85)
        return buf.getvalue(), ".jpg", "image/jpeg"
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue(), ".png", "image/png"


_PLACEHOLDER: bytes | None = None


def placeholder_png() -> bytes:
    """A grey square with a diagonal cross: the item's file is gone or unreadable."""
    global _PLACEHOLDER
    if _PLACEHOLDER is None:
        from PIL import Image, ImageDraw

        image = Image.new("L", (64, 64), 225)
        draw = ImageDraw.Draw(image)
        draw.line((8, 8, 56, 56), fill=150, width=3)
        draw.line((8, 56, 56, 8), fill=150, width=3)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        _PLACEHOLDER = buf.getvalue()
    return _PLACEHOLDER
