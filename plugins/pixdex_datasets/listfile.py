"""List-file readers: ``csv`` and ``jsonl`` files of ``path,label`` pairs.

Image paths are relative to the list file's folder (absolute paths are kept). A label
that is empty or null means unlabelled. An optional ``split`` column (train, val or test)
divides the list; without it the list is one split, ``all``.

CSV: a header row naming ``path`` (and ``label`` or ``class``, optionally ``split``) is
recognised; without one, the columns are ``path[,label]``. JSONL: one object per line,
``{"path": ..., "label": ...}``; blank lines are ignored. Files are read as UTF-8 (a BOM
is allowed); undecodable bytes survive as surrogate escapes, like os.fsdecode names.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from pixdex.plugin_api import Item, PixdexError, skip_entry
from pixdex_datasets.base import SPLIT_NAMES, ListedDataset, existing_path, optional_label


@dataclass
class ListFileOptions:
    """``csv:FILE`` or ``jsonl:FILE``: a list of image paths and class names."""

    path: str = ""


def detect_csv(path: str) -> bool:
    """A file whose name ends in .csv."""
    return path.lower().endswith(".csv") and os.path.isfile(path)


def detect_jsonl(path: str) -> bool:
    """A file whose name ends in .jsonl."""
    return path.lower().endswith(".jsonl") and os.path.isfile(path)


class ListFileDataset(ListedDataset):
    """The rows of a CSV or JSONL list file."""


def _rows_csv(path: str) -> Iterable[tuple[int, str, Optional[str], Optional[str]]]:
    import csv

    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh)
        columns: dict[str, int] = {"path": 0, "label": 1}
        for row in reader:
            line = reader.line_num
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            if line == 1 and "path" in {c.lower() for c in cells}:
                names = [c.lower() for c in cells]
                columns = {"path": names.index("path")}
                for key, aliases in (("label", ("label", "class")), ("split", ("split",))):
                    for alias in aliases:
                        if alias in names:
                            columns[key] = names.index(alias)
                            break
                continue

            def cell(key: str) -> Optional[str]:
                i = columns.get(key)
                return cells[i] if i is not None and i < len(cells) else None

            yield line, cell("path") or "", optional_label(cell("label")), cell("split")


def _rows_jsonl(path: str) -> Iterable[tuple[int, str, Optional[str], Optional[str]]]:
    import json

    with open(path, encoding="utf-8-sig", errors="surrogateescape") as fh:
        for line, text in enumerate(fh, 1):
            if not text.strip():
                continue
            try:
                row: Any = json.loads(text)
            except ValueError as exc:
                raise PixdexError(f"{path}:{line}: not valid JSON ({exc})") from None
            if not isinstance(row, dict) or not isinstance(row.get("path"), str):
                raise PixdexError(f'{path}:{line}: expected an object with a "path" string')
            label = row.get("label", row.get("class"))
            split = row.get("split")
            yield line, row["path"], optional_label(label), None if split is None else str(split)


def _read(options: ListFileOptions, reader: str, rows_of: Any) -> ListFileDataset:
    list_file = existing_path(options.path, reader)
    if not os.path.isfile(list_file):
        raise PixdexError(f"DATA path {list_file} is not a {reader} file")
    base = os.path.dirname(list_file)
    splits: dict[str, list[Item]] = {}
    skipped: list[dict[str, str]] = []
    any_split = False
    for line, image, label, split in rows_of(list_file):
        if not image:
            raise PixdexError(f"{list_file}:{line}: empty image path")
        if split:
            any_split = True
            if split not in SPLIT_NAMES:
                raise PixdexError(f"{list_file}:{line}: split must be one of {', '.join(SPLIT_NAMES)}, got {split!r}")
        elif any_split:
            raise PixdexError(f"{list_file}:{line}: no split, while earlier rows have one")
        full = os.path.join(base, os.path.expanduser(image))
        problem = _listing_problem(full)
        if problem:
            skipped.append(problem)
            continue
        splits.setdefault(split or "all", []).append((full, label))
    if any_split:
        splits = {name: splits[name] for name in SPLIT_NAMES if name in splits}
    if not splits:
        example = f" ({len(skipped)} skipped, e.g. {skipped[0]['path']}: {skipped[0]['reason']})" if skipped else ""
        raise PixdexError(f"DATA {list_file} lists no usable images{example}")
    return ListFileDataset(splits, skipped, where=list_file)


def _listing_problem(path: str) -> Optional[dict[str, str]]:
    """What listing can tell without decoding: missing, dangling link, not a file."""
    try:
        lst = os.lstat(path)
    except OSError:
        return skip_entry(path, "missing", "listed, but no such file")
    try:
        st = os.stat(path) if stat.S_ISLNK(lst.st_mode) else lst
    except OSError as exc:
        return skip_entry(path, "broken-link", exc.strerror or str(exc))
    if not stat.S_ISREG(st.st_mode):
        return skip_entry(path, "not-a-file", "is a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file")
    return None


def make_csv(options: ListFileOptions, *, spec: str = "") -> ListFileDataset:
    """Factory of ``csv``."""
    return _read(options, "csv", _rows_csv)


def make_jsonl(options: ListFileOptions, *, spec: str = "") -> ListFileDataset:
    """Factory of ``jsonl``."""
    return _read(options, "jsonl", _rows_jsonl)
