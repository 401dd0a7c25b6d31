"""pixdex_annoy: the approximate ``annoy`` retrieval index, with an auto-tuned ``search_k``.

Built in, but shaped exactly like a third-party plugin package: it talks to pixdex only
through :mod:`pixdex.hookspecs` and the ``register`` callable. annoy is optional; it and
numpy are imported by the factory, so ``pixdex --help`` works (and stays fast) without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pixdex.hookspecs import hookimpl
from pixdex.plugin_api import ConfigError, import_optional

if TYPE_CHECKING:
    from pixdex.plugin_api import Register
    from pixdex_annoy.index import AnnoyIndex

__all__ = ["AnnoyOptions", "AnnoyIndex", "make_annoy", "measure_recall", "search_k_candidates", "register_indexes"]


@dataclass
class AnnoyOptions:
    """Options of the ``annoy`` index.

    More ``n_trees`` give better recall for a bigger file. ``search_k`` is how many
    candidates a query inspects; -1 tunes it at build time to the smallest value whose
    recall@10 on ``tune_queries`` sampled rows reaches ``target_recall``. ``seed`` fixes
    the trees and the sample; ``build_threads`` > 1 (or -1, all cores) builds faster but
    the trees then depend on thread timing.
    """

    n_trees: int = 10
    search_k: int = -1
    target_recall: float = 0.95
    tune_queries: int = 200
    seed: int = 0
    build_threads: int = 1


def make_annoy(options: AnnoyOptions, *, dim: int, metric: str) -> AnnoyIndex:
    """Factory for ``annoy``: check the options and import annoy (or say how to install it)."""
    problems = []
    if options.n_trees < 1:
        problems.append(f"'n_trees' must be at least 1, got {options.n_trees}")
    if options.search_k < -1:
        problems.append(f"'search_k' must be -1 (tune) or at least 0, got {options.search_k}")
    if not 0.0 < options.target_recall <= 1.0:
        problems.append(f"'target_recall' must be in (0, 1], got {options.target_recall}")
    if options.tune_queries < 1:
        problems.append(f"'tune_queries' must be at least 1, got {options.tune_queries}")
    if options.build_threads == 0 or options.build_threads < -1:
        problems.append(f"'build_threads' must be -1 (all cores) or at least 1, got {options.build_threads}")
    if not 0 <= options.seed < 2**32:
        problems.append(f"'seed' must be in [0, 2**32), got {options.seed}")  # annoy's seed is uint32
    if problems:
        raise ConfigError("index 'annoy' option " + "; ".join(problems))
    from pixdex_annoy.index import AnnoyIndex

    annoy = import_optional("annoy", "the 'annoy' index")
    return AnnoyIndex(
        annoy,
        dim=dim,
        metric=metric,
        n_trees=options.n_trees,
        search_k=options.search_k,
        target_recall=options.target_recall,
        tune_queries=options.tune_queries,
        seed=options.seed,
        build_threads=options.build_threads,
    )


def __getattr__(name: str) -> Any:
    # the index and tuning helpers are importable from the package without importing
    # numpy up front
    if name == "AnnoyIndex":
        from pixdex_annoy.index import AnnoyIndex

        return AnnoyIndex
    if name in ("measure_recall", "search_k_candidates"):
        from pixdex_annoy import tuning

        return getattr(tuning, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def register_indexes(register: Register) -> None:
    """Register the approximate ``annoy`` index."""
    register(
        "annoy",
        make_annoy,
        options=AnnoyOptions,
        description="approximate search with Annoy trees; search_k tuned to a target recall@10",
    )
