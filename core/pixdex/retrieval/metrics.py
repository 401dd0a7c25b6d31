"""Exact retrieval metrics over a whole gallery, in memory that never grows as queries x gallery.

Every query ranks the entire gallery by exact similarity (independent of any ANN index):
cosine similarity for ``cosine`` (both sides normalised; zero vectors stay zero), the dot
product for ``ip``, and for ``l2`` minus the squared euclidean distance, which orders the
gallery exactly like minus the distance.

Relevance: a gallery item is relevant to a query when their labels are equal (unlabelled
gallery items are ranked but never relevant; unlabelled queries are not evaluated). Gallery items
whose sha256 equals the query's (an exact duplicate, e.g. the same file in both collections)
and, in leave-one-out mode, the query's own row are left out of that query's ranking.

Tie rule (pessimistic): an irrelevant item that scores exactly as high as a relevant one is
ranked before it; relevant items tied with each other take consecutive ranks (their order
among themselves changes no metric). So, for the i-th best relevant item (i = 1..R) with score
t_i, its rank is ``i + #{irrelevant items scoring >= t_i}``, and

* AP        = (1/R) sum_i i / rank_i                                (the full ranking)
* MAP@R     = (1/R) sum_{i: rank_i <= R} i / rank_i                 (Musgrave et al., 2020)
* P@1       = [rank_1 == 1];  recall@k = [rank_1 <= k]              (a relevant item in the top k)

This is what makes bounded memory possible: per block of queries, pass 1 collects the
relevant items' scores (only the gallery rows of the block's labels) and sorts them; pass 2
streams the gallery in chunks of ``chunk_size`` rows and, per irrelevant item, finds with a
binary search how many relevant scores it beats, adding it to a histogram of
``(queries in block) x (R + 1)`` counters. Blocks hold at most ``chunk_size x 256`` relevant
scores (one query per block when a single label has more items than that). P@1 and recall@k
come from the same counts, so they follow the same tie rule; a running top-k is kept only to
compare the ANN's answers (``--use-index``). Scores are float64 (float32 on mps, which lacks it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

RECALL_KS = (1, 5, 10)
QUERY_BLOCK = 256  # queries scored together against each gallery chunk


@dataclass
class Side:
    """One side of an evaluation: vectors (float32 [N, D], may be memory-mapped), labels
    (None for unlabelled rows) and sha256 of each row's source (None when unknown)."""

    vectors: np.ndarray
    labels: Sequence[str | None]
    sha256: Sequence[str | None]


def score_dtype(device: str) -> Any:
    import torch

    return torch.float32 if device.startswith("mps") else torch.float64


def prepare(block: np.ndarray, metric: str, device: str, dtype: Any = None) -> Any:
    """Rows of ``block`` as a tensor on ``device`` (``dtype``: default :func:`score_dtype`),
    unit length for cosine."""
    import torch

    dtype = score_dtype(device) if dtype is None else dtype
    # a copy: memory-mapped embeddings are read-only, and torch wants writable arrays
    t = torch.from_numpy(np.array(block, dtype=np.float32)).to(device=device, dtype=dtype)
    if metric == "cosine":
        norms = t.norm(dim=1, keepdim=True)
        t = torch.where(norms > 0, t / norms.clamp_min(1e-300), torch.zeros_like(t))
    return t


def scores(q: Any, g: Any, metric: str) -> Any:
    """Higher is more similar: dot products (cosine, ip) or minus the squared distance (l2)."""
    s = q @ g.T
    if metric == "l2":
        s = 2 * s - (q * q).sum(1, keepdim=True) - (g * g).sum(1)[None, :]
    return s


class Rows:
    """Chunks of a (possibly memory-mapped) matrix as prepared device tensors; the whole
    matrix is kept on the device when it is small, so repeated passes do not re-read it."""

    def __init__(
        self,
        vectors: np.ndarray,
        metric: str,
        device: str,
        chunk_size: int,
        *,
        dtype: Any = None,
        cache_bytes: int = 256 << 20,
    ) -> None:
        self.vectors, self.metric, self.device, self.chunk_size = vectors, metric, device, max(1, int(chunk_size))
        self.dtype = score_dtype(device) if dtype is None else dtype
        self.n = len(vectors)
        small = self.n * vectors.shape[1] * self.dtype.itemsize <= cache_bytes
        self._all = prepare(vectors, metric, device, self.dtype) if small else None

    def take(self, rows: np.ndarray) -> Any:
        import torch

        if self._all is not None:
            return self._all[torch.as_tensor(rows, device=self.device)]
        return prepare(self.vectors[rows], self.metric, self.device, self.dtype)

    def chunks(self) -> Iterator[tuple[int, Any]]:
        for start in range(0, self.n, self.chunk_size):
            stop = min(start + self.chunk_size, self.n)
            yield (
                start,
                (
                    self._all[start:stop]
                    if self._all is not None
                    else prepare(self.vectors[start:stop], self.metric, self.device, self.dtype)
                ),
            )


def _codes(values: Sequence[str | None], table: dict[str, int], *, missing: int = -1) -> np.ndarray:
    """Integer codes of strings (shared ``table``); None -> ``missing``."""
    out = np.full(len(values), missing, dtype=np.int64)
    for i, v in enumerate(values):
        if v is not None:
            out[i] = table.setdefault(v, len(table))
    return out


def evaluate(
    gallery: Side,
    queries: Side,
    *,
    metric: str,
    self_rows: np.ndarray | None = None,
    chunk_size: int = 4096,
    query_block: int = QUERY_BLOCK,
    device: str = "cpu",
    top_k: int = 0,
) -> dict[str, Any]:
    """Exact retrieval metrics of ``queries`` against ``gallery`` (see the module docstring).

    ``self_rows[q]`` is the gallery row of query q in leave-one-out mode (-1: none). Returns
    the means (``map``, ``precision_at_1``, ``recall_at_k``, ``map_at_r``, fractions), the
    counts (``queries`` evaluated, ``queries_without_relevant``, ``excluded_same_sha256``:
    query/gallery pairs left out because their sha256 match, the query's own row not
    counted, ``gallery``) and, when ``top_k`` > 0, ``exact_top`` (int64 [Q, top_k] gallery
    rows, best first, -1 padded) for the evaluated queries listed in ``evaluated`` (indices
    into ``queries``).
    """
    import torch

    if metric not in ("cosine", "ip", "l2"):
        raise ValueError(f"unknown metric {metric!r}")
    n, nq = len(gallery.vectors), len(queries.vectors)
    labels: dict[str, int] = {}
    g_lab = _codes(gallery.labels, labels)
    q_lab = _codes(queries.labels, labels, missing=-2)  # -2 never equals a gallery -1
    shas: dict[str, int] = {}
    g_sha = _codes(gallery.sha256, shas)
    q_sha = _codes(queries.sha256, shas, missing=-2)
    own = np.full(nq, -1, dtype=np.int64) if self_rows is None else np.asarray(self_rows, dtype=np.int64)

    rows_of: dict[int, np.ndarray] = {}
    order = np.argsort(g_lab, kind="stable")
    bounds = np.searchsorted(g_lab[order], np.unique(g_lab))
    for code, part in zip(np.unique(g_lab).tolist(), np.split(order, bounds[1:])):
        if code >= 0:
            rows_of[code] = part  # ascending rows of each label
    candidates = [q for q in range(nq) if q_lab[q] in rows_of]
    candidates.sort(key=lambda q: (q_lab[q], q))  # blocks mostly share a label: pass 1 stays small

    dev = device
    dtype = score_dtype(dev)
    gal = Rows(gallery.vectors, metric, dev, chunk_size)
    g_lab_t = torch.as_tensor(g_lab, device=dev)
    g_sha_t = torch.as_tensor(g_sha, device=dev)
    budget = max(1, int(chunk_size)) * max(1, int(query_block))  # relevant scores held per block

    totals = {"ap": 0.0, "map_at_r": 0.0, "p1": 0.0, **{f"r{k}": 0.0 for k in RECALL_KS}}
    evaluated: list[int] = []
    tops: list[np.ndarray] = []
    excluded = 0
    without = nq - len(candidates)
    pos = 0
    while pos < len(candidates):
        block = [candidates[pos]]
        widest = len(rows_of[q_lab[candidates[pos]]])
        while pos + len(block) < len(candidates) and len(block) < query_block:
            nxt = len(rows_of[q_lab[candidates[pos + len(block)]]])
            if (len(block) + 1) * max(widest, nxt) > budget:
                break
            widest = max(widest, nxt)
            block.append(candidates[pos + len(block)])
        pos += len(block)
        b = np.asarray(block)
        qv = prepare(queries.vectors[b], metric, dev)
        bl, bs, bo = (torch.as_tensor(a[b], device=dev) for a in (q_lab, q_sha, own))

        # pass 1: the relevant items' scores, sorted ascending; left-out ones and padding are +inf
        rel = torch.full((len(b), widest), float("inf"), dtype=dtype, device=dev)
        for code in np.unique(q_lab[b]).tolist():
            sub = np.nonzero(q_lab[b] == code)[0]
            sub_t = torch.as_tensor(sub, device=dev)
            rows = rows_of[code]
            for start in range(0, len(rows), gal.chunk_size):
                part = rows[start : start + gal.chunk_size]
                part_t = torch.as_tensor(part, device=dev)
                s = scores(qv[sub_t], gal.take(part), metric)
                out = (bs[sub_t][:, None] == g_sha_t[part_t][None, :]) | (bo[sub_t][:, None] == part_t[None, :])
                rel[sub_t, start : start + len(part)] = s.masked_fill(out, float("inf"))
        rel = rel.sort(dim=1).values
        n_rel = torch.isfinite(rel).sum(1)

        # pass 2: every irrelevant item lands in the histogram bin of how many relevant scores it reaches
        hist = torch.zeros((len(b), widest + 1), dtype=torch.int64, device=dev)
        ones = torch.ones((1, 1), dtype=torch.int64, device=dev)
        best_s = torch.empty((len(b), 0), dtype=dtype, device=dev)
        best_i = torch.empty((len(b), 0), dtype=torch.int64, device=dev)
        for start, g in gal.chunks():
            stop = start + len(g)
            s = scores(qv, g, metric)
            same_sha = bs[:, None] == g_sha_t[None, start:stop]
            is_self = bo[:, None] == torch.arange(start, stop, device=dev)[None, :]
            excluded += int((same_sha & ~is_self).sum())
            out = same_sha | is_self
            if top_k:
                cand_s = torch.cat([best_s, s.masked_fill(out, float("-inf"))], dim=1)
                cand_i = torch.cat([best_i, torch.arange(start, stop, device=dev).expand(len(b), -1)], dim=1)
                keep = torch.topk(cand_s, min(top_k, cand_s.shape[1]), dim=1)
                best_s, best_i = keep.values, cand_i.gather(1, keep.indices)
            s = s.masked_fill(out | (bl[:, None] == g_lab_t[None, start:stop]), float("-inf"))
            where = torch.searchsorted(rel, s.contiguous(), right=True)  # relevant scores <= s
            hist.scatter_add_(1, where, ones.expand_as(where))
        # irrelevant items scoring >= the r-th smallest relevant score: the bins above r
        above = hist.flip(1).cumsum(1).flip(1)[:, 1:]

        r = torch.arange(widest, device=dev)[None, :]
        valid = r < n_rel[:, None]
        i = (n_rel[:, None] - r).to(dtype)  # r-th smallest is the i-th best
        rank = i + above.to(dtype)
        prec = torch.where(valid, i / rank, torch.zeros_like(rank))
        has = n_rel > 0
        nr = n_rel.clamp_min(1).to(dtype)
        first = 1 + above.gather(1, (n_rel - 1).clamp_min(0)[:, None])[:, 0]
        hasf = has.to(dtype)
        totals["ap"] += float((prec.sum(1) / nr * hasf).sum())
        totals["map_at_r"] += float(
            (torch.where(rank <= nr[:, None], prec, torch.zeros_like(prec)).sum(1) / nr * hasf).sum()
        )
        totals["p1"] += float(((first == 1) & has).sum())
        for k in RECALL_KS:
            totals[f"r{k}"] += float(((first <= k) & has).sum())
        kept = has.cpu().numpy()
        without += int((~kept).sum())
        evaluated.extend(b[kept].tolist())
        if top_k:
            ids = best_i.masked_fill(~torch.isfinite(best_s), -1).cpu().numpy()
            if ids.shape[1] < top_k:
                ids = np.pad(ids, ((0, 0), (0, top_k - ids.shape[1])), constant_values=-1)
            tops.append(ids[kept])

    # queries outside `candidates` (no label, or a label the gallery lacks) still count exclusions
    others = np.setdiff1d(np.arange(nq), np.asarray(candidates, dtype=np.int64))
    excluded += _count_same_sha(q_sha[others], own[others], g_sha)
    m = len(evaluated)
    result: dict[str, Any] = {
        "map": totals["ap"] / m if m else None,
        "precision_at_1": totals["p1"] / m if m else None,
        "recall_at_k": {str(k): (totals[f"r{k}"] / m if m else None) for k in RECALL_KS},
        "map_at_r": totals["map_at_r"] / m if m else None,
        "queries": m,
        "queries_without_relevant": without,
        "excluded_same_sha256": excluded,
        "gallery": n,
        "metric": metric,
    }
    if top_k:
        ev = np.asarray(evaluated, dtype=np.int64)
        top = np.concatenate(tops) if tops else np.zeros((0, top_k), dtype=np.int64)
        # blocks ran in label order: put both lists back in query order
        back = np.argsort(ev, kind="stable")
        result["evaluated"], result["exact_top"] = ev[back], top[back]
    return result


def _count_same_sha(q_sha: np.ndarray, own: np.ndarray, g_sha: np.ndarray) -> int:
    """Gallery rows sharing each query's sha256, the query's own row not counted."""
    if not len(q_sha):
        return 0
    counts = np.bincount(g_sha[g_sha >= 0], minlength=int(max(g_sha.max(initial=0), q_sha.max(initial=0))) + 1)
    total = 0
    for sha, row in zip(q_sha.tolist(), own.tolist()):
        if sha >= 0:
            total += int(counts[sha]) - int(row >= 0 and g_sha[row] == sha)
    return total


def ann_recall(
    ann: Any,
    gallery: Side,
    queries: Side,
    evaluated: np.ndarray,
    exact_top: np.ndarray,
    *,
    self_rows: np.ndarray | None = None,
    block: int = 1024,
) -> float | None:
    """Mean over ``evaluated`` queries of |ANN top-10 ∩ exact top-10| / |exact top-10|.

    The ANN is asked for extra neighbours to make up for the rows the exact ranking left
    out (the query's own row, same-sha256 rows), which are then dropped from its answer.
    """
    if not len(evaluated):
        return None
    k = exact_top.shape[1]
    rows_of_sha: dict[str, list[int]] = {}
    for row, sha in enumerate(gallery.sha256):
        if sha is not None:
            rows_of_sha.setdefault(sha, []).append(row)
    left_out = []
    for q in evaluated.tolist():
        out = set(rows_of_sha.get(queries.sha256[q], [])) if queries.sha256[q] is not None else set()
        if self_rows is not None and self_rows[q] >= 0:
            out.add(int(self_rows[q]))
        left_out.append(out)
    total, counted = 0.0, 0
    for start in range(0, len(evaluated), block):
        qs = evaluated[start : start + block]
        extra = max(len(s) for s in left_out[start : start + block])
        want = min(k + extra, len(gallery.vectors))
        ids, _ = ann.search(np.ascontiguousarray(queries.vectors[qs], dtype=np.float32), want)
        for j, q_ids in enumerate(ids):
            truth = {int(x) for x in exact_top[start + j] if x >= 0}
            if not truth:
                continue
            got = [int(x) for x in q_ids if x >= 0 and int(x) not in left_out[start + j]][:k]
            total += len(truth.intersection(got)) / len(truth)
            counted += 1
    return total / counted if counted else None


# --- the command: gallery = an index folder; queries = leave-one-out, an index folder, or DATA -------


def _index_side(index: Any) -> Side:
    return Side(index.embeddings, [it.get("label") for it in index.items], [it.get("sha256") for it in index.items])


def _image_queries(
    index: Any,
    specs: list[str],
    pset: Any,
    runtime: dict[str, Any],
    *,
    labels: str,
    split: str | None,
    progress: bool,
    notify: Any,
) -> tuple[Side, list[dict[str, Any]]]:
    """Embed DATA (folders, list files, NAME:ARG specs; single image files, unlabelled) with the
    index's own model. DATA with a test split gives its test split unless ``split`` says otherwise."""
    from pathlib import Path

    from pixdex.data.datasets import open_dataset
    from pixdex.data.images import has_image_extension
    from pixdex.device import placement
    from pixdex.errors import PixdexError
    from pixdex.retrieval.embed import embed_keys
    from pixdex.retrieval.records import fact_table
    from pixdex.retrieval.search import index_model

    run = index_model(index, pset)
    place = placement(runtime["device"], runtime["precision"], notify=notify)
    vectors, qlabels, qshas, skipped = [], [], [], []
    for spec in specs:
        if Path(spec).is_file() and has_image_extension(spec):
            items, opener = [(spec, None)], None
        else:
            ds = open_dataset(spec, pset.registry, labels=labels)
            splits = ds.splits()
            if split is not None and split not in splits:
                raise PixdexError(f"{spec} has no split '{split}' (it has: {', '.join(splits)})")
            names = [split] if split else (["test"] if "test" in splits else splits)
            items = [item for name in names for item in ds.items(name)]
            opener = getattr(ds, "image", None)
            skipped += list(getattr(ds, "skipped", []))
        if not items:
            continue
        keys = [k for k, _ in items]
        facts = fact_table(keys, opener)
        embedded = embed_keys(
            run,
            keys,
            runtime,
            place,
            opener=opener,
            max_pixels=runtime["max_pixels"],
            progress=progress,
            desc="queries",
        )
        skipped += embedded.skipped
        vectors.append(embedded.embeddings)
        for p in embedded.positions.tolist():
            qlabels.append(items[p][1])
            qshas.append(facts[p].get("sha256"))
    if not sum(len(v) for v in vectors):
        from pixdex.data.image_args import nothing_read

        raise nothing_read(f"no query image of {', '.join(specs)}", skipped)
    return Side(np.concatenate(vectors), qlabels, qshas), skipped


def evaluate_index(
    index_dir: Any,
    queries: list[str],
    pset: Any,
    runtime: dict[str, Any],
    *,
    leave_one_out: bool = False,
    use_index: bool = False,
    chunk_size: int = 4096,
    labels: str = "auto",
    split: str | None = None,
    progress: bool = False,
    notify: Any = lambda m: None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """`pixdex evaluate-retrieval`: the report and the skipped query images."""
    from pathlib import Path

    from pixdex.device import resolve_device
    from pixdex.errors import ArtifactError, PixdexError, UsageError
    from pixdex.retrieval.index_folder import open_index

    if leave_one_out and queries:
        raise UsageError(
            "--leave-one-out uses the index's own items as queries: give QUERIES or --leave-one-out, not both"
        )
    if not leave_one_out and not queries:
        raise UsageError("give QUERIES (an index folder, or images / DATA) or --leave-one-out")
    index = open_index(index_dir, pset)
    device = resolve_device(runtime["device"], notify=notify)
    runtime = {**runtime, "device": device}  # resolved once: 'auto' is announced once
    gallery = _index_side(index)
    self_rows = None
    skipped: list[dict[str, Any]] = []
    if leave_one_out:
        query_side, self_rows = gallery, np.arange(len(index.items), dtype=np.int64)
    elif len(queries) == 1 and (Path(queries[0]) / "manifest.json").is_file():
        other = open_index(queries[0], pset)
        if other.manifest["model"]["sha256"] != index.manifest["model"]["sha256"]:
            raise ArtifactError(
                f"{queries[0]} was built with another model than {index_dir}: their embeddings "
                f"cannot be compared (build both with the same MODEL)"
            )
        query_side = _index_side(other)
    else:
        query_side, skipped = _image_queries(
            index, list(queries), pset, runtime, labels=labels, split=split, progress=progress, notify=notify
        )
    if not any(lab is not None for lab in query_side.labels):
        what = f"the items of {index_dir} have" if leave_one_out else "the queries have"
        raise PixdexError(f"{what} no labels, so relevance is undefined: use labelled DATA (one subfolder per class)")
    report = evaluate(
        gallery,
        query_side,
        metric=index.metric,
        self_rows=self_rows,
        chunk_size=chunk_size,
        device=device,
        top_k=10 if use_index else 0,
    )
    if report["queries"] == 0:
        raise PixdexError(
            f"none of the {report['queries_without_relevant']} queries has a relevant item (same label) in {index_dir}"
        )
    if use_index:
        report["ann_recall_at_10"] = ann_recall(
            index.ann, gallery, query_side, report.pop("evaluated"), report.pop("exact_top"), self_rows=self_rows
        )
    return report, skipped
