"""pixdex_hnsw: the approximate ``hnsw`` retrieval index (usearch's HNSW graph), pixdex's
default index, with its search effort ``ef`` auto-tuned to a target recall like annoy's
``search_k``.

Built in, but shaped exactly like a third-party plugin package: it talks to pixdex only
through :mod:`pixdex.hookspecs` and :mod:`pixdex.plugin_api`. usearch (a dependency of
pixdex) and numpy are imported by the factory, so ``pixdex --help`` never pays for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pixdex.hookspecs import hookimpl
from pixdex.plugin_api import ConfigError, import_optional

if TYPE_CHECKING:
    from pixdex.plugin_api import Register
    from pixdex_hnsw.index import HnswIndex

__all__ = ["HnswOptions", "HnswIndex", "make_hnsw", "register_indexes"]

DTYPES = ("f32", "f16", "i8")


@dataclass
class HnswOptions:
    """Options of the ``hnsw`` index.

    ``connectivity`` (HNSW's M) is the graph's links per node: more give better recall
    for a bigger file. ``expansion_add`` (efConstruction) is the search depth while
    inserting. ``ef`` is the search depth of a query; -1 tunes it at build time to the
    smallest value whose recall@10 on ``tune_queries`` sampled rows reaches
    ``target_recall``. ``dtype`` is how vectors are stored in the graph (f32 exact; f16
    and i8 halve and quarter the file at some recall). ``seed`` fixes the rows the
    recall is measured on. ``threads`` inserts in parallel (0: every core).
    """

    connectivity: int = 16
    expansion_add: int = 128
    ef: int = -1
    target_recall: float = 0.95
    tune_queries: int = 200
    dtype: str = "f32"
    seed: int = 0
    threads: int = 1


def make_hnsw(options: HnswOptions, *, dim: int, metric: str) -> HnswIndex:
    """Factory for ``hnsw``: check the options and import usearch (or say how to install it)."""
    problems = []
    if options.connectivity < 2:
        problems.append(f"'connectivity' must be at least 2, got {options.connectivity}")
    if options.expansion_add < 1:
        problems.append(f"'expansion_add' must be at least 1, got {options.expansion_add}")
    if options.ef < -1 or options.ef == 0:
        problems.append(f"'ef' must be -1 (tune) or at least 1, got {options.ef}")
    if not 0.0 < options.target_recall <= 1.0:
        problems.append(f"'target_recall' must be in (0, 1], got {options.target_recall}")
    if options.tune_queries < 1:
        problems.append(f"'tune_queries' must be at least 1, got {options.tune_queries}")
    if options.dtype not in DTYPES:
        problems.append(f"'dtype' must be one of {', '.join(DTYPES)}, got {options.dtype!r}")
    if options.threads < 0:
        problems.append(f"'threads' must be 0 (every core) or at least 1, got {options.threads}")
    if problems:
        raise ConfigError("index 'hnsw' option " + "; ".join(problems))
    from pixdex_hnsw.index import HnswIndex

    usearch = import_optional("usearch.index", "the 'hnsw' index")
    return HnswIndex(usearch, dim=dim, metric=metric, options=options)


def __getattr__(name: str) -> Any:
    if name == "HnswIndex":  # importable from the package without importing numpy up front
        from pixdex_hnsw.index import HnswIndex

        return HnswIndex
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def register_indexes(register: Register) -> None:
    """Register the approximate ``hnsw`` index."""
    register(
        "hnsw",
        make_hnsw,
        options=HnswOptions,
        description="approximate search on an HNSW graph (usearch; the default); ef tuned to a target recall@10",
    )
