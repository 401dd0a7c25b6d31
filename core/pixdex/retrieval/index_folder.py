"""Index folders: build, verify, open, add, remove.

    manifest.json   what everything else must match (written last by each commit)
    embeddings.npy  float32[N, D], row i = ANN id i (memory-mapped on read)
                    (neither this nor items.jsonl for an item-holding index: a database keeps them)
    items.jsonl     one line per row: id (stable, never reused), row, path, label, size, mtime, sha256
                    (and ``dataset``, the DATA spec, for keys such as ``idx:train/000123``)
    model/          the model as a run folder (pixdex.json + model.safetensors)
    index/          the index plugin's own files
    skipped.jsonl   images that could not be embedded

Nothing is trusted before it is checked: every file's size and sha256, and the
manifest's dim, metric, count, model and format version, are verified before the index
plugin (Annoy silently loads a wrong file, then crashes) is handed the folder.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from pixdex import __version__
from pixdex.artifacts import FolderWriter, crash_point, jsonl_bytes, reading, sha256_file
from pixdex.config import Config
from pixdex.contracts import METRICS
from pixdex.errors import ArtifactError, PixdexError
from pixdex.pipeline.runs import LoadedRun, now
from pixdex.plugins import PluginSet
from pixdex.retrieval.embed import Collection, Embedded, save_npy
from pixdex.retrieval.item_table import ItemTable, RowsById
from pixdex.retrieval.records import NewItems, Numbered
from pixdex.retrieval.stored import StoredItems, StoredVectors, check_store, holds_items

INDEX_FORMAT = "pixdex-index"
INDEX_FORMAT_VERSION = 1


def resolve_metric(config: Config, run: LoadedRun) -> str:
    metric = config["retrieval"]["metric"]
    if metric == "auto":
        metric = run.manifest.get("metric") or "cosine"
    if metric not in METRICS:
        raise PixdexError(f"Unknown metric '{metric}': use auto, {', '.join(METRICS)}")
    return metric


def read_items(path: Path) -> list[dict[str, Any]]:
    out = []
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    raise ArtifactError(f"{path} line {n} is not valid JSON; the index folder is damaged") from None
    return out


def grow_ann(
    pset: PluginSet,
    config: Config,
    embeddings: np.ndarray,
    metric: str,
    previous: tuple[Path, int] | None,
    *,
    items: Iterable[dict[str, Any]] | None = None,
    meta: dict[str, Any] | None = None,
) -> Any:
    """The ANN over ``embeddings``: the committed one (``previous``: its ``index/`` folder
    and row count) extended by the rows after it when the plugin has the optional ``add``
    method and the old rows are unchanged; else built from every row. An item-holding
    index is always built here, with ``items`` and ``meta`` (`index add` and `index
    remove` grow or shrink those through their own methods and pass them as prepared)."""
    name, opts = config.component("index")
    if len(embeddings) == 0:
        raise PixdexError("the collection is empty: no image could be embedded, so there is nothing to index")
    index = pset.registry.build("index", name, opts, dim=int(embeddings.shape[1]), metric=metric)
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    try:
        if holds_items(index):
            index.build(vectors, items=items, meta=meta)
        elif previous is not None and 0 < previous[1] < len(vectors) and callable(getattr(index, "add", None)):
            try:
                index.load(previous[0], mmap=False)  # a private, writable copy: the committed file stays as it is
                index.add(vectors[previous[1] :], all_vectors=vectors)
            except ValueError as exc:
                raise PixdexError(f"index '{name}' could not add the new rows: {exc}") from None
        else:
            index.build(vectors)
    except ValueError as exc:
        raise PixdexError(f"index '{name}' could not be built: {exc}") from None
    return index


@dataclass
class IndexContents:
    """Everything an index folder holds, before it is written."""

    embeddings: np.ndarray  # or a read-only memory map of the file already staged as embeddings.npy
    items: Any  # a sized iterable of records, iterated once (Numbered, ItemStream, a list)
    next_id: int
    skipped: list[dict[str, Any]]
    embeddings_staged: bool = False


def commit_index(
    writer: FolderWriter,
    pset: PluginSet,
    config: Config,
    contents: IndexContents,
    *,
    metric: str,
    model_record: dict[str, Any],
    created: str,
    carried_files: dict[str, dict[str, Any]] | None = None,
    notify: Callable[[str], None] = lambda m: None,
    previous: tuple[Path, int] | None = None,
    prepared: Any = None,
) -> dict[str, Any]:
    """Build the ANN over ``contents`` (or grow the committed one, :func:`grow_ann`) and
    commit every file plus the manifest together.

    An item-holding index (:mod:`pixdex.retrieval.stored`) writes its rows into a new
    version of its database instead of ``embeddings.npy`` and ``items.jsonl``; ``prepared``
    is one that `index add` or `index remove` already wrote. The version is published
    (``ann.publish()``) only after the folder's commit, and discarded if the commit fails."""
    name, opts = config.component("index")
    ann = prepared or grow_ann(
        pset, config, contents.embeddings, metric, previous, items=contents.items, meta=store_meta(model_record)
    )
    stored = holds_items(ann)
    try:
        crash_point("index:built")
        if not stored:  # an item-holding index keeps the rows itself
            if not contents.embeddings_staged:
                save_npy(writer, "embeddings.npy", contents.embeddings)
            writer.write_jsonl("items.jsonl", contents.items)
        writer.write_bytes("skipped.jsonl", jsonl_bytes(contents.skipped))
        staging = writer.staging_dir()
        names = ann.save(staging)
        for old in _old_index_files(writer.folder, names) + _old_rows_files(writer.folder, stored):
            writer.remove(old)
        writer.adopt(list(names), prefix="index/")
    except BaseException:
        if stored:
            ann.discard()  # the new version is not committed: nothing may serve it
        raise
    params = dict(getattr(ann, "params", {}) or {})
    crash_point("index:staged")

    def manifest(files: dict[str, dict[str, Any]]) -> dict[str, Any]:
        all_files = {**(carried_files or {}), **files}
        return seal(
            {
                "format": INDEX_FORMAT,
                "format_version": INDEX_FORMAT_VERSION,
                "pixdex_version": __version__,
                "created": created,
                "updated": now(),
                "dim": int(contents.embeddings.shape[1]),
                "metric": metric,
                "normalized": False,
                "count": len(contents.items),
                "next_id": contents.next_id,
                "skipped": len(contents.skipped),
                "model": model_record,
                "index": {
                    "name": name,
                    "options": opts,
                    "params": params,
                    "files": sorted("index/" + n for n in names),
                    **({"holds_items": True} if stored else {}),
                },
                "files": {k: all_files[k] for k in sorted(all_files)},
            }
        )

    try:
        writer.commit(manifest)
    except BaseException:
        if stored:
            ann.discard()
        raise
    if stored:
        crash_point("index:committed")
        ann.publish()  # the alias follows the folder; a crash before this leaves the old one serving others
    return manifest({})  # for the caller's report; the committed one has the checksums


def store_meta(model_record: dict[str, Any]) -> dict[str, Any]:
    """What an item-holding index records in its database beside the rows, for the check
    against the manifest (:func:`pixdex.retrieval.stored.check_store`)."""
    return {"model_sha256": model_record.get("sha256"), "format": INDEX_FORMAT}


def _old_rows_files(folder: Path, stored: bool) -> list[str]:
    """A folder switching to an item-holding index drops the row files it no longer uses."""
    return [n for n in ("embeddings.npy", "items.jsonl") if stored and (folder / n).exists()]


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its own digest field."""
    import hashlib

    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=True).encode("ascii")).hexdigest()


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the digest that lets a reader notice a hand-edited manifest (dim, metric, count...)."""
    return {**manifest, "digest": manifest_digest(manifest)}


def _old_index_files(folder: Path, keep: list[str]) -> list[str]:
    old = folder / "index"
    if not old.is_dir():
        return []
    return [f"index/{p.name}" for p in old.iterdir() if p.is_file() and p.name not in keep and ".tmp-" not in p.name]


def new_items(collection: Collection, embedded: Embedded, facts: Sequence[dict[str, Any]], first_id: int) -> NewItems:
    """The records of the rows ``embedded`` holds, made as they are written (:class:`NewItems`)."""
    return NewItems(collection, embedded.positions, facts, first_id)


def number_rows(*parts: Any) -> Numbered:
    """``parts`` (sized iterables of records) as one, ``row`` numbered 0.. in order."""
    return Numbered(*parts)


# --- verification --------------------------------------------------------------------------


def _npy_shape(path: Path) -> tuple[tuple[int, ...], str]:
    fmt = np.lib.format
    try:
        with open(path, "rb") as fh:  # the header only: the data may be gigabytes
            version = fmt.read_magic(fh)
            reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = reader(fh)
    except ValueError as exc:
        raise ArtifactError(f"{path} is not a valid .npy file ({exc})") from None
    return tuple(shape), dtype.str


def is_external(manifest: dict[str, Any]) -> bool:
    """Whether an index was built from embeddings without a model (``--from-embeddings``)."""
    return (manifest.get("model") or {}).get("kind") == "external"


def verify(folder: Path, manifest: dict[str, Any]) -> None:
    """Refuse any mismatch between the manifest and the files, with one line each."""
    where = str(folder)
    if manifest.get("format") != INDEX_FORMAT:
        raise ArtifactError(f"{where} is not a pixdex index folder (manifest format {manifest.get('format')!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > INDEX_FORMAT_VERSION or version < 1:
        raise ArtifactError(
            f"{where}: index format version {version!r} is not supported by pixdex {__version__} "
            f"(it reads version {INDEX_FORMAT_VERSION}); rebuild the index or upgrade pixdex"
        )
    if manifest.get("digest") != manifest_digest(manifest):
        raise ArtifactError(
            f"{where}: manifest.json was modified after the index was written (its digest does not "
            f"match); rebuild the index"
        )
    if manifest.get("metric") not in METRICS:
        raise ArtifactError(f"{where}: manifest metric {manifest.get('metric')!r} is not one of {', '.join(METRICS)}")
    files = manifest.get("files") or {}
    external = is_external(manifest)  # built from embeddings without a model: none to check
    model_files = () if external else ("model/model.safetensors", "model/pixdex.json")
    stored = bool(manifest["index"].get("holds_items"))  # rows in the index's database, checked on load
    row_files = () if stored else ("embeddings.npy", "items.jsonl")
    for required in (*row_files, *model_files):
        if required not in files:
            raise ArtifactError(f"{where}: the manifest lists no {required}; rebuild the index")
    for name, fact in files.items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{where}: {name} is missing; rebuild the index")
        size = path.stat().st_size
        if size != fact["size"]:
            raise ArtifactError(
                f"{where}: {name} is {size} bytes but the manifest says {fact['size']} "
                f"(truncated or replaced); rebuild the index"
            )
        if sha256_file(path) != fact["sha256"]:
            raise ArtifactError(
                f"{where}: {name} does not match its checksum in the manifest (replaced or "
                f"corrupted); rebuild the index"
            )
    for name in manifest["index"].get("files", []):
        if name not in files:
            raise ArtifactError(f"{where}: index file {name} is not covered by the manifest's checksums")
    if not stored:
        _verify_embeddings(folder, manifest)
    if not external and files["model/model.safetensors"]["sha256"] != manifest["model"]["sha256"]:
        raise ArtifactError(f"{where}: model/model.safetensors is not the model the index was built with")
    if manifest["model"].get("embed_dim") != manifest["dim"]:
        raise ArtifactError(
            f"{where}: the model embeds {manifest['model'].get('embed_dim')} dims, the index holds {manifest['dim']}"
        )


def _verify_embeddings(folder: Path, manifest: dict[str, Any]) -> None:
    shape, dtype = _npy_shape(folder / "embeddings.npy")
    if dtype != "<f4" and dtype != "float32" or len(shape) != 2:
        raise ArtifactError(f"{folder}: embeddings.npy is {dtype} {shape}, expected float32 [count, dim]")
    if shape[1] != manifest.get("dim"):
        raise ArtifactError(f"{folder}: embeddings have dim {shape[1]} but the manifest says {manifest.get('dim')}")
    if shape[0] != manifest.get("count"):
        raise ArtifactError(
            f"{folder}: embeddings have {shape[0]} rows but the manifest says count {manifest.get('count')}"
        )


@dataclass
class OpenIndex:
    """A verified index folder, ready to search."""

    path: Path
    manifest: dict[str, Any]
    ann: Any
    items: Sequence[dict[str, Any]]  # an ItemTable (records parsed when asked for) or StoredItems
    embeddings: Any  # memory-mapped float32[N, D], or StoredVectors (rows read from the database)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def metric(self) -> str:
        return str(self.manifest["metric"])

    @functools.cached_property
    def rows_by_id(self) -> RowsById:
        """item id -> embedding row (ids are stable, rows are compacted by removals)."""
        return RowsById(self.items)


def open_index(folder: str | Path, pset: PluginSet) -> OpenIndex:
    """Recover, verify and load an index folder (the plugin sees only verified files)."""
    folder = Path(folder)
    if not (folder / "manifest.json").exists():
        if (folder / "pixdex.json").exists():
            raise ArtifactError(f"{folder} is a run folder, not an index folder; build one with `pixdex index build`")
        raise ArtifactError(f"{folder} is not a pixdex index folder (no manifest.json)")
    with reading(folder) as manifest:
        verify(folder, manifest)
        spec = manifest["index"]
        ann = pset.registry.build(
            "index", spec["name"], spec.get("options") or {}, dim=manifest["dim"], metric=manifest["metric"]
        )
        try:
            ann.load(folder / "index", mmap=True)
        except PixdexError:
            raise  # the plugin's own one-line message (a database that cannot be reached)
        except Exception as exc:  # plugin code on verified files: still one line, never a traceback
            raise ArtifactError(
                f"{folder}: index '{spec['name']}' could not load its files: {type(exc).__name__}: {exc}"
            ) from None
        if holds_items(ann):  # the rows are in its database: check it holds what the manifest says
            check_store(folder, manifest, ann)
            count = int(manifest["count"])
            items: Sequence[dict[str, Any]] = StoredItems(ann, count)
            embeddings: Any = StoredVectors(ann, count, int(manifest["dim"]))
        else:
            items = ItemTable(folder / "items.jsonl")  # checksum-verified above; parsed row by row on use
            if len(items) != manifest["count"]:
                raise ArtifactError(
                    f"{folder}: items.jsonl has {len(items)} rows but the manifest says {manifest['count']}"
                )
            embeddings = np.load(folder / "embeddings.npy", mmap_mode="r", allow_pickle=False)
    return OpenIndex(folder, manifest, ann, items, embeddings)


def index_size_on_disk(folder: Path, manifest: dict[str, Any]) -> int:
    return sum(int(f["size"]) for f in manifest["files"].values())
