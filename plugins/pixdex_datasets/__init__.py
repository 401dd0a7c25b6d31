"""pixdex_datasets: the built-in dataset readers (idx, folder, csv, jsonl, collection).

Built in, but shaped exactly like a third-party plugin package. The registration order is
the detection order for a plain DATA path (pixdex.data.datasets.open_dataset): MNIST-format IDX
files, then class folders (train/val/test or ImageFolder), then list files by suffix,
then any folder or image as an unlabelled collection.

Only the standard library and pixdex are imported here; numpy, Pillow and torch load
when data is read, so ``pixdex --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pixdex.hookspecs import hookimpl
from pixdex_datasets.folder import (
    CollectionDataset,
    CollectionOptions,
    FolderDataset,
    FolderOptions,
    detect_collection,
    detect_folder,
    make_collection,
    make_folder,
)
from pixdex_datasets.idx import IdxDataset, IdxOptions, detect_idx, make_idx
from pixdex_datasets.listfile import ListFileDataset, ListFileOptions, detect_csv, detect_jsonl, make_csv, make_jsonl

if TYPE_CHECKING:
    from pixdex.plugin_api import Register

__all__ = [
    "register_datasets",
    "IdxDataset",
    "FolderDataset",
    "CollectionDataset",
    "ListFileDataset",
    "IdxOptions",
    "FolderOptions",
    "CollectionOptions",
    "ListFileOptions",
]


@hookimpl
def register_datasets(register: Register) -> None:
    """Register the built-in readers, in detection order."""
    register(
        "idx",
        make_idx,
        options=IdxOptions,
        argument="path",
        detect=detect_idx,
        description="MNIST-format IDX files (MNIST, Fashion-MNIST), gzipped or not",
    )
    register(
        "folder",
        make_folder,
        options=FolderOptions,
        argument="path",
        detect=detect_folder,
        description="one subfolder per class, optionally under train/ val/ test/",
    )
    register(
        "csv",
        make_csv,
        options=ListFileOptions,
        argument="path",
        detect=detect_csv,
        description="a CSV of path,label rows (paths relative to the file)",
    )
    register(
        "jsonl",
        make_jsonl,
        options=ListFileOptions,
        argument="path",
        detect=detect_jsonl,
        description='a JSONL file of {"path", "label"} objects (paths relative to the file)',
    )
    register(
        "collection",
        make_collection,
        options=CollectionOptions,
        argument="path",
        detect=detect_collection,
        description="every image below a folder, unlabelled",
    )
