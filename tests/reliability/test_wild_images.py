"""Promise 2 of docs/reliability.md: images from the wild never crash pixdex.

Every good image is decoded exactly once, every bad one is skipped and reported with its
reason; random bytes and random valid images only ever give a correct-shaped array or an
:class:`~pixdex.data.images.ImageSkip`.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pixdex.data.datasets import open_dataset
from pixdex.data.images import REASONS, ImageSkip, list_images, open_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wild_images import make_wild_corpus  # noqa: E402

# Pillow warns about corrupt EXIF and TIFF tags while the fuzzed files are judged; the skip
# report is pixdex's channel for that, and the CLI silences them (quiet_pillow_warnings)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")


def to_chw(image: Image.Image) -> np.ndarray:
    """The simplest Transform.load: PIL (L or RGB) -> uint8[C, H, W]."""
    arr = np.asarray(image, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_wild_corpus(tmp_path_factory.mktemp("wild") / "corpus")


def test_every_good_image_once_every_bad_one_reported(corpus: dict) -> None:
    paths, skipped = list_images(corpus["root"])
    assert len(paths) == len(set(paths)), "a file was listed twice"
    decoded: dict[str, tuple[str, tuple[int, int]]] = {}
    reported: dict[str, str] = {s["path"]: s["reason"] for s in skipped}
    for path in paths:
        try:
            image = open_image(path)
        except ImageSkip as skip:
            reported[skip.path] = skip.reason
            continue
        assert image.mode in ("L", "RGB")
        chw = to_chw(image)
        assert chw.dtype == np.uint8 and chw.shape == (len(image.getbands()), image.height, image.width)
        decoded[path] = (image.mode, image.size)

    expected_good = {p: (e["mode"], tuple(e["size"])) for p, e in corpus["good"].items()}
    assert decoded == expected_good
    assert reported == corpus["bad"]
    assert {s["path"] for s in skipped} == set(corpus["listing_skips"])
    assert set(reported.values()) <= set(REASONS)
    assert not set(corpus["ignored"]) & (set(paths) | set(reported))
    # skip reports carry plain str paths that survive a JSON round trip (surrogates escaped)
    import json

    for entry in skipped:
        assert all(type(v) is str for v in entry.values())
        assert json.loads(json.dumps(entry)) == entry


def test_corpus_reads_as_a_collection(pset, corpus: dict) -> None:
    dataset = open_dataset(corpus["root"], pset.registry)
    assert dataset.classes == [] and dataset.splits() == ["all"]
    listed = [path for path, _ in dataset.items("all")]
    assert set(corpus["good"]) <= set(listed)
    assert {s["path"]: s["reason"] for s in dataset.skipped} == corpus["listing_skips"]


# ------------------------------------------------------------------- property tests

MAGIC = [
    b"",
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"P5\n",
    b"\x00\x00\x01\x00",
]
MODES = {
    "1": ["PNG", "BMP", "TIFF"],
    "L": ["PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF"],
    "P": ["PNG", "GIF", "BMP", "TIFF"],
    "LA": ["PNG", "TIFF"],
    "RGB": ["PNG", "JPEG", "BMP", "WEBP", "TIFF"],
    "RGBA": ["PNG", "WEBP", "TIFF"],
    "CMYK": ["JPEG", "TIFF"],
    "I;16": ["PNG", "TIFF"],
    "I": ["TIFF"],
    "F": ["TIFF"],
}
LIMIT = 1_000_000  # keeps a random header's declared size from costing memory in the test


def check(path: str) -> None:
    """The property: a correct uint8[C, H, W] array, or an ImageSkip with a known reason."""
    try:
        image = open_image(path, max_pixels=LIMIT)
    except ImageSkip as skip:
        assert skip.reason in REASONS
        return
    assert image.mode in ("L", "RGB")
    chw = to_chw(image)
    assert chw.dtype == np.uint8 and chw.ndim == 3 and chw.shape[0] in (1, 3)
    assert chw.shape[1:] == (image.height, image.width) and image.width * image.height <= LIMIT


@pytest.fixture(scope="module")
def scratch() -> str:
    with tempfile.TemporaryDirectory() as folder:
        yield os.path.join(folder, "fuzz.img")


# a few hundred examples keep the default run fast; PIXDEX_FUZZ_EXAMPLES=5000 digs deeper
FAST = settings(
    max_examples=int(os.environ.get("PIXDEX_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@FAST
@given(prefix=st.sampled_from(MAGIC), body=st.binary(max_size=512))
def test_random_bytes(scratch: str, prefix: bytes, body: bytes) -> None:
    Path(scratch).write_bytes(prefix + body)
    check(scratch)


@st.composite
def valid_images(draw: st.DrawFn) -> tuple[bytes, tuple[int, int]]:
    mode = draw(st.sampled_from(sorted(MODES)))
    fmt = draw(st.sampled_from(MODES[mode]))
    width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    noise = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if mode in ("I;16", "I", "F"):
        scale = {"I;16": (np.uint16, 65535), "I": (np.int32, 100000), "F": (np.float32, 1.0)}[mode]
        image = Image.fromarray((rng.random((height, width)) * scale[1]).astype(scale[0]))
    elif mode == "P":
        image = noise.convert("P", palette=Image.Palette.ADAPTIVE, colors=draw(st.integers(2, 255)))
        if draw(st.booleans()):
            image.info["transparency"] = 0
    else:
        image = noise.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue(), (width, height)


@FAST
@given(sample=valid_images(), cut=st.one_of(st.none(), st.floats(0.0, 1.0)), flip=st.integers(0, 4))
def test_random_valid_images(scratch: str, sample: tuple[bytes, tuple[int, int]], cut: float | None, flip: int) -> None:
    data, size = sample
    intact = cut is None and flip == 0
    if cut is not None:  # truncated somewhere
        data = data[: int(len(data) * cut)]
    mutable = bytearray(data)
    for k in range(flip):  # and a few corrupted bytes
        if mutable:
            mutable[(k * 7919 + len(mutable) // 3) % len(mutable)] ^= 0xA5
    Path(scratch).write_bytes(bytes(mutable))
    check(scratch)
    if intact:
        image = open_image(scratch, max_pixels=LIMIT)
        assert image.size == size
