"""Batches of uint8 images for training and inference, from files or from tensors.

Two sources with one interface: :class:`TensorSource` (data already decoded, e.g. IDX;
it never round-trips through PIL and can live on the GPU) and :class:`FileSource`
(DataLoader workers decode files with the transform's ``.load``). Both yield
``(uint8[B, C, H, W] on device, int64 labels, int64 item indices)``; the transform's
``.batch`` then runs on the device. Skipped files are collected once per path.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from pixdex.contracts import Transform

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The item order of one epoch: a permutation seeded by (seed, epoch), so a resumed
    run sees exactly the order an uninterrupted one would."""
    if not shuffle:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen)


def pk_order(labels: torch.Tensor, p: int, k: int, seed: int, epoch: int) -> torch.Tensor:
    """An epoch of P x K batches for metric-learning losses: each consecutive block of
    ``p * k`` items holds ``p`` distinct classes with ``k`` items each (drawn with
    replacement only when a class has fewer than ``k``). About one pass over the data."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch + 7)
    labels = labels.cpu()
    classes = torch.unique(labels)
    p = min(p, len(classes))
    members = {int(c): torch.nonzero(labels == c).flatten() for c in classes}
    n_batches = max(1, len(labels) // (p * k))
    blocks = []
    for _ in range(n_batches):
        chosen = classes[torch.randperm(len(classes), generator=gen)[:p]]
        for c in chosen.tolist():
            pool = members[c]
            if len(pool) >= k:
                pick = pool[torch.randperm(len(pool), generator=gen)[:k]]
            else:
                pick = pool[torch.randint(len(pool), (k,), generator=gen)]
            blocks.append(pick)
    return torch.cat(blocks)


def fit_to(images: torch.Tensor, in_chans: int, size: tuple[int, int]) -> torch.Tensor:
    """Adapt decoded uint8 tensors to a model's channels and size (tensor path only)."""
    if images.shape[1] != in_chans:
        images = (
            images.expand(-1, in_chans, -1, -1)
            if images.shape[1] == 1
            else images.float().mean(1, keepdim=True).round().to(torch.uint8)
        )
    if tuple(images.shape[-2:]) != tuple(size):
        images = (
            F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
            .round()
            .clamp(0, 255)
            .to(torch.uint8)
        )
    return images.contiguous()


class TensorSource:
    """Batches from an in-memory uint8 tensor (kept on ``device`` when it is a GPU)."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: Transform,
        *,
        batch_size: int,
        device: str,
        seed: int = 0,
    ) -> None:
        keep_on = device if device.startswith("cuda") else "cpu"
        self.images = images.to(keep_on)
        self.labels = labels.to(keep_on)
        self.transform = transform
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.skipped: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.images)

    def batches(
        self, epoch: int = 0, *, shuffle: bool = False, drop_last: bool = False, order: torch.Tensor | None = None
    ) -> Iterator[Batch]:
        order = epoch_order(len(self), self.seed, epoch, shuffle) if order is None else order
        order = order.to(self.images.device)
        stop = len(order) - (len(order) % self.batch_size if drop_last else 0)
        for start in range(0, stop, self.batch_size):
            idx = order[start : start + self.batch_size]
            x = fit_to(self.images[idx], self.transform.in_chans, self.transform.size)
            yield (x.to(self.device, non_blocking=True), self.labels[idx].to(self.device, non_blocking=True), idx.cpu())


class _Order(torch.utils.data.Sampler):
    def __init__(self, order: torch.Tensor) -> None:
        self.order = order

    def __iter__(self) -> Iterator[int]:
        return iter(self.order.tolist())

    def __len__(self) -> int:
        return len(self.order)


def draft_size_for(transform: Transform) -> tuple[int, int] | None:
    """The (height, width) a transform's ``.load`` shrinks every image to at least, or None.

    Known only for transforms that say how they resize: ``.size`` (H, W) and ``.crop_pct``
    (``load`` resizes to cover ``size / crop_pct``, then crops ``size``, as the built-in
    transforms do). Rounded up, so a decoder asked for it never undershoots ``load``'s own
    resize. Any other transform gets None: its images are decoded in full.
    """
    size = getattr(transform, "size", None)
    crop_pct = getattr(transform, "crop_pct", None)
    try:
        height, width = (int(s) for s in size)  # type: ignore[union-attr]
        crop_pct = float(crop_pct)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if height < 1 or width < 1 or not 0.0 < crop_pct <= 1.0:
        return None
    return math.ceil(height / crop_pct), math.ceil(width / crop_pct)


class FileSource:
    """Batches decoded from files by DataLoader workers (order kept, skips reported).

    Large JPEGs are decoded at a reduced scale that still covers what the transform's
    ``.load`` resizes to (:func:`draft_size_for`).
    """

    def __init__(
        self,
        paths: list[str],
        labels: list[int],
        transform: Transform,
        *,
        batch_size: int,
        device: str,
        workers: int,
        max_pixels: int,
        seed: int = 0,
        opener: Any = None,
    ) -> None:
        from pixdex.data.loading import ImageFiles

        # opener: a dataset's own .image(key) for keys that are not file paths
        self.dataset = ImageFiles(
            list(zip(paths, labels)),
            transform.load,
            max_pixels=max_pixels,
            opener=opener,
            draft_size=draft_size_for(transform),
        )
        self.paths = paths
        self.batch_size = batch_size
        self.device = device
        self.workers = workers
        self.seed = seed
        self._skipped: dict[str, dict[str, Any]] = {}

    @property
    def skipped(self) -> list[dict[str, Any]]:
        return list(self._skipped.values())

    def __len__(self) -> int:
        return len(self.paths)

    def batches(
        self, epoch: int = 0, *, shuffle: bool = False, drop_last: bool = False, order: torch.Tensor | None = None
    ) -> Iterator[Batch]:
        from pixdex.data.loading import collate

        order = epoch_order(len(self), self.seed, epoch, shuffle) if order is None else order
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=_Order(order),
            num_workers=self.workers,
            collate_fn=collate,
            pin_memory=self.device.startswith("cuda"),
            drop_last=drop_last,
            persistent_workers=False,
        )
        for images, labels, indices, skips in loader:
            for skip in skips:
                self._skipped.setdefault(skip["path"], skip)
            if len(indices) == 0:
                continue
            yield (images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True), indices)


def make_source(
    keys: Sequence[str],
    labels: Sequence[int] | None,
    transform: Transform,
    *,
    runtime: Mapping[str, Any],
    device: str,
    max_pixels: int,
    seed: int = 0,
    opener: Any = None,
    images: torch.Tensor | None = None,
) -> TensorSource | FileSource:
    """The batch source of every command: ``images`` (uint8 [N, C, H, W], already decoded,
    as IDX datasets give them) when given, else ``keys`` decoded by ``runtime["workers"]``
    DataLoader workers. ``labels`` default to -1 (unlabelled)."""
    if runtime["batch_size"] == "auto":
        raise ValueError("make_source needs a concrete batch size: resolve runtime.batch_size = 'auto' first")
    labels = list(labels) if labels is not None else [-1] * len(keys)
    if images is not None:
        return TensorSource(
            images,
            torch.tensor(labels, dtype=torch.long),
            transform,
            batch_size=runtime["batch_size"],
            device=device,
            seed=seed,
        )
    return FileSource(
        list(keys),
        labels,
        transform,
        batch_size=runtime["batch_size"],
        device=device,
        workers=runtime["workers"],
        max_pixels=max_pixels,
        seed=seed,
        opener=opener,
    )
