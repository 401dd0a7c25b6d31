"""Checks and normalisation of embedding matrices, shared by index plugins.

Plugins reach it through :mod:`pixdex.plugin_api` (lazily: never at `pixdex --help`
time), so numpy is imported here at module level.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pixdex.contracts import METRICS


def check_metric(metric: str, index_name: str) -> str:
    """``metric`` when it is one of :data:`pixdex.contracts.METRICS`, else ValueError."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} for index '{index_name}': use one of {', '.join(METRICS)}")
    return metric


def check_dim(dim: Any, index_name: str) -> int:
    """``dim`` when it is a positive integer, else ValueError."""
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"index '{index_name}' needs a positive integer dim, got {dim!r}")
    return dim


def check_matrix(array: Any, dim: int, what: str) -> np.ndarray:
    """Return ``array`` as a C-contiguous float32 [N, dim] matrix, or raise ValueError.

    NaN or inf are refused: they would make any top-k order meaningless (annoy would even
    index them and return garbage neighbours) instead of failing loudly.
    """
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"{what} must have shape [n, {dim}], got {list(array.shape)}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{what} must be numeric, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return array


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; zero rows stay zero (their cosine with anything is 0)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
