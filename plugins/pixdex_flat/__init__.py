"""pixdex_flat: the exact ``flat`` retrieval index (brute force with torch, in chunks).

Built in, but shaped exactly like a third-party plugin package: it talks to pixdex only
through :mod:`pixdex.hookspecs` and the ``register`` callable. numpy and torch are
imported lazily, when an index is made, so ``pixdex --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pixdex.hookspecs import hookimpl
from pixdex.plugin_api import ConfigError, resolve_device

if TYPE_CHECKING:
    from pixdex.plugin_api import Register
    from pixdex_flat.index import FlatIndex

__all__ = ["FlatOptions", "FlatIndex", "make_flat", "register_indexes"]


@dataclass
class FlatOptions:
    """Options of the ``flat`` index.

    ``device`` is where the matrix products run (``cpu``, ``cuda``, ``cuda:N``, ``mps`` or
    ``auto``). ``chunk_size`` is how many gallery rows are scored at once: memory stays
    bounded by ``query_chunk x chunk_size`` scores however large the collection is.
    """

    device: str = "cpu"
    chunk_size: int = 65536
    query_chunk: int = 1024


def make_flat(options: FlatOptions, *, dim: int, metric: str) -> FlatIndex:
    """Factory for ``flat``: check the options and resolve the device (imports torch)."""
    from pixdex_flat.index import FlatIndex

    for key in ("chunk_size", "query_chunk"):
        if getattr(options, key) < 1:
            raise ConfigError(f"index 'flat' option '{key}' must be at least 1, got {getattr(options, key)}")
    # the core's resolver gives 'auto' and one-line errors for absent devices
    device = resolve_device(options.device)
    return FlatIndex(
        dim=dim, metric=metric, device=device, chunk_size=options.chunk_size, query_chunk=options.query_chunk
    )


def __getattr__(name: str) -> Any:
    # FlatIndex is importable from the package without importing numpy up front
    if name == "FlatIndex":
        from pixdex_flat.index import FlatIndex

        return FlatIndex
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def register_indexes(register: Register) -> None:
    """Register the exact ``flat`` index."""
    register(
        "flat",
        make_flat,
        options=FlatOptions,
        description="exact search by chunked matrix products (torch, any device); the recall reference",
    )
