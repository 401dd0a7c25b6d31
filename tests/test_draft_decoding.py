"""JPEG draft decoding: open_image(draft_size=...) decodes large JPEGs at 1/2, 1/4 or 1/8
scale, never below the size asked for, and the transform's output stays what it was."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixdex.data.images import ImageSkip, open_image
from pixdex.data.loading import ImageFiles
from pixdex.data.sources import FileSource, draft_size_for
from pixdex_transforms.transform import ImageTransform

DRAFT = (256, 256)  # what a 224 px transform with crop_pct 0.875 resizes to


def photo(width: int, height: int, seed: int = 0, grey: bool = False) -> Image.Image:
    """A photo-like picture: smooth blobs, a gradient, edges and a little sensor noise."""
    rng = np.random.default_rng(seed)
    channels = 1 if grey else 3
    coarse = rng.uniform(0, 255, (height // 40 + 2, width // 40 + 2, channels)).astype(np.uint8)
    mode = "L" if grey else "RGB"
    base = Image.fromarray(coarse[..., 0] if grey else coarse, mode).resize((width, height), Image.Resampling.BICUBIC)
    arr = np.asarray(base, dtype=np.float64)
    if grey:
        arr = arr[..., None]
    arr = arr * 0.7 + np.linspace(0, 60, width)[None, :, None]
    arr[height // 3 : height // 3 + height // 8, width // 4 : width // 2] = 230  # a sharp-edged bright patch
    arr += rng.normal(0, 3, arr.shape)
    arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(arr[..., 0] if grey else arr, mode)


def save(path: Path, image: Image.Image, fmt: str = "JPEG", **params) -> str:
    params = {"quality": 90, **params} if fmt == "JPEG" else params
    image.save(path, format=fmt, **params)
    return str(path)


def transform() -> ImageTransform:
    return ImageTransform(
        in_chans=3,
        size=(224, 224),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        interpolation="bilinear",
        crop_pct=0.875,
    )


def mean_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype == torch.uint8
    return float((a.float() - b.float()).abs().mean())


def test_draft_decodes_a_large_jpeg_smaller_but_not_below_the_size(tmp_path: Path) -> None:
    path = save(tmp_path / "big.jpg", photo(1600, 1200))
    full = open_image(path)
    drafted = open_image(path, draft_size=DRAFT)
    assert full.size == (1600, 1200)
    # 1/4 scale: 1/8 would give 200x150, below 256x256
    assert drafted.size == (400, 300)
    assert drafted.mode == full.mode == "RGB"
    assert drafted.width >= DRAFT[1] and drafted.height >= DRAFT[0]


def test_transform_output_close_to_the_full_decode(tmp_path: Path) -> None:
    t = transform()
    for i, (w, h) in enumerate([(1600, 1200), (1200, 1600), (1024, 768), (2100, 700)]):
        path = save(tmp_path / f"{i}.jpg", photo(w, h, seed=i))
        drafted = open_image(path, draft_size=draft_size_for(t))
        assert drafted.width < w and drafted.height < h
        a = t.load(open_image(path))
        b = t.load(drafted)
        assert a.shape == b.shape == (3, 224, 224)
        assert mean_abs_diff(a, b) < 3.0, (w, h)


def test_png_and_small_jpeg_are_unaffected(tmp_path: Path) -> None:
    big = photo(1600, 1200)
    png = save(tmp_path / "big.png", big, "PNG")
    assert open_image(png, draft_size=DRAFT).size == (1600, 1200)
    assert np.array_equal(np.asarray(open_image(png, draft_size=DRAFT)), np.asarray(open_image(png)))
    # below twice the size in one side: no reduced scale can keep 256 px, decoded in full
    small = save(tmp_path / "small.jpg", photo(640, 480))
    assert np.array_equal(np.asarray(open_image(small, draft_size=DRAFT)), np.asarray(open_image(small)))


def test_greyscale_jpeg_keeps_its_mode(tmp_path: Path) -> None:
    path = save(tmp_path / "grey.jpg", photo(1600, 1200, grey=True))
    drafted = open_image(path, draft_size=DRAFT)
    assert drafted.mode == "L" and drafted.size == (400, 300)


def _rotated(width: int, height: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored width x height, shown turned by 90 degrees
    buf = io.BytesIO()
    photo(width, height).save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def test_non_square_size_covers_the_displayed_orientation(tmp_path: Path) -> None:
    wide = (100, 400)  # (height, width) as displayed
    plain = save(tmp_path / "plain.jpg", photo(2000, 1000))
    im = open_image(plain, draft_size=wide)
    assert im.size == (500, 250)  # 1/4: the full reduction when nothing turns the picture
    turned = tmp_path / "turned.jpg"
    turned.write_bytes(_rotated(2000, 1000))  # shown as 1000 wide, 2000 high
    im = open_image(turned, draft_size=wide)
    # asking the stored orientation for 400x100 would give 250 wide once turned, short of 400
    assert im.width >= wide[1] and im.height >= wide[0]
    assert im.size == (500, 1000)
    assert open_image(turned).size == (1000, 2000)


def test_bad_jpeg_reasons_unchanged(tmp_path: Path) -> None:
    buf = io.BytesIO()
    photo(1600, 1200).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageSkip) as full:
        open_image(cut)
    with pytest.raises(ImageSkip) as drafted:
        open_image(cut, draft_size=DRAFT)
    assert drafted.value.reason == full.value.reason == "truncated"
    with pytest.raises(ImageSkip) as big:
        open_image(save(tmp_path / "big.jpg", photo(1600, 1200)), max_pixels=1000 * 1000, draft_size=DRAFT)
    assert big.value.reason == "too-large"  # judged on the stored size, before any draft


def test_invalid_draft_size_is_a_programming_error(tmp_path: Path) -> None:
    path = save(tmp_path / "a.jpg", photo(64, 64))
    for bad in [(0, 10), (10,), "big"]:
        with pytest.raises(ValueError):
            open_image(path, draft_size=bad)  # type: ignore[arg-type]


def test_draft_size_for_transforms() -> None:
    assert draft_size_for(transform()) == (256, 256)
    t = ImageTransform(in_chans=3, size=(224, 448), mean=(0.5,), std=(0.25,), crop_pct=0.9)
    assert draft_size_for(t) == (249, 498)  # rounded up: never below what load resizes to

    class NoCrop:  # a third-party transform that does not say how it resizes
        size = (224, 224)

    class Odd:
        size = (224, 224)
        crop_pct = "x"

    assert draft_size_for(NoCrop()) is None  # type: ignore[arg-type]
    assert draft_size_for(Odd()) is None  # type: ignore[arg-type]
    assert draft_size_for(object()) is None  # type: ignore[arg-type]


def image_size(image: Image.Image) -> torch.Tensor:
    """A stand-in for Transform.load that reports the decoded size (H, W)."""
    return torch.tensor([image.height, image.width])


def test_image_files_passes_the_draft_size(tmp_path: Path) -> None:
    path = save(tmp_path / "big.jpg", photo(1600, 1200))
    assert ImageFiles([(path, 0)], image_size, draft_size=DRAFT)[0][0].tolist() == [300, 400]
    assert ImageFiles([(path, 0)], image_size)[0][0].tolist() == [1200, 1600]
    # a dataset's own opener is used as it is
    opened = ImageFiles([("key", 0)], image_size, draft_size=DRAFT, opener=lambda key: photo(32, 16))
    assert opened[0][0].tolist() == [16, 32]


@pytest.mark.parametrize("workers", [0, 2])
def test_file_source_drafts_and_stays_close(tmp_path: Path, workers: int) -> None:
    t = transform()
    paths = [save(tmp_path / f"{i}.jpg", photo(1600 - 200 * i, 1200, seed=i)) for i in range(4)]
    paths.append(save(tmp_path / "p.png", photo(600, 500, seed=9), "PNG"))
    source = FileSource(paths, [0] * len(paths), t, batch_size=2, device="cpu", workers=workers, max_pixels=10**8)
    assert source.dataset.draft_size == (256, 256)
    got = torch.cat([x for x, _, _ in source.batches()])
    want = torch.stack([t.load(open_image(p)) for p in paths])
    assert got.shape == want.shape
    for a, b in zip(got[:-1], want[:-1]):
        assert mean_abs_diff(a, b) < 3.0
    assert torch.equal(got[-1], want[-1])  # the PNG: identical
