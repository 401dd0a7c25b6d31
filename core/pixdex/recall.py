"""Recall of an approximate index against exact search, for plugins that tune their effort.

An approximate index (annoy's ``search_k``, HNSW's ``ef``) trades recall for speed; the
index plugins tune that effort at build time to the smallest value whose recall@10 on
sampled rows reaches a target, and record what they measured. This is the measurement:
exact top-k by chunked brute force and recall with ties counted as hits. Plugins use it
through :mod:`pixdex.plugin_api`.
"""

from __future__ import annotations

from typing import Any, Protocol

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


def exact_topk(
    vectors: np.ndarray, queries: np.ndarray, k: int, metric: str, *, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` ids and keys (see :func:`rank_keys`) by chunked numpy brute force;
    rows ``exclude`` (ids) are left out, as if they were not in ``vectors``."""
    k = min(k, len(vectors) - (0 if exclude is None else len(exclude)))
    best_keys = np.empty((len(queries), 0))
    best_ids = np.empty((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), _EXACT_CHUNK):
        chunk_keys = rank_keys(queries, vectors[start : start + _EXACT_CHUNK], metric)
        if exclude is not None:
            inside = exclude[(exclude >= start) & (exclude < start + chunk_keys.shape[1])]
            chunk_keys[:, inside - start] = -np.inf
        chunk_ids = np.broadcast_to(np.arange(start, start + chunk_keys.shape[1]), chunk_keys.shape)
        best_keys = np.concatenate([best_keys, chunk_keys], axis=1)
        best_ids = np.concatenate([best_ids, chunk_ids], axis=1)
        if best_keys.shape[1] > k:  # keep the running top-k so memory stays sample x chunk
            keep = np.argpartition(-best_keys, k - 1, axis=1)[:, :k]
            best_keys = np.take_along_axis(best_keys, keep, axis=1)
            best_ids = np.take_along_axis(best_ids, keep, axis=1)
    order = np.argsort(-best_keys, axis=1, kind="stable")
    return np.take_along_axis(best_ids, order, axis=1), np.take_along_axis(best_keys, order, axis=1)


def without_self(ids: np.ndarray, keys: np.ndarray | None, sample: np.ndarray, k: int) -> tuple[np.ndarray, Any]:
    """Rows of ``k + 1`` results with each query's own row taken out (else the last one):
    the ``k`` results of a query that is not in the collection."""
    out_ids = np.empty((len(ids), k), dtype=ids.dtype)
    out_keys = None if keys is None else np.empty((len(ids), k), dtype=keys.dtype)
    for i, own in enumerate(sample.tolist()):
        hit = np.flatnonzero(ids[i] == own)
        drop = int(hit[0]) if len(hit) else ids.shape[1] - 1
        keep = np.delete(np.arange(ids.shape[1]), drop)[:k]
        out_ids[i] = ids[i, keep]
        if out_keys is not None:
            out_keys[i] = keys[i, keep]
    return out_ids, out_keys


def recall_truth(
    vectors: np.ndarray, sample: np.ndarray, metric: str, *, held_out: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The exact answers :func:`measure_recall` compares with, to compute once and reuse
    across the efforts a tuner tries: each sampled row's top-10 among the other rows or,
    ``held_out``, among the rows outside the sample (for a sample kept out of the index
    while it is tuned: :func:`held_out_sample`)."""
    k = min(TUNE_K, len(vectors) - 1)
    if held_out:
        return exact_topk(vectors, vectors[sample], k, metric, exclude=sample)
    ids, keys = exact_topk(vectors, vectors[sample], k + 1, metric)
    out_ids, out_keys = without_self(ids, keys, sample, k)
    return out_ids, out_keys


def held_out_sample(n_items: int, count: int, seed: int) -> np.ndarray:
    """Rows to keep out of an index while its effort is tuned (inserted afterwards), so
    that recall is measured on queries the index has not seen: at most a quarter of the
    rows, none below 8 rows (too few to leave any out)."""
    return sample_ids(n_items, min(count, n_items // 4), seed) if n_items >= 8 else np.zeros(0, dtype=np.int64)


def measure_recall(
    index: Searchable,
    vectors: np.ndarray,
    sample: np.ndarray,
    effort: int,
    *,
    truth: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """Recall@10 of ``index`` searched with ``effort`` for the rows ``sample`` of ``vectors``,
    each row left out of its own answer (leave-one-out).

    ``vectors`` are the rows as the index stores them (unit length for cosine). A sampled
    row would find itself first, a hit that a query from outside the collection (the usual
    kind) never gets: so the row's own match is dropped from both the exact and the
    approximate answer. A graph index finds the neighbours of its own rows more easily
    than those of new queries even so (hnsw on 16-d gaussians: 0.99 leave-one-out, 0.89
    held out), so it tunes on rows it holds out instead (:func:`held_out_sample`,
    ``truth=recall_truth(..., held_out=True)``). Recall is the mean over queries of |approx top-10 ∩
    exact top-10| / 10 (fewer where fewer rows are there to rank), except that a returned
    id tied with the exact 10th best counts as a hit: with duplicate vectors the exact
    top-10 is not unique, and a tie must not push the tuner to exhaustive search.
    ``truth`` is :func:`recall_truth` for the sample, to reuse across efforts.
    """
    k = min(TUNE_K, len(vectors) - 1)
    if k < 1:
        return 1.0  # one row: nothing to find but itself
    queries = vectors[sample]
    if truth is None:
        truth = recall_truth(vectors, sample, index.metric)
    # held-out truth ranks only the rows outside the sample: fewer than 10 in a small collection
    k = min(k, truth[1].shape[1])
    threshold = truth[1][:, k - 1]
    found, _ = index.search_with(queries, k + 1, effort)
    approx, _ = without_self(found, None, sample, k)
    hits = 0
    for q, ids, limit in zip(queries, approx, threshold):
        ids = ids[ids >= 0]
        if len(ids):
            keys = rank_keys(q[None, :], vectors[ids], index.metric)[0]
            hits += int(np.sum(keys >= limit - 1e-6 * max(1.0, abs(limit))))
    return hits / (k * len(sample))
