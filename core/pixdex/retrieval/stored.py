"""Indexes that hold their items themselves (``holds_items``: a vector database): the
views through which the rest of the core reads them as it reads a local folder's
``items.jsonl`` and ``embeddings.npy``, and the check of the database against the manifest.

The views fetch what is asked for: one row, a slice of rows, or every row streamed a
batch at a time; nothing is held but a small cache of the rows last read (a search
result's items).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pixdex.errors import ArtifactError

_CACHE_ROWS = 4096


def holds_items(index: Any) -> bool:
    """Whether an index plugin's object keeps the vectors and item records itself."""
    return bool(getattr(index, "holds_items", False))


def _rows(key: Any, n: int) -> list[int]:
    if isinstance(key, slice):
        return list(range(n))[key]
    rows = np.asarray(key).reshape(-1)
    if rows.dtype == bool:
        return np.flatnonzero(rows).tolist()
    return [int(r) + n if int(r) < 0 else int(r) for r in rows.tolist()]


class StoredItems(Sequence):
    """``index.items`` of an item-holding index: ``items[row]``, ``len``, iteration in row order."""

    def __init__(self, ann: Any, count: int) -> None:
        self._ann, self._count = ann, count
        self._cache: OrderedDict[int, dict[str, Any]] = OrderedDict()

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            return [self[r] for r in range(self._count)[key]]
        row = int(key) + (self._count if int(key) < 0 else 0)
        if not 0 <= row < self._count:
            raise IndexError(f"row {key} out of range for {self._count} items")
        if row not in self._cache:
            self.prefetch([row])
        return self._cache[row]

    def prefetch(self, rows: Sequence[int]) -> None:
        """Read ``rows`` in one request (a search result's rows, before they are shown)."""
        wanted = [int(r) for r in rows if 0 <= int(r) < self._count and int(r) not in self._cache]
        for row, item in zip(wanted, self._ann.items(wanted) if wanted else []):
            self._cache[row] = item
            if len(self._cache) > _CACHE_ROWS:
                self._cache.popitem(last=False)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for _, _, items in self._ann.scan(with_vectors=False):
            yield from items


class StoredVectors:
    """``index.embeddings`` of an item-holding index: ``shape``, ``vectors[rows]`` (an int,
    a slice or an array of rows) and ``np.asarray(vectors)`` (every row, streamed in)."""

    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(self, ann: Any, count: int, dim: int) -> None:
        self._ann, self.shape = ann, (count, dim)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self._ann.vectors([int(key) + (self.shape[0] if int(key) < 0 else 0)])[0]
        rows = _rows(key, self.shape[0])
        return self._ann.vectors(rows) if rows else np.zeros((0, self.shape[1]), dtype=np.float32)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.float32)
        for rows, vectors, _ in self._ann.scan(with_vectors=True):
            out[rows] = vectors
        return out if dtype is None else out.astype(dtype)


def check_store(folder: Path, manifest: dict[str, Any], ann: Any) -> None:
    """Refuse, in one line, a database that does not hold what the manifest says: another
    count, dim or metric, or vectors made by another model."""
    try:
        held = ann.describe()
    except Exception as exc:  # a database that cannot answer: one line, never a traceback
        raise ArtifactError(f"{folder}: the index's database could not be read: {type(exc).__name__}: {exc}") from None
    where = f"{folder}: the database collection {getattr(ann, 'version', '')}".rstrip()
    for key in ("count", "dim", "metric"):
        if held.get(key) != manifest.get(key):
            raise ArtifactError(
                f"{where} holds {key} {held.get(key)!r} but the manifest says {manifest.get(key)!r} "
                "(changed outside pixdex); rebuild the index"
            )
    want = (manifest.get("model") or {}).get("sha256")
    got = (held.get("meta") or {}).get("model_sha256")
    if want != got:
        raise ArtifactError(
            f"{where} was written for model {str(got)[:12]} but the folder's model is {str(want)[:12]}; "
            "rebuild the index"
        )
