"""An index folder's ``items.jsonl``, read on demand instead of into a list of dicts.

An open index used to hold one Python dict per item (about 1 KB each with its strings:
a gigabyte at a million items) for as long as it served. :class:`ItemTable` keeps a
read-only memory map of the file and the byte offset of every line (16 bytes an item),
and parses a line when it is asked for: a search touches only the k items it returns.
Committed files are replaced by rename, never rewritten, so the map stays valid for as
long as the table lives, even across a later commit.
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from pixdex.errors import ArtifactError

_SCAN = 1 << 26  # bytes scanned for line ends at a time: a bounded scratch buffer


class ItemTable(Sequence):
    """The records of ``items.jsonl`` in row order, as a read-only sequence of dicts
    (``table[row]``, ``len(table)``, iteration); blank lines are not rows."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            size = fh.seek(0, 2)
            self._data: Any = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        newlines = [
            np.flatnonzero(np.frombuffer(self._data, dtype=np.uint8, count=min(_SCAN, size - at), offset=at) == 0x0A)
            + at
            for at in range(0, size, _SCAN)
        ]
        ends = np.concatenate([*newlines, np.zeros(0, dtype=np.int64)]).astype(np.int64)
        starts = np.concatenate([[0], ends + 1]).astype(np.int64)[: len(ends)]
        if len(ends) == 0 or ends[-1] + 1 < size:  # a last line without its newline
            starts = np.append(starts, ends[-1] + 1 if len(ends) else 0)
            ends = np.append(ends, size)
        # rows are the lines holding more than whitespace, as read_items counts them; a
        # record is at least "{}", so only short lines need a look
        keep = ends > starts
        for i in np.flatnonzero(keep & (ends - starts < 8)).tolist():
            keep[i] = bool(self._data[starts[i] : ends[i]].strip())
        self._starts, self._ends = starts[keep], ends[keep]

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, row: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, row: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, row: int | slice) -> Any:
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(len(self)))]
        row = int(row)
        if row < 0:
            row += len(self)
        if not 0 <= row < len(self):
            raise IndexError(f"item row {row} out of range ({len(self)} items)")
        text = bytes(self._data[self._starts[row] : self._ends[row]]).decode("utf-8", "surrogateescape")
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise ArtifactError(f"{self.path}: row {row} is not valid JSON; the index folder is damaged") from None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in range(len(self)):
            yield self[row]

    def column(self, key: str) -> list[Any]:
        """One field of every item, in row order (a pass over the file)."""
        return [item.get(key) for item in self]


class RowsById:
    """item id -> row, by binary search in two arrays (16 bytes an item, where a dict of
    ids cost about 100): ``id in table``, ``table[id]``."""

    def __init__(self, items: Sequence) -> None:
        ids = np.fromiter((int(it["id"]) for it in items), dtype=np.int64, count=len(items))
        order = np.argsort(ids, kind="stable")
        self._ids, self._rows = ids[order], order.astype(np.int64)

    def _position(self, item_id: int) -> int | None:
        pos = int(np.searchsorted(self._ids, item_id))
        return pos if pos < len(self._ids) and self._ids[pos] == item_id else None

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, (int, np.integer)) and self._position(int(item_id)) is not None

    def __getitem__(self, item_id: int) -> int:
        pos = self._position(int(item_id))
        if pos is None:
            raise KeyError(item_id)
        return int(self._rows[pos])
