"""Types shared between the core and plugins (no torch import: annotations only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Optional, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from PIL import Image

# (path or key, class name or None): labels are matched to a run's classes by name
Item = tuple[str, Optional[str]]

# The similarity measures every index supports and every score follows (higher is more
# similar): cosine similarity, minus the euclidean distance, the inner product.
METRICS: tuple[str, ...] = ("cosine", "l2", "ip")


@dataclass(frozen=True)
class DataInfo:
    """What a backbone factory learns about the data it will see.

    ``in_chans`` is 1 when every sampled image is greyscale, else 3. ``native_size`` is
    (H, W) when all sampled images share one size, else None. ``mean``/``std`` are
    per-channel statistics of the training data in [0, 1] (len == in_chans), measured on a
    sample; pretrained backbones ignore them and use their own. ``short_side`` is the
    median of the sampled images' shorter sides (None when unknown).
    """

    in_chans: int
    native_size: Optional[tuple[int, int]]
    num_classes: int
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    short_side: Optional[int] = None  # median shorter side of the sampled images, in pixels


@runtime_checkable
class Transform(Protocol):
    """Made by a transform factory ``(options, *, train, data_config)``."""

    in_chans: int
    size: tuple[int, int]

    def load(self, image: "Image.Image") -> "torch.Tensor":
        """PIL image (mode L or RGB) -> uint8[C, H, W] at the model's input size."""

    def batch(self, images: "torch.Tensor") -> "torch.Tensor":
        """uint8[B, C, H, W] on any device -> float[B, C, H, W], augmented when train, normalised."""


@runtime_checkable
class Dataset(Protocol):
    """Made by a dataset factory ``(options, *, spec)``."""

    classes: list[str]
    skipped: list[dict[str, Any]]

    def splits(self) -> list[str]:
        """Split names, e.g. ['train', 'test'], or ['all'] for one undivided collection."""

    def items(self, split: str) -> list[Item]:
        """The split's (path or key, class name or None) pairs, in a stable order."""


@dataclass
class SkipReport:
    """Images that could not be used, each with a reason from a fixed vocabulary."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    def add(self, path: str, reason: str, detail: str = "") -> None:
        self.entries.append({"path": path, "reason": reason, "detail": detail})

    def extend(self, entries: Iterable[dict[str, Any]]) -> None:
        self.entries.extend(entries)

    def __len__(self) -> int:
        return len(self.entries)
