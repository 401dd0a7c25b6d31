"""torch Datasets that feed DataLoaders: decoded files with skip reports, and tensors.

Both yield ``(uint8[C, H, W] or None, label, index, skip or None)`` and share
:func:`collate`, which drops the skipped images and hands their reports on, so a bad file
never stops a batch and its report reaches ``skipped.jsonl``.

This module imports torch at import time: only commands that need torch import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Sequence

import torch
import torch.utils.data

from pixdex.data.images import DEFAULT_MAX_PIXELS, ImageSkip, ImageStats, open_image

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["ImageFiles", "TensorImages", "collate", "tensor_stats", "Sample", "Batch"]

# (image or None, label index or -1, item index, skip dict or None)
Sample = tuple[Optional[torch.Tensor], int, int, Optional[dict]]
# (uint8[B, C, H, W], int64[B], int64[B], skip dicts)
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]


class ImageFiles(torch.utils.data.Dataset):
    """Items ``[(path or key, label index or -1)]`` decoded on demand.

    ``load`` maps a PIL image (mode L or RGB) to ``uint8[C, H, W]``: a Transform's
    ``.load``. ``opener`` replaces :func:`pixdex.data.images.open_image` for keys that are not
    file paths (an IDX dataset's ``.image``). Everything here must pickle, for DataLoader
    workers started with spawn.

    ``draft_size`` ``(height, width)``, when ``load`` shrinks every image to at least that
    size, lets :func:`~pixdex.data.images.open_image` decode large JPEGs at a reduced scale
    (files only; an ``opener`` decodes as it likes).

    ``__getitem__`` never raises for a bad image: it returns ``(None, label, index,
    skip)`` with ``skip = {path, reason, detail}``.
    """

    def __init__(
        self,
        items: Sequence[tuple[str, int]],
        load: Callable[["Image.Image"], torch.Tensor],
        *,
        max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
        opener: Optional[Callable[[str], "Image.Image"]] = None,
        draft_size: Optional[tuple[int, int]] = None,
    ) -> None:
        self.items = list(items)
        self.load = load
        self.max_pixels = max_pixels
        self.opener = opener
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        path, label = self.items[index]
        try:
            if self.opener is not None:
                image = self.opener(path)
            else:
                image = open_image(path, max_pixels=self.max_pixels, draft_size=self.draft_size)
            tensor = self.load(image)
        except ImageSkip as skip:
            return None, int(label), index, skip.as_dict()
        return tensor, int(label), index, None


class TensorImages(torch.utils.data.Dataset):
    """Already decoded images, ``uint8[N, C, H, W]`` with ``int64[N]`` labels, in the same
    sample format as :class:`ImageFiles` (for code that wants one loader for both).

    The tensor-resident training path slices the tensors directly and needs no loader.
    """

    def __init__(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"TensorImages wants uint8[N, C, H, W], got {images.dtype}{list(images.shape)}")
        self.images = images
        self.labels = labels if labels is not None else torch.full((len(images),), -1, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        return self.images[index], int(self.labels[index]), index, None


def collate(batch: Sequence[Sample]) -> Batch:
    """Stack the decoded samples; return ``(images, labels, indices, skips)``.

    ``images`` is ``uint8[B, C, H, W]`` with B the number of decoded samples, which may
    be 0 (then the tensor is ``uint8[0, 0, 0, 0]`` and the caller just records the skips);
    ``indices`` are the item indices of those B images, so callers keep the item order.
    """
    good = [s for s in batch if s[0] is not None]
    skips = [s[3] for s in batch if s[0] is None]
    if good:
        images = torch.stack([s[0] for s in good])  # type: ignore[misc]
    else:
        images = torch.empty((0, 0, 0, 0), dtype=torch.uint8)
    labels = torch.tensor([s[1] for s in good], dtype=torch.int64)
    indices = torch.tensor([s[2] for s in good], dtype=torch.int64)
    return images, labels, indices, skips


def tensor_stats(images: torch.Tensor, *, sample: int = 10000, seed: int = 0) -> ImageStats:
    """What :func:`pixdex.data.images.probe_images` measures, for ``uint8[N, C, H, W]`` tensors.

    Mean and std are taken over a seeded sample of up to ``sample`` images (all of them
    for Fashion-MNIST's 60,000 costs ~0.3 s; the sample gives the same figures to 3 places).
    """
    if images.dim() != 4 or len(images) == 0:
        raise ValueError(f"tensor_stats wants a non-empty uint8[N, C, H, W], got {list(images.shape)}")
    n = len(images)
    if n > sample:
        generator = torch.Generator().manual_seed(seed)
        images = images[torch.randperm(n, generator=generator)[:sample]]
    x = images.to(torch.float64).div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3), unbiased=False)
    return ImageStats(
        int(images.shape[1]),
        (int(images.shape[2]), int(images.shape[3])),
        tuple(float(m) for m in mean),
        tuple(float(s) for s in std),
        int(min(images.shape[2], images.shape[3])),
    )
