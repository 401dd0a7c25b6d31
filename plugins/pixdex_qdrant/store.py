"""The ``qdrant`` index: the vectors and item records of an index folder in a Qdrant
collection, written as a new version on every build, add or remove and published by
moving an alias after the folder's commit.

Point ``i`` of a version is row ``i`` of the index (the contract's internal id), its
payload the row's item record (``id``, ``path``, ``label``, ``sha256``...). Scores follow
pixdex_flat: cosine similarity (Qdrant stores cosine vectors at unit length), the dot
product for ``ip``, minus the euclidean distance for ``l2``.

Versions are named ``<collection>-<UTC time>-<8 hex>``; the alias ``<collection>`` names
the published one, for other readers of the database. A folder always reads the version
its committed ``connection.json`` names, so a crash between the folder's commit and the
alias switch leaves both consistent; after a switch the version before it is kept (a
reader may still be on it) and older ones are dropped.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Sized
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from pixdex.plugin_api import TUNE_K, PixdexError, cache_root, check_dim, check_matrix, check_metric, sample_ids

CONNECTION_FILE = "connection.json"
_VERSION = r"-\d{8}T\d{6}-[0-9a-f]{8}"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}$")
_SEARCH_CHUNK = 256  # queries per request

# one client per store per process: the embedded store locks its folder, and ":memory:"
# exists only inside the client that made it
_CLIENTS: dict[tuple[str, str], Any] = {}
_CLIENTS_LOCK = threading.Lock()
_EMBEDDED_CALLS = threading.RLock()  # the embedded store is not thread-safe (pixdex serve has threads)


def close_clients() -> None:
    """Close every client (at exit: the embedded store's own finaliser fails while the
    interpreter shuts down, printing a traceback)."""
    with _CLIENTS_LOCK:
        while _CLIENTS:
            _, client = _CLIENTS.popitem()
            client.close()


atexit.register(close_clients)


def check_collection_name(name: str) -> str | None:
    """Why ``name`` cannot be a collection (alias) name, or None."""
    if not _NAME.match(name or ""):
        return f"must be 1-96 letters, digits, '_', '-' or '.', not starting with '-' or '.'; got {name!r}"
    return None


def store_location(options: Any) -> dict[str, str | None]:
    """Where the options point: ``{"url": ...}`` for a server, ``{"path": ...}`` for the
    embedded store, ``{"memory": "1"}`` for this process's memory."""
    url = options.url or os.environ.get("PIXDEX_QDRANT_URL", "")
    if url == ":memory:":
        return {"url": None, "path": None, "memory": "1"}
    if url:
        return {"url": url, "path": None, "memory": None}
    path = Path(options.path).expanduser() if options.path else cache_root() / "qdrant"
    return {"url": None, "path": str(path.resolve()), "memory": None}


def describe_location(location: dict[str, str | None]) -> str:
    if location.get("url"):
        return str(location["url"])
    if location.get("memory"):
        return "this process's memory"
    return f"the embedded store {location['path']}"


class QdrantIndex:
    """Retrieval over a Qdrant collection (the item-holding index contract, docs/plugins.md)."""

    holds_items = True

    def __init__(self, qdrant_client: ModuleType, *, dim: int, metric: str, options: Any) -> None:
        from qdrant_client import models

        self._qc = qdrant_client
        self._m = models
        self.dim = check_dim(dim, "qdrant")
        self.metric = check_metric(metric, "qdrant")
        self.alias = options.collection or f"pixdex-{uuid.uuid4().hex[:8]}"
        self.location = store_location(options)
        self.api_key_env = options.api_key_env
        self.shards, self.replicas = options.shards, options.replicas
        self.batch_size, self.timeout = options.batch_size, options.timeout
        self.ef = options.ef
        self.tuned = options.ef == -1
        self.target_recall, self.tune_queries, self.seed = options.target_recall, options.tune_queries, options.seed
        self.recall_at_10: float | None = None
        self.recall_queries = 0
        self.version: str | None = None  # the collection this index reads and writes
        self.n_items = 0
        self._published = False

    # --- connection -----------------------------------------------------------------------

    @property
    def embedded(self) -> bool:
        return not self.location.get("url")

    @property
    def client(self) -> Any:
        loc = self.location
        key = (
            ("url", str(loc["url"]))
            if loc.get("url")
            else ("memory", "")
            if loc.get("memory")
            else ("path", str(loc["path"]))
        )
        with _CLIENTS_LOCK:
            if key not in _CLIENTS:
                if key[0] == "url":
                    api_key = os.environ.get(self.api_key_env) or None
                    # no version probe: it runs in a thread of its own and warns on stderr when the
                    # server is down, where the first real call already fails in one line
                    _CLIENTS[key] = self._qc.QdrantClient(
                        url=key[1], api_key=api_key, timeout=self.timeout, check_compatibility=False
                    )
                elif key[0] == "memory":
                    _CLIENTS[key] = self._qc.QdrantClient(location=":memory:")
                else:
                    Path(key[1]).mkdir(parents=True, exist_ok=True)
                    _CLIENTS[key] = self._qc.QdrantClient(path=key[1])
            return _CLIENTS[key]

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One client call; a failure of the database (unreachable, refused, locked by
        another process) becomes one line naming the store and what to do."""
        try:
            with _EMBEDDED_CALLS if self.embedded else contextlib.nullcontext():
                return getattr(self.client, method)(*args, **kwargs)
        except PixdexError:
            raise
        except Exception as exc:  # the client's own exception types differ by transport
            where = describe_location(self.location)
            hint = (
                "the embedded store admits one process at a time: stop the other one, or use a Qdrant server"
                if self.embedded and "already accessed" in str(exc)
                else "check that the server is running and index.url (or PIXDEX_QDRANT_URL) points to it"
                if not self.embedded
                else "check the store's folder"
            )
            raise PixdexError(f"qdrant ({where}): {method} failed: {type(exc).__name__}: {exc}; {hint}") from None

    @property
    def params(self) -> dict[str, Any]:
        """What the index manifest records: where the collection is, its version, the search
        depth and its measured recall (no credentials)."""
        return {
            "store": "server" if not self.embedded else "embedded",
            "collection": self.alias,
            "version": self.version,
            "ef": self.ef,
            "ef_tuned": self.tuned,
            "target_recall": self.target_recall,
            "recall_at_10": self.recall_at_10,
            "recall_queries": self.recall_queries,
        }

    def __len__(self) -> int:
        return self.n_items

    def _need_version(self) -> str:
        if self.version is None:
            raise RuntimeError("index 'qdrant' is empty: call build() or load() first")
        return self.version

    # --- writing: every change is a new version -------------------------------------------

    def _new_version(self, meta: dict[str, Any] | None) -> str:
        m = self._m
        distance = {"cosine": m.Distance.COSINE, "l2": m.Distance.EUCLID, "ip": m.Distance.DOT}[self.metric]
        name = f"{self.alias}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        extra = {} if self.embedded else {"shard_number": self.shards, "replication_factor": self.replicas}
        self._call(
            "create_collection",
            name,
            vectors_config=m.VectorParams(size=self.dim, distance=distance),
            metadata={"pixdex": {"dim": self.dim, "metric": self.metric, **(meta or {})}},
            **extra,
        )
        if not self.embedded:  # the embedded store has no payload indexes (it scans)
            for key, schema in (("label", m.PayloadSchemaType.KEYWORD), ("id", m.PayloadSchemaType.INTEGER)):
                self._call("create_payload_index", name, field_name=key, field_schema=schema)
        return name

    def _upsert(self, name: str, first_row: int, vectors: np.ndarray, items: Iterable[dict[str, Any]] | None) -> None:
        """Write ``vectors`` as points ``first_row``.. with ``items`` (iterated once, so a
        stream of records is never held whole) as payloads; ``row`` is kept right."""
        records = iter(items) if items is not None else None
        for lo in range(0, len(vectors), self.batch_size):
            hi = min(lo + self.batch_size, len(vectors))
            chunk = list(itertools.islice(records, hi - lo)) if records is not None else [{}] * (hi - lo)
            if len(chunk) != hi - lo:
                raise ValueError(f"fewer items than the {len(vectors)} vectors")
            payloads = []
            for offset, record in enumerate(chunk):
                payload = dict(record)
                if "row" in payload:
                    payload["row"] = first_row + lo + offset
                payloads.append(payload)
            batch = self._m.Batch(
                ids=list(range(first_row + lo, first_row + hi)), vectors=vectors[lo:hi].tolist(), payloads=payloads
            )
            self._call("upsert", name, points=batch, wait=True)

    def _written(self, name: str, count: int) -> None:
        """Make ``name`` (holding ``count`` points) this index's unpublished version."""
        self.version, self.n_items, self._published = name, count, False
        self._tune()

    def build(
        self, vectors: np.ndarray, *, items: Iterable[dict[str, Any]] | None = None, meta: dict[str, Any] | None = None
    ) -> None:
        """Write ``vectors`` (row i is point i) and ``items`` (payloads) into a new version."""
        vectors = check_matrix(vectors, self.dim, "vectors")
        if len(vectors) == 0:
            raise ValueError("cannot build index 'qdrant' from 0 vectors")
        if isinstance(items, Sized) and len(items) != len(vectors):
            raise ValueError(f"{len(items)} items for {len(vectors)} vectors")
        name = self._new_version(meta)
        try:
            self._upsert(name, 0, vectors, items)
        except BaseException:
            self._drop(name)
            raise
        self._written(name, len(vectors))

    def add(
        self,
        vectors: np.ndarray,
        *,
        items: Iterable[dict[str, Any]] | None = None,
        all_vectors: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """A new version: every row of the loaded one, then ``vectors`` as rows len(self)..
        (``all_vectors`` is not needed: the rows are read from the database)."""
        vectors = check_matrix(vectors, self.dim, "vectors")
        if isinstance(items, Sized) and len(items) != len(vectors):
            raise ValueError(f"{len(items)} items for {len(vectors)} vectors")
        old, count = self._need_version(), self.n_items
        name = self._new_version(meta or self._meta(old))
        try:
            self._copy(old, name, drop=None)
            self._upsert(name, count, vectors, items)
        except BaseException:
            self._drop(name)
            raise
        self._written(name, count + len(vectors))

    def remove(self, rows: Sequence[int], *, meta: dict[str, Any] | None = None) -> None:
        """A new version without ``rows``; the rows after them move up (row numbers stay 0..n-1)."""
        old = self._need_version()
        drop = {int(r) for r in rows}
        if not drop <= set(range(self.n_items)):
            raise ValueError(f"rows {sorted(drop - set(range(self.n_items)))[:5]} are not in the index")
        name = self._new_version(meta or self._meta(old))
        try:
            kept = self._copy(old, name, drop=drop)
        except BaseException:
            self._drop(name)
            raise
        self._written(name, kept)

    def _copy(self, source: str, target: str, *, drop: set[int] | None) -> int:
        """Copy the points of ``source`` into ``target``, leaving out rows ``drop`` and
        renumbering the rest in order; returns the count copied."""
        written = 0
        for rows, vectors, items in self.scan(with_vectors=True, collection=source):
            if drop:
                keep = [i for i, r in enumerate(rows.tolist()) if r not in drop]
                vectors, items = vectors[keep], [items[i] for i in keep]
            self._upsert(target, written, vectors, items)
            written += len(vectors)
        return written

    def publish(self) -> None:
        """After the index folder's commit: point the alias at this version (one atomic
        alias operation), keep the version it pointed at before, drop older ones."""
        m = self._m
        name = self._need_version()
        before = self._alias_target()
        operations: list[Any] = []
        if before is not None:
            operations.append(m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name=self.alias)))
        operations.append(
            m.CreateAliasOperation(create_alias=m.CreateAlias(collection_name=name, alias_name=self.alias))
        )
        self._call("update_collection_aliases", change_aliases_operations=operations)
        self._published = True
        pattern = re.compile(re.escape(self.alias) + _VERSION + "$")
        for old in self._collections():
            if pattern.match(old) and old not in (name, before):
                self._drop(old)

    def discard(self) -> None:
        """The folder's commit failed: drop the version written for it (never a published one)."""
        if self.version is not None and not self._published and self.version != self._alias_target():
            self._drop(self.version)
            self.version = None

    def _drop(self, name: str) -> None:
        self._call("delete_collection", name)

    def _collections(self) -> list[str]:
        return [c.name for c in self._call("get_collections").collections]

    def _alias_target(self) -> str | None:
        for alias in self._call("get_aliases").aliases:
            if alias.alias_name == self.alias:
                return str(alias.collection_name)
        return None

    def _meta(self, name: str) -> dict[str, Any]:
        info = self._call("get_collection", name)
        return dict((getattr(info.config, "metadata", None) or {}).get("pixdex") or {})

    # --- reading --------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What the version holds, for the core's check against the manifest: count, dim,
        metric and the metadata written with it (the model's sha256)."""
        name = self._need_version()
        info = self._call("get_collection", name)
        vectors = info.config.params.vectors
        distance = getattr(vectors.distance, "value", str(vectors.distance)).lower()
        meta = self._meta(name)
        return {
            "count": int(self._call("count", name, exact=True).count),
            "dim": int(vectors.size),
            "metric": {"cosine": "cosine", "euclid": "l2", "dot": "ip"}.get(distance, distance),
            "meta": meta,
        }

    def count(self) -> int:
        return int(self._call("count", self._need_version(), exact=True).count)

    def items(self, rows: Sequence[int]) -> list[dict[str, Any]]:
        """The item records (payloads) of ``rows``, in that order."""
        return [payload for _, payload in self._retrieve(rows, vectors=False)]

    def vectors(self, rows: Sequence[int]) -> np.ndarray:
        """float32[len(rows), D]: the stored vectors of ``rows`` (unit length for cosine)."""
        got = [vector for vector, _ in self._retrieve(rows, vectors=True)]
        return np.asarray(got, dtype=np.float32).reshape(len(got), self.dim)

    def _retrieve(self, rows: Sequence[int], *, vectors: bool) -> list[tuple[Any, dict[str, Any]]]:
        wanted = [int(r) for r in rows]
        found: dict[int, Any] = {}
        for lo in range(0, len(wanted), self.batch_size):
            chunk = sorted(set(wanted[lo : lo + self.batch_size]))
            for point in self._call(
                "retrieve", self._need_version(), ids=chunk, with_payload=True, with_vectors=vectors
            ):
                found[int(point.id)] = point
        missing = [r for r in wanted if r not in found]
        if missing:
            raise KeyError(f"rows {missing[:5]} are not in collection {self.version}")
        return [(found[r].vector, dict(found[r].payload or {})) for r in wanted]

    def scan(
        self, *, with_vectors: bool = True, collection: str | None = None, batch_size: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None, list[dict[str, Any]]]]:
        """Every row in order, a batch at a time: (rows int64, vectors float32 or None, items)."""
        name = collection or self._need_version()
        offset = None
        while True:
            points, offset = self._call(
                "scroll",
                name,
                limit=batch_size or self.batch_size,
                offset=offset,
                with_payload=True,
                with_vectors=with_vectors,
            )
            if points:
                rows = np.asarray([int(p.id) for p in points], dtype=np.int64)
                vectors = np.asarray([p.vector for p in points], dtype=np.float32) if with_vectors else None
                yield rows, vectors, [dict(p.payload or {}) for p in points]
            if offset is None:
                return

    def search(self, queries: np.ndarray, k: int, *, label: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows (int64 [Q, k]) and scores (float32 [Q, k]), best first, padded with
        id -1 and score -inf; ``label`` keeps only items with that label (a payload filter
        in the database)."""
        return self.search_with(queries, k, self.ef, label=label)

    def search_with(
        self, queries: np.ndarray, k: int, effort: int, *, label: str | None = None, exact: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` with an explicit HNSW ``ef`` (used to measure recall), or exact."""
        m = self._m
        name = self._need_version()
        queries = check_matrix(queries, self.dim, "queries")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        where = None
        if label is not None:
            where = m.Filter(must=[m.FieldCondition(key="label", match=m.MatchValue(value=label))])
        # the embedded store always searches exactly and warns about search parameters
        params = (
            None if self.embedded else m.SearchParams(hnsw_ef=max(int(effort), k) if effort > 0 else None, exact=exact)
        )
        for lo in range(0, len(queries), _SEARCH_CHUNK):
            requests = [
                m.QueryRequest(query=q.tolist(), limit=k, filter=where, params=params, with_payload=False)
                for q in queries[lo : lo + _SEARCH_CHUNK]
            ]
            for row, answer in enumerate(self._call("query_batch_points", name, requests=requests), lo):
                found = answer.points[:k]
                ids[row, : len(found)] = [int(p.id) for p in found]
                got = np.asarray([p.score for p in found], dtype=np.float64)
                scores[row, : len(found)] = 0.0 - got if self.metric == "l2" else got
        return ids, scores

    def _tune(self) -> None:
        """Measure recall@10 of ``ef`` against the database's exact search on sampled rows
        (each left out of its own answer), tuning ``ef`` first when it is -1. Only sampled
        rows' vectors are read, so the collection never has to fit in local memory."""
        n = self.n_items
        k = min(TUNE_K, n - 1)
        if k < 1:
            self.recall_at_10, self.recall_queries = 1.0, 0
            return
        sample = sample_ids(n, self.tune_queries, self.seed)
        queries = self.vectors(sample.tolist())
        truth_ids, truth_scores = self.search_with(queries, k + 1, 0, exact=True)
        truth = [set(_without(row, own, k)) for row, own in zip(truth_ids.tolist(), sample.tolist())]
        floor = [_kth_without(ids, sc, own, k) for ids, sc, own in zip(truth_ids, truth_scores, sample.tolist())]

        def recall(effort: int) -> float:
            found, found_scores = self.search_with(queries, k + 1, effort)
            hits = 0
            for ids, sc, own, exact_ids, limit in zip(
                found.tolist(), found_scores.tolist(), sample.tolist(), truth, floor
            ):
                kept = [(i, s) for i, s in zip(ids, sc) if i >= 0 and i != own][:k]
                hits += sum(1 for i, s in kept if i in exact_ids or s >= limit - 1e-6 * max(1.0, abs(limit)))
            return hits / (k * len(sample))

        self.recall_queries = len(sample)
        if self.embedded or not self.tuned:  # exact search, or a given ef: measure it
            self.recall_at_10 = recall(self.ef)
            return
        candidates = [k] + [e for e in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096) if e > k]
        for ef in candidates:
            got = recall(ef)
            if got >= self.target_recall or ef == candidates[-1] or ef >= n:
                self.ef, self.recall_at_10 = ef, got
                return

    # --- the folder's files ---------------------------------------------------------------

    def save(self, staging_dir: Path) -> list[str]:
        """Write ``connection.json`` (where the version lives; no credentials)."""
        name = self._need_version()
        record = {
            "url": self.location.get("url"),
            "path": self.location.get("path"),
            "memory": bool(self.location.get("memory")),
            "collection": self.alias,
            "version": name,
            "dim": self.dim,
            "metric": self.metric,
            "n_items": self.n_items,
            "api_key_env": self.api_key_env,
            **{key: value for key, value in self.params.items() if key not in ("collection", "version")},
        }
        (Path(staging_dir) / CONNECTION_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return [CONNECTION_FILE]

    def load(self, dir: Path, mmap: bool = True) -> None:
        """Connect to the version ``connection.json`` names (``mmap`` has no meaning here)."""
        record = json.loads((Path(dir) / CONNECTION_FILE).read_text(encoding="utf-8"))
        if record.get("dim") != self.dim or record.get("metric") != self.metric:
            raise ValueError(
                f"{CONNECTION_FILE} describes dim {record.get('dim')} metric {record.get('metric')!r}, "
                f"but this index has dim {self.dim} metric {self.metric!r}"
            )
        self.location = {
            "url": record.get("url"),
            "path": record.get("path"),
            "memory": "1" if record.get("memory") else None,
        }
        self.alias, self.api_key_env = record["collection"], record.get("api_key_env") or self.api_key_env
        if not self._call("collection_exists", record["version"]):
            raise ValueError(
                f"collection {record['version']} is not in {describe_location(self.location)} "
                "(dropped, or another database): rebuild the index"
            )
        self.version, self.n_items, self._published = record["version"], int(record["n_items"]), True
        self.ef, self.tuned = record.get("ef", self.ef), record.get("ef_tuned", self.tuned)
        self.recall_at_10, self.recall_queries = record.get("recall_at_10"), record.get("recall_queries", 0)


def _without(ids: list[int], own: int, k: int) -> list[int]:
    return [i for i in ids if i >= 0 and i != own][:k]


def _kth_without(ids: np.ndarray, scores: np.ndarray, own: int, k: int) -> float:
    kept = [float(s) for i, s in zip(ids.tolist(), scores.tolist()) if i >= 0 and i != own][:k]
    return kept[-1] if kept else float("inf")
