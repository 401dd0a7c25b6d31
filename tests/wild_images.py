"""A corpus of images "from the wild" for reliability tests (docs/reliability.md, promise 2).

``make_wild_corpus(root)`` writes, below ``root``, every kind of file pixdex must survive:
zero bytes; text and HTML named .jpg; truncated JPEG and PNG; a tiny PNG that declares
200 megapixels; every Pillow mode; an EXIF-rotated photo; an animated GIF; 1x1 and
10000x10 images; an unreadable file; a dangling symlink; a directory named x.jpg;
non-UTF-8 and HTML-hostile file names; 1- and 2-link symlink loops. It returns what a
correct reader must make of each file, so any command (train, embed, index, search) can
be run over the same folder and checked::

    corpus = make_wild_corpus(tmp_path / "wild")
    corpus["root"]            # str: the folder to point pixdex at (an unlabelled collection)
    corpus["good"]            # {path: {"mode": "L" | "RGB", "size": (W, H)}} after decoding
    corpus["bad"]             # {path: reason}, reason from pixdex.data.images.REASONS
    corpus["ignored"]         # paths listing passes over silently (non-image extensions)
    corpus["listing_skips"]   # the subset of "bad" that list_images itself reports

Paths are ``str`` as ``os.fsdecode`` gives them (the non-UTF-8 name is surrogate-escaped),
each under the one name a loop-safe listing reports. Whether the chmod-000 file is good or
bad depends on who runs the test: root reads it (``os.access`` says so), anyone else gets
``unreadable``. Only Pillow and numpy are needed; nothing here imports pixdex.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

BOMB_SIZE = (20000, 10000)  # 200 megapixels declared, a few hundred bytes on disk
NON_UTF8_NAME = b"caf\xe9-latin1.png"  # 'café' in Latin-1: not valid UTF-8
HOSTILE_NAME = "<img src=x onerror=alert(1)>.png"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = BOMB_SIZE[0], height: int = BOMB_SIZE[1]) -> bytes:
    """A valid-looking greyscale PNG whose header declares ``width x height`` pixels but
    whose data is one compressed row: decoding it would allocate the whole image."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * min(width, 64))
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def gradient(width: int, height: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A deterministic, textured uint8 image (gradients plus a little noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = [x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) * 127 // max(width + height - 2, 1)]
    planes = [np.clip(base[c % 3] + rng.integers(-8, 9, (height, width)), 0, 255) for c in range(channels)]
    arr = np.stack(planes, axis=-1).astype(np.uint8)
    return arr[..., 0] if channels == 1 else arr


def mode_images() -> dict[str, tuple[Image.Image, str, str]]:
    """One image per Pillow mode: name -> (image, format, expected decoded mode)."""
    rgb = Image.fromarray(gradient(32, 24))
    grey = Image.fromarray(gradient(32, 24, 1))
    p_trans = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    p_trans.info["transparency"] = 0
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(gradient(32, 24, 1, seed=1)))
    la = grey.copy()
    la.putalpha(128)
    i16 = Image.fromarray((gradient(32, 24, 1).astype(np.uint16) * 257))
    i32 = Image.fromarray(gradient(32, 24, 1).astype(np.int32) * 200)
    f32 = Image.fromarray(gradient(32, 24, 1).astype(np.float32) / 255.0)
    return {
        "mode-1.png": (grey.convert("1"), "PNG", "L"),
        "mode-L.png": (grey, "PNG", "L"),
        "mode-P.png": (rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG", "RGB"),
        "mode-P-transparent.png": (p_trans, "PNG", "RGB"),
        "mode-P-transparent.gif": (p_trans, "GIF", "RGB"),
        "mode-LA.png": (la, "PNG", "L"),
        "mode-RGB.jpg": (rgb, "JPEG", "RGB"),
        "mode-RGB.webp": (rgb, "WEBP", "RGB"),
        "mode-RGB.bmp": (rgb, "BMP", "RGB"),
        "mode-RGBA.png": (rgba, "PNG", "RGB"),
        "mode-CMYK.jpg": (rgb.convert("CMYK"), "JPEG", "RGB"),
        "mode-CMYK.tif": (rgb.convert("CMYK"), "TIFF", "RGB"),
        "mode-I16.png": (i16, "PNG", "L"),
        "mode-I16.tif": (i16, "TIFF", "L"),
        "mode-I.tif": (i32, "TIFF", "L"),
        "mode-F.tif": (f32, "TIFF", "L"),
        "mode-YCbCr.jpg": (rgb.convert("YCbCr"), "JPEG", "RGB"),
    }


def exif_rotated_jpeg() -> bytes:
    """A 40x20 JPEG (red left, blue right) with EXIF orientation 6: shown as 20x40, red on top."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes())


def animated_gif() -> bytes:
    """Three 16x16 frames, red, green, blue: the first frame is red."""
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def make_wild_corpus(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the corpus below ``root`` (created if needed); return what each file should give."""
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    good: dict[str, dict[str, Any]] = {}
    bad: dict[str, str] = {}
    listing_skips: dict[str, str] = {}
    ignored: list[str] = []

    def put(rel: str, data: bytes) -> str:
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return os.fsdecode(path)

    def put_image(
        rel: str, image: Image.Image, fmt: str, mode: str, size: tuple[int, int] | None = None, **params: Any
    ) -> str:
        path = put(rel, encode(image, fmt, **params))
        good[path] = {"mode": mode, "size": size or image.size}
        return path

    # every Pillow mode, in the formats that store it
    for name, (image, fmt, mode) in mode_images().items():
        put_image(f"modes/{name}", image, fmt, mode)

    # odd shapes and orientation
    put_image("shapes/1x1.png", Image.new("RGB", (1, 1), (10, 200, 30)), "PNG", "RGB")
    put_image("shapes/10000x10.png", Image.fromarray(gradient(10000, 10)), "PNG", "RGB")
    good[put("shapes/exif-rotated.jpg", exif_rotated_jpeg())] = {"mode": "RGB", "size": (20, 40)}
    good[put("shapes/animated.gif", animated_gif())] = {"mode": "RGB", "size": (16, 16)}

    # names: non-UTF-8 bytes, HTML-hostile, and a directory that looks like a file
    raw = os.path.join(os.fsencode(base), b"names", NON_UTF8_NAME)
    os.makedirs(os.path.dirname(raw), exist_ok=True)
    with open(raw, "wb") as fh:
        fh.write(encode(Image.fromarray(gradient(20, 20, seed=3)), "PNG"))
    good[os.fsdecode(raw)] = {"mode": "RGB", "size": (20, 20)}
    put_image(f"names/{HOSTILE_NAME}", Image.fromarray(gradient(20, 20, seed=4)), "PNG", "RGB")
    put_image("names/folder.jpg/inside.png", Image.fromarray(gradient(20, 20, seed=5)), "PNG", "RGB")
    put_image("names/spaces and ünïcode.png", Image.fromarray(gradient(20, 20, 1, seed=6)), "PNG", "L")

    # bad content
    photo = encode(Image.fromarray(gradient(64, 48, seed=7)), "JPEG", quality=90)
    png = encode(Image.fromarray(gradient(64, 48, seed=8)), "PNG")
    bad[put("bad/empty.jpg", b"")] = "empty"
    bad[put("bad/text.jpg", b"this is a text file, not a photo\n" * 4)] = "not-an-image"
    bad[put("bad/page.jpg", b"<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>\n")] = "not-an-image"
    bad[put("bad/truncated.jpg", photo[: len(photo) // 2])] = "truncated"
    bad[put("bad/truncated.png", png[: len(png) // 2])] = "truncated"
    bad[put("bad/bomb-200mp.png", bomb_png())] = "too-large"

    # permissions: root reads a mode-000 file, anyone else must get "unreadable"
    locked = put_image("bad/locked.png", Image.fromarray(gradient(16, 16, seed=9)), "PNG", "RGB")
    os.chmod(locked, 0)
    if not os.access(locked, os.R_OK):
        del good[locked]
        bad[locked] = "unreadable"

    # links: dangling, a file symlink to a listed file (listed once), loops of 1 and 2 links
    dangling = base / "links" / "dangling.png"
    dangling.parent.mkdir(parents=True, exist_ok=True)
    os.symlink("no-such-target.png", dangling)
    bad[os.fsdecode(dangling)] = listing_skips[os.fsdecode(dangling)] = "broken-link"
    os.symlink("../modes/mode-L.png", base / "links" / "alias-of-mode-L.png")  # dropped: same file
    put_image("loops/one/in-loop-1.png", Image.fromarray(gradient(12, 12, seed=10)), "PNG", "RGB")
    os.symlink(".", base / "loops" / "one" / "self")
    put_image("loops/two/a/in-loop-a.png", Image.fromarray(gradient(12, 12, seed=11)), "PNG", "RGB")
    put_image("loops/two/b/in-loop-b.png", Image.fromarray(gradient(12, 12, seed=12)), "PNG", "RGB")
    os.symlink("../b", base / "loops" / "two" / "a" / "to-b")
    os.symlink("../a", base / "loops" / "two" / "b" / "to-a")

    # files listing passes over without a word
    ignored.append(put("notes.txt", b"not an image, and not named like one\n"))
    ignored.append(put("bad/.hidden.png", b"hidden files are not listed"))

    return {"root": os.fsdecode(base), "good": good, "bad": bad, "ignored": ignored, "listing_skips": listing_skips}
