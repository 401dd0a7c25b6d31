"""The approximate ``annoy`` index: Spotify's Annoy forest of random projection trees.

Scores follow the same conventions as pixdex_flat: cosine similarity for ``cosine``
(annoy "angular" on unit vectors; its distance d = sqrt(2 - 2 cos), so the score is
1 - d^2 / 2), the dot product for ``ip`` (annoy "dot") and -d for ``l2`` (annoy
"euclidean"). annoy itself is imported by the factory, never at module import.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from pixdex.plugin_api import check_dim, check_matrix, check_metric, normalise
from pixdex_annoy.tuning import measure_recall, recall_truth, sample_ids, search_k_candidates

ANNOY_METRIC: dict[str, str] = {"cosine": "angular", "l2": "euclidean", "ip": "dot"}
INDEX_FILE = "index.ann"
META_FILE = "annoy.json"


class AnnoyIndex:
    """Approximate search over an annoy forest, with ``search_k`` tuned to a target recall.

    With ``search_k == -1`` the build measures recall@10 on ``tune_queries`` sampled rows
    for each of :func:`~pixdex_annoy.tuning.search_k_candidates` and keeps the smallest
    value reaching ``target_recall``; a given ``search_k`` is kept but still measured. A
    search for ``k`` results never uses less than annoy's own default, k x n_trees, so a
    large ``k`` is not starved of candidates. Read-only after build or load: annoy searches
    a built index from many threads safely.
    """

    def __init__(
        self,
        annoy: ModuleType,
        *,
        dim: int,
        metric: str,
        n_trees: int = 10,
        search_k: int = -1,
        target_recall: float = 0.95,
        tune_queries: int = 200,
        seed: int = 0,
        build_threads: int = 1,
    ) -> None:
        self._annoy_module = annoy
        self.dim = check_dim(dim, "annoy")
        self.metric = check_metric(metric, "annoy")
        self.n_trees = n_trees
        self.search_k = search_k  # -1 until the build tunes it
        self.target_recall = target_recall
        self.tune_queries = tune_queries
        self.seed = seed
        self.build_threads = build_threads
        self.tuned = search_k == -1
        self.recall_at_10: float | None = None
        self.recall_queries = 0
        self.n_items = 0
        self._index: Any = None  # annoy.AnnoyIndex once built or loaded

    @property
    def params(self) -> dict[str, Any]:
        """What the index manifest records: trees, the search_k in use and its measured recall."""
        return {
            "n_trees": self.n_trees,
            "search_k": self.search_k,
            "search_k_tuned": self.tuned,
            "target_recall": self.target_recall,
            "recall_at_10": self.recall_at_10,
            "recall_queries": self.recall_queries,
            "seed": self.seed,
        }

    def __len__(self) -> int:
        return self.n_items

    def build(self, vectors: np.ndarray) -> None:
        """Build the forest from ``vectors`` (row i is id i), then tune or measure ``search_k``."""
        vectors = check_matrix(vectors, self.dim, "vectors")
        if len(vectors) == 0:
            raise ValueError("cannot build index 'annoy' from 0 vectors")
        if self.metric == "cosine":
            vectors = normalise(vectors)
        index = self._annoy_module.AnnoyIndex(self.dim, ANNOY_METRIC[self.metric])
        index.set_seed(self.seed)
        for i, row in enumerate(vectors):
            index.add_item(i, row.tolist())  # a list converts far faster than a numpy row
        index.build(self.n_trees, n_jobs=self.build_threads)
        self._index = index
        self.n_items = len(vectors)
        self._calibrate(vectors)

    def _calibrate(self, vectors: np.ndarray) -> None:
        sample = sample_ids(len(vectors), self.tune_queries, self.seed)
        truth = recall_truth(vectors, sample, self.metric)
        self.recall_queries = len(sample)
        if not self.tuned:
            self.recall_at_10 = measure_recall(self, vectors, sample, self.search_k, truth=truth)
            return
        candidates = search_k_candidates(len(vectors), self.n_trees)
        for search_k in candidates:
            recall = measure_recall(self, vectors, sample, search_k, truth=truth)
            # the last candidate is exhaustive: keep it even if ties or rounding keep it short
            if recall >= self.target_recall or search_k == candidates[-1]:
                self.search_k, self.recall_at_10 = search_k, recall
                return

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ids (int64 [Q, k]) and scores (float32 [Q, k]), best first.

        Fewer than ``k`` results (a small collection) are padded with id -1 and score -inf.
        """
        return self.search_with(queries, k, self.search_k)

    def search_with(self, queries: np.ndarray, k: int, search_k: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` with an explicit ``search_k`` (used to measure recall)."""
        if self._index is None:
            raise RuntimeError("index 'annoy' is empty: call build() or load() first")
        rows = self._query_rows(queries)
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        search_k = max(int(search_k), k * self.n_trees)
        # A one-query search costs annoy well under 100 microseconds, and every numpy call
        # around it costs one or two more (annoy's tree walk leaves the caches cold): the
        # queries go to annoy as lists from one tolist(), and the results come back as two
        # arrays built straight from annoy's lists. Cosine queries are not normalised:
        # annoy's angular distance and its tree descent (the signs and order of the margins)
        # do not depend on a query's length, and a zero query still scores 0.
        get = self._index.get_nns_by_vector
        if len(rows) == 1:  # the interactive case, spelled out: no comprehension frames
            found, dist = get(rows[0], k, search_k, True)
            if len(found) == k:
                return np.array([found], dtype=np.int64), np.array(self._scores([dist]), dtype=np.float32)
            results = [(found, dist)]
        else:
            results = [get(row, k, search_k, True) for row in rows]
        if not results:
            return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
        if all(len(found) == k for found, _ in results):
            ids = np.array([found for found, _ in results], dtype=np.int64)
            return ids, self._score_matrix([dist for _, dist in results])
        # a collection smaller than k: pad with -1 and -inf
        ids = np.full((len(results), k), -1, dtype=np.int64)
        scores = np.full((len(results), k), -np.inf, dtype=np.float32)
        for row, ((found, _), row_scores) in enumerate(zip(results, self._scores([d for _, d in results]))):
            ids[row, : len(found)] = found
            scores[row, : len(found)] = row_scores
        return ids, scores

    def _query_rows(self, queries: Any) -> list[list[float]]:
        """The queries as Python lists, checked as :func:`check_matrix` checks them; a
        float32 matrix (the usual case) skips the conversions."""
        if not (
            type(queries) is np.ndarray
            and queries.dtype == np.float32
            and queries.ndim == 2
            and queries.shape[1] == self.dim
        ):
            return check_matrix(queries, self.dim, "queries").tolist()
        if not np.isfinite(queries).all():
            raise ValueError("queries contain NaN or infinite values")
        return queries.tolist()

    def _scores(self, dists: list[list[float]]) -> list[list[float]]:
        """annoy's distances -> the shared score convention, in float64 (Python floats):
        cosine similarity (d = sqrt(2 - 2 cos) on unit vectors), the dot product, and -d
        (0 - d rather than -d: a self-match scores 0.0, not -0.0)."""
        if self.metric == "cosine":
            return [[1.0 - d * d / 2.0 for d in row] for row in dists]
        if self.metric == "ip":
            return dists
        return [[0.0 - d for d in row] for row in dists]

    def _score_matrix(self, dists: list[list[float]]) -> np.ndarray:
        """:meth:`_scores` as float32 [Q, k] for rows of equal length: plain Python for a
        few rows (numpy's per-call overhead costs more), numpy for many (the same float64
        operations, so the same values)."""
        if len(dists) <= 4:
            return np.array(self._scores(dists), dtype=np.float32)
        d = np.array(dists, dtype=np.float64)
        if self.metric == "cosine":
            d = 1.0 - d * d / 2.0
        elif self.metric == "l2":
            d = 0.0 - d
        return d.astype(np.float32)

    def save(self, staging_dir: Path) -> list[str]:
        """Write ``index.ann`` and ``annoy.json`` into ``staging_dir``; return their names.

        annoy's save reopens the written file memory-mapped, so afterwards this object reads
        from ``staging_dir/index.ann`` (still valid after the core renames it).
        """
        if self._index is None:
            raise RuntimeError("index 'annoy' is empty: call build() or load() first")
        staging_dir = Path(staging_dir)
        self._index.save(str(staging_dir / INDEX_FILE))
        meta = {
            "dim": self.dim,
            "metric": self.metric,
            "annoy_metric": ANNOY_METRIC[self.metric],
            "n_items": self.n_items,
            **self.params,
        }
        (staging_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return [INDEX_FILE, META_FILE]

    def load(self, dir: Path, mmap: bool = True) -> None:
        """Open ``index.ann`` (memory-mapped; read up front when not ``mmap``) and ``annoy.json``.

        The dim and metric are the ones this index was made with, not the file's: annoy
        cannot tell a mismatched file, so annoy.json is only checked for agreement.
        """
        dir = Path(dir)
        meta = json.loads((dir / META_FILE).read_text(encoding="utf-8"))
        if meta.get("dim") != self.dim or meta.get("metric") != self.metric:
            raise ValueError(
                f"{dir / META_FILE} describes dim {meta.get('dim')} metric {meta.get('metric')!r}, "
                f"but this index has dim {self.dim} metric {self.metric!r}"
            )
        index = self._annoy_module.AnnoyIndex(self.dim, ANNOY_METRIC[self.metric])
        index.load(str(dir / INDEX_FILE), prefault=not mmap)
        if index.get_n_items() != meta["n_items"]:
            raise ValueError(f"{dir / INDEX_FILE} holds {index.get_n_items()} items, annoy.json says {meta['n_items']}")
        self._index = index
        self.n_items = meta["n_items"]
        # search settings come from the build that wrote the file, not from these options
        self.n_trees = meta["n_trees"]
        self.search_k = meta["search_k"]
        self.tuned = meta["search_k_tuned"]
        self.target_recall = meta["target_recall"]
        self.recall_at_10 = meta["recall_at_10"]
        self.recall_queries = meta["recall_queries"]
        self.seed = meta["seed"]
