"""Embeddings made elsewhere, read for `pixdex index build --from-embeddings DIR`.

DIR is the folder `pixdex embed` writes (its manifest's checksums are checked), an index
folder (rebuilt, for example with another index type, without re-embedding), or any
folder holding ``embeddings.npy`` (float [N, D]) and ``items.jsonl`` (N JSON objects, one
per row, each with at least ``"path"``) from another program. Everything is validated
before anything is written, each problem in one line.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pixdex.artifacts import file_matches, read_json, reading
from pixdex.errors import ArtifactError, PixdexError
from pixdex.retrieval.index_folder import INDEX_FORMAT, verify

EMBEDDINGS_FORMAT = "pixdex-embeddings"
ITEM_KEYS = ("id", "path", "label", "size", "mtime", "sha256", "dataset")  # what an index item keeps
FINITE_CHUNK = 65536  # rows checked at a time: a memory-mapped file is never read whole


@dataclass
class Precomputed:
    """Validated embeddings and their items, with what the source says about the model."""

    source: Path
    kind: str  # "embed" (pixdex embed), "index" (an index folder) or "foreign"
    embeddings: np.ndarray  # float32 [N, D], memory-mapped where the file was float32
    items: ItemStream  # validated; index records (id, row, path, label, ...) when iterated
    model_spec: str | None  # the model the source names (a run folder or a backbone spec)
    model_sha256: str | None  # its weights' sha256, when the source recorded it
    metric: str | None  # the metric the source's model asked for, when recorded
    tta: str = "none"  # the test-time augmentation the embeddings were made with

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


def read_precomputed(folder: str | Path, notify: Callable[[str], None] = lambda m: None) -> Precomputed:
    """Read and validate DIR (see the module docstring); raise one line on any problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PixdexError(
            f"{folder} is not a folder: give --from-embeddings the folder `pixdex embed` wrote, "
            "or one holding embeddings.npy and items.jsonl"
        )
    manifest = read_json(folder / "manifest.json", "manifest") if (folder / "manifest.json").is_file() else None
    fmt = (manifest or {}).get("format")
    if fmt == EMBEDDINGS_FORMAT:
        with reading(folder) as committed:  # a commit in progress finishes (or rolls back) first
            _check_files(folder, committed["files"])
            model, sha, metric = committed.get("model"), committed.get("model_sha256"), committed.get("metric")
            return _read(folder, "embed", model, sha, metric, committed.get("tta", "none"))
    if fmt == INDEX_FORMAT:
        with reading(folder) as committed:
            verify(folder, committed)
            model = committed["model"]
            spec = None if model.get("kind") == "external" else str(folder / "model")
            return _read(folder, "index", spec, model.get("sha256"), committed["metric"], model.get("tta", "none"))
    if manifest is not None:
        raise PixdexError(f"{folder} holds a manifest of format {fmt!r}, neither embeddings nor an index")
    for name in ("embeddings.npy", "items.jsonl"):
        if not (folder / name).is_file():
            raise PixdexError(f"{folder} has no {name}: --from-embeddings needs embeddings.npy and items.jsonl")
    notify(f"pixdex: note: {folder} has no pixdex manifest: its files are trusted as they are")
    return _read(folder, "foreign", None, None, None)


def _check_files(folder: Path, files: dict[str, dict[str, Any]]) -> None:
    for name in ("embeddings.npy", "items.jsonl"):
        if name not in files:
            raise ArtifactError(f"{folder}: the manifest lists no {name}; embed the collection again")
    for name, fact in files.items():
        if not file_matches(folder / name, fact):
            raise ArtifactError(
                f"{folder}: {name} does not match its checksum in the manifest (missing, truncated or "
                "replaced); embed the collection again"
            )


def _read(
    folder: Path,
    kind: str,
    model_spec: str | None,
    model_sha256: str | None,
    metric: str | None,
    tta: str = "none",
) -> Precomputed:
    embeddings = _embeddings(folder / "embeddings.npy")
    items = ItemStream(folder / "items.jsonl", len(embeddings))
    return Precomputed(folder, kind, embeddings, items, model_spec, model_sha256, metric, tta)


def load_vectors(path: str | Path, dim: int) -> np.ndarray:
    """Query vectors for `search --vectors`: a .npy of float [Q, dim] (or one [dim] row),
    validated like --from-embeddings' embeddings, as float32 [Q, dim]."""
    path = Path(path)
    if not path.is_file():
        raise PixdexError(f"{path} does not exist: --vectors takes a .npy file of float [queries, {dim}]")
    vectors = _embeddings(path, allow_row=True)
    if vectors.shape[1] != dim:
        raise PixdexError(f"{path} holds {vectors.shape[1]}-dim vectors but the index holds {dim}-dim ones")
    return vectors


def _embeddings(path: Path, allow_row: bool = False) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        # numpy's own text for an object array suggests unpickling it: never the advice here
        reason = "not the .npy format, or Python objects" if "pickle" in str(exc) else str(exc)
        raise PixdexError(f"{path} is not a .npy array of numbers ({reason}); write it with numpy.save") from None
    if array.dtype.kind != "f":
        raise PixdexError(f"{path} holds {array.dtype} values: embeddings must be floating point (float32)")
    if allow_row and array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise PixdexError(f"{path} has shape {list(array.shape)}: embeddings must be [items, dim], at least one row")
    for start in range(0, len(array), FINITE_CHUNK):
        block = np.asarray(array[start : start + FINITE_CHUNK])
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            row = start + int(np.argmax(bad))
            count = int(bad.sum())
            raise PixdexError(f"{path}: row {row} holds NaN or inf ({count} such rows from row {start} on)")
    return array if array.dtype == np.float32 else np.ascontiguousarray(array, dtype=np.float32)


class ItemStream:
    """The items of a precomputed folder, validated in one pass and read again (from the
    same open file, so a file replaced meanwhile is not the one re-read) as index records
    ``{"id", "row", "path", "label", ...}`` while the index folder is written: 8 bytes an
    item (its id) in memory, never a list of records."""

    def __init__(self, path: Path, rows: int) -> None:
        self.path = path
        self._fh = open(path, "rb")
        try:
            self.ids = self._validate(rows)
        except BaseException:
            self._fh.close()
            raise

    def __len__(self) -> int:
        return len(self.ids)

    def close(self) -> None:
        self._fh.close()

    @property
    def next_id(self) -> int:
        return int(self.ids.max()) + 1

    def _lines(self) -> Iterator[tuple[int, dict[str, Any]]]:
        self._fh.seek(0)
        for n, raw in enumerate(self._fh, 1):
            line = raw.decode("utf-8", "surrogateescape")
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as exc:
                raise PixdexError(f"{self.path}, line {n}: not JSON ({exc.msg})") from None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row, (_, record) in enumerate(self._lines()):
            yield {"id": int(self.ids[row]), "row": row, **{k: record[k] for k in ITEM_KEYS[1:] if k in record}}

    def _validate(self, rows: int) -> np.ndarray:
        ids, count, with_id = array("q"), 0, 0
        for n, record in self._lines():
            if not isinstance(record, dict) or not isinstance(record.get("path"), str) or not record["path"]:
                raise PixdexError(f'{self.path}, line {n}: each line must be an object with a "path" string')
            label = record.get("label")
            if label is not None and not isinstance(label, str):
                raise PixdexError(f'{self.path}, line {n}: "label" must be a string or null, not {label!r}')
            if "id" in record:
                value = record["id"]
                if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
                    raise PixdexError(f'{self.path}, line {n}: "id" must be a non-negative integer, not {value!r}')
                ids.append(value)
                with_id += 1
            count += 1
        if count != rows:
            raise PixdexError(f"{self.path} has {count} items but embeddings.npy has {rows} rows: they must match")
        if with_id == 0:
            return np.arange(count, dtype=np.int64)
        if with_id != count:
            raise PixdexError(f'{self.path}: {with_id} of {count} items have an "id": give every item one, or none')
        out = np.frombuffer(ids, dtype=np.int64).copy()
        ordered = np.sort(out)
        repeats = ordered[1:][ordered[1:] == ordered[:-1]]
        if len(repeats):
            raise PixdexError(f"{self.path}: id {int(repeats[0])} appears more than once: ids must be unique")
        return out
