"""Recall of an approximate index against exact search, for plugins that tune their effort.

An approximate index (annoy's ``search_k``, HNSW's ``ef``) trades recall for speed; the
index plugins tune that effort at build time to the smallest value whose recall@10 on
sampled rows reaches a target, and record what they measured. This is the measurement:
exact top-k by chunked brute force and recall with ties counted as hits. Plugins use it
through :mod:`pixdex.plugin_api`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Searchable(Protocol):
    """What recall measurement needs of an index: its metric and a search at a given
    effort (the plugin's own knob: annoy's ``search_k``, HNSW's ``ef``)."""

    metric: str

    def search_with(self, queries: np.ndarray, k: int, effort: int) -> tuple[np.ndarray, np.ndarray]: ...


TUNE_K = 10  # recall is measured at 10, the usual "top of the page"
_EXACT_CHUNK = 16384  # gallery rows per brute-force step: sample x chunk float64 scores


def sample_ids(n_items: int, count: int, seed: int) -> np.ndarray:
    """``min(count, n_items)`` distinct row ids, sorted, from a seeded RNG."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_items, size=min(count, n_items), replace=False)).astype(np.int64)


def rank_keys(queries: np.ndarray, rows: np.ndarray, metric: str) -> np.ndarray:
    """float64 [Q, R] keys whose order is the metric's order (higher is more similar).

    For l2 the key is 2 q.x - |x|^2, which orders rows like -|q - x| without the square root.
    ``rows`` are already normalised for cosine, as the index stores them.
    """
    q = queries.astype(np.float64)
    x = rows.astype(np.float64)
    keys = q @ x.T
    if metric == "l2":
        keys = 2 * keys - (x * x).sum(axis=1)
    return keys


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` ids and keys (see :func:`rank_keys`) by chunked numpy brute force."""
    k = min(k, len(vectors))
    best_keys = np.empty((len(queries), 0))
    best_ids = np.empty((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), _EXACT_CHUNK):
        chunk_keys = rank_keys(queries, vectors[start : start + _EXACT_CHUNK], metric)
        chunk_ids = np.broadcast_to(np.arange(start, start + chunk_keys.shape[1]), chunk_keys.shape)
        best_keys = np.concatenate([best_keys, chunk_keys], axis=1)
        best_ids = np.concatenate([best_ids, chunk_ids], axis=1)
        if best_keys.shape[1] > k:  # keep the running top-k so memory stays sample x chunk
            keep = np.argpartition(-best_keys, k - 1, axis=1)[:, :k]
            best_keys = np.take_along_axis(best_keys, keep, axis=1)
            best_ids = np.take_along_axis(best_ids, keep, axis=1)
    order = np.argsort(-best_keys, axis=1, kind="stable")
    return np.take_along_axis(best_ids, order, axis=1), np.take_along_axis(best_keys, order, axis=1)


def measure_recall(
    index: Searchable,
    vectors: np.ndarray,
    sample: np.ndarray,
    effort: int,
    *,
    truth: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """Recall@10 of ``index`` searched with ``effort`` for the rows ``sample`` of ``vectors``.

    ``vectors`` are the rows as the index stores them (unit length for cosine). Recall is
    the mean over queries of |approx top-10 ∩ exact top-10| / min(10, N), except that a
    returned id tied with the exact 10th best counts as a hit: with duplicate vectors the
    exact top-10 is not unique, and a tie must not push the tuner to exhaustive search.
    ``truth`` is :func:`exact_topk` for the sample, to reuse across candidates.
    """
    k = min(TUNE_K, len(vectors))
    queries = vectors[sample]
    if truth is None:
        truth = exact_topk(vectors, queries, k, index.metric)
    threshold = truth[1][:, k - 1]
    approx, _ = index.search_with(queries, k, effort)
    hits = 0
    for q, ids, limit in zip(queries, approx, threshold):
        ids = ids[ids >= 0]
        if len(ids):
            keys = rank_keys(q[None, :], vectors[ids], index.metric)[0]
            hits += int(np.sum(keys >= limit - 1e-6 * max(1.0, abs(limit))))
    return hits / (k * len(sample))
