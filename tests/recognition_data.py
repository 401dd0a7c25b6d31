"""Tiny generated labelled image sets for recognition tests (real PNGs decoded by Pillow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PATTERNS = ("top", "bottom", "left")


def pattern_image(kind: str, rng: np.random.Generator, size: int = 16, rgb: bool = False) -> Image.Image:
    """A noisy image whose bright half (top, bottom or left) is its class."""
    a = rng.integers(0, 60, (size, size)).astype(np.uint8)
    half = size // 2
    if kind == "top":
        a[:half] += 150
    elif kind == "bottom":
        a[half:] += 150
    else:
        a[:, :half] += 150
    img = Image.fromarray(a, "L")
    return img.convert("RGB") if rgb else img


def make_folder_dataset(
    root: Path, per_class: int = 12, *, test_per_class: int = 0, seed: int = 0, size: int = 16
) -> Path:
    """ImageFolder (or train/ + test/ when test_per_class) of the three patterns."""
    rng = np.random.default_rng(seed)
    splits = [("train", per_class)] + ([("test", test_per_class)] if test_per_class else [])
    for split, count in splits:
        for kind in PATTERNS:
            folder = (root / split / kind) if test_per_class else (root / kind)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pattern_image(kind, rng, size).save(folder / f"{kind}-{i:03d}.png")
    return root
