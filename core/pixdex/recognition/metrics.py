"""Classification metrics as fractions in [0, 1] (retrieval metrics: retrieval_metrics.py)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def classification_report(topk: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """``topk``: int[N, K] predicted class indices, best first; ``labels``: int[N].

    Returns top1, top5 (top-min(5, K)), per-class precision/recall/F1/support, the
    confusion matrix (rows true, columns predicted) and the count.
    """
    n = len(labels)
    c = len(classes)
    pred = topk[:, 0] if n else np.zeros(0, dtype=np.int64)
    confusion = np.zeros((c, c), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    k5 = min(5, topk.shape[1]) if n else 1
    top1 = float((pred == labels).mean()) if n else 0.0
    top5 = float((topk[:, :k5] == labels[:, None]).any(1).mean()) if n else 0.0
    per_class = []
    for i, name in enumerate(classes):
        tp = int(confusion[i, i])
        predicted = int(confusion[:, i].sum())
        support = int(confusion[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": support})
    return {
        "top1": top1,
        "top5": top5,
        "count": n,
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "classes": list(classes),
    }
