"""`pixdex evaluate-retrieval`, `pixdex cluster`, `pixdex duplicates`: analysis of index folders."""

from __future__ import annotations

from typing import Any

import click

from pixdex import api
from pixdex.cli.app import App, pass_app
from pixdex.cli.options import runtime_for, runtime_options
from pixdex.cli.output import emit, format_options, resolve_format, write_skips

METRIC_ROWS = (
    "map",
    "precision_at_1",
    "recall_at_1",
    "recall_at_5",
    "recall_at_10",
    "map_at_r",
    "queries",
    "queries_without_relevant",
    "excluded_same_sha256",
    "gallery",
    "metric",
    "ann_recall_at_10",
)


def _retrieval_setting(app: App, key: str) -> Any:
    """A [retrieval] key from the registry defaults, PIXDEX_RETRIEVAL__KEY or nothing else."""
    from pixdex.config import resolve_config

    config = resolve_config(app.plugins.registry, app.plugins.registry_file, sections=("retrieval",))
    return config["retrieval"][key]


def _device(app: App, device: str | None) -> str:
    from pixdex.device import resolve_device

    runtime = api.runtime_config(
        app.plugins, flags={"runtime": {"device": device}} if device else None, what="this command"
    )
    return resolve_device(runtime["device"], notify=app.note)


def _metric_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    flat = {**report, **{f"recall_at_{k}": v for k, v in report["recall_at_k"].items()}}
    return [{"metric": m, "value": flat[m]} for m in METRIC_ROWS if m in flat]


@click.command("evaluate-retrieval")
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.argument("queries", nargs=-1)
@click.option(
    "--leave-one-out",
    is_flag=True,
    help="Use every labelled item of INDEX_DIR as a query against the rest (needed without QUERIES).",
)
@click.option(
    "--use-index",
    is_flag=True,
    help="Also search the index's ANN and report ann_recall_at_10: the mean share of the exact top 10 "
    "that the ANN's top 10 finds, over the evaluated queries.",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    default=None,
    help="Gallery rows scored per step (memory bound); default [retrieval] chunk_size, 4096.",
)
@click.option(
    "--labels",
    type=click.Choice(["auto", "folder", "none"]),
    default="auto",
    help="How labels of image QUERIES are read (one subfolder per class).",
)
@click.option("--split", default=None, help="Which split of query DATA (default: test if it has one, else all).")
@runtime_options
@format_options
@pass_app
def evaluate_retrieval_cmd(
    app: App,
    index_dir: str,
    queries: tuple[str, ...],
    leave_one_out: bool,
    use_index: bool,
    chunk_size: int | None,
    labels: str,
    split: str | None,
    sets: tuple[str, ...],
    skipped_file: str | None,
    strict_images: bool,
    fmt: str,
    as_json: bool,
    **params: Any,
) -> None:
    """Measure retrieval quality on INDEX_DIR by exact search over its stored embeddings.

    \b
    QUERIES is one of:
      an index folder built with the same model (its items are the queries,
        e.g. a test-set index against a train-set gallery);
      images: folders (one subfolder per class), DATA specs or files, embedded with
        the index's own model (DATA's test split when it has one);
      nothing, with --leave-one-out: each labelled item against all the others.

    A gallery item is relevant when its label equals the query's. Items with the
    query's sha256 (the same file in both) are left out of its ranking and counted.
    Queries without a label or without any relevant item are left out of the means
    and counted. Ties are pessimistic: an irrelevant item scoring the same as a
    relevant one ranks first. Metrics (fractions): map (average precision over the
    full ranking), precision_at_1, recall_at_k for k = 1, 5, 10 (queries with a
    relevant item in the top k), map_at_r (MAP@R, Musgrave et al. 2020). The
    ranking is exact (independent of the ANN) and memory stays bounded by
    --chunk-size, whatever the numbers of queries and items.
    """
    from pixdex.retrieval.metrics import evaluate_index

    runtime = runtime_for(app, params, sets, "evaluate-retrieval")
    chunk_size = chunk_size or _retrieval_setting(app, "chunk_size")
    report, skipped = evaluate_index(
        index_dir,
        list(queries),
        app.plugins,
        runtime,
        leave_one_out=leave_one_out,
        use_index=use_index,
        chunk_size=chunk_size,
        labels=labels,
        split=split,
        progress=not app.quiet,
        notify=app.note,
    )
    write_skips(app, skipped, skipped_file, strict_images)
    fmt = resolve_format(fmt, as_json)
    if fmt == "jsonl":
        emit([report], fmt)
    else:
        emit(_metric_rows(report), fmt, payload=report, columns=["metric", "value"])


def _output_option(what: str, suffix: str) -> Any:
    return click.option(
        "-o",
        "--output",
        "out_dir",
        type=click.Path(file_okay=False),
        default=None,
        help=f"Folder for {what}; default: INDEX_DIR-{suffix} next to the index folder (never inside it).",
    )


@click.command("cluster")
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.option("-k", "--clusters", "k", type=click.IntRange(min=1), required=True, help="Number of clusters.")
@_output_option("clusters.jsonl and clusters.html", "clusters")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the k-means++ initialisation.")
@click.option(
    "--iterations", type=click.IntRange(min=1), default=100, show_default=True, help="Most k-means iterations."
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=1e-4,
    show_default=True,
    help="Stop when the centres move less than this x the data's mean variance.",
)
@click.option(
    "--per-cluster",
    type=click.IntRange(min=0),
    default=8,
    show_default=True,
    help="Thumbnails per cluster in clusters.html (those nearest the centre).",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    default=None,
    help="Items assigned per step (memory: chunk x clusters); default [retrieval] chunk_size.",
)
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N or mps [env PIXDEX_DEVICE].")
@format_options
@pass_app
def cluster_cmd(
    app: App,
    index_dir: str,
    k: int,
    out_dir: str | None,
    seed: int,
    iterations: int,
    tolerance: float,
    per_cluster: int,
    chunk_size: int | None,
    device: str | None,
    fmt: str,
    as_json: bool,
) -> None:
    """Group the items of INDEX_DIR into clusters by k-means on their stored embeddings.

    Embeddings of a cosine index are normalised first. Writes clusters.jsonl (one line
    per item: id, path, label, cluster, distance to its centre) and clusters.html (a
    self-contained page with the items nearest each centre) into -o DIR. Clusters are
    numbered by size, largest first. Prints each cluster's size and majority label,
    and, when the items have labels, NMI (arithmetic normalisation) and purity.
    """
    from pixdex.retrieval.clustering import cluster_index

    report = cluster_index(
        index_dir,
        app.plugins,
        k,
        out_dir=out_dir,
        seed=seed,
        iterations=iterations,
        tol=tolerance,
        chunk_size=chunk_size or _retrieval_setting(app, "chunk_size"),
        device=_device(app, device),
        per_cluster=per_cluster,
        notify=app.note,
    )
    app.note(f"pixdex: wrote {report['output']}/clusters.jsonl and clusters.html")
    summary = {key: report[key] for key in ("nmi", "purity", "k", "items", "labelled", "inertia", "iterations")}
    fmt = resolve_format(fmt, as_json)
    columns = ["cluster", "size", "majority_label", "majority_fraction"]
    if fmt == "json":
        emit([], fmt, payload=report)
    elif fmt == "table":
        emit(report["clusters"], fmt, columns=columns)
        click.echo("")
        emit([{"metric": m, "value": v} for m, v in summary.items() if v is not None], fmt, columns=["metric", "value"])
    else:
        if report["nmi"] is not None:
            app.note(f"pixdex: NMI {report['nmi']:.4f}, purity {report['purity']:.4f}")
        emit(report["clusters"], fmt, columns=columns)


@click.command("duplicates")
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="cosine index: the least cosine similarity of a duplicate pair (default 0.9); ip: the least "
    "dot product; l2: the greatest euclidean distance (no default for ip and l2).",
)
@click.option(
    "--neighbours",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Nearest neighbours searched per item (the ANN's own search).",
)
@_output_option("duplicates.json and duplicates.html", "duplicates")
@format_options
@pass_app
def duplicates_cmd(
    app: App, index_dir: str, threshold: float | None, neighbours: int, out_dir: str | None, fmt: str, as_json: bool
) -> None:
    """Find groups of near-duplicate images in INDEX_DIR through its own index.

    Each item's nearest neighbours come from the index's search on its stored
    embedding; pairs at or above the threshold are joined transitively into groups
    (so a group's weakest pair, min_score, can be below it). Scores are the index's:
    cosine similarity, dot product, or minus the euclidean distance for l2. Writes
    duplicates.json and duplicates.html (thumbnails of each group) into -o DIR.
    Formats: json (everything), jsonl (one line per group), table and csv (one row
    per image).
    """
    from pixdex.retrieval.duplicates import find_duplicates

    report = find_duplicates(
        index_dir, app.plugins, threshold=threshold, neighbours=neighbours, out_dir=out_dir, notify=app.note
    )
    app.note(
        f"pixdex: {len(report['groups'])} group(s), {report['duplicates']} image(s); "
        f"wrote {report['output']}/duplicates.html"
    )
    fmt = resolve_format(fmt, as_json)
    if fmt == "json":
        emit([], fmt, payload=report)
    elif fmt == "jsonl":
        emit(report["groups"], fmt)
    else:
        rows = [
            {"group": g["group"], "size": g["size"], "max_score": g["max_score"], **item}
            for g in report["groups"]
            for item in g["items"]
        ]
        emit(rows, fmt, columns=["group", "size", "max_score", "id", "label", "path"])


def register(cli: click.Group) -> None:
    for command in (evaluate_retrieval_cmd, cluster_cmd, duplicates_cmd):
        cli.add_command(command)
