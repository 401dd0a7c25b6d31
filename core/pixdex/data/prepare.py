"""From a DATA spec to the splits of training: open the dataset, split it, measure it.

Shared by train (train/val split of the training split) and evaluate (the test split).
File datasets are decoded by DataLoader workers; datasets with ``.as_tensors`` never
round-trip through PIL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pixdex.contracts import DataInfo, Dataset
from pixdex.data.datasets import map_labels, open_dataset, stratified_split
from pixdex.errors import PixdexError
from pixdex.plugins import PluginSet

PROBE_SAMPLE = 256  # images decoded to learn channels, size, mean and std


@dataclass
class Split:
    """One split's items: ``positions`` index into the dataset split's items (and tensors)."""

    keys: list[str]
    labels: list[int]
    positions: list[int]


@dataclass
class Prepared:
    dataset: Dataset
    split_name: str
    classes: list[str]
    train: Split
    val: Split
    tensors: tuple[torch.Tensor, torch.Tensor] | None
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def images_of(self, split: Split) -> torch.Tensor | None:
        """The decoded uint8 images of ``split`` when the dataset has tensors (IDX), else None."""
        if self.tensors is None:
            return None
        return (
            self.tensors[0][torch.tensor(split.positions, dtype=torch.long)] if split.positions else self.tensors[0][:0]
        )


def open_labelled(spec: str, pset: PluginSet, labels: str) -> Dataset:
    ds = open_dataset(spec, pset.registry, labels=labels)
    if not ds.classes:
        raise PixdexError(
            f"{spec} has no labels (it was read as an unlabelled collection); training needs one "
            f"subfolder per class, a csv/jsonl list with labels, or IDX files"
        )
    return ds


def prepare_training(spec: str, pset: PluginSet, data: dict[str, Any], seed: int) -> Prepared:
    """Open DATA, take its training split (never the test split) and carve a stratified,
    seeded validation set out of it."""
    from pixdex.data.datasets import training_split

    ds = open_labelled(spec, pset, data["labels"])
    split_name = training_split(ds)
    items = ds.items(split_name)
    if not items:
        raise PixdexError(f"{spec} has no images in its {split_name} split")
    numbered = [(str(i), label) for i, (_, label) in enumerate(items)]
    fraction = data["val_fraction"]
    if fraction > 0:
        train_items, val_items = stratified_split(numbered, fraction, seed)
    else:
        train_items, val_items = numbered, []
    classes = list(ds.classes)

    def to_split(chosen: list[tuple[str, Any]]) -> Split:
        positions = [int(k) for k, _ in chosen]
        return Split([items[p][0] for p in positions], map_labels([items[p] for p in positions], classes), positions)

    tensors = ds.as_tensors(split_name) if hasattr(ds, "as_tensors") else None
    return Prepared(ds, split_name, classes, to_split(train_items), to_split(val_items), tensors, list(ds.skipped))


def measure(prep: Prepared, max_pixels: int, num_classes: int, seed: int) -> DataInfo:
    """Channels, native size, per-channel mean/std and short side of the training data (a sample)."""
    if prep.tensors is not None:
        images = prep.tensors[0]
        gen = torch.Generator().manual_seed(seed)
        pos = torch.tensor(prep.train.positions)
        sample = images[pos[torch.randperm(len(pos), generator=gen)[:4096]]].float() / 255.0
        mean = sample.mean(dim=(0, 2, 3)).tolist()
        std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
        height, width = int(images.shape[2]), int(images.shape[3])
        return DataInfo(int(images.shape[1]), (height, width), num_classes, tuple(mean), tuple(std), min(height, width))
    from pixdex.data.images import probe_images

    stats = probe_images(prep.train.keys, sample=PROBE_SAMPLE, max_pixels=max_pixels, seed=seed)
    return DataInfo(
        stats.in_chans, stats.native_size, num_classes, tuple(stats.mean), tuple(stats.std), stats.short_side
    )
