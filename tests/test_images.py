"""pixdex.data.images: safe listing and decoding, every Pillow mode, every bad file's reason."""

from __future__ import annotations

import io
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixdex.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    REASONS,
    ImageSkip,
    list_images,
    open_image,
    probe_images,
)
from pixdex.errors import PixdexError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wild_images import animated_gif, bomb_png, exif_rotated_jpeg  # noqa: E402


def save(path: Path, image: Image.Image, fmt: str | None = None, **params) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt, **params)
    return str(path)


def pixels(path: str, **kw) -> tuple[str, np.ndarray]:
    im = open_image(path, **kw)
    return im.mode, np.asarray(im)


def skip_reason(path: str | Path, **kw) -> str:
    with pytest.raises(ImageSkip) as info:
        open_image(path, **kw)
    assert info.value.reason in REASONS
    assert info.value.path == os.fsdecode(path)
    return info.value.reason


# ------------------------------------------------------------------------ every mode


def test_16_bit_is_scaled_not_white(tmp_path: Path) -> None:
    arr = np.full((4, 5), 40000, np.uint16)
    for name in ("i16.png", "i16.tif"):
        mode, px = pixels(save(tmp_path / name, Image.fromarray(arr)))
        assert mode == "L"
        assert px.shape == (4, 5)
        assert np.all(px == 156), px  # 40000 / 257 = 155.6, not Pillow's clipped 255


def test_32_bit_int_and_float(tmp_path: Path) -> None:
    mode, px = pixels(save(tmp_path / "i.tif", Image.fromarray(np.full((3, 3), 40000, np.int32))))
    assert (mode, int(px[0, 0])) == ("L", 156)  # in 0..65535: read as 16-bit
    mode, px = pixels(save(tmp_path / "i8.tif", Image.fromarray(np.full((3, 3), 200, np.int32))))
    assert int(px[0, 0]) == 200  # already 8-bit
    mode, px = pixels(save(tmp_path / "f.tif", Image.fromarray(np.full((3, 3), 0.5, np.float32))))
    assert (mode, int(px[0, 0])) == ("L", 128)  # fractions in 0..1
    wide = np.array([[-1000.0, 0.0, 1000.0]], np.float32)
    _, px = pixels(save(tmp_path / "wide.tif", Image.fromarray(wide)))
    assert px.tolist() == [[0, 128, 255]]  # anything else is stretched min..max


def test_mode_1_l_rgb(tmp_path: Path) -> None:
    bw = Image.new("1", (4, 4), 0)
    bw.putpixel((1, 1), 1)
    mode, px = pixels(save(tmp_path / "bw.png", bw))
    assert mode == "L" and px[1, 1] == 255 and px[0, 0] == 0
    mode, px = pixels(save(tmp_path / "l.png", Image.new("L", (3, 2), 77)))
    assert mode == "L" and px.shape == (2, 3) and np.all(px == 77)
    mode, px = pixels(save(tmp_path / "rgb.png", Image.new("RGB", (3, 2), (1, 2, 3))))
    assert mode == "RGB" and px.shape == (2, 3, 3) and px[0, 0].tolist() == [1, 2, 3]


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (3, 1), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (255, 0, 0, 0))
    rgba.putpixel((2, 0), (0, 0, 0, 128))
    mode, px = pixels(save(tmp_path / "rgba.png", rgba))
    assert mode == "RGB"
    assert px[0, 0].tolist() == [255, 0, 0]
    assert px[0, 1].tolist() == [255, 255, 255]  # fully transparent: white, not black or red
    assert all(abs(v - 127) <= 2 for v in px[0, 2])

    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0
    for name in ("p.png", "p.gif"):
        mode, px = pixels(save(tmp_path / name, pal))
        assert mode == "RGB"
        assert px[0, 0].tolist() == [255, 255, 255] and px[0, 1].tolist() == [0, 0, 255]

    la = Image.new("LA", (2, 1), (0, 255))
    la.putpixel((1, 0), (0, 0))
    mode, px = pixels(save(tmp_path / "la.png", la))
    assert mode == "L" and px.tolist() == [[0, 255]]


def test_palette_without_transparency(tmp_path: Path) -> None:
    im = Image.new("RGB", (4, 4), (10, 120, 240)).convert("P", palette=Image.Palette.ADAPTIVE)
    mode, px = pixels(save(tmp_path / "p.png", im))
    assert mode == "RGB" and px[0, 0].tolist() == [10, 120, 240]


def test_cmyk(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (2, 1), (0, 0, 0, 0))
    cmyk.putpixel((1, 0), (0, 255, 255, 0))
    mode, px = pixels(save(tmp_path / "c.tif", cmyk))
    assert mode == "RGB" and px[0, 0].tolist() == [255, 255, 255] and px[0, 1].tolist() == [255, 0, 0]
    mode, px = pixels(save(tmp_path / "c.jpg", Image.new("CMYK", (8, 8), (0, 255, 255, 0)), quality=95))
    assert mode == "RGB" and np.abs(px[4, 4].astype(int) - [255, 0, 0]).max() < 12


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rot.jpg"
    path.write_bytes(exif_rotated_jpeg())
    im = open_image(path)
    assert im.size == (20, 40)  # stored 40x20, orientation 6
    px = np.asarray(im).astype(int)
    assert px[2, 10, 0] > 200 and px[2, 10, 2] < 60  # red on top
    assert px[37, 10, 2] > 200 and px[37, 10, 0] < 60  # blue below


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    path.write_bytes(animated_gif())
    mode, px = pixels(path)
    assert mode == "RGB" and px.shape == (16, 16, 3) and px[8, 8].tolist() == [255, 0, 0]


def test_returned_image_is_detached_from_file(tmp_path: Path) -> None:
    path = save(tmp_path / "x.png", Image.new("L", (3, 3), 9))
    im = open_image(path)
    os.remove(path)
    assert np.asarray(im).sum() == 81


# ------------------------------------------------------------------------- bad files


def test_bad_files_and_their_reasons(tmp_path: Path) -> None:
    photo = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 80, 120)).save(photo, "JPEG")
    data = photo.getvalue()
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(png, "PNG")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "html.jpg").write_text("<html><body>Not found</body></html>")
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "cut.png").write_bytes(png.getvalue()[:200])
    (tmp_path / "dir.jpg").mkdir()
    os.symlink("nowhere.png", tmp_path / "dangling.png")
    assert skip_reason(tmp_path / "empty.png") == "empty"
    assert skip_reason(tmp_path / "text.jpg") == "not-an-image"
    assert skip_reason(tmp_path / "html.jpg") == "not-an-image"
    assert skip_reason(tmp_path / "cut.jpg") == "truncated"
    assert skip_reason(tmp_path / "cut.png") == "truncated"
    assert skip_reason(tmp_path / "dir.jpg") == "not-a-file"
    assert skip_reason(tmp_path / "dangling.png") == "broken-link"
    assert skip_reason(tmp_path / "absent.png") == "missing"


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert skip_reason(fifo) == "not-a-file"
    paths, skipped = list_images(tmp_path)
    assert paths == [] and [s["reason"] for s in skipped] == ["not-a-file"]


def test_unreadable_is_judged_with_os_access(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(tmp_path / "locked.png", Image.new("L", (2, 2)))
    os.chmod(path, 0)
    if os.access(path, os.R_OK):
        # running as root: mode 000 is still readable, so decoding succeeds ...
        assert open_image(path).size == (2, 2)
        # ... and to prove the check is made we patch os.access to answer as for a normal user
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False)
    assert skip_reason(path) == "unreadable"


def test_decode_errors_are_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    path = save(tmp_path / "x.png", Image.new("RGB", (4, 4)))

    def broken_load(self):  # a codec failing in a way Pillow does not classify
        raise ValueError("codec exploded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken_load)
    with pytest.raises(ImageSkip) as info:
        open_image(path)
    assert info.value.reason == "decode-error" and "codec exploded" in info.value.detail


def test_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    from PIL import ImageFile

    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png())
    assert path.stat().st_size < 1000
    before = Image.MAX_IMAGE_PIXELS
    calls = []
    original = ImageFile.ImageFile.load
    ImageFile.ImageFile.load = lambda self: calls.append(1) or original(self)  # type: ignore[method-assign]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not fire first
            with pytest.raises(ImageSkip) as info:
                open_image(path)
    finally:
        ImageFile.ImageFile.load = original  # type: ignore[method-assign]
    assert info.value.reason == "too-large"
    assert "20000x10000" in info.value.detail
    assert calls == []  # refused from the header, no pixel decoded
    assert Image.MAX_IMAGE_PIXELS == before  # Pillow's own guard is left as it was


def test_max_pixels_is_configurable(tmp_path: Path) -> None:
    path = save(tmp_path / "x.png", Image.new("L", (100, 100)))
    assert skip_reason(path, max_pixels=9999) == "too-large"
    assert open_image(path, max_pixels=10000).size == (100, 100)
    assert open_image(path, max_pixels=None).size == (100, 100)
    assert DEFAULT_MAX_PIXELS < 200_000_000


def test_skip_as_dict_is_plain_strings() -> None:
    skip = ImageSkip("a\udce9.png", "empty", "0 bytes")
    assert skip.as_dict() == {"path": "a\udce9.png", "reason": "empty", "detail": "0 bytes"}
    assert all(type(v) is str for v in skip.as_dict().values())
    import pickle

    again = pickle.loads(pickle.dumps(skip))
    assert (again.path, again.reason, again.detail) == (skip.path, skip.reason, skip.detail)
    with pytest.raises(ValueError):
        ImageSkip("x", "not-a-reason")


# --------------------------------------------------------------------------- listing


def test_listing_is_natural_and_ignores_other_files(tmp_path: Path) -> None:
    for name in ("img10.png", "img2.png", "img1.PNG", "b/x.jpg", "a/y.jpeg"):
        save(tmp_path / name, Image.new("L", (2, 2)))
    (tmp_path / "README.md").write_text("hi")
    (tmp_path / "data.bin").write_bytes(b"\0\1")
    save(tmp_path / ".hidden" / "z.png", Image.new("L", (2, 2)))
    save(tmp_path / ".dot.png", Image.new("L", (2, 2)))
    paths, skipped = list_images(tmp_path)
    rel = [os.path.relpath(p, tmp_path) for p in paths]
    assert rel == ["a/y.jpeg", "b/x.jpg", "img1.PNG", "img2.png", "img10.png"]
    assert skipped == []
    assert all(type(p) is str for p in paths)
    top, _ = list_images(tmp_path, recursive=False)
    assert [os.path.basename(p) for p in top] == ["img1.PNG", "img2.png", "img10.png"]


def test_symlink_loops_end_and_list_each_file_once(tmp_path: Path) -> None:
    save(tmp_path / "one" / "a.png", Image.new("L", (2, 2)))
    os.symlink(".", tmp_path / "one" / "self")  # a 1-link loop
    save(tmp_path / "two" / "x" / "b.png", Image.new("L", (2, 2)))
    save(tmp_path / "two" / "y" / "c.png", Image.new("L", (2, 2)))
    os.symlink("../y", tmp_path / "two" / "x" / "to-y")  # a 2-link loop
    os.symlink("../x", tmp_path / "two" / "y" / "to-x")
    os.symlink(str(tmp_path), tmp_path / "two" / "to-top")  # and one back to the top
    paths, skipped = list_images(tmp_path)
    rel = [os.path.relpath(p, tmp_path) for p in paths]
    assert rel == ["one/a.png", "two/x/b.png", "two/y/c.png"]  # real paths, each once
    assert skipped == []
    for top in ("one", "two/x"):  # starting inside a loop ends too
        inner, _ = list_images(tmp_path / top)
        assert len(inner) == len(set(os.path.realpath(p) for p in inner))


def test_linked_folder_outside_the_tree_is_followed(tmp_path: Path) -> None:
    save(tmp_path / "elsewhere" / "e.png", Image.new("L", (2, 2)))
    save(tmp_path / "data" / "d.png", Image.new("L", (2, 2)))
    os.symlink(tmp_path / "elsewhere", tmp_path / "data" / "linked")
    os.symlink(tmp_path / "elsewhere" / "e.png", tmp_path / "data" / "e-link.png")
    paths, _ = list_images(tmp_path / "data")
    assert [os.path.relpath(p, tmp_path / "data") for p in paths] == ["d.png", "linked/e.png"]


def test_dangling_symlink_is_reported_only_when_named_like_an_image(tmp_path: Path) -> None:
    os.symlink("gone.png", tmp_path / "dangling.png")
    os.symlink("gone.txt", tmp_path / "dangling.txt")
    os.symlink("itself.jpg", tmp_path / "itself.jpg")  # ELOOP
    paths, skipped = list_images(tmp_path)
    assert paths == []
    assert sorted((os.path.basename(s["path"]), s["reason"]) for s in skipped) == [
        ("dangling.png", "broken-link"),
        ("itself.jpg", "broken-link"),
    ]


def test_directory_named_like_an_image_is_walked(tmp_path: Path) -> None:
    save(tmp_path / "x.jpg" / "inner.png", Image.new("L", (2, 2)))
    paths, skipped = list_images(tmp_path)
    assert [os.path.relpath(p, tmp_path) for p in paths] == ["x.jpg/inner.png"] and skipped == []


def test_non_utf8_names(tmp_path: Path) -> None:
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")
    with open(raw, "wb") as fh:
        Image.new("RGB", (3, 3), (9, 9, 9)).save(fh, "PNG")
    paths, _ = list_images(tmp_path)
    assert len(paths) == 1 and type(paths[0]) is str
    assert os.fsencode(paths[0]) == raw
    assert open_image(paths[0]).size == (3, 3)
    assert open_image(raw).size == (3, 3)  # bytes paths are accepted too


def test_single_file_and_missing_root(tmp_path: Path) -> None:
    path = save(tmp_path / "one.png", Image.new("L", (2, 2)))
    assert list_images(path) == ([path], [])
    with pytest.raises(PixdexError, match="does not exist"):
        list_images(tmp_path / "nope")


def test_extensions_are_lower_case_with_dot() -> None:
    assert ".jpg" in IMAGE_EXTENSIONS and ".png" in IMAGE_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)


# --------------------------------------------------------------------------- probing


def test_probe_grey_same_size(tmp_path: Path) -> None:
    paths = [save(tmp_path / f"{i}.png", Image.new("L", (5, 4), 0 if i % 2 else 255)) for i in range(10)]
    stats = probe_images(paths, sample=10)
    in_chans, native, mean, std, short_side = stats  # unpacks like the tuple it is
    assert (in_chans, native, short_side) == (1, (4, 5), 4)
    assert mean[0] == pytest.approx(0.5) and std[0] == pytest.approx(0.5)


def test_probe_mixed_modes_and_sizes_skips_bad(tmp_path: Path) -> None:
    paths = [
        save(tmp_path / "a.png", Image.new("L", (5, 4), 255)),
        save(tmp_path / "b.png", Image.new("RGB", (6, 4), (255, 0, 0))),
    ]
    (tmp_path / "bad.png").write_bytes(b"junk")
    stats = probe_images(paths + [str(tmp_path / "bad.png")], sample=8)
    assert stats.in_chans == 3 and stats.native_size is None
    assert len(stats.mean) == 3 and stats.mean[0] == pytest.approx(1.0) and 0 < stats.mean[1] < 1


def test_probe_with_every_file_bad_is_an_error(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"")
    with pytest.raises(PixdexError, match="none of the 3 images"):
        probe_images([str(tmp_path / f"{i}.png") for i in range(3)])


def test_probe_is_seeded(tmp_path: Path) -> None:
    paths = [save(tmp_path / f"{i}.png", Image.new("L", (2, 2), i * 20)) for i in range(12)]
    assert probe_images(paths, sample=3, seed=1) == probe_images(paths, sample=3, seed=1)
