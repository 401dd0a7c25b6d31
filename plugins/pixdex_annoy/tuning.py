"""Choosing annoy's ``search_k``: the candidates the tuner tries. The recall measurement
itself is the core's (:mod:`pixdex.plugin_api`: ``measure_recall``, ``exact_topk``,
``sample_ids``), shared with every index plugin that tunes a search effort, and re-exported
here so a test (or a curious user) can measure any ``search_k`` on the same sample the
auto-tuner used.
"""

from __future__ import annotations

from pixdex.plugin_api import TUNE_K, exact_topk, measure_recall, rank_keys, recall_truth, sample_ids

__all__ = ["TUNE_K", "exact_topk", "measure_recall", "rank_keys", "recall_truth", "sample_ids", "search_k_candidates"]


def search_k_candidates(n_items: int, n_trees: int, k: int = TUNE_K) -> list[int]:
    """The ``search_k`` values the tuner tries, smallest first.

    Starts at annoy's own default for ``k`` (k x n_trees) and doubles; the last value,
    n_items x n_trees, visits every leaf of every tree, which makes the search exhaustive.
    """
    k = min(k, n_items)
    exhaustive = n_items * n_trees
    out = []
    value = k * n_trees
    while value < exhaustive:
        out.append(value)
        value *= 2
    out.append(exhaustive)
    return out
