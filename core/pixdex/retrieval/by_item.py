"""Queries by items already in an index: "more like this" and recommendations.

Both use the stored embeddings (no image is decoded, no model runs), so they cost one ANN
search each.

The recommendation rule (Rocchio's relevance feedback): with P the embeddings of the liked
items and N those of the disliked ones (each unit-normalised first for a cosine index),

    query = mean(P) + beta * (mean(P) - mean(N))        (beta = RECOMMEND_BETA = 0.5)

and ``query = mean(P)`` without dislikes. The weights sum to one, so the query stays on the
scale of the embeddings (which matters for ``l2``) and moves away from what was disliked.
The given items themselves are never recommended.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from pixdex.errors import PixdexError, UsageError
from pixdex.retrieval.index_folder import OpenIndex
from pixdex.retrieval.search import neighbours, ranked_matches

RECOMMEND_BETA = 0.5


class UnknownItemError(PixdexError):
    """An item id the index does not hold (an HTTP 404)."""


def rows_of(index: OpenIndex, ids: Iterable[int]) -> list[int]:
    """Embedding rows of item ``ids``; a one-line error naming the first unknown id."""
    by_id = index.rows_by_id
    rows = []
    for item_id in ids:
        if isinstance(item_id, bool) or not isinstance(item_id, int):
            raise UsageError(f"item ids are integers; got {item_id!r}")
        if item_id not in by_id:
            raise UnknownItemError(
                f"{index.path} has no item with id {item_id} (ids run from 0 to {index.manifest['next_id'] - 1}, "
                f"{index.manifest['count']} items now); `pixdex search INDEX IMAGE` shows ids"
            )
        rows.append(by_id[item_id])
    return rows


def _vectors(index: OpenIndex, rows: list[int]) -> np.ndarray:
    vectors = np.asarray(index.embeddings[rows], dtype=np.float32)
    if index.metric == "cosine":
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors


def recommend_query(index: OpenIndex, positive: list[int], negative: list[int] | None = None) -> np.ndarray:
    """The query vector of the rule in the module docstring."""
    if not positive:
        raise UsageError("recommend needs at least one liked item (positive ids)")
    liked = _vectors(index, rows_of(index, positive)).mean(axis=0)
    if not negative:
        return liked
    disliked = _vectors(index, rows_of(index, negative)).mean(axis=0)
    return liked + RECOMMEND_BETA * (liked - disliked)


def _search_excluding(
    index: OpenIndex, query: np.ndarray, k: int, exclude: set[int], label: str | None = None
) -> list[dict[str, Any]]:
    # ask for enough extra neighbours that dropping the excluded items still leaves k
    wanted = min(k + len(exclude), max(index.manifest["count"], 1))
    ids, scores = neighbours(index, query[None, :], wanted, label=label)
    return ranked_matches(index, ids[0], scores[0], exclude=frozenset(exclude), k=k)


def similar(index: OpenIndex, item_id: int, k: int, *, label: str | None = None) -> dict[str, Any]:
    """ "More like this": the ``k`` nearest other items of an indexed item, by its stored
    embedding (those labelled ``label`` only, when given). The row has the search
    output's shape, with ``query`` = ``id:N``."""
    (row,) = rows_of(index, [item_id])
    query = np.asarray(index.embeddings[row], dtype=np.float32)
    return {"query": f"id:{item_id}", "matches": _search_excluding(index, query, k, {item_id}, label)}


def recommend(index: OpenIndex, positive: list[int], negative: list[int] | None, k: int) -> dict[str, Any]:
    """``k`` items like the liked ones and unlike the disliked ones, excluding all of them."""
    negative = list(negative or [])
    overlap = sorted(set(positive) & set(negative))
    if overlap:
        raise UsageError(f"item(s) {', '.join(map(str, overlap))} are both liked and disliked")
    query = recommend_query(index, positive, negative)
    label = "like:" + ",".join(map(str, positive)) + ("" if not negative else " unlike:" + ",".join(map(str, negative)))
    return {"query": label, "matches": _search_excluding(index, query, k, set(positive) | set(negative))}
