"""What the built-in readers share: a Dataset made of named splits of listed items."""

from __future__ import annotations

import os
from typing import Any, Optional

from pixdex.plugin_api import Item, PixdexError, natural_key

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")


def sort_classes(names: Any) -> list[str]:
    """Class names in natural order ('class2' before 'class10'), ties broken exactly."""
    return sorted(set(names), key=lambda n: (natural_key(n), n))


class ListedDataset:
    """A Dataset (pixdex.contracts.Dataset) whose splits are lists of (path or key, label).

    ``items("all")`` always works: it is every split's items, in split order, so
    ``evaluate`` and ``embed`` can read a divided data set whole.
    """

    def __init__(
        self, splits: dict[str, list[Item]], skipped: list[dict[str, str]] | None = None, *, where: str = ""
    ) -> None:
        self._splits = splits
        self.skipped: list[dict[str, str]] = list(skipped or [])
        self.classes: list[str] = sort_classes(
            label for items in splits.values() for _, label in items if label is not None
        )
        self.where = where

    def splits(self) -> list[str]:
        """Split names in a fixed order (train, val, test), or ['all']."""
        return list(self._splits)

    def items(self, split: str) -> list[Item]:
        """The split's ``(path or key, class name or None)`` pairs, in a stable order."""
        if split in self._splits:
            return list(self._splits[split])
        if split == "all":
            return [item for items in self._splits.values() for item in items]
        raise PixdexError(f"DATA {self.where} has no split '{split}' (splits: {', '.join(self._splits)})")

    def __len__(self) -> int:
        return sum(len(v) for v in self._splits.values())

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self._splits.items())
        return f"<{type(self).__name__} {self.where} {sizes} classes={len(self.classes)}>"


def existing_path(path: str, reader: str) -> str:
    """``path`` with ``~`` expanded, or a one-line error when it is not there."""
    path = os.path.expanduser(os.fsdecode(path))
    if not path:
        raise PixdexError(f"dataset '{reader}' needs a path: {reader}:PATH")
    if not os.path.exists(path):
        raise PixdexError(f"DATA path {path} does not exist")
    return path


def optional_label(value: Optional[object]) -> Optional[str]:
    """A list file's label cell: empty or null means unlabelled; numbers become text."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None
