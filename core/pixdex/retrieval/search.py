"""Query an index folder: nearest neighbours of images, and labels by neighbour vote."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pixdex.data.image_args import check_single_image, expand_inputs, is_single_image, nothing_read
from pixdex.device import placement
from pixdex.errors import ArtifactError, PixdexError
from pixdex.pipeline.runs import LoadedRun, load_run, model_fingerprint
from pixdex.plugins import PluginSet
from pixdex.retrieval.embed import embed_keys
from pixdex.retrieval.index_folder import OpenIndex, is_external, open_index
from pixdex.retrieval.stored import holds_items


def recorded_tta(manifest: dict[str, Any]) -> str:
    """The test-time augmentation an index's items were embedded with (one of
    ``pixdex.pipeline.inference.TTA_MODES``; "none" when the manifest records none)."""
    return str(manifest.get("model", {}).get("tta", "none"))


def stored_model(folder: Path, manifest: dict[str, Any], pset: PluginSet) -> LoadedRun:
    """The model saved in index ``folder`` (its model/), set to embed with the test-time
    augmentation ``manifest`` records: every image embedded for the index embeds the same way."""
    return replace(load_run(folder / "model", pset), tta=recorded_tta(manifest))


def index_model(
    index: OpenIndex, pset: PluginSet, override: str | None = None, purpose: str = "embedding images"
) -> LoadedRun:
    """The index's own model (model/), or ``override`` when it provably is the same model,
    set to embed with the test-time augmentation the index records.

    An external index (built ``--from-embeddings`` without a model) has none: ``purpose``
    is refused in one line unless ``override`` makes embeddings of the index's dim (and,
    when the index recorded its embedder's sha256, has those weights)."""
    stored = index.manifest["model"]
    external = is_external(index.manifest)
    if override is None:
        if external:
            raise PixdexError(
                f"{index.path} was built from embeddings without a model, and {purpose} needs one: "
                "give --model RUN (the model that made them), search with --vectors FILE.npy or --id, "
                "or rebuild with `pixdex index build --from-embeddings DIR MODEL`"
            )
        return stored_model(index.path, index.manifest, pset)
    run = load_run(override, pset)
    problems = []
    if int(run.pipeline.backbone.embed_dim) != index.dim:
        problems.append(f"it embeds {run.pipeline.backbone.embed_dim} dims, the index {index.dim}")
    if not external and run.manifest.get("data_config") != stored.get("data_config"):
        problems.append("its data config (input size, mean, std) differs")
    if stored.get("sha256") and model_fingerprint(run) != stored["sha256"]:
        problems.append("its weights' sha256 differs")
    if problems:
        raise ArtifactError(
            f"--model {override} does not match the model {index.path} was built with: " + "; ".join(problems)
        )
    return replace(run, tta=recorded_tta(index.manifest))


def embed_queries(
    run: LoadedRun, queries: list[str], runtime: dict[str, Any], *, max_pixels: int, notify: Callable[[str], None]
) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
    paths, skipped = expand_inputs(queries)
    if is_single_image(queries, paths):
        check_single_image(paths[0], max_pixels)
    if not paths:
        raise PixdexError("no query images found in " + ", ".join(queries))
    place = placement(runtime["device"], runtime["precision"], notify=notify)
    embedded = embed_keys(run, paths, runtime, place, max_pixels=max_pixels, desc="queries", notify=notify)
    skipped += embedded.skipped
    if len(embedded.positions) == 0:
        raise nothing_read(f"none of the {len(paths)} query image(s)", skipped)
    return [paths[p] for p in embedded.positions.tolist()], embedded.embeddings, skipped


def neighbours(
    index: OpenIndex, vectors: np.ndarray, k: int, *, label: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ANN's top-``k`` rows and scores for ``vectors``; with ``label``, among the items
    of that label only: through the database's payload filter for an item-holding index,
    else by exact search over those rows (:func:`labelled_search`)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    try:
        if label is None:
            return index.ann.search(vectors, k)
        if holds_items(index.ann):
            ids, scores = index.ann.search(vectors, k, label=label)
        else:
            ids, scores = labelled_search(index, vectors, k, label)
    except ValueError as exc:
        raise PixdexError(f"search failed: {exc}") from None
    if not (ids >= 0).any():
        raise PixdexError(f"{index.path} has no item labelled {label!r} (labels match exactly, case included)")
    return ids, scores


def labelled_search(index: OpenIndex, vectors: np.ndarray, k: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` among the rows labelled ``label``, scored as the flat index scores
    (an ANN built over every row cannot be asked for one label's rows)."""
    from pixdex.recall import exact_topk
    from pixdex.vectors import normalise

    rows = np.asarray([r for r, it in enumerate(index.items) if it.get("label") == label], dtype=np.int64)
    ids = np.full((len(vectors), k), -1, dtype=np.int64)
    scores = np.full((len(vectors), k), -np.inf, dtype=np.float32)
    if len(rows) == 0:
        return ids, scores
    gallery = np.asarray(index.embeddings[rows], dtype=np.float32)
    if index.metric == "cosine":
        gallery, vectors = normalise(gallery), normalise(vectors)
    found, keys = exact_topk(gallery, vectors, k, index.metric)
    if index.metric == "l2":  # keys are 2 q.x - |x|^2: the squared distance is |q|^2 - key
        squared = (vectors.astype(np.float64) ** 2).sum(axis=1, keepdims=True) - keys
        keys = 0.0 - np.sqrt(np.maximum(squared, 0.0))
    ids[:, : found.shape[1]] = rows[found]
    scores[:, : found.shape[1]] = keys
    return ids, scores


def ranked_matches(
    index: OpenIndex,
    rows: np.ndarray,
    scores: np.ndarray,
    *,
    exclude: frozenset[int] = frozenset(),
    k: int | None = None,
) -> list[dict[str, Any]]:
    """One query's ANN answer (rows and scores) as matches: rank, id, path, label, score;
    item ids in ``exclude`` are dropped (the query items themselves), at most ``k`` kept."""
    matches: list[dict[str, Any]] = []
    for row, score in zip(rows.tolist(), scores.tolist()):
        if row < 0:
            continue  # k larger than the collection
        item = index.items[row]
        if item["id"] in exclude:
            continue
        if k is not None and len(matches) == k:
            break
        matches.append(
            {
                "rank": len(matches) + 1,
                "id": item["id"],
                "path": item["path"],
                "label": item.get("label"),
                "score": float(score),
            }
        )
    return matches


def search(
    index_dir: str | Path,
    queries: list[str],
    pset: PluginSet,
    runtime: dict[str, Any],
    *,
    k: int = 10,
    model: str | None = None,
    max_pixels: int,
    notify: Callable[[str], None] = lambda m: None,
    label: str | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], OpenIndex]:
    """Ranked matches for each query image: one row per query with its ``matches``
    (among the items labelled ``label`` when given)."""
    index = open_index(index_dir, pset)
    run = index_model(index, pset, model)
    paths, vectors, skipped = embed_queries(run, queries, runtime, max_pixels=max_pixels, notify=notify)
    ids, scores = neighbours(index, vectors, k, label=label)
    rows = [{"query": q, "matches": ranked_matches(index, i, s)} for q, i, s in zip(paths, ids, scores)]
    return rows, skipped, index


def search_vectors(
    index_dir: str | Path, vectors_file: str | Path, pset: PluginSet, *, k: int = 10, label: str | None = None
) -> list[dict[str, Any]]:
    """Ranked matches for each row of a .npy of query vectors (made by the index's model,
    or any model for an index built from external embeddings): no model is loaded."""
    from pixdex.retrieval.precomputed import load_vectors

    index = open_index(index_dir, pset)
    vectors = load_vectors(vectors_file, index.dim)
    ids, scores = neighbours(index, vectors, k, label=label)
    name = Path(vectors_file).name
    return [
        {"query": f"{name}#{q}", "matches": ranked_matches(index, i, s)} for q, (i, s) in enumerate(zip(ids, scores))
    ]


def vote(matches: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Similarity-weighted vote of labelled neighbours -> labels with normalised weights."""
    labelled = [m for m in matches if m.get("label") is not None]
    if not labelled:
        return []
    scores = np.array([m["score"] for m in labelled], dtype=np.float64)
    if metric == "cosine":
        weights = np.clip(scores, 0.0, None) + 1e-6  # opposite-facing neighbours do not vote
    else:  # l2 (negative distance) and ip: shift so the worst neighbour still counts a little
        weights = scores - scores.min() + 1e-6
    totals: dict[str, float] = {}
    for m, w in zip(labelled, weights):
        totals[m["label"]] = totals.get(m["label"], 0.0) + float(w)
    norm = sum(totals.values())
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    return [{"label": label, "probability": w / norm} for label, w in ranked]


def predict_by_neighbours(
    index_dir: str | Path,
    images: list[str],
    pset: PluginSet,
    runtime: dict[str, Any],
    *,
    k: int = 10,
    top: int = 5,
    max_pixels: int,
    notify: Callable[[str], None] = lambda m: None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Classify by the labels of the ``k`` nearest indexed images (for metric-learning models)."""
    rows, skipped, index = search(index_dir, images, pset, runtime, k=k, max_pixels=max_pixels, notify=notify)
    if not any(it.get("label") is not None for it in index.items):
        raise PixdexError(
            f"{index_dir} has no labelled items, so neighbours cannot vote on a label; build it over labelled DATA"
        )
    out = []
    for row in rows:
        ranked = vote(row["matches"], index.metric)[:top]
        if not ranked:
            skipped.append(
                {
                    "path": row["query"],
                    "reason": "no-labelled-neighbours",
                    "detail": f"none of its {len(row['matches'])} nearest items has a label",
                }
            )
            continue
        out.append(
            {
                "path": row["query"],
                "label": ranked[0]["label"],
                "probability": ranked[0]["probability"],
                "top": ranked,
                "tta": "none",  # the same rows as a run folder's; --tta is for classifiers
            }
        )
    return out, skipped
