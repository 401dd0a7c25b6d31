"""pixdex-example-plugin: an exact brute-force retrieval index in pure numpy.

This module is a complete pixdex plugin. pixdex finds it through the ``pixdex``
entry-point group declared in pyproject.toml, imports it, and calls its
``register_indexes`` hook, which registers one index, ``numpy-brute``.

Scores (higher is always more similar, as the index contract requires):

* ``cosine``: the cosine similarity, in [-1, 1]. Gallery and query vectors are
  normalised to unit length; a zero vector stays zero and scores 0 against everything.
* ``ip``: the plain dot product ``q . x``.
* ``l2``: the negative squared euclidean distance ``-||q - x||^2`` (0 for an exact match).

Besides pixdex itself (installed next to it, never a declared dependency), its only
dependency is numpy, imported at module level because it is light; a plugin that needs
torch or another heavy library should import it inside its factory, so that
``pixdex --help`` and ``pixdex plugins`` stay fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pixdex.hookspecs import hookimpl
from pixdex.plugin_api import ConfigError

if TYPE_CHECKING:  # only for the type hint: the core passes the object at run time
    from pixdex.plugin_api import Register

__version__ = "0.1.0"

METRICS = ("cosine", "l2", "ip")
VECTORS_FILE = "vectors.npy"


@dataclass
class NumpyBruteOptions:
    """Options of the ``numpy-brute`` index (``[index]`` keys, or ``--set index.KEY=VALUE``)."""

    # Gallery rows scored per step. Search memory is about Q x (chunk_size + k) scores
    # instead of Q x N, so a large gallery (or a memory-mapped one) never has to be
    # scored in one piece. Lower it when you search with many queries at once.
    chunk_size: int = 4096


class NumpyBruteIndex:
    """Exact nearest-neighbour search by scoring every gallery vector.

    Row ``i`` of the array given to :meth:`build` (or found by :meth:`load`) is internal
    id ``i``; pixdex maps ids back to items itself.
    """

    def __init__(self, options: NumpyBruteOptions, *, dim: int, metric: str) -> None:
        # The core has already checked the option types; the values are ours to check.
        # ConfigError is the user's mistake (one line, exit 2); any other exception is
        # reported by the core as this plugin failing (exit 1).
        if options.chunk_size < 1:
            raise ConfigError(f"index 'numpy-brute' option 'chunk_size' must be at least 1, got {options.chunk_size}")
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}: numpy-brute supports {', '.join(METRICS)}")
        if dim < 1:
            raise ValueError(f"dim must be at least 1, got {dim}")
        self.dim = dim
        self.metric = metric
        self.chunk_size = options.chunk_size
        self._vectors: np.ndarray | None = None

    # --- building and searching -------------------------------------------------------

    def build(self, vectors: np.ndarray) -> None:
        """Index ``vectors`` (float32[N, D]); row i becomes internal id i."""
        vectors = self._check(vectors, "vectors")
        if self.metric == "cosine":
            # Normalise once here rather than in every search; the normalised rows are
            # what save() writes, so a loaded index needs no extra work either.
            vectors = _normalise(vectors)
        self._vectors = np.ascontiguousarray(vectors, dtype=np.float32)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar gallery rows of each query, best first.

        Returns ``(ids int64[Q, k], scores float32[Q, k])``. When ``k`` exceeds the
        gallery size, the extra columns hold id -1 and score -inf. Ties are ordered by
        ascending id, except that a tie exactly at the k-th place may keep either row.
        """
        if self._vectors is None:
            raise RuntimeError("numpy-brute index is empty: call build() or load() first")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 0:
            raise ValueError(f"k must be a non-negative integer, got {k!r}")
        queries = self._check(queries, "queries")
        if self.metric == "cosine":
            queries = _normalise(queries)
        gallery = self._vectors
        n_queries, n_gallery = queries.shape[0], gallery.shape[0]
        keep = min(int(k), n_gallery)

        ids = np.full((n_queries, int(k)), -1, dtype=np.int64)
        scores = np.full((n_queries, int(k)), -np.inf, dtype=np.float32)
        if keep == 0 or n_queries == 0:
            return ids, scores

        if self.metric == "l2":
            # ||q||^2 does not change the ranking, but the scores must be true distances.
            query_sq = np.einsum("ij,ij->i", queries, queries)[:, None]

        # Running top-k: the best `keep` so far, merged with each new chunk's scores.
        best_scores = np.empty((n_queries, 0), dtype=np.float32)
        best_ids = np.empty((n_queries, 0), dtype=np.int64)
        for start in range(0, n_gallery, self.chunk_size):
            # np.asarray reads just this slice of a memory-mapped gallery into memory.
            chunk = np.asarray(gallery[start : start + self.chunk_size], dtype=np.float32)
            chunk_scores = queries @ chunk.T
            if self.metric == "l2":
                chunk_sq = np.einsum("ij,ij->i", chunk, chunk)[None, :]
                # Rounding can make an exact match come out slightly above 0; clamp so
                # a distance is never reported as negative.
                chunk_scores = np.minimum(2.0 * chunk_scores - chunk_sq - query_sq, 0.0)
            chunk_ids = np.broadcast_to(np.arange(start, start + chunk.shape[0], dtype=np.int64), chunk_scores.shape)
            cand_scores = np.concatenate([best_scores, chunk_scores.astype(np.float32, copy=False)], axis=1)
            cand_ids = np.concatenate([best_ids, chunk_ids], axis=1)
            if cand_scores.shape[1] > keep:
                # argpartition is O(candidates) per row, a full sort would be O(c log c);
                # negate so that the largest scores land in the first `keep` columns.
                part = np.argpartition(-cand_scores, keep - 1, axis=1)[:, :keep]
                cand_scores = np.take_along_axis(cand_scores, part, axis=1)
                cand_ids = np.take_along_axis(cand_ids, part, axis=1)
            best_scores, best_ids = cand_scores, cand_ids

        # Only `keep` columns are left, so a full sort is cheap; ids break ties so that
        # equal scores come back in a reproducible order.
        order = np.lexsort((best_ids, -best_scores))
        ids[:, :keep] = np.take_along_axis(best_ids, order, axis=1)
        scores[:, :keep] = np.take_along_axis(best_scores, order, axis=1)
        return ids, scores

    # --- persistence ------------------------------------------------------------------

    def save(self, staging_dir: str | os.PathLike[str]) -> list[str]:
        """Write the index into ``staging_dir``; return the names of the files written.

        pixdex fsyncs and commits these files together with the index folder's
        manifest, so a crash while saving never damages a previous index.
        """
        if self._vectors is None:
            raise RuntimeError("numpy-brute index is empty: nothing to save")
        # np.save of a plain float32 array needs no pickle, so load() can refuse pickles.
        np.save(os.path.join(os.fspath(staging_dir), VECTORS_FILE), np.ascontiguousarray(self._vectors))
        return [VECTORS_FILE]

    def load(self, directory: str | os.PathLike[str], mmap: bool = True) -> None:
        """Load what :meth:`save` wrote. With ``mmap`` the vectors stay on disk, paged in
        as searches touch them, so opening a large index is instant and memory-light.

        pixdex calls this only after it has verified the folder's manifest (file sizes
        and hashes), so the checks here are about shape, not corruption.
        """
        path = os.path.join(os.fspath(directory), VECTORS_FILE)
        # allow_pickle=False: an index file must never be able to run code when opened.
        vectors = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"{path} holds {vectors.dtype}{list(vectors.shape)}, expected float32[N, {self.dim}]")
        self._vectors = vectors

    # --- helpers ----------------------------------------------------------------------

    def _check(self, array: np.ndarray, what: str) -> np.ndarray:
        """Return ``array`` as float32[M, dim], or raise ValueError naming what is wrong."""
        array = np.asarray(array, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise ValueError(f"{what} must be float32[M, {self.dim}], got shape {list(array.shape)}")
        # NaN or inf would silently poison the ranking (NaN compares false to everything).
        if not np.isfinite(array).all():
            raise ValueError(f"{what} contain NaN or infinite values")
        return array


def _normalise(vectors: np.ndarray) -> np.ndarray:
    """Scale rows to unit length; an all-zero row stays zero instead of becoming NaN."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)


def make_index(options: NumpyBruteOptions, *, dim: int, metric: str) -> NumpyBruteIndex:
    """The ``numpy-brute`` factory: pixdex calls it with validated options, dim and metric."""
    return NumpyBruteIndex(options, dim=dim, metric=metric)


@hookimpl
def register_indexes(register: Register) -> None:
    """Register ``numpy-brute`` (pixdex calls this once, when it loads the plugin)."""
    register(
        "numpy-brute",
        make_index,
        options=NumpyBruteOptions,
        description="Exact brute-force search in numpy (cosine, l2, ip); example plugin",
    )
