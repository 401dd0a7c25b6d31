"""From a DATA argument to a Dataset, and the split and label rules every command shares.

``DATA`` is either ``NAME:ARG`` naming a registered dataset component (``folder:/x``,
``idx:/usr/share/datasets/fashion-mnist``, ``csv:list.csv``) or a plain path, which the
registered components' ``detect`` functions recognise in registration order (the
built-ins: idx, folder, csv, jsonl, collection).

Split rules (docs/architecture.md): training reads the ``train`` split (else everything)
and never a ``test`` split; validation is a seeded, stratified fraction of the training
items; evaluation reads ``test`` when the data has one, else everything. Labels travel as
class names and are matched to a model's classes by name.

No torch, numpy or Pillow import here.
"""

from __future__ import annotations

import math
import os
import random
import re
from typing import TYPE_CHECKING, Any, Optional, Sequence

from pixdex.components import split_spec
from pixdex.errors import PixdexError, UsageError

if TYPE_CHECKING:
    from pixdex.components import Registry
    from pixdex.contracts import Dataset, Item

__all__ = [
    "LABEL_MODES",
    "open_dataset",
    "stratified_split",
    "map_labels",
    "training_split",
    "evaluation_split",
    "safe_class_name",
    "Unlabelled",
]

LABEL_MODES: tuple[str, ...] = ("auto", "folder", "none")
# the built-in readers that --labels folder|none force (registered by pixdex_datasets)
FOLDER_READER = "folder"
UNLABELLED_READER = "collection"


def open_dataset(spec: str, registry: Registry, *, labels: str = "auto") -> Dataset:
    """Open the data set ``spec`` with the dataset components in ``registry``.

    ``labels`` is ``auto`` (detect), ``folder`` (class = first-level subfolder, whatever
    detection would say) or ``none`` (an unlabelled collection). With an explicit
    ``NAME:ARG`` spec, ``none`` drops the reader's labels and ``folder`` is accepted only
    for ``folder:``. A path that does not exist is a one-line :class:`PixdexError`.
    """
    if labels not in LABEL_MODES:
        raise UsageError(f"--labels must be one of {', '.join(LABEL_MODES)}, got {labels!r}")
    name, arg = split_spec(spec)
    if arg is not None and name in registry.names("dataset"):
        if labels == "folder" and name != FOLDER_READER:
            raise UsageError(f"--labels folder applies to a plain path or folder:PATH, not {name}:")
        component, _ = registry.get("dataset", spec)
        if component.argument == "path":  # the built-in readers' convention: check it here, once
            _require_path(os.path.expanduser(arg))
        dataset = registry.build("dataset", spec, spec=spec)
        return Unlabelled(dataset) if labels == "none" else dataset

    path = os.path.expanduser(os.fsdecode(spec))
    _require_path(path)
    if labels == "folder":
        return registry.build("dataset", FOLDER_READER, {"path": path}, spec=spec)
    if labels == "none":
        return registry.build("dataset", UNLABELLED_READER, {"path": path}, spec=spec)
    for component in registry.components("dataset"):
        if component.detect is not None and component.argument and component.detect(path):
            return registry.build("dataset", component.name, {component.argument: path}, spec=spec)
    readers = ", ".join(c.name for c in registry.components("dataset"))
    raise PixdexError(
        f"DATA path {path} is not a data set any reader recognises (readers: {readers}); "
        "name one explicitly as READER:PATH"
    )


def _require_path(path: str) -> None:
    if not os.path.exists(path):
        kind = "is a dangling symbolic link" if os.path.lexists(path) else "does not exist"
        raise PixdexError(f"DATA path {path} {kind}")


class Unlabelled:
    """A view of a dataset with its labels dropped (``--labels none`` on a NAME:ARG spec)."""

    def __init__(self, dataset: Dataset) -> None:
        self._dataset = dataset
        self.classes: list[str] = []
        self.skipped = dataset.skipped

    def splits(self) -> list[str]:
        return self._dataset.splits()

    def items(self, split: str) -> list[Item]:
        return [(key, None) for key, _ in self._dataset.items(split)]

    def __getattr__(self, name: str) -> Any:  # .image(key), .as_tensors(split), ...
        return getattr(self._dataset, name)


def training_split(dataset: Dataset) -> str:
    """The split training reads: ``train`` when present, else ``all``; never ``test``."""
    splits = dataset.splits()
    if "train" in splits:
        return "train"
    if splits and all(s == "test" for s in splits):
        raise PixdexError("DATA has only a test split: training needs a train split or an undivided folder")
    return "all"


def evaluation_split(dataset: Dataset, requested: str | None = None) -> str:
    """The split evaluation reads: ``requested`` if given, else ``test`` when present, else ``all``."""
    splits = dataset.splits()
    if requested is not None:
        if requested not in splits and requested != "all":
            raise PixdexError(f"DATA has no split '{requested}' (splits: {', '.join(splits)})")
        return requested
    return "test" if "test" in splits else "all"


def stratified_split(items: Sequence[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Split ``items`` into ``(train, val)`` with about ``fraction`` of them in ``val``.

    Per class: the validation count is ``fraction`` of the items whose class has at least
    two (rounded as a whole, spread over classes by largest remainder), and every class
    keeps at least one item in train, so a class with one item stays in train. Unlabelled
    items (label None) form one group, which makes this a plain seeded split. The choice
    depends only on ``seed`` and the items themselves (not their order); both lists keep
    the input order.
    """
    if not 0.0 <= fraction < 1.0:
        raise UsageError(f"val_fraction must be at least 0 and below 1, got {fraction}")
    groups: dict[Optional[str], list[int]] = {}
    for i, (_, label) in enumerate(items):
        groups.setdefault(label, []).append(i)
    order = sorted(groups, key=lambda c: (c is not None, c or ""))
    quotas = _quotas({c: len(groups[c]) for c in order}, fraction)

    val_idx: set[int] = set()
    for label in order:
        members = sorted(groups[label], key=lambda i: (items[i][0], i))
        # str seeds are hashed with sha512 by random.Random: stable across runs and platforms
        random.Random(f"{seed}/{label}").shuffle(members)
        val_idx.update(members[: quotas[label]])
    train = [item for i, item in enumerate(items) if i not in val_idx]
    val = [item for i, item in enumerate(items) if i in val_idx]
    return train, val


def _quotas(sizes: dict[Optional[str], int], fraction: float) -> dict[Optional[str], int]:
    """Validation count per class: proportional, largest remainder, each class keeps one."""
    eligible = {c: n for c, n in sizes.items() if n >= 2}
    quotas = {c: 0 for c in sizes}
    if fraction <= 0 or not eligible:
        return quotas
    target = max(1, round(fraction * sum(eligible.values())))
    caps = {c: n - 1 for c, n in eligible.items()}
    for c, n in eligible.items():
        quotas[c] = min(math.floor(fraction * n), caps[c])
    # hand out the rest by largest remainder; the class order breaks ties deterministically
    by_remainder = sorted(eligible, key=lambda c: -(fraction * eligible[c] - math.floor(fraction * eligible[c])))
    left = target - sum(quotas.values())
    while left > 0:
        progressed = False
        for c in by_remainder:
            if left > 0 and quotas[c] < caps[c]:
                quotas[c] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    return quotas


_UNSAFE = re.compile(r'[<>:"/\\|?*\x00-\x1f]')


def safe_class_name(name: str) -> str:
    """A class name usable as a folder name on any OS: 'T-shirt/top' -> 'T-shirt_top'."""
    return _UNSAFE.sub("_", name).strip().rstrip(".") or "_"


def map_labels(items: Sequence[Item], classes: Sequence[str]) -> list[int]:
    """Class indices of ``items`` against a model's ``classes`` (-1 for an unlabelled item).

    Names are matched exactly, else by their folder-safe form (so a model trained on the
    folder ``T-shirt_top`` reads IDX's ``T-shirt/top``). A class the model does not know
    is a :class:`PixdexError` naming it.
    """
    index = {name: i for i, name in enumerate(classes)}
    safe: dict[str, int] = {}
    for i, name in enumerate(classes):
        safe.setdefault(safe_class_name(name), i)
    out: list[int] = []
    unknown: set[str] = set()
    for _, label in items:
        if label is None:
            out.append(-1)
        elif label in index:
            out.append(index[label])
        elif safe_class_name(label) in safe:
            out.append(safe[safe_class_name(label)])
        else:
            unknown.add(label)
            out.append(-1)
    if unknown:
        names = sorted(unknown)
        shown = ", ".join(repr(n) for n in names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        known = ", ".join(repr(c) for c in list(classes)[:20]) + (" ..." if len(classes) > 20 else "")
        raise PixdexError(
            f"DATA has {len(names)} class(es) the model does not know: {shown} (the model's classes: {known})"
        )
    return out
