"""Safe listing and decoding of image files, and the skip report's vocabulary.

Every command that reads images goes through :func:`list_images` and :func:`open_image`,
so a bad file is handled the same way everywhere: it is skipped and reported as
``{path, reason, detail}`` with ``reason`` taken from :data:`REASONS`, never a traceback.

Pillow and numpy are imported lazily (inside functions) so that importing this module
costs nothing for ``pixdex --help``; torch is never imported here.
"""

from __future__ import annotations

import os
import random
import stat
import threading
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

from pixdex.components import natural_key
from pixdex.errors import PixdexError
from pixdex.settings import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "REASONS",
    "DEFAULT_MAX_PIXELS",
    "ImageSkip",
    "ImageStats",
    "has_image_extension",
    "list_images",
    "open_image",
    "decode_image_bytes",
    "probe_images",
    "quiet_pillow_warnings",
    "to_display_mode",
]

# Extensions Pillow decodes out of the box. Files with other extensions are ignored by
# listing (a README next to the photos is not a skipped image); an explicitly named file
# (a list file entry, a query path) is judged by its content instead.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".gif",
        ".bmp",
        ".dib",
        ".tif",
        ".tiff",
        ".webp",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".tga",
        ".ico",
        ".jp2",
        ".j2k",
    }
)

# The skip vocabulary (docs/cli.md). Append only: scripts match on these words.
REASONS: tuple[str, ...] = (
    "empty",  # zero bytes
    "not-an-image",  # Pillow does not recognise the content (text or HTML named .jpg)
    "truncated",  # the data stops early or is structurally broken
    "too-large",  # width*height above max_pixels (refused before decoding)
    "unreadable",  # no read permission, or the OS refused to open or list it
    "decode-error",  # recognised, but decoding or colour conversion failed
    "broken-link",  # a symbolic link whose target does not exist (or loops)
    "missing",  # named by a list file or a caller, but not there
    "not-a-file",  # a directory, FIFO, socket or device where a file was expected
    "no-class",  # a labelled reader found an image outside any class folder
    "non-finite",  # decoded, but the model's embedding had NaN or inf (never kept)
    "no-labelled-neighbours",  # predict through an index: no labelled neighbour to vote
)


_DETAIL_LIMIT = 300


class ImageSkip(Exception):
    """An image that cannot be used: ``.path``, ``.reason`` (one of REASONS), ``.detail``."""

    def __init__(self, path: str, reason: str, detail: str = "") -> None:
        if reason not in REASONS:  # the vocabulary is a promise to scripts reading skipped.jsonl
            raise ValueError(f"skip reason {reason!r} is not one of {', '.join(REASONS)}")
        self.path = str(path)  # plain str (not a subclass) for JSON writers downstream
        self.reason = reason
        self.detail = str(detail)[:_DETAIL_LIMIT]
        super().__init__(f"{self.path}: {reason}" + (f" ({self.detail})" if self.detail else ""))

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason, self.detail))

    def as_dict(self) -> dict[str, str]:
        """The skip report line: ``{"path", "reason", "detail"}`` with plain ``str`` values."""
        return {"path": self.path, "reason": self.reason, "detail": self.detail}


def skip_entry(path: str, reason: str, detail: str = "") -> dict[str, str]:
    """One skip report entry, checked against the vocabulary."""
    return ImageSkip(path, reason, detail).as_dict()


def has_image_extension(path: str) -> bool:
    """True when ``path`` ends in one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------- listing


def list_images(
    root: str | os.PathLike[str] | bytes, *, recursive: bool = True
) -> tuple[list[str], list[dict[str, str]]]:
    """List the image files under ``root``; return ``(paths, skipped)``.

    ``paths`` are ``str`` (non-UTF-8 names arrive surrogate-escaped, as ``os.fsdecode``
    gives them), in natural order of their path below ``root`` (``img2`` before
    ``img10``). Only files with an image extension are listed; hidden entries (names
    starting with ".") are ignored, as are other files. ``skipped`` reports dangling links
    with an image extension (``broken-link``), special files named like images
    (``not-a-file``) and folders that cannot be listed (``unreadable``).

    Symbolic links are followed, but each directory is visited once, by its
    ``(st_dev, st_ino)``: real directories are walked before linked ones, so link loops end
    and a file reachable through a link into the tree is listed once, under its real path.
    A file symlink whose target is already listed is dropped for the same reason.
    A ``root`` that is itself a file is returned as the one path (its content is judged
    later by :func:`open_image`).
    """
    top = str(os.fsdecode(os.fspath(root)))
    if not os.path.lexists(top):
        raise PixdexError(f"path {top} does not exist")
    try:
        top_stat = os.stat(top)
    except OSError as exc:
        return [], [skip_entry(top, "broken-link", _os_detail(exc))]
    if not stat.S_ISDIR(top_stat.st_mode):
        if stat.S_ISREG(top_stat.st_mode):
            return [top], []
        return [], [skip_entry(top, "not-a-file", "not a regular file")]

    visited: set[tuple[int, int]] = {(top_stat.st_dev, top_stat.st_ino)}
    found: list[tuple[str, bool, tuple[int, int]]] = []  # (path, via a file symlink, inode)
    skipped: list[dict[str, str]] = []
    pending = [top]  # real directories, walked first
    linked: list[str] = []  # directories reached through a symlink, walked afterwards
    first = True

    while pending or linked:
        folder = pending.pop() if pending else linked.pop(0)
        if first:
            st, first = top_stat, False
        else:
            # a linked folder may have been reached by its real path in the meantime
            try:
                st = os.stat(folder)
            except OSError as exc:
                skipped.append(skip_entry(folder, "unreadable", _os_detail(exc)))
                continue
            if (st.st_dev, st.st_ino) in visited:
                continue
            visited.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(folder) as entries:
                entries_list = list(entries)
        except OSError as exc:
            skipped.append(skip_entry(folder, "unreadable", f"cannot list folder: {_os_detail(exc)}"))
            continue
        for entry in entries_list:
            if entry.name.startswith("."):
                continue
            _classify(entry, st.st_dev, recursive, found, skipped, pending, linked)

    paths = _dedupe_links(found)
    sort_key = _sort_key(top)
    paths.sort(key=sort_key)
    skipped.sort(key=lambda s: sort_key(s["path"]))
    return paths, skipped


def _classify(
    entry: os.DirEntry[str],
    folder_dev: int,
    recursive: bool,
    found: list[tuple[str, bool, tuple[int, int]]],
    skipped: list[dict[str, str]],
    pending: list[str],
    linked: list[str],
) -> None:
    """Sort one directory entry into files, folders to walk, or skip reports."""
    is_link = True  # until scandir says otherwise: an entry that cannot be examined is judged as a link
    try:
        is_link = entry.is_symlink()
        if not is_link:
            # the common case costs no system call: scandir's d_type and d_ino answer it
            if entry.is_dir(follow_symlinks=False):
                if recursive:  # "x.jpg" may be a directory: it is walked like any other
                    pending.append(entry.path)
                return
            if not has_image_extension(entry.name):
                return
            if entry.is_file(follow_symlinks=False):
                found.append((entry.path, False, (folder_dev, entry.inode())))
            else:
                skipped.append(skip_entry(entry.path, "not-a-file", "not a regular file (FIFO, socket or device)"))
            return
        st = entry.stat(follow_symlinks=True)
    except OSError as exc:
        # a dangling or self-referencing link: worth reporting only if it looks like an image
        if has_image_extension(entry.name):
            reason = "broken-link" if is_link else "unreadable"
            skipped.append(skip_entry(entry.path, reason, _os_detail(exc)))
        return
    if stat.S_ISDIR(st.st_mode):
        if recursive:
            linked.append(entry.path)
        return
    if not has_image_extension(entry.name):
        return
    if stat.S_ISREG(st.st_mode):
        found.append((entry.path, True, (st.st_dev, st.st_ino)))
    else:
        skipped.append(skip_entry(entry.path, "not-a-file", "not a regular file (FIFO, socket or device)"))


def _dedupe_links(found: list[tuple[str, bool, tuple[int, int]]]) -> list[str]:
    """Drop file symlinks whose target is listed already (real files are never dropped)."""
    links = [f for f in found if f[1]]
    if not links:
        return [path for path, _, _ in found]
    real = {inode for _, is_link, inode in found if not is_link}
    seen_links: set[tuple[int, int]] = set()
    dropped: set[str] = set()
    # natural order decides which of two links to the same outside file is kept
    sort_key = _sort_key("")
    for path, _, inode in sorted(links, key=lambda f: sort_key(f[0])):
        if inode in real or inode in seen_links:
            dropped.add(path)
        seen_links.add(inode)
    return [path for path, _, _ in found if path not in dropped]


def _sort_key(top: str) -> Callable[[str], tuple[list[Any], str]]:
    """Component-wise natural order of paths below ``top``, the raw path breaking ties.

    Folder names are keyed once per folder, not once per file: listing 100k files
    spends its time here otherwise.
    """
    prefix = top.rstrip(os.sep) + os.sep if top else ""
    folders: dict[str, list[Any]] = {}

    def key(path: str) -> tuple[list[Any], str]:
        rel = path[len(prefix) :] if prefix and path.startswith(prefix) else path
        folder, _, name = rel.rpartition(os.sep)
        if folder not in folders:
            folders[folder] = [natural_key(part) for part in folder.split(os.sep)] if folder else []
        return folders[folder] + [natural_key(name)], path

    return key


def _os_detail(exc: OSError) -> str:
    return exc.strerror or str(exc)


# -------------------------------------------------------------------------- decoding

# Pillow keeps its decompression-bomb limit in a module global. We lift it only around
# Image.open (header parsing, microseconds) and under a lock, then apply our own limit
# before any pixel is decoded; other threads' limits are never left changed.
_PIL_LIMIT_LOCK = threading.Lock()


def open_image(
    path: str | os.PathLike[str] | bytes,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode one image file safely; return a loaded PIL image in mode "L" or "RGB".

    Raises :class:`ImageSkip` (never anything else for a bad file) with reason
    ``missing``, ``broken-link``, ``not-a-file``, ``unreadable`` (judged with
    ``os.access``, plus any OS refusal), ``empty``, ``not-an-image``, ``too-large``
    (``width * height > max_pixels``, checked from the header before decoding; ``None``
    or 0 disables the limit), ``truncated`` or ``decode-error``.

    Conversions: EXIF orientation is applied; animations give their first frame; 1, L,
    I;16, I and F become L (16-bit data scaled by 1/257, not clipped to white); P, LA, PA,
    RGBA and L/RGB with a transparent colour are composited onto white; CMYK, YCbCr, LAB,
    HSV and RGBX become RGB.

    ``draft_size``: ``(height, width)`` the caller will shrink the image to (at least)
    anyway. A JPEG is then decoded at the smallest of libjpeg's scales 1/8, 1/4, 1/2
    that still keeps both sides (as displayed, after EXIF orientation) at or above it,
    which skips most of the decoding work for large photos; other formats, and JPEGs
    already smaller than twice the size, decode in full. The limits and checks above
    apply to the stored size, as without it.
    """
    if draft_size is not None:
        draft_size = _checked_draft_size(draft_size)
    name = str(os.fsdecode(os.fspath(path)))
    _check_file(name)
    try:
        fp = open(name, "rb")
    except OSError as exc:
        raise ImageSkip(name, "unreadable", _os_detail(exc)) from None
    with fp:
        return _decode(fp, name, max_pixels, draft_size)


def decode_image_bytes(data: bytes, name: str, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """:func:`open_image` for bytes already in memory (an upload): the same checks, limits,
    conversions and :class:`ImageSkip` reasons; ``name`` is what a skip reports."""
    import io

    if not data:
        raise ImageSkip(name, "empty", "0 bytes")
    return _decode(io.BytesIO(data), name, max_pixels, None)


def _decode(fp: Any, name: str, max_pixels: int | None, draft_size: tuple[int, int] | None) -> Image.Image:
    from PIL import Image, UnidentifiedImageError

    try:
        with _PIL_LIMIT_LOCK:
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                im = Image.open(fp)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError:
        raise ImageSkip(name, "not-an-image", "Pillow does not recognise this file's content") from None
    except Image.DecompressionBombError as exc:
        raise ImageSkip(name, "too-large", str(exc)) from None
    except Exception as exc:  # Pillow plugins raise many types on corrupt headers
        raise ImageSkip(name, _load_reason(exc), _exc_detail(exc)) from None
    width, height = im.size
    if max_pixels and width * height > max_pixels:
        raise ImageSkip(name, "too-large", f"{width}x{height} = {width * height} pixels, limit {max_pixels}")
    if width < 1 or height < 1:
        raise ImageSkip(name, "decode-error", f"image has no pixels ({width}x{height})")
    if draft_size is not None:
        _draft(im, draft_size)
    try:
        im.load()  # frame 0: an animation's later frames are never decoded
    except Image.DecompressionBombError as exc:
        raise ImageSkip(name, "too-large", str(exc)) from None
    except Exception as exc:
        raise ImageSkip(name, _load_reason(exc), _exc_detail(exc)) from None
    try:
        return to_display_mode(_exif_transpose(im))
    except ImageSkip:
        raise
    except Exception as exc:
        raise ImageSkip(name, "decode-error", f"conversion from mode {im.mode}: {_exc_detail(exc)}") from None


def _checked_draft_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"draft_size must be (height, width), got {size!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"draft_size must be positive, got {size!r}")
    return height, width


# EXIF orientations that swap the stored width and height (transpose, rotate 90 or 270)
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def _draft(im: Image.Image, size: tuple[int, int]) -> None:
    """Ask the JPEG decoder for a reduced scale that still covers ``size`` (height, width).

    Only JPEG (and MPO, Pillow's subclass for multi-picture JPEGs) implement draft; the
    mode is left alone (None), so colour conversion stays exactly as without a draft.
    """
    from PIL import JpegImagePlugin

    if not isinstance(im, JpegImagePlugin.JpegImageFile):
        return
    height, width = size
    if height != width:
        # the size asked for is as displayed, the decoder works in the stored orientation:
        # when EXIF may turn the picture (or cannot be read), cover the longer side both ways
        try:
            turned = im.getexif().get(0x0112, 1) in _SWAPPING_ORIENTATIONS
        except Exception:
            turned = True
        if turned:
            height = width = max(height, width)
    try:
        im.draft(None, (width, height))
    except Exception:  # a draft is only an optimisation: decode in full instead
        pass


def _check_file(name: str) -> None:
    """The checks that need no decoding: existence, links, file type, permission, size."""
    try:
        lst = os.lstat(name)
    except FileNotFoundError:
        raise ImageSkip(name, "missing", "no such file") from None
    except OSError as exc:
        raise ImageSkip(name, "unreadable", _os_detail(exc)) from None
    try:
        st = os.stat(name) if stat.S_ISLNK(lst.st_mode) else lst
    except OSError as exc:
        raise ImageSkip(name, "broken-link", f"link target: {_os_detail(exc)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageSkip(name, "not-a-file", "is a directory")
    if not stat.S_ISREG(st.st_mode):
        # opening a FIFO would block forever
        raise ImageSkip(name, "not-a-file", "not a regular file (FIFO, socket or device)")
    # os.access, not a mode-bit check: it answers for this process (root reads mode 000)
    if not os.access(name, os.R_OK):
        raise ImageSkip(name, "unreadable", "permission denied")
    if st.st_size == 0:
        raise ImageSkip(name, "empty", "0 bytes")


_TRUNCATION_HINTS = (
    "truncated",
    "broken data stream",
    "premature end",
    "unexpected end",
    "not enough data",
    "buffer is not large enough",
    "end of file",
)


def _load_reason(exc: BaseException) -> str:
    """Map a Pillow decoding exception onto the vocabulary."""
    if isinstance(exc, (EOFError, SyntaxError)):
        return "truncated"
    text = str(exc).lower()
    if any(hint in text for hint in _TRUNCATION_HINTS):
        return "truncated"
    if isinstance(exc, PermissionError):
        return "unreadable"
    if isinstance(exc, ValueError) and "decompressed data too large" in text:
        return "too-large"  # Pillow's own text-chunk bomb guard
    return "decode-error"


def _exc_detail(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _exif_transpose(im: Image.Image) -> Image.Image:
    """Apply EXIF orientation; garbage EXIF leaves the pixels as stored (and still usable).

    Always returns a new image, detached from the open file.
    """
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # a corrupt EXIF block is no reason to lose the picture
        return im.copy()


def to_display_mode(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to "L" (single channel) or "RGB", compositing alpha on white."""
    from PIL import Image

    mode = im.mode
    if mode in ("L", "RGB") and "transparency" not in im.info:
        return im
    if mode == "1":
        return im.convert("L")
    if mode == "L":  # with a transparent grey level (PNG tRNS)
        return _on_white(im.convert("RGBA")).convert("L")
    if mode in ("LA", "La"):
        return _on_white_grey(im.convert("LA") if mode == "La" else im)
    if mode in ("P", "PA", "RGBA", "RGBa", "RGB"):
        has_alpha = mode in ("PA", "RGBA", "RGBa") or "transparency" in im.info
        if mode == "P" and not has_alpha:
            return im.convert("RGB")
        return _on_white(im.convert("RGBA")) if has_alpha else im.convert("RGB")
    if mode.startswith("I") or mode == "F":
        return _scale_to_l(im)
    if mode in ("CMYK", "YCbCr", "HSV", "RGBX"):
        return im.convert("RGB")
    if mode == "LAB":
        # Pillow has no direct LAB->RGB; ImageCms does it with the proper white point
        from PIL import ImageCms

        transform = ImageCms.buildTransformFromOpenProfiles(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
        )
        return ImageCms.applyTransform(im, transform)
    converted = im.convert("RGB")  # any mode Pillow adds later; a failure is a decode-error
    assert isinstance(converted, Image.Image)
    return converted


def _on_white(rgba: Image.Image) -> Image.Image:
    from PIL import Image

    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return out


def _on_white_grey(la: Image.Image) -> Image.Image:
    from PIL import Image

    out = Image.new("L", la.size, 255)
    out.paste(la.getchannel("L"), mask=la.getchannel("A"))
    return out


def _scale_to_l(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float greyscale to 8-bit L without clipping to white.

    Pillow's own convert("L") clips anything above 255, so a 16-bit photo turns white.
    The range is judged per mode: I;16* is 16-bit (divide by 257). For I (32-bit, no
    declared depth) and F, values already in 0..255 are kept, values in 0..65535 are
    taken as 16-bit, floats in 0..1 as fractions, and anything else is stretched from
    its minimum to its maximum.
    """
    import numpy as np
    from PIL import Image

    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        out = arr.astype(np.float64) / 257.0
    else:
        data = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo = float(data.min()) if data.size else 0.0
        hi = float(data.max()) if data.size else 0.0
        if im.mode == "F" and lo >= 0.0 and hi <= 1.0:
            out = data * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            out = data
        elif lo >= 0.0 and hi <= 65535.0:
            out = data / 257.0
        elif hi > lo:
            out = (data - lo) * (255.0 / (hi - lo))
        else:
            out = np.zeros_like(data)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="L")


def quiet_pillow_warnings() -> None:
    """Silence Pillow's per-file UserWarnings (corrupt EXIF, TIFF tags past the end).

    pixdex reports a bad image in its skip report, so these only clutter stderr. This
    changes the process's warning filters, so the library never calls it: a command does,
    once, at start-up (DataLoader workers forked afterwards inherit the filter).
    """
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


# ---------------------------------------------------------------------------- probing


class ImageStats(NamedTuple):
    """What a sample of images says about the data (feeds contracts.DataInfo)."""

    in_chans: int
    native_size: tuple[int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    short_side: int | None = None  # the median of the images' shorter sides, in pixels


_STATS_SIDE = 256  # statistics are measured on thumbnails: big photos cost the same as small


def probe_images(
    paths: Sequence[str],
    sample: int = 64,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    *,
    seed: int = 0,
    opener: Callable[[str], Image.Image] | None = None,
) -> ImageStats:
    """Decode a seeded sample of ``paths`` and describe it.

    Returns ``(in_chans, native_size, mean, std, short_side)``: ``in_chans`` is 1 when every
    decoded image is greyscale, else 3; ``native_size`` is ``(H, W)`` when they all share one
    size, else None; ``mean``/``std`` are per-channel pixel statistics in [0, 1];
    ``short_side`` is the median of the shorter sides (what "photo-sized" is judged by). Bad files are
    passed over (the next ones in the seeded order stand in for them); if none of
    ``paths`` decodes, a :class:`~pixdex.errors.PixdexError` names the first few reasons.
    ``opener`` replaces :func:`open_image` (for keys such as ``idx:train/000001``).
    """
    import numpy as np

    order = list(range(len(paths)))
    random.Random(seed).shuffle(order)
    images = []
    skips: list[ImageSkip] = []
    for i in order:
        if len(images) >= sample:
            break
        try:
            im = opener(paths[i]) if opener else open_image(paths[i], max_pixels=max_pixels)
        except ImageSkip as skip:
            skips.append(skip)
            continue
        images.append(im)
    if not images:
        if not paths:
            raise PixdexError("no images to probe: the data set is empty")
        first = "; ".join(f"{s.path}: {s.reason}" for s in skips[:3])
        raise PixdexError(f"none of the {len(paths)} images could be decoded ({first})")

    in_chans = 1 if all(im.mode == "L" for im in images) else 3
    sizes = {(im.height, im.width) for im in images}
    native_size = sizes.pop() if len(sizes) == 1 else None
    total = np.zeros(in_chans)
    total_sq = np.zeros(in_chans)
    count = 0
    for im in images:
        if in_chans == 3 and im.mode != "RGB":
            im = im.convert("RGB")
        if max(im.size) > _STATS_SIDE:
            im = im.copy()
            im.thumbnail((_STATS_SIDE, _STATS_SIDE))
        arr = np.asarray(im, dtype=np.float64).reshape(-1, in_chans) / 255.0
        total += arr.sum(axis=0)
        total_sq += (arr**2).sum(axis=0)
        count += arr.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    sides = sorted(min(im.size) for im in images)
    return ImageStats(
        in_chans, native_size, tuple(float(m) for m in mean), tuple(float(s) for s in std), sides[len(sides) // 2]
    )
