"""`pixdex cluster`: k-means over an index folder's stored embeddings, with purity and NMI.

k-means is Lloyd's algorithm with greedy k-means++ seeding (as scikit-learn does it: at each
step ``2 + ln k`` candidates drawn with probability proportional to D^2, keeping the one that
lowers the potential most), on a torch device, from a seeded numpy generator. Points are
assigned ``chunk_size`` rows at a time, so the distance scratch is ``chunk x clusters``; the
per-point arrays (assignment, distance) are the output itself. Embeddings of a cosine index
are normalised first (k-means on the unit sphere, euclidean distances); ``l2`` and ``ip``
indexes are clustered as stored. Iterations stop at ``iterations``, when the centres move less
than ``tol`` x the mean per-dimension variance of the data (scikit-learn's rule), or when no
assignment changes. A cluster that empties is re-seeded with the point farthest from its centre.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pixdex.errors import PixdexError, UsageError
from pixdex.retrieval.metrics import Rows, score_dtype


@dataclass
class KMeansResult:
    """``centres`` float64 [k, D]; per point: ``assignment`` int64 [N] and ``distance`` (to its
    centre, euclidean) float64 [N]; ``inertia`` = sum of squared distances."""

    centres: np.ndarray
    assignment: np.ndarray
    distance: np.ndarray
    inertia: float
    iterations: int
    converged: bool


def _sq_dist(x: Any, c: Any, c_sq: Any) -> Any:
    """Squared euclidean distances [chunk, k] by the expansion |x|^2 - 2 x.c + |c|^2 (clamped)."""
    return ((x * x).sum(1, keepdim=True) - 2 * (x @ c.T) + c_sq[None, :]).clamp_min(0)


def kmeans(
    vectors: np.ndarray,
    k: int,
    *,
    normalise: bool = False,
    seed: int = 0,
    iterations: int = 100,
    tol: float = 1e-4,
    chunk_size: int = 4096,
    device: str = "cpu",
) -> KMeansResult:
    """k-means of the rows of ``vectors`` (float32 [N, D], may be memory-mapped)."""
    import torch

    n = len(vectors)
    if not 1 <= k <= n:
        raise UsageError(f"--clusters must be between 1 and the number of items ({n}), got {k}")
    rows = Rows(vectors, "cosine" if normalise else "l2", device, chunk_size, dtype=torch.float32)
    rng = np.random.default_rng(seed)
    f64 = score_dtype(device)  # float64, but float32 on mps (it has no float64)

    # the data's mean per-dimension variance scales the tolerance
    total = torch.zeros(vectors.shape[1], dtype=f64, device=device)
    total_sq = torch.zeros_like(total)
    for _, x in rows.chunks():
        total += x.to(f64).sum(0)
        total_sq += (x.to(f64) ** 2).sum(0)
    mean = total / n
    tol_abs = float(((total_sq / n - mean * mean).clamp_min(0)).mean()) * tol

    centres = _kmeans_pp(rows, k, rng)
    assignment = torch.full((n,), -1, dtype=torch.int64, device=device)
    best = torch.zeros(n, dtype=f64, device=device)
    converged, done = False, 0
    for done in range(1, iterations + 1):  # noqa: B007 (read after the loop: iterations run)
        sums = torch.zeros((k, vectors.shape[1]), dtype=f64, device=device)
        counts = torch.zeros(k, dtype=f64, device=device)
        changed = 0
        c32 = centres.to(torch.float32)
        c_sq = (c32 * c32).sum(1)
        for start, x in rows.chunks():
            d2 = _sq_dist(x, c32, c_sq)
            dmin, a = d2.min(1)
            changed += int((assignment[start : start + len(x)] != a).sum())
            assignment[start : start + len(x)] = a
            best[start : start + len(x)] = dmin.to(f64)
            sums.index_add_(0, a, x.to(f64))
            counts.index_add_(0, a, torch.ones(len(x), dtype=f64, device=device))
        new = sums / counts.clamp_min(1)[:, None]
        empty = torch.nonzero(counts == 0)[:, 0]
        if len(empty):  # re-seed with the points farthest from their centres
            far = torch.topk(best, len(empty)).indices
            new[empty] = rows.take(far.cpu().numpy()).to(f64)
        shift = float(((new - centres) ** 2).sum())
        centres = new
        if changed == 0 and not len(empty):
            converged = True
            break
        if shift <= tol_abs:
            converged = True
            break

    # final assignment to the final centres, with exact distances
    c32 = centres.to(torch.float32)
    c_sq = (c32 * c32).sum(1)
    dist = torch.zeros(n, dtype=f64, device=device)
    for start, x in rows.chunks():
        a = _sq_dist(x, c32, c_sq).argmin(1)
        assignment[start : start + len(x)] = a
        dist[start : start + len(x)] = (x.to(f64) - centres[a]).norm(dim=1)
    return KMeansResult(
        centres.cpu().numpy(), assignment.cpu().numpy(), dist.cpu().numpy(), float((dist * dist).sum()), done, converged
    )


def _kmeans_pp(rows: Rows, k: int, rng: np.random.Generator) -> Any:
    """Greedy k-means++ seeding (the candidate that lowers the potential most is kept)."""
    import torch

    f64 = score_dtype(rows.device)
    n = rows.n
    trials = 2 + int(math.log(k))
    first = int(rng.integers(n))
    centres = [rows.take(np.asarray([first])).to(f64)]
    closest = _min_sq_dist(rows, centres[0])
    for _ in range(1, k):
        potential = float(closest.sum())
        cum = torch.cumsum(closest, 0).cpu().numpy()
        if potential > 0:
            picks = np.searchsorted(cum, rng.uniform(size=trials) * potential, side="right")
        else:  # every point already sits on a centre: any choice is as good
            picks = rng.integers(n, size=trials)
        picks = np.minimum(picks, n - 1)
        cands = rows.take(picks).to(f64)
        pots = torch.zeros(len(picks), dtype=f64, device=rows.device)
        for start, x in rows.chunks():
            d2 = _sq_dist(x.to(f64), cands, (cands * cands).sum(1))
            pots += torch.minimum(d2, closest[start : start + len(x), None]).sum(0)
        chosen = cands[int(pots.argmin())][None, :]
        centres.append(chosen)
        closest = torch.minimum(closest, _min_sq_dist(rows, chosen))
    return torch.cat(centres)


def _min_sq_dist(rows: Rows, c: Any) -> Any:
    """Squared distances of every row to the one centre ``c`` ([1, D])."""
    import torch

    out = torch.empty(rows.n, dtype=c.dtype, device=rows.device)
    for start, x in rows.chunks():
        out[start : start + len(x)] = _sq_dist(x.to(c.dtype), c, (c * c).sum(1))[:, 0]
    return out


# --- agreement with labels -------------------------------------------------------------------


def _contingency(true: Sequence[Any], pred: Sequence[Any]) -> np.ndarray:
    _, t = np.unique(np.asarray(true, dtype=object).astype(str), return_inverse=True)
    _, p = np.unique(np.asarray(pred), return_inverse=True)
    table = np.zeros((t.max(initial=-1) + 1, p.max(initial=-1) + 1), dtype=np.int64)
    np.add.at(table, (t, p), 1)
    return table


def _entropy(counts: np.ndarray) -> float:
    counts = counts[counts > 0].astype(np.float64)
    if counts.sum() == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(true: Sequence[Any], pred: Sequence[Any]) -> float:
    """Normalised mutual information, arithmetic mean of the entropies as normaliser (scikit-
    learn's default): 1.0 when both labelings are a single group, 0.0 when MI is 0."""
    if len(true) != len(pred):
        raise ValueError("true and pred must have the same length")
    table = _contingency(true, pred)
    if table.shape[0] == table.shape[1] == 1 or table.size == 0:
        return 1.0
    total = table.sum()
    pi, pj = table.sum(1), table.sum(0)
    nz = np.nonzero(table)
    nij = table[nz].astype(np.float64)
    mi = float((nij / total * (np.log(nij * total) - np.log(pi[nz[0]] * pj[nz[1]].astype(np.float64)))).sum())
    if mi <= 0:
        return 0.0
    return float(min(1.0, mi / ((_entropy(pi) + _entropy(pj)) / 2)))  # rounding can pass 1


def purity(true: Sequence[Any], pred: Sequence[Any]) -> float:
    """Fraction of items whose label is their cluster's majority label."""
    table = _contingency(true, pred)
    return float(table.max(0).sum() / table.sum()) if table.size else 1.0


# --- the command -------------------------------------------------------------------------------


def default_output(index_dir: str | Path, suffix: str) -> Path:
    """``<index folder>-<suffix>`` next to the index folder (never inside it)."""
    folder = Path(index_dir).resolve()
    return folder.with_name(folder.name + "-" + suffix)


def check_output(out_dir: Path, index_dir: Path) -> Path:
    """Refuse an output folder inside (or equal to) the index folder: it is committed as a unit."""
    out, index = out_dir.resolve(), index_dir.resolve()
    if out == index or index in out.parents:
        raise UsageError(f"-o {out_dir} is inside the index folder {index_dir}; write the results elsewhere")
    if out.exists() and not out.is_dir():
        raise PixdexError(f"-o {out_dir} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def cluster_index(
    index_dir: str | Path,
    pset: Any,
    k: int,
    *,
    out_dir: str | Path | None = None,
    seed: int = 0,
    iterations: int = 100,
    tol: float = 1e-4,
    chunk_size: int = 4096,
    device: str = "cpu",
    per_cluster: int = 8,
    notify: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """Cluster an index folder; write clusters.jsonl and clusters.html into ``out_dir``.

    Clusters are numbered by size, largest first. Returns the report (per-cluster sizes and
    majority labels; NMI and purity over the labelled items when there are any).
    """
    from pixdex.artifacts import atomic_write_bytes, jsonl_bytes
    from pixdex.retrieval.contact_sheet import cluster_sheet
    from pixdex.retrieval.index_folder import open_index

    index = open_index(index_dir, pset)
    if not 1 <= k <= len(index.items):
        raise UsageError(f"--clusters must be between 1 and the number of items ({len(index.items)}), got {k}")
    out = check_output(Path(out_dir) if out_dir else default_output(index.path, "clusters"), index.path)
    result = kmeans(
        index.embeddings,
        k,
        normalise=index.metric == "cosine",
        seed=seed,
        iterations=iterations,
        tol=tol,
        chunk_size=chunk_size,
        device=device,
    )
    if not result.converged:
        notify(f"pixdex: k-means stopped after {result.iterations} iterations without converging (raise --iterations)")
    sizes = np.bincount(result.assignment, minlength=k)
    renumber = np.empty(k, dtype=np.int64)
    renumber[np.argsort(-sizes, kind="stable")] = np.arange(k)
    assignment = renumber[result.assignment]
    items = index.items
    lines = [
        {"id": it["id"], "path": it["path"], "label": it.get("label"), "cluster": int(c), "distance": float(d)}
        for it, c, d in zip(items, assignment.tolist(), result.distance.tolist())
    ]
    # members of each cluster, nearest its centre first (they represent it best on the page)
    order = np.lexsort((result.distance, assignment))
    bounds = np.searchsorted(assignment[order], np.arange(k + 1))
    clusters, shown = [], []
    for c in range(k):
        members = order[bounds[c] : bounds[c + 1]].tolist()
        labels = Counter(items[i].get("label") for i in members if items[i].get("label") is not None)
        top = labels.most_common(1)
        record = {
            "cluster": c,
            "size": len(members),
            "majority_label": top[0][0] if top else None,
            "majority_fraction": top[0][1] / sum(labels.values()) if top else None,
        }
        clusters.append(record)
        shown.append({**record, "items": [lines[i] for i in members[:per_cluster]]})
    labelled = [i for i, it in enumerate(items) if it.get("label") is not None]
    true = [items[i]["label"] for i in labelled]
    pred = assignment[labelled].tolist()
    report = {
        "clusters": clusters,
        "k": k,
        "items": len(items),
        "labelled": len(labelled),
        "nmi": nmi(true, pred) if labelled else None,
        "purity": purity(true, pred) if labelled else None,
        "inertia": result.inertia,
        "iterations": result.iterations,
        "converged": result.converged,
        "metric": index.metric,
        "seed": seed,
        "output": str(out),
    }
    atomic_write_bytes(out / "clusters.jsonl", jsonl_bytes(lines))
    title = f"pixdex cluster: {index.path} ({k} clusters)"
    atomic_write_bytes(out / "clusters.html", cluster_sheet(shown, title, report).encode("utf-8", "surrogateescape"))
    return report
