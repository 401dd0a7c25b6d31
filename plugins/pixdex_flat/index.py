"""The exact flat index: scores every gallery row, chunk by chunk, keeping a running top-k.

Scores (shared with pixdex_annoy): cosine similarity for ``cosine`` (vectors are normalised
here, at build and at query time; zero vectors stay zero), the dot product for ``ip``, and
the negative euclidean distance for ``l2``. Higher is always more similar.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pixdex.plugin_api import check_dim, check_matrix, check_metric, normalise

FILE = "flat.npy"
# l2 scores are recomputed exactly for the final top-k; this bounds that step's scratch
# memory (queries x k x dim floats) to about 16 MiB per block
_RECOMPUTE_FLOATS = 1 << 22


class FlatIndex:
    """Exact search by chunked matrix products on a torch device.

    Gallery rows are scored ``chunk_size`` at a time against ``query_chunk`` queries at a
    time, and each chunk's top-k is merged into a running top-k with ``torch.topk``, so
    memory never grows as queries x collection. Read-only after build or load, so one
    instance may be searched from many threads.
    """

    def __init__(
        self, *, dim: int, metric: str, device: str = "cpu", chunk_size: int = 65536, query_chunk: int = 1024
    ) -> None:
        self.dim = check_dim(dim, "flat")
        self.metric = check_metric(metric, "flat")
        self.device = device
        self.chunk_size = chunk_size
        self.query_chunk = query_chunk
        self._vectors: np.ndarray | None = None  # stored rows (unit length for cosine)

    @property
    def params(self) -> dict[str, Any]:
        """What the index manifest records about this index."""
        return {"chunk_size": self.chunk_size, "query_chunk": self.query_chunk, "device": self.device}

    def __len__(self) -> int:
        return 0 if self._vectors is None else len(self._vectors)

    def build(self, vectors: np.ndarray) -> None:
        """Store ``vectors`` (float32 [N, dim], N >= 1); row i becomes id i."""
        stored = check_matrix(vectors, self.dim, "vectors")
        if len(stored) == 0:
            raise ValueError("cannot build index 'flat' from 0 vectors")
        if self.metric == "cosine":
            stored = normalise(stored)
        elif isinstance(vectors, np.ndarray) and np.may_share_memory(stored, vectors):
            stored = stored.copy()  # never alias the caller's array: they may reuse it
        self._vectors = stored

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ids (int64 [Q, k]) and scores (float32 [Q, k]), best first.

        When ``k`` exceeds the collection, ids are padded with -1 and scores with -inf.
        """
        gallery = self._require()
        queries = check_matrix(queries, self.dim, "queries")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        if self.metric == "cosine":
            queries = normalise(queries)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        kk = min(k, len(gallery))
        for start in range(0, len(queries), self.query_chunk):
            block = queries[start : start + self.query_chunk]
            block_ids, block_scores = self._search_block(gallery, block, kk)
            ids[start : start + len(block), :kk] = block_ids
            scores[start : start + len(block), :kk] = block_scores
        return ids, scores

    def _search_block(self, gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        q = _tensor(queries, self.device)  # queries may be a read-only memory map too
        best_scores = torch.empty((len(q), 0), dtype=torch.float32, device=self.device)
        best_ids = torch.empty((len(q), 0), dtype=torch.int64, device=self.device)
        for start in range(0, len(gallery), self.chunk_size):
            x = _tensor(gallery[start : start + self.chunk_size], self.device)
            if self.metric == "l2":
                # rank by 2 q.x - |x|^2 (= |q|^2 - |q - x|^2, the |q|^2 term is constant per
                # query), fused into one addmm; exact distances for the winners come below
                s = torch.addmm((x * x).sum(dim=1), q, x.T, beta=-1, alpha=2)
            else:
                s = q @ x.T
            top_s, top_i = torch.topk(s, min(k, s.shape[1]), dim=1)
            # merge into the running top-k (topk also sorts, which the last merge relies on)
            merged_scores = torch.cat([best_scores, top_s], dim=1)
            best_scores, pos = torch.topk(merged_scores, min(k, merged_scores.shape[1]), dim=1)
            best_ids = torch.gather(torch.cat([best_ids, top_i + start], dim=1), 1, pos)
        if self.metric == "l2":
            best_ids, best_scores = self._exact_l2(gallery, q, best_ids)
        return best_ids.cpu().numpy(), best_scores.cpu().numpy()

    def _exact_l2(self, gallery: np.ndarray, q: Any, ids: Any) -> tuple[Any, Any]:
        """-|q - x| for the chosen ids, re-sorted.

        The expanded form |q|^2 - 2q.x + |x|^2 cancels badly near zero distance (a query
        that is in the collection scored about -1e-3 instead of 0), so the final scores
        are computed from the differences themselves.
        """
        import torch

        k = ids.shape[1]
        step = max(1, _RECOMPUTE_FLOATS // (k * self.dim))
        out_ids, out_scores = [], []
        for start in range(0, len(q), step):
            block_ids = ids[start : start + step]
            rows = _tensor(gallery[block_ids.cpu().numpy().ravel()], self.device).view(len(block_ids), k, self.dim)
            dist = (q[start : start + step, None, :] - rows).norm(dim=2)
            # 0 - d rather than -d: a self-match scores 0.0, not -0.0
            scores, order = torch.sort(0.0 - dist, dim=1, descending=True, stable=True)
            out_scores.append(scores)
            out_ids.append(torch.gather(block_ids, 1, order))
        return torch.cat(out_ids), torch.cat(out_scores)

    def save(self, staging_dir: Path) -> list[str]:
        """Write ``flat.npy`` (the stored, for cosine normalised, vectors) into ``staging_dir``."""
        gallery = self._require()
        np.save(Path(staging_dir) / FILE, gallery, allow_pickle=False)
        return [FILE]

    def load(self, dir: Path, mmap: bool = True) -> None:
        """Load ``flat.npy`` from ``dir``, memory-mapped read-only when ``mmap``."""
        vectors = np.load(Path(dir) / FILE, mmap_mode="r" if mmap else None, allow_pickle=False)
        if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) == 0:
            raise ValueError(
                f"{Path(dir) / FILE} holds {vectors.dtype} {list(vectors.shape)}, expected float32 [n, {self.dim}]"
            )
        self._vectors = vectors

    def _require(self) -> np.ndarray:
        if self._vectors is None:
            raise RuntimeError("index 'flat' is empty: call build() or load() first")
        return self._vectors


def _tensor(array: np.ndarray, device: str) -> Any:
    """A torch tensor on ``device`` for a numpy slice.

    A read-only memory map cannot be wrapped by ``torch.from_numpy`` without a warning
    (torch tensors are writable), and ``np.ascontiguousarray`` returns such a slice
    unchanged, so read-only slices are copied explicitly.
    """
    import torch

    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, dtype=np.float32, order="C", copy=True)
    return torch.from_numpy(array).to(device)
