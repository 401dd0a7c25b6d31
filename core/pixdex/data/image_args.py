"""The image arguments of commands: files and folders as given, single-image checks, and
the error when nothing could be read. Shared by predict, search and the index commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pixdex.errors import PixdexError


def expand_inputs(inputs: list[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """Image files as given, folders listed recursively (symlink-loop safe)."""
    from pixdex.data.images import list_images

    paths: list[str] = []
    skipped: list[dict[str, Any]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found, skips = list_images(item)
            paths.extend(found)
            skipped.extend(skips)
        elif p.exists() or p.is_symlink():
            paths.append(item)
        else:
            raise PixdexError(f"{item} does not exist")
    return paths, skipped


def is_single_image(inputs: list[str], paths: list[str]) -> bool:
    """One file named on its own (not a folder): single-image work, where a bad image is an error."""
    return len(inputs) == 1 and len(paths) == 1 and not Path(inputs[0]).is_dir()


def check_single_image(path: str, max_pixels: int) -> None:
    """Single-image work: a bad image is a clear error, not a skip."""
    from pixdex.data.images import ImageSkip, open_image

    try:
        open_image(path, max_pixels=max_pixels)
    except ImageSkip as exc:
        raise PixdexError(f"cannot read {path}: {exc.reason}" + (f" ({exc.detail})" if exc.detail else "")) from None


def nothing_read(what: str, skipped: list[dict[str, Any]]) -> PixdexError:
    """The error when no image could be used, naming the first reason."""
    first = f"; first: {skipped[0]['path']}: {skipped[0]['reason']}" if skipped else ""
    return PixdexError(f"{what} could be read ({len(skipped)} skipped{first})")
