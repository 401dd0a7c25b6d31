"""pixdex_qdrant: the ``qdrant`` retrieval index, whose vectors and item records live in a
Qdrant collection (an embedded local store, or a server or cluster by URL) instead of the
index folder.

Built in, but shaped exactly like a third-party plugin package: it talks to pixdex only
through :mod:`pixdex.hookspecs` and :mod:`pixdex.plugin_api`. It implements the optional
*item-holding* part of the index contract (``holds_items``; docs/plugins.md), so the core
writes no ``embeddings.npy`` or ``items.jsonl`` for it. qdrant-client is optional (extra
``[qdrant]``) and imported by the factory, so ``pixdex --help`` works without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pixdex.hookspecs import hookimpl
from pixdex.plugin_api import ConfigError, import_optional

if TYPE_CHECKING:
    from pixdex.plugin_api import Register
    from pixdex_qdrant.store import QdrantIndex

__all__ = ["QdrantOptions", "QdrantIndex", "make_qdrant", "register_indexes"]


@dataclass
class QdrantOptions:
    """Options of the ``qdrant`` index.

    ``url`` is the Qdrant server or cluster (``http://host:6333``); empty means
    ``$PIXDEX_QDRANT_URL``, else an embedded store in the folder ``path`` (empty:
    ``$PIXDEX_CACHE_DIR/qdrant``, by default ``~/.cache/pixdex/qdrant``); ``:memory:``
    keeps it in this process only. ``collection`` is the alias readers use (empty: a new
    ``pixdex-<8 hex>`` for each index built, so two index folders never share one): each
    build, add or remove writes a new collection ``<collection>-<version>`` and, once the
    index folder is committed, points the alias at it; building another index with the
    same explicit ``collection`` replaces what the alias serves. The API key is read from
    the environment variable named by ``api_key_env`` and never written anywhere.
    ``shards`` and ``replicas`` are the new collection's shard number and replication
    factor on a cluster. ``ef`` is the server's HNSW search depth; -1 tunes it at build
    time to the smallest value whose recall@10 on ``tune_queries`` sampled rows reaches
    ``target_recall`` (the embedded store searches exactly: recall 1.0).
    ``batch_size`` is the number of points sent per request.
    """

    url: str = ""
    path: str = ""
    collection: str = ""
    api_key_env: str = "QDRANT_API_KEY"
    shards: int = 1
    replicas: int = 1
    ef: int = -1
    target_recall: float = 0.95
    tune_queries: int = 200
    seed: int = 0
    batch_size: int = 512
    timeout: int = 60


def make_qdrant(options: QdrantOptions, *, dim: int, metric: str) -> QdrantIndex:
    """Factory for ``qdrant``: check the options and import qdrant-client (or say how to get it)."""
    from pixdex_qdrant.store import check_collection_name

    problems = []
    name_problem = check_collection_name(options.collection) if options.collection else None
    if name_problem:
        problems.append(f"'collection' {name_problem}")
    for key in ("shards", "replicas", "tune_queries", "batch_size", "timeout"):
        if getattr(options, key) < 1:
            problems.append(f"'{key}' must be at least 1, got {getattr(options, key)}")
    if options.ef < -1 or options.ef == 0:
        problems.append(f"'ef' must be -1 (tune) or at least 1, got {options.ef}")
    if not 0.0 < options.target_recall <= 1.0:
        problems.append(f"'target_recall' must be in (0, 1], got {options.target_recall}")
    if problems:
        raise ConfigError("index 'qdrant' option " + "; ".join(problems))
    from pixdex_qdrant.store import QdrantIndex

    client_module = import_optional("qdrant_client", "the 'qdrant' index")
    return QdrantIndex(client_module, dim=dim, metric=metric, options=options)


def __getattr__(name: str) -> Any:
    if name == "QdrantIndex":  # importable from the package without importing numpy up front
        from pixdex_qdrant.store import QdrantIndex

        return QdrantIndex
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def register_indexes(register: Register) -> None:
    """Register the ``qdrant`` index."""
    register(
        "qdrant",
        make_qdrant,
        options=QdrantOptions,
        description="vectors and items in a Qdrant collection: embedded, a server or a cluster (extra [qdrant])",
    )
