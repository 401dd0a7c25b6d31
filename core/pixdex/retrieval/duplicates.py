"""`pixdex duplicates`: groups of near-duplicate images, found through the index itself.

Each stored embedding is searched in the index (its ANN) for its ``neighbours`` nearest
items; every pair scoring at or above the threshold is joined with union-find, and each
connected set of two or more items is a group. Nothing is ever N x N: the work is N searches
and the memory is the pairs found. Being joined transitively, a group can hold two items
that are not themselves above the threshold (A ~ B ~ C); its ``min_score`` is its weakest
joining pair. The ANN's approximation can miss a pair (its recall is in ``index info``), but a
missed pair rarely splits a group, since the other members still link it.

Thresholds follow the index's scores: cosine similarity for ``cosine`` (default 0.9), the
dot product for ``ip``; for ``l2`` the threshold is a euclidean distance (pairs at most that
far apart join). ``ip`` and ``l2`` have no default: their scale depends on the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from pixdex.errors import PixdexError, UsageError

DEFAULT_COSINE_THRESHOLD = 0.9


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving and union by size."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = int(parent[a])
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]


def score_threshold(metric: str, threshold: float | None) -> float:
    """The minimum index score a pair needs (l2 scores are minus the distance)."""
    if threshold is None:
        if metric != "cosine":
            raise UsageError(
                f"this index uses the {metric} metric: give --threshold "
                + (
                    "(a euclidean distance: pairs at most that far apart are duplicates)"
                    if metric == "l2"
                    else "(a dot product: pairs scoring at least that much)"
                )
            )
        return DEFAULT_COSINE_THRESHOLD
    if metric == "cosine" and not -1.0 <= threshold <= 1.0:
        raise UsageError(f"--threshold {threshold} is not a cosine similarity (between -1 and 1)")
    if metric == "l2":
        if threshold < 0:
            raise UsageError(f"--threshold {threshold}: for an l2 index it is a distance, at least 0")
        return -threshold
    return threshold


def duplicate_pairs(
    ann: Any, vectors: np.ndarray, minimum: float, neighbours: int, block: int = 1024
) -> dict[tuple[int, int], float]:
    """``{(row_a, row_b): score}`` (row_a < row_b) of pairs the ANN finds at or above ``minimum``."""
    n = len(vectors)
    k = min(neighbours + 1, n)  # the item itself usually comes first
    pairs: dict[tuple[int, int], float] = {}
    for start in range(0, n, block):
        ids, scores = ann.search(np.ascontiguousarray(vectors[start : start + block], dtype=np.float32), k)
        for offset, (row_ids, row_scores) in enumerate(zip(ids.tolist(), scores.tolist())):
            me = start + offset
            for other, score in zip(row_ids, row_scores):
                if other < 0 or other == me or score < minimum:
                    continue
                key = (me, other) if me < other else (other, me)
                if score > pairs.get(key, -np.inf):
                    pairs[key] = float(score)
    return pairs


def group_pairs(n: int, pairs: dict[tuple[int, int], float]) -> list[dict[str, Any]]:
    """Connected groups of rows: ``{rows, max_score, min_score}``, largest (then closest) first."""
    uf = UnionFind(n)
    for a, b in pairs:
        uf.union(a, b)
    members: dict[int, list[int]] = {}
    high: dict[int, float] = {}
    low: dict[int, float] = {}
    for (a, _b), score in pairs.items():
        root = uf.find(a)
        high[root] = max(high.get(root, -np.inf), score)
        low[root] = min(low.get(root, np.inf), score)
    for row in sorted({r for pair in pairs for r in pair}):
        members.setdefault(uf.find(row), []).append(row)
    groups = [{"rows": rows, "max_score": high[root], "min_score": low[root]} for root, rows in members.items()]
    groups.sort(key=lambda g: (-len(g["rows"]), -g["max_score"], g["rows"][0]))
    return groups


def find_duplicates(
    index_dir: str | Path,
    pset: Any,
    *,
    threshold: float | None = None,
    neighbours: int = 10,
    out_dir: str | Path | None = None,
    notify: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """Near-duplicate groups of an index folder; writes duplicates.json and duplicates.html."""
    from pixdex.artifacts import atomic_write_bytes, to_json
    from pixdex.retrieval.clustering import check_output, default_output
    from pixdex.retrieval.contact_sheet import duplicates_sheet
    from pixdex.retrieval.index_folder import open_index

    index = open_index(index_dir, pset)
    minimum = score_threshold(index.metric, threshold)
    out = check_output(Path(out_dir) if out_dir else default_output(index.path, "duplicates"), index.path)
    try:
        pairs = duplicate_pairs(index.ann, index.embeddings, minimum, neighbours)
    except ValueError as exc:
        raise PixdexError(f"search failed: {exc}") from None
    groups = []
    for number, g in enumerate(group_pairs(len(index.items), pairs)):
        items = [
            {"id": index.items[r]["id"], "path": index.items[r]["path"], "label": index.items[r].get("label")}
            for r in g["rows"]
        ]
        groups.append(
            {
                "group": number,
                "size": len(items),
                "max_score": g["max_score"],
                "min_score": g["min_score"],
                "items": items,
            }
        )
    report = {
        "groups": groups,
        "threshold": DEFAULT_COSINE_THRESHOLD if threshold is None else threshold,
        "metric": index.metric,
        "pairs": len(pairs),
        "items": len(index.items),
        "duplicates": sum(g["size"] for g in groups),
        "neighbours": neighbours,
        "output": str(out),
    }
    atomic_write_bytes(out / "duplicates.json", to_json(report))
    title = f"pixdex duplicates: {index.path}"
    atomic_write_bytes(
        out / "duplicates.html", duplicates_sheet(groups, title, report).encode("utf-8", "surrogateescape")
    )
    return report
