"""Folder readers: ``folder`` (class subfolders, optionally under train/val/test) and
``collection`` (every image below a folder, unlabelled).

Detection of a plain path (pixdex.data.datasets.open_dataset asks the readers in order):

* subfolders that are only ``train``, ``val`` and ``test`` -> ``folder``, split layout
  (each split holds class folders; a split holding only loose images is unlabelled);
* every image exactly one level deep, across at least two subfolders -> ``folder``
  (torchvision's ImageFolder layout);
* any other folder, or a single image file -> ``collection``.

Hidden entries (names starting with ".") are ignored, as pixdex.data.images.list_images does,
so a stray ``.ipynb_checkpoints`` is never a class.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Iterator

from pixdex.plugin_api import Item, PixdexError, has_image_extension, list_images, skip_entry
from pixdex_datasets.base import SPLIT_NAMES, ListedDataset, existing_path


@dataclass
class FolderOptions:
    """``folder:PATH``: one subfolder per class, optionally inside train/val/test folders."""

    path: str = ""


@dataclass
class CollectionOptions:
    """``collection:PATH``: every image below PATH (or the one image PATH), unlabelled."""

    path: str = ""


# ----------------------------------------------------------------------------- detect


def _subfolders(path: str) -> list[str]:
    """Names of the visible subfolders of ``path`` (links to folders count)."""
    try:
        with os.scandir(path) as entries:
            return sorted(e.name for e in entries if not e.name.startswith(".") and _is_dir(e))
    except OSError:
        return []


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


def is_split_layout(path: str) -> bool:
    """True when ``path``'s subfolders are only train, val and test (at least one of them)."""
    if not os.path.isdir(path):
        return False
    subs = _subfolders(path)
    return bool(subs) and set(subs) <= set(SPLIT_NAMES)


def _image_depths(root: str) -> Iterator[tuple[int, str]]:
    """Yield ``(depth, first folder)`` for each image file below ``root``, lazily.

    Breadth first, each directory once by (st_dev, st_ino), so a caller can stop early
    and symbolic link loops end.
    """
    seen: set[tuple[int, int]] = set()
    queue: list[tuple[str, int, str]] = [(root, 0, "")]
    while queue:
        folder, depth, first = queue.pop(0)
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as entries:
                listing = list(entries)
        except OSError:
            continue
        for entry in sorted(listing, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            try:
                mode = entry.stat(follow_symlinks=True).st_mode
            except OSError:
                continue
            if stat.S_ISDIR(mode):
                queue.append((entry.path, depth + 1, first or entry.name))
            elif stat.S_ISREG(mode) and has_image_extension(entry.name):
                yield depth, first


def is_image_folder(path: str) -> bool:
    """True when every image is exactly one level deep, in at least two subfolders."""
    if not os.path.isdir(path):
        return False
    classes: set[str] = set()
    for depth, first in _image_depths(path):
        if depth != 1:
            return False  # loose images at the top, or nested deeper: not ImageFolder
        classes.add(first)
    return len(classes) >= 2


def detect_folder(path: str) -> bool:
    """Recognise the split layout or the ImageFolder layout."""
    return is_split_layout(path) or is_image_folder(path)


def detect_collection(path: str) -> bool:
    """Any existing folder, or a single file with an image extension."""
    return os.path.isdir(path) or (os.path.isfile(path) and has_image_extension(path))


# ---------------------------------------------------------------------------- readers


def read_class_folders(root: str, *, loose_unlabelled: bool = False) -> tuple[list[Item], list[dict[str, str]]]:
    """Items of an ImageFolder tree: class = first folder below ``root``.

    Images nested deeper belong to their first-level folder (as in torchvision's
    ImageFolder). Images directly in ``root`` have no class: they are reported as
    ``no-class``, unless ``loose_unlabelled`` and every image is loose, which makes the
    folder an unlabelled split (``train/*.jpg`` beside ``test/*.jpg``).
    """
    paths, skipped = list_images(root)
    labelled: list[Item] = []
    loose: list[str] = []
    prefix = root.rstrip(os.sep) + os.sep  # list_images joins onto root as given
    for path in paths:
        rel = path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, root)
        parts = rel.split(os.sep)
        if len(parts) < 2:
            loose.append(path)
        else:
            labelled.append((path, parts[0]))
    if loose and not labelled and loose_unlabelled:
        return [(path, None) for path in loose], skipped
    skipped += [skip_entry(path, "no-class", "image is not inside a class folder") for path in loose]
    return labelled, skipped


class FolderDataset(ListedDataset):
    """Class subfolders, either at the top (split 'all') or under train/val/test."""


class CollectionDataset(ListedDataset):
    """Every image below a folder (split 'all'), unlabelled."""


def make_folder(options: FolderOptions, *, spec: str = "") -> FolderDataset:
    """Factory of ``folder``: read the split layout or the ImageFolder layout."""
    root = existing_path(options.path, "folder")
    if not os.path.isdir(root):
        raise PixdexError(f"DATA path {root} is not a folder (folder:PATH needs class subfolders)")
    splits: dict[str, list[Item]] = {}
    skipped: list[dict[str, str]] = []
    split_layout = is_split_layout(root)
    if split_layout:
        for name in SPLIT_NAMES:
            if os.path.isdir(os.path.join(root, name)):
                splits[name], split_skipped = read_class_folders(os.path.join(root, name), loose_unlabelled=True)
                skipped.extend(split_skipped)
    else:
        splits["all"], skipped = read_class_folders(root)
    dataset = FolderDataset(splits, skipped, where=root)
    if not split_layout and not dataset.classes:
        raise PixdexError(
            f"DATA path {root} has no class subfolders with images"
            f"{_skip_summary(skipped)} (an unlabelled folder reads with --labels none)"
        )
    if not len(dataset):
        raise PixdexError(f"DATA path {root} holds no image files in {', '.join(splits)}{_skip_summary(skipped)}")
    return dataset


def make_collection(options: CollectionOptions, *, spec: str = "") -> CollectionDataset:
    """Factory of ``collection``: every image file below the folder, no labels."""
    root = existing_path(options.path, "collection")
    paths, skipped = list_images(root)
    if not paths:
        raise PixdexError(f"DATA path {root} holds no image files{_skip_summary(skipped)}")
    return CollectionDataset({"all": [(p, None) for p in paths]}, skipped, where=root)


def _skip_summary(skipped: list[dict[str, str]]) -> str:
    if not skipped:
        return ""
    first = skipped[0]
    return f" ({len(skipped)} skipped, e.g. {first['path']}: {first['reason']})"
