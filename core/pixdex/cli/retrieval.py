"""`pixdex embed`, `pixdex index build|add|remove|info`, `pixdex search`."""

from __future__ import annotations

from typing import Any

import click

from pixdex import api
from pixdex.cli.app import App, pass_app
from pixdex.cli.options import (
    config_options,
    flags_layer,
    max_pixels_option,
    runtime_for,
    runtime_options,
    skip_report_options,
    tta_option,
)
from pixdex.cli.output import emit, emit_matches, format_options, resolve_format, write_skips
from pixdex.config import Config, parse_assignments
from pixdex.contracts import METRICS
from pixdex.errors import UsageError


def _model_config(
    app: App,
    model: str | None,
    params: dict[str, Any],
    sets: tuple[str, ...],
    preset: str | None,
    config_file: str | None,
) -> Config:
    """Config for commands that take MODEL: a run folder fixes backbone/transform/loss
    (None: no MODEL, for `index build --from-embeddings` without one)."""
    from pixdex.retrieval.models import is_run_folder, model_layer

    flags = flags_layer(params)
    if params.get("metric"):
        flags.setdefault("retrieval", {})["metric"] = params["metric"]
    if model is not None and is_run_folder(model):
        # a run's weights are safetensors: nothing to trust, and its backbone is fixed
        flags.get("backbone", {}).pop("trust_checkpoint", None)
        fixed = {s for s in parse_assignments(list(sets)) if s in ("backbone", "transform", "loss", "train")}
        if fixed:
            raise UsageError(
                f"{model} is a run folder: its {', '.join(sorted(fixed))} settings are fixed; "
                f"only runtime, index and retrieval keys can be set"
            )
    for section, values in (model_layer(model) if model is not None else {}).items():
        flags.setdefault(section, {}).update(values)
    config = api.configure(app.plugins, preset=preset, config_file=config_file, flags=flags, sets=list(sets))
    for line in config.notes:
        app.note(f"pixdex: note: {line}")
    return config


def _options(app: App, config: Config, params: dict[str, Any], **extra: Any) -> Any:
    from pixdex.retrieval.indexing import Options
    from pixdex.world import world_from_env

    world = world_from_env()  # under torchrun each process embeds one contiguous shard
    if not world.is_main:
        app.quiet = True
    return Options(
        runtime=config["runtime"],
        max_pixels=config["data"]["max_pixels"],
        progress=not app.quiet,
        notify=app.note,
        world=world,
        **extra,
    )


def index_options(func: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--index",
                "index_name",
                default=None,
                metavar="NAME",
                help="The index component (`pixdex list indexes`); default hnsw.",
            ),
            click.option(
                "--metric",
                type=click.Choice(["auto", *METRICS]),
                default=None,
                help="Similarity; auto uses the model's (cosine for the built-in losses).",
            ),
        ]
    ):
        func = option(func)
    return func


# embeddings made with --tta are recorded, so everything later embeds them the same way
index_tta_option = tta_option("Recorded, so queries, `index add` and `serve` embed the same way; not exported to ONNX.")


def data_options(func: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--labels",
                type=click.Choice(["auto", "folder", "none"]),
                default="auto",
                help="How labels are read from a plain path.",
            ),
            click.option("--split", default=None, help="Only this split of DATA (default: all of it)."),
            max_pixels_option,
            skip_report_options,
            click.option(
                "--lock-timeout",
                type=float,
                default=60.0,
                show_default=True,
                help="Seconds to wait for another writer of the same folder.",
            ),
        ]
    ):
        func = option(func)
    return func


@click.command("embed")
@click.argument("model")
@click.argument("data")
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for embeddings.npy (float32) and items.jsonl.",
)
@index_tta_option
@config_options
@data_options
@format_options
@pass_app
def embed_cmd(
    app: App,
    model: str,
    data: str,
    out_dir: str,
    tta: str,
    config_file: str | None,
    preset: str | None,
    sets: tuple[str, ...],
    labels: str,
    split: str | None,
    skipped_file: str | None,
    strict_images: bool,
    lock_timeout: float,
    fmt: str,
    as_json: bool,
    **params: Any,
) -> None:
    """Embed every image of DATA with MODEL into -o DIR (embeddings.npy + items.jsonl).

    MODEL is a run folder from `pixdex train`, or a backbone spec such as
    timm:tf_efficientnet_lite0 (with --set backbone.pretrained=true) or simple-cnn.
    """
    from pixdex.retrieval.indexing import embed_to_folder

    config = _model_config(app, model, params, sets, preset, config_file)
    opts = _options(app, config, params, labels=labels, split=split, lock_timeout=lock_timeout, tta=tta)
    try:
        result = embed_to_folder(model, data, out_dir, app.plugins, config, opts)
    finally:
        opts.world.close()
    if not opts.world.is_main:
        return
    write_skips(app, result.pop("skipped_entries"), skipped_file, strict_images)
    emit([result], resolve_format(fmt, as_json), payload=result)


@click.group("index")
def index_group() -> None:
    """Build, extend, shrink and inspect index folders."""


@index_group.command("build")
@click.argument("model", required=False)
@click.argument("data", required=False)
@click.option(
    "-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False), help="The index folder to write."
)
@click.option("--force", is_flag=True, help="Replace an existing index in -o.")
@click.option(
    "--from-embeddings",
    "from_embeddings",
    type=click.Path(file_okay=False),
    default=None,
    help="Index embeddings made before instead of embedding DATA: the folder `pixdex embed` wrote, an "
    "index folder, or embeddings.npy + items.jsonl from any tool. MODEL is then optional.",
)
@index_tta_option
@config_options
@index_options
@data_options
@format_options
@pass_app
def build_cmd(
    app: App,
    model: str | None,
    data: str | None,
    out_dir: str,
    force: bool,
    from_embeddings: str | None,
    tta: str,
    config_file: str | None,
    preset: str | None,
    sets: tuple[str, ...],
    labels: str,
    split: str | None,
    skipped_file: str | None,
    strict_images: bool,
    lock_timeout: float,
    fmt: str,
    as_json: bool,
    **params: Any,
) -> None:
    """Embed DATA with MODEL and write a searchable index folder -o INDEX_DIR.

    The folder holds the manifest, the embeddings, one line per item (stable id, path,
    label, size, mtime, sha256), the model itself and the index's files, committed as
    a unit. Set index options with --set index.KEY=VALUE (e.g. index.connectivity=32).

    MODEL is a run folder from `pixdex train`, or a backbone spec such as
    timm:tf_efficientnet_lite0 (with --set backbone.pretrained=true) or simple-cnn.

    With --from-embeddings DIR nothing is embedded: pixdex index build --from-embeddings
    DIR [MODEL] -o INDEX_DIR. The model recorded is MODEL, else the run folder DIR names;
    it must have made those embeddings (their dim, and their weights where DIR records
    them). Without one the index holds no model ("external"): search it with --vectors
    or --id; commands that embed images refuse it.
    """
    from pixdex.retrieval.indexing import build, build_from_embeddings

    if from_embeddings is None and (model is None or data is None):
        raise UsageError("give MODEL and DATA, or --from-embeddings DIR [MODEL]")
    if from_embeddings is not None and data is not None:
        raise UsageError("--from-embeddings indexes embeddings made before: give at most MODEL, not DATA")
    config = _model_config(app, model, params, sets, preset, config_file)
    opts = _options(app, config, params, labels=labels, split=split, lock_timeout=lock_timeout, tta=tta)
    try:
        if from_embeddings is not None:
            result = build_from_embeddings(
                from_embeddings, out_dir, app.plugins, config, opts, model_spec=model, force=force
            )
        else:
            assert model is not None and data is not None
            result = build(model, data, out_dir, app.plugins, config, opts, force=force)
    finally:
        opts.world.close()
    if not opts.world.is_main:
        return
    write_skips(app, result.pop("skipped_entries"), skipped_file, strict_images)
    _emit_info(app, result, fmt, as_json)


def _emit_info(app: App, record: dict[str, Any], fmt: str, as_json: bool) -> None:
    if record.get("recall_at_10") is not None:
        app.note(
            f"pixdex: {record['count']} items, {record['index']} recall@10 {record['recall_at_10']:.4f} "
            f"(measured against exact search)"
        )
    emit(
        [record],
        resolve_format(fmt, as_json),
        payload=record,
        columns=["path", "count", "dim", "metric", "index", "recall_at_10", "size_bytes"],
    )


@index_group.command("add")
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.argument("data")
@runtime_options
@click.option(
    "--labels",
    type=click.Choice(["auto", "folder", "none"]),
    default="auto",
    help="How labels are read from a plain path.",
)
@click.option("--split", default=None, help="Only this split of DATA.")
@click.option(
    "--lock-timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds to wait for another writer of the same folder.",
)
@format_options
@pass_app
def add_cmd(
    app: App,
    index_dir: str,
    data: str,
    sets: tuple[str, ...],
    skipped_file: str | None,
    strict_images: bool,
    labels: str,
    split: str | None,
    lock_timeout: float,
    fmt: str,
    as_json: bool,
    **params: Any,
) -> None:
    """Add the images of DATA that INDEX_DIR lacks (by sha256), with the index's own model,
    then rebuild the ANN structure from the stored embeddings."""
    from pixdex.retrieval.indexing import Options, add

    runtime = runtime_for(app, params, sets, "index add")
    opts = Options(
        runtime=runtime,
        max_pixels=runtime["max_pixels"],
        labels=labels,
        split=split,
        progress=not app.quiet,
        lock_timeout=lock_timeout,
        notify=app.note,
    )
    result = add(index_dir, data, app.plugins, opts)
    write_skips(app, result.pop("skipped_entries"), skipped_file, strict_images)
    app.note(f"pixdex: added {result['added']} new image(s)")
    _emit_info(app, result, fmt, as_json)


@index_group.command("remove")
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--lock-timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds to wait for another writer of the same folder.",
)
@format_options
@pass_app
def remove_cmd(app: App, index_dir: str, paths: tuple[str, ...], lock_timeout: float, fmt: str, as_json: bool) -> None:
    """Remove the items at PATHS from INDEX_DIR (rows are compacted; ids stay stable)."""
    from pixdex.retrieval.indexing import Options, remove

    runtime = api.runtime_config(app.plugins, what="index remove")
    opts = Options(runtime=runtime, max_pixels=runtime["max_pixels"], lock_timeout=lock_timeout, notify=app.note)
    result = remove(index_dir, list(paths), app.plugins, opts)
    for path in result["not_found"]:
        app.note(f"pixdex: not in the index: {path}")
    _emit_info(app, result, fmt, as_json)


@index_group.command("info")
@click.argument("index_dir", type=click.Path(file_okay=False))
@format_options
@pass_app
def info_cmd(app: App, index_dir: str, fmt: str, as_json: bool) -> None:
    """Counts, model, index parameters, measured recall and size on disk (verifies every file)."""
    from pixdex.retrieval.indexing import info

    _emit_info(app, info(index_dir, app.plugins), fmt, as_json)


@click.command("search")
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.argument("queries", nargs=-1)
@click.option(
    "--id",
    "item_ids",
    type=click.IntRange(min=0),
    multiple=True,
    help="Query by an item already in the index (its stored embedding; repeatable): more like this.",
)
@click.option(
    "--vectors",
    "vectors_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Query by vectors instead of images: a .npy of float [queries, dim] (or one [dim] row), "
    "made by the index's model; no model is loaded. Works on indexes built from external embeddings.",
)
@click.option("-k", "k", type=click.IntRange(min=1), default=None, help="Matches per query [default: retrieval.k, 10].")
@click.option(
    "--model",
    "model_override",
    type=click.Path(file_okay=False),
    default=None,
    help="Use this run folder instead of the index's stored model (refused unless it matches).",
)
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write a self-contained HTML contact sheet of the results.",
)
@click.option(
    "--label",
    "label",
    default=None,
    metavar="LABEL",
    help="Only items with this label: the database's payload filter for a database index "
    "(qdrant), exact search over that label's rows for the others.",
)
@runtime_options
@format_options
@pass_app
def search_cmd(
    app: App,
    index_dir: str,
    queries: tuple[str, ...],
    item_ids: tuple[int, ...],
    vectors_file: str | None,
    k: int,
    model_override: str | None,
    html_file: str | None,
    label: str | None,
    sets: tuple[str, ...],
    skipped_file: str | None,
    strict_images: bool,
    fmt: str,
    as_json: bool,
    **params: Any,
) -> None:
    """Find the images in INDEX_DIR most similar to each QUERY (image files or folders),
    to indexed items (--id ID: more like this, the item itself left out), or to the rows
    of a .npy file (--vectors FILE).

    Scores: cosine similarity for cosine indexes, the dot product for ip, minus the
    euclidean distance for l2; higher is more similar.
    """
    from pixdex.retrieval.search import search

    runtime = runtime_for(app, params, sets, "search")
    if sum(map(bool, (queries, item_ids, vectors_file))) != 1:
        raise UsageError("give QUERY images, --id ID (an indexed item) or --vectors FILE: exactly one of them")
    if vectors_file:
        from pixdex.retrieval.search import search_vectors

        if html_file or model_override:
            raise UsageError("--vectors queries need no model and have no images: --html and --model do not apply")
        emit_matches(
            search_vectors(index_dir, vectors_file, app.plugins, k=k or runtime["k"], label=label), fmt, as_json
        )
        return
    if item_ids:
        from pixdex.retrieval.by_item import similar
        from pixdex.retrieval.index_folder import open_index

        if html_file or model_override:
            raise UsageError("--id queries by stored embeddings: --html and --model apply to image queries only")
        index = open_index(index_dir, app.plugins)
        emit_matches([similar(index, i, k or runtime["k"], label=label) for i in item_ids], fmt, as_json)
        return
    rows, skipped, _ = search(
        index_dir,
        list(queries),
        app.plugins,
        runtime,
        k=k or runtime["k"],
        model=model_override,
        max_pixels=runtime["max_pixels"],
        notify=app.note,
        label=label,
    )
    write_skips(app, skipped, skipped_file, strict_images)
    if html_file:
        from pathlib import Path

        from pixdex.artifacts import atomic_write_bytes
        from pixdex.retrieval.contact_sheet import search_sheet

        atomic_write_bytes(
            Path(html_file), search_sheet(rows, f"pixdex search: {index_dir}").encode("utf-8", "surrogateescape")
        )
        app.note(f"pixdex: wrote {html_file}")
    emit_matches(rows, fmt, as_json)


def register(cli: click.Group) -> None:
    cli.add_command(embed_cmd)
    cli.add_command(index_group)
    cli.add_command(search_cmd)
