"""The ``idx`` reader: MNIST-format IDX files (MNIST, Fashion-MNIST), gzipped or not.

Layouts found from the folder given:

* Debian / plain: the files directly in the folder (``idx:/usr/share/datasets/fashion-mnist``);
* torchvision: ``raw/`` below it, or ``FashionMNIST/raw/`` or ``MNIST/raw/``.

File names are ``{train,t10k}-images-idx3-ubyte`` and ``...-labels-idx1-ubyte`` (also with
a ``.`` before ``idx``, as some mirrors name them), optionally ``.gz``. ``train`` becomes
the split ``train`` and ``t10k`` the split ``test``.

Class names: with ``kind = "auto"`` (the default), the folder holding the files (and its
parent, when that folder is torchvision's ``raw``) decides: a name containing "fashion"
(any case) gives Fashion-MNIST's ten names, anything else the digits '0'..'9'. Set
``kind`` to ``fashion-mnist`` or ``mnist`` to decide explicitly.

Items are keys, ``idx:train/000123``, that :meth:`IdxDataset.image` decodes; training
reads whole splits with :meth:`IdxDataset.as_tensors` and never goes through PIL.
numpy and torch are imported only when the data is read.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from pixdex.plugin_api import Item, PixdexError
from pixdex_datasets.base import existing_path, sort_classes

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGIT_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
KINDS = ("auto", "fashion-mnist", "mnist")
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
SUBFOLDERS = ("", "raw", os.path.join("FashionMNIST", "raw"), os.path.join("MNIST", "raw"))
IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


@dataclass
class IdxOptions:
    """``idx:PATH``: a folder holding MNIST-format IDX files; ``kind`` names the classes."""

    path: str = ""
    kind: str = "auto"


def _candidates(prefix: str, what: str, ndim: int) -> list[str]:
    names = []
    for sep in ("-", "."):
        base = f"{prefix}-{what}{sep}idx{ndim}-ubyte"
        names += [base, base + ".gz"]
    return names


def find_idx_files(path: str) -> tuple[str, dict[str, tuple[str, str]]]:
    """Return ``(folder, {split: (images file, labels file)})`` for the first layout that has any."""
    for sub in SUBFOLDERS:
        folder = os.path.join(path, sub) if sub else path
        if not os.path.isdir(folder):
            continue
        found: dict[str, tuple[str, str]] = {}
        for split, prefix in SPLIT_PREFIX.items():
            images = _first_file(folder, _candidates(prefix, "images", 3))
            labels = _first_file(folder, _candidates(prefix, "labels", 1))
            if images and labels:
                found[split] = (images, labels)
        if found:
            return folder, found
    return path, {}


def _first_file(folder: str, names: list[str]) -> Optional[str]:
    for name in names:
        full = os.path.join(folder, name)
        if os.path.isfile(full):
            return full
    return None


def detect_idx(path: str) -> bool:
    """A folder with a train or t10k pair of IDX image and label files (any known layout)."""
    return os.path.isdir(path) and bool(find_idx_files(path)[1])


def is_fashion(folder: str) -> bool:
    """Whether the folder holding the files (or its parent, for ``raw``) mentions 'fashion'."""
    folder = os.path.abspath(folder)
    names = [os.path.basename(folder)]
    if names[0] == "raw":
        names.append(os.path.basename(os.path.dirname(folder)))
    return any("fashion" in n.lower() for n in names)


def read_idx(path: str, expect_magic: int) -> "np.ndarray":
    """Read one IDX file (gzipped or raw, sniffed by content) into a uint8 array.

    The magic number and the declared dimensions are checked against the data; a
    mismatch is a :class:`PixdexError` naming the file.
    """
    import numpy as np

    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
        opener: Any = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:  # gzip raises these on a damaged stream
        raise PixdexError(f"corrupt IDX file {path}: {exc}") from None
    if len(data) < 4:
        raise PixdexError(f"corrupt IDX file {path}: {len(data)} bytes, too short for a header")
    magic = int.from_bytes(data[:4], "big")
    if magic != expect_magic:
        raise PixdexError(f"corrupt IDX file {path}: magic number 0x{magic:08x}, expected 0x{expect_magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise PixdexError(f"corrupt IDX file {path}: header cut short")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise PixdexError(
            f"corrupt IDX file {path}: header declares {'x'.join(map(str, dims))} "
            f"= {expected} bytes of data, file holds {len(data) - header}"
        )
    # a writable copy: torch.from_numpy warns about read-only buffers
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


class IdxDataset:
    """MNIST-format data: splits ``train`` and/or ``test``, items keyed ``idx:SPLIT/NNNNNN``."""

    def __init__(self, folder: str, files: dict[str, tuple[str, str]], classes: tuple[str, ...]) -> None:
        self.folder = folder
        self._files = files
        self._names = classes
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.skipped: list[dict[str, str]] = []
        self.classes: list[str] = sort_classes(classes)

    def splits(self) -> list[str]:
        """``train`` and/or ``test``, whichever files are present."""
        return list(self._files)

    def arrays(self, split: str) -> tuple["np.ndarray", "np.ndarray"]:
        """``(uint8[N, H, W], uint8[N])`` for a split, read once and kept."""
        if split not in self._files:
            raise PixdexError(f"DATA {self.folder} has no split '{split}' (splits: {', '.join(self._files)})")
        if split not in self._arrays:
            images_file, labels_file = self._files[split]
            images = read_idx(images_file, IMAGES_MAGIC)
            labels = read_idx(labels_file, LABELS_MAGIC)
            if len(images) != len(labels):
                raise PixdexError(f"corrupt IDX pair in {self.folder}: {len(images)} images but {len(labels)} labels")
            if len(labels) and int(labels.max()) >= len(self._names):
                raise PixdexError(
                    f"IDX file {labels_file} has label {int(labels.max())}, but the idx "
                    f"reader knows {len(self._names)} classes (MNIST, Fashion-MNIST): "
                    "corrupt, or another data set"
                )
            self._arrays[split] = (images, labels)
        return self._arrays[split]

    def _split_names(self, split: str) -> list[str]:
        return list(self._files) if split == "all" else [split]

    def items(self, split: str) -> list[Item]:
        """``("idx:SPLIT/NNNNNN", class name)`` per image; ``all`` is train then test."""
        out: list[Item] = []
        for name in self._split_names(split):
            _, labels = self.arrays(name)
            out += [(f"idx:{name}/{i:06d}", self._names[int(y)]) for i, y in enumerate(labels)]
        return out

    def as_tensors(self, split: str) -> tuple["torch.Tensor", "torch.Tensor"]:
        """``(uint8[N, 1, H, W], int64[N])``: the split's images and class indices into ``.classes``."""
        import numpy as np
        import torch

        images, labels = [], []
        for name in self._split_names(split):
            x, y = self.arrays(name)
            images.append(x)
            labels.append(y)
        x_all = np.concatenate(images) if len(images) > 1 else images[0]
        y_all = np.concatenate(labels) if len(labels) > 1 else labels[0]
        # labels index the file's class order; .classes is sorted, so remap
        remap = np.array([self.classes.index(n) for n in self._names], dtype=np.int64)
        return torch.from_numpy(np.ascontiguousarray(x_all)).unsqueeze(1), torch.from_numpy(remap[y_all])

    def image(self, key: str) -> "Image.Image":
        """Decode an item key (``idx:train/000123``) to a PIL image in mode L."""
        from PIL import Image

        try:
            prefix, rest = key.split(":", 1)
            split, number = rest.split("/", 1)
            index = int(number)
            assert prefix == "idx" and split in self._files
        except (ValueError, AssertionError):
            raise PixdexError(f"not an IDX item key: {key!r} (expected idx:SPLIT/NNNNNN)") from None
        images, _ = self.arrays(split)
        if not 0 <= index < len(images):
            raise PixdexError(f"IDX item {key} is out of range ({len(images)} images in {split})")
        return Image.fromarray(images[index], mode="L")

    def __repr__(self) -> str:
        return f"<IdxDataset {self.folder} splits={self.splits()} classes={len(self.classes)}>"


def make_idx(options: IdxOptions, *, spec: str = "") -> IdxDataset:
    """Factory of ``idx``: find the files and decide the class names; data is read on first use."""
    if options.kind not in KINDS:
        raise PixdexError(f"dataset 'idx' option 'kind' must be one of {', '.join(KINDS)}, got {options.kind!r}")
    root = existing_path(options.path, "idx")
    folder, files = find_idx_files(root)
    if not files:
        raise PixdexError(
            f"DATA path {root} holds no IDX files (train-images-idx3-ubyte[.gz] and "
            "train-labels-idx1-ubyte[.gz], or t10k-*), directly or under raw/ or FashionMNIST/raw/"
        )
    fashion = options.kind == "fashion-mnist" or (options.kind == "auto" and is_fashion(folder))
    return IdxDataset(folder, files, FASHION_MNIST_CLASSES if fashion else DIGIT_CLASSES)
