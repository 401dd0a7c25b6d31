"""pixdex.data.loading: decoding inside DataLoader workers, skips collected, order kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pixdex.data.loading import ImageFiles, TensorImages, collate, tensor_stats


def load_8x8(image: Image.Image) -> torch.Tensor:
    """A stand-in for Transform.load: module level, so DataLoader workers can pickle it."""
    grey = image.convert("L").resize((8, 8))
    return torch.from_numpy(np.array(grey, dtype=np.uint8)).unsqueeze(0)


def make_items(root: Path, n: int = 11) -> tuple[list[tuple[str, int]], dict[int, str]]:
    """n files, the value of image i being i * 10; every third one broken in some way."""
    items, bad = [], {}
    for i in range(n):
        path = root / f"{i:02d}.png"
        if i % 3 == 1:
            path.write_bytes(b"" if i % 2 else b"not an image")
            bad[i] = "empty" if i % 2 else "not-an-image"
        else:
            Image.new("L", (5 + i, 4), i * 10).save(path)
        items.append((str(path), i % 4))
    return items, bad


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_keeps_order_and_collects_skips(tmp_path: Path, workers: int) -> None:
    items, bad = make_items(tmp_path)
    loader = DataLoader(ImageFiles(items, load_8x8), batch_size=3, num_workers=workers, collate_fn=collate)
    seen, skips = [], []
    for images, labels, indices, batch_skips in loader:
        assert images.dtype == torch.uint8 and images.shape[1:] == (1, 8, 8)
        assert labels.dtype == torch.int64 and indices.dtype == torch.int64
        assert len(images) == len(labels) == len(indices)
        for image, label, index in zip(images, labels, indices):
            assert int(image[0, 0, 0]) == int(index) * 10 and int(label) == int(index) % 4
        seen += indices.tolist()
        skips += batch_skips
    assert seen == [i for i in range(len(items)) if i not in bad]
    assert [(s["path"], s["reason"]) for s in skips] == [(items[i][0], r) for i, r in sorted(bad.items())]
    assert all(set(s) == {"path", "reason", "detail"} for s in skips)


def test_batch_of_only_skips(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    dataset = ImageFiles([(str(tmp_path / "a.png"), -1)], load_8x8)
    assert dataset[0][0] is None and dataset[0][3]["reason"] == "empty"
    images, labels, indices, skips = collate([dataset[0]])
    assert images.shape == (0, 0, 0, 0) and images.dtype == torch.uint8
    assert labels.shape == (0,) and indices.shape == (0,) and len(skips) == 1


def test_max_pixels_reaches_the_decoder(tmp_path: Path) -> None:
    Image.new("L", (50, 50)).save(tmp_path / "big.png")
    sample = ImageFiles([(str(tmp_path / "big.png"), 0)], load_8x8, max_pixels=100)[0]
    assert sample[0] is None and sample[3]["reason"] == "too-large"


class KeyOpener:
    """Decodes keys like 'k:3' (what an IDX dataset's .image does for 'idx:train/000003')."""

    def __call__(self, key: str) -> Image.Image:
        return Image.new("L", (8, 8), int(key.split(":")[1]))


def test_opener_for_keys_in_workers() -> None:
    items = [(f"k:{i}", 0) for i in range(6)]
    loader = DataLoader(
        ImageFiles(items, load_8x8, opener=KeyOpener()), batch_size=4, num_workers=2, collate_fn=collate
    )
    values = [int(img[0, 0, 0]) for images, *_ in loader for img in images]
    assert values == list(range(6))


def test_tensor_images_and_stats() -> None:
    images = torch.zeros((10, 1, 4, 6), dtype=torch.uint8)
    images[5:] = 255
    batch = collate([TensorImages(images, torch.arange(10))[i] for i in range(10)])
    assert batch[0].shape == (10, 1, 4, 6) and batch[1].tolist() == list(range(10)) and batch[3] == []
    stats = tensor_stats(images)
    assert stats.in_chans == 1 and stats.native_size == (4, 6)
    assert stats.mean[0] == pytest.approx(0.5) and stats.std[0] == pytest.approx(0.5)
    assert TensorImages(images)[0][1] == -1
    with pytest.raises(ValueError):
        TensorImages(images.float())
