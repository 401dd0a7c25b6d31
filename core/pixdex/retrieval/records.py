"""Per-item bookkeeping in bounded memory: the facts of every source file (size, mtime,
sha256) in three arrays, sha256 look-ups by binary search, and item records made as they
are written rather than held as dicts.

A Python dict of an item's facts costs about 400 bytes and an item record about 700; a
128-d float32 embedding is 512. Kept as arrays, the facts cost 48 bytes an item, and the
records exist one at a time while ``items.jsonl`` is written (docs/reliability.md,
promise 8; ``bench/memory.py`` measures it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

_CHUNK = 4096  # keys hashed per batch of threads: the pool never holds more futures than this


class FactTable(Sequence):
    """size, mtime and sha256 of N keys as arrays; ``table[i]`` is the dict
    :func:`pixdex.retrieval.embed.file_facts` gives (``error`` kept only for the rare
    key whose facts could not be read)."""

    def __init__(self, n: int) -> None:
        self.size = np.full(n, -1, dtype=np.int64)
        self.mtime = np.full(n, np.nan, dtype=np.float64)
        self.sha = np.zeros(n, dtype="S32")  # raw digests; b"" where there is none
        self.errors: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.size)

    def set(self, i: int, facts: dict[str, Any]) -> None:
        if facts.get("size") is not None:
            self.size[i] = facts["size"]
        if facts.get("mtime") is not None:
            self.mtime[i] = facts["mtime"]
        if facts.get("sha256"):
            self.sha[i] = bytes.fromhex(facts["sha256"])
        if facts.get("error"):
            self.errors[i] = facts["error"]

    def sha256(self, i: int) -> str | None:
        raw = self.sha[i]
        return raw.hex() if raw else None

    def __getitem__(self, i: Any) -> dict[str, Any]:
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]  # type: ignore[return-value]
        i = int(i)
        out: dict[str, Any] = {
            "size": int(self.size[i]) if self.size[i] >= 0 else None,
            "mtime": float(self.mtime[i]) if not np.isnan(self.mtime[i]) else None,
            "sha256": self.sha256(i),
        }
        if i in self.errors:
            out["error"] = self.errors[i]
        return out


def fact_table(keys: Sequence[str], opener: Any = None, threads: int = 4) -> FactTable:
    """:func:`pixdex.retrieval.embed.file_facts` of every key, hashed in threads (hashing
    releases the GIL, so the reads overlap), kept as a :class:`FactTable`."""
    from pixdex.retrieval.embed import file_facts

    table = FactTable(len(keys))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            for offset, facts in enumerate(pool.map(lambda k: file_facts(k, opener), chunk)):
                table.set(start + offset, facts)
    return table


class ShaSet:
    """Membership of sha256 hex digests by binary search in a sorted array (32 bytes an
    item, where a set of strings costs about 170)."""

    def __init__(self, digests: Iterable[str | None]) -> None:
        raw = np.fromiter((bytes.fromhex(d) for d in digests if d), dtype="S32")
        self._sorted = np.unique(raw)

    def __len__(self) -> int:
        return len(self._sorted)

    def __contains__(self, digest: object) -> bool:
        if not isinstance(digest, str) or not digest:
            return False
        key = np.array(bytes.fromhex(digest), dtype="S32")
        pos = int(np.searchsorted(self._sorted, key))
        return pos < len(self._sorted) and self._sorted[pos] == key


class NewItems:
    """The item records of freshly embedded rows, made one at a time on iteration: ``id``
    (from ``first_id``), ``path`` (absolute for files), ``label``, ``size``, ``mtime``,
    ``sha256``, and ``dataset`` (the DATA spec) for keys only their dataset opens."""

    def __init__(self, collection: Any, positions: np.ndarray, facts: Sequence[dict[str, Any]], first_id: int) -> None:
        self._collection, self._positions, self._facts, self._first = collection, positions, facts, first_id

    def __len__(self) -> int:
        return len(self._positions)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        items, spec = self._collection.items, self._collection.spec
        for offset, pos in enumerate(self._positions.tolist()):
            key, label = items[pos]
            f = self._facts[pos]
            # absolute, so thumbnails, `index remove` and search output work from any folder
            is_file = f.get("size") is not None
            record = {
                "id": self._first + offset,
                "path": os.path.abspath(key) if is_file else key,
                "label": label,
                "size": f.get("size"),
                "mtime": f.get("mtime"),
                "sha256": f.get("sha256"),
            }
            if not is_file and spec:
                record["dataset"] = spec  # `idx:train/000123` opens only through its dataset
            yield record


class Numbered:
    """Records renumbered ``row`` 0.. in order, ``id`` first: a sized iterable over one or
    more sized iterables of records (an open index's ItemTable, then new items), each
    iterated once, lazily."""

    def __init__(self, *parts: Any) -> None:
        self._parts = parts

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        row = 0
        for part in self._parts:
            for it in part:
                yield {"id": it["id"], "row": row, **{k: v for k, v in it.items() if k not in ("id", "row")}}
                row += 1


class Selected:
    """The records of ``rows`` (ascending) of a sequence, read as they are iterated."""

    def __init__(self, items: Sequence[dict[str, Any]], rows: np.ndarray) -> None:
        self._items, self._rows = items, rows

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in self._rows.tolist():
            yield self._items[row]
