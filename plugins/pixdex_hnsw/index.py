"""The approximate ``hnsw`` index: a hierarchical navigable small-world graph (usearch).

Scores follow the conventions of pixdex_flat and pixdex_annoy: cosine similarity for
``cosine`` (usearch "cos", distance 1 - cos), the dot product for ``ip`` (usearch "ip",
distance 1 - dot) and minus the euclidean distance for ``l2`` (usearch "l2sq", the
squared distance). usearch is imported by the factory, never at module import.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from pixdex.plugin_api import (
    TUNE_K,
    check_dim,
    check_matrix,
    check_metric,
    held_out_sample,
    measure_recall,
    normalise,
    recall_truth,
    sample_ids,
)

USEARCH_METRIC: dict[str, str] = {"cosine": "cos", "l2": "l2sq", "ip": "ip"}
INDEX_FILE = "index.usearch"
META_FILE = "hnsw.json"


def ef_candidates(n_items: int, k: int = TUNE_K) -> list[int]:
    """The ``ef`` values the tuner tries, smallest first: k, then doubling from 16 up to
    the collection's size (a search that deep visits every node it can reach)."""
    out = [max(1, min(k, n_items))]
    value = 16
    while value < n_items:
        if value > out[-1]:
            out.append(value)
        value *= 2
    if n_items > out[-1]:
        out.append(n_items)
    return out


class HnswIndex:
    """Approximate search on an HNSW graph, with ``ef`` tuned to a target recall.

    With ``ef == -1`` the build measures recall@10 on ``tune_queries`` sampled rows for
    each of :func:`ef_candidates` and keeps the smallest value reaching ``target_recall``;
    a given ``ef`` is kept but still measured. A search for ``k`` results never uses an
    ``ef`` below ``k``. Loading views the file memory-mapped (read-only). Searches from
    many threads are safe; they take turns on one index.
    """

    def __init__(self, usearch: ModuleType, *, dim: int, metric: str, options: Any) -> None:
        self._usearch = usearch
        self.dim = check_dim(dim, "hnsw")
        self.metric = check_metric(metric, "hnsw")
        self.connectivity = options.connectivity
        self.expansion_add = options.expansion_add
        self.ef = options.ef  # -1 until the build tunes it
        self.tuned = options.ef == -1
        self.target_recall = options.target_recall
        self.tune_queries = options.tune_queries
        self.dtype = options.dtype
        self.seed = options.seed
        self.threads = options.threads
        self.recall_at_10: float | None = None
        self.recall_queries = 0
        self.n_items = 0
        self._index: Any = None
        self._lock = threading.Lock()

    @property
    def params(self) -> dict[str, Any]:
        """What the index manifest records: the graph's settings, the ef in use and its recall."""
        return {
            "connectivity": self.connectivity,
            "expansion_add": self.expansion_add,
            "ef": self.ef,
            "ef_tuned": self.tuned,
            "target_recall": self.target_recall,
            "recall_at_10": self.recall_at_10,
            "recall_queries": self.recall_queries,
            "dtype": self.dtype,
            "seed": self.seed,
        }

    def __len__(self) -> int:
        return self.n_items

    def _new(self) -> Any:
        return self._usearch.Index(
            ndim=self.dim,
            metric=USEARCH_METRIC[self.metric],
            dtype=self.dtype,
            connectivity=self.connectivity,
            expansion_add=self.expansion_add,
        )

    def build(self, vectors: np.ndarray) -> None:
        """Insert ``vectors`` (row i is id i), tuning or measuring ``ef`` on the way."""
        vectors = check_matrix(vectors, self.dim, "vectors")
        if len(vectors) == 0:
            raise ValueError("cannot build index 'hnsw' from 0 vectors")
        if self.metric == "cosine":
            vectors = normalise(vectors)  # as flat stores them: the recall sample compares like with like
        self._index = self._new()
        self.n_items = 0
        self._insert(vectors, vectors)

    def add(self, vectors: np.ndarray, *, all_vectors: np.ndarray) -> None:
        """Insert ``vectors`` as ids len(self).. without rebuilding the graph (the optional
        ``add`` of the index contract), tuning or measuring ``ef`` again over every row
        (``all_vectors``, the new ones last): a bigger graph may need a deeper search."""
        if self._index is None:
            raise RuntimeError("index 'hnsw' is empty: call build() or load() first")
        vectors = check_matrix(vectors, self.dim, "vectors")
        all_vectors = check_matrix(all_vectors, self.dim, "all_vectors")
        if len(all_vectors) != self.n_items + len(vectors):
            raise ValueError(f"all_vectors has {len(all_vectors)} rows, expected {self.n_items} + {len(vectors)}")
        if self.metric == "cosine":
            vectors, all_vectors = normalise(vectors), normalise(all_vectors)
        self._insert(vectors, all_vectors)

    def _insert(self, rows: np.ndarray, every: np.ndarray) -> None:
        """Add ``rows`` (the last rows of ``every``) to the graph. A sample of them goes in
        last: ``ef`` is tuned (or measured) while the graph has not seen them, so the
        recorded recall is that of new queries, not of rows the graph holds (an in-graph
        row finds its neighbours more easily: pixdex.recall.measure_recall)."""
        first = self.n_items
        held = held_out_sample(len(rows), self.tune_queries, self.seed)
        keep = np.ones(len(rows), dtype=bool)
        keep[held] = False
        self._add_rows(rows[keep], np.flatnonzero(keep) + first)
        if len(held):
            self._calibrate(every, held + first)
            self._add_rows(rows[held], held + first)
        else:  # too few new rows to hold any out: keep ef, measure it leave-one-out
            if self.tuned and first == 0:
                self.ef = max(1, len(rows))  # a graph this small is searched whole
            sample = sample_ids(len(every), self.tune_queries, self.seed)
            self.recall_at_10 = measure_recall(self, every, sample, self.ef)
            self.recall_queries = len(sample)

    def _add_rows(self, rows: np.ndarray, ids: np.ndarray) -> None:
        if len(rows):
            self._index.add(ids.astype(np.uint64), np.ascontiguousarray(rows), threads=self.threads)
            self.n_items += len(rows)

    def _calibrate(self, every: np.ndarray, held: np.ndarray) -> None:
        """Tune ``ef`` on the ``held`` rows of ``every``, which the graph does not hold yet."""
        truth = recall_truth(every, held, self.metric, held_out=True)
        self.recall_queries = len(held)
        if not self.tuned:
            self.recall_at_10 = measure_recall(self, every, held, self.ef, truth=truth)
            return
        candidates = ef_candidates(len(every))
        for ef in candidates:
            recall = measure_recall(self, every, held, ef, truth=truth)
            if recall >= self.target_recall or ef == candidates[-1]:
                self.ef, self.recall_at_10 = ef, recall
                return

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ids (int64 [Q, k]) and scores (float32 [Q, k]), best first; fewer
        than ``k`` results (a small collection) are padded with id -1 and score -inf."""
        return self.search_with(queries, k, self.ef)

    def search_with(self, queries: np.ndarray, k: int, effort: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` with an explicit ``ef`` (used to measure recall)."""
        if self._index is None:
            raise RuntimeError("index 'hnsw' is empty: call build() or load() first")
        queries = check_matrix(queries, self.dim, "queries")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        if len(queries) == 0:
            return ids, scores
        # one query (serving) on one thread; a batch (evaluation, tuning) on every core
        threads = 1 if len(queries) < 64 else 0
        # usearch keeps the search depth on the index, not per call: set and search under
        # one lock, so concurrent searches (pixdex serve's threads) never run at another
        # search's depth
        with self._lock:
            self._index.expansion_search = max(int(effort), k)
            found = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k, threads=threads)
        with np.errstate(invalid="ignore"):  # slots past a row's count hold garbage, dropped below
            keys = np.asarray(found.keys).astype(np.int64).reshape(len(queries), -1)
            dist = np.asarray(found.distances).astype(np.float64).reshape(len(queries), -1)
        # usearch answers one query with a Matches (no counts), a batch with BatchMatches
        counts = np.asarray(found.counts).reshape(-1) if hasattr(found, "counts") else np.array([keys.shape[1]])
        if self.metric == "l2":
            dist = 0.0 - np.sqrt(np.maximum(dist, 0.0))  # 0 - d: a self-match scores 0.0, not -0.0
        else:
            dist = 1.0 - dist
        for row, count in enumerate(counts.tolist()):
            ids[row, :count] = keys[row, :count]
            scores[row, :count] = dist[row, :count]
        return ids, scores

    def save(self, staging_dir: Path) -> list[str]:
        """Write ``index.usearch`` and ``hnsw.json`` into ``staging_dir``; return their names."""
        if self._index is None:
            raise RuntimeError("index 'hnsw' is empty: call build() or load() first")
        staging_dir = Path(staging_dir)
        self._index.save(str(staging_dir / INDEX_FILE))
        meta = {"dim": self.dim, "metric": self.metric, "n_items": self.n_items, **self.params}
        (staging_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return [INDEX_FILE, META_FILE]

    def load(self, dir: Path, mmap: bool = True) -> None:
        """View ``index.usearch`` memory-mapped (or read it whole when not ``mmap``), with the
        search settings of the build that wrote it (``hnsw.json``)."""
        dir = Path(dir)
        meta = json.loads((dir / META_FILE).read_text(encoding="utf-8"))
        if meta.get("dim") != self.dim or meta.get("metric") != self.metric:
            raise ValueError(
                f"{dir / META_FILE} describes dim {meta.get('dim')} metric {meta.get('metric')!r}, "
                f"but this index has dim {self.dim} metric {self.metric!r}"
            )
        index = self._usearch.Index.restore(str(dir / INDEX_FILE), view=mmap)
        if index is None or len(index) != meta["n_items"] or index.ndim != self.dim:
            size = None if index is None else len(index)
            raise ValueError(f"{dir / INDEX_FILE} holds {size} items, hnsw.json says {meta['n_items']}")
        self._index = index
        self.n_items = meta["n_items"]
        for key in ("connectivity", "expansion_add", "ef", "target_recall", "recall_at_10", "recall_queries"):
            setattr(self, key, meta[key])
        self.tuned, self.dtype, self.seed = meta["ef_tuned"], meta["dtype"], meta["seed"]
