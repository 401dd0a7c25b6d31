"""`pixdex train`, `pixdex evaluate`, `pixdex predict`: recognition from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pixdex import api
from pixdex.cli.app import App, pass_app
from pixdex.cli.options import (
    component_options,
    config_options,
    flags_layer,
    max_pixels_option,
    runtime_for,
    runtime_options,
    tta_option,
)
from pixdex.cli.output import emit, format_options, resolve_format, write_skips
from pixdex.errors import UsageError


@click.command("train")
@click.argument("data")
@click.option(
    "-o",
    "--output",
    "run_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="The run folder to write (model.safetensors, pixdex.json, history.csv, ...).",
)
@config_options
@component_options("backbone", "transform", "loss")
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Number of epochs [default: auto, from the number of training images; see docs/recognition.md].",
)
@click.option(
    "--early-stop",
    "early_stop",
    type=click.IntRange(min=0),
    default=None,
    help="Stop when validation has not improved for N epochs; 0 trains every epoch "
    "[default: on with automatic epochs, patience max(4, epochs/3)].",
)
@click.option("--lr", type=float, default=None, help="Peak learning rate.")
@click.option(
    "--optimizer",
    type=click.Choice(["adamw", "sgd"]),
    default=None,
    help="adamw (the default) or sgd (momentum 0.9); both follow train.schedule (warm-up, cosine). "
    "--preset tutorial gives the tutorial's whole recipe.",
)
@click.option("--seed", type=int, default=None, help="Seed for the split, initial weights, order and augmentation.")
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 0.9),
    default=None,
    help="Stratified fraction of the training split held out for validation (default 0.1).",
)
@click.option(
    "--labels",
    type=click.Choice(["auto", "folder", "none"]),
    default=None,
    help="How labels are read from a plain path: auto-detect, one subfolder per class, or none.",
)
@max_pixels_option
@click.option("--resume", is_flag=True, help="Continue the run in -o from its last complete epoch.")
@click.option("--force", is_flag=True, help="Replace an existing run in -o.")
@click.option("--strict-images", is_flag=True, help="Exit 1 if any image had to be skipped.")
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=None,
    help="Train with N processes on this machine (DistributedDataParallel through torchrun; "
    "nccl on GPUs, gloo on CPU). Under torchrun itself, leave it out.",
)
@format_options
@pass_app
def train_cmd(
    app: App,
    data: str,
    run_dir: str,
    config_file: str | None,
    preset: str | None,
    sets: tuple[str, ...],
    resume: bool,
    force: bool,
    strict_images: bool,
    fmt: str,
    as_json: bool,
    **params: Any,
) -> None:
    """Train a classifier on DATA and write the run folder -o RUN_DIR.

    DATA is a folder (one subfolder per class, or train/ val/ test/ of those), a csv or
    jsonl list (path,label), IDX files (idx:/usr/share/datasets/fashion-mnist), or any
    NAME:ARG a dataset plugin registers. Validation is a stratified --val-fraction of the
    training split; a test split is never read. Every epoch is committed atomically, so
    an interrupted run loses at most the epoch in progress: continue with --resume.
    """
    from pixdex.recognition.train import resume_config, train
    from pixdex.world import launch_torchrun, under_torchrun, world_from_env

    if params.pop("nproc", None) and not under_torchrun():
        raise SystemExit(launch_torchrun(app, "train"))
    world = world_from_env()
    if not world.is_main:
        app.quiet = True  # one voice: the main process reports
    flags = flags_layer(params)
    for key, section in (
        ("epochs", "train"),
        ("early_stop", "train"),
        ("lr", "train"),
        ("optimizer", "train"),
        ("seed", "train"),
        ("val_fraction", "data"),
        ("labels", "data"),
    ):
        if params.get(key) is not None:
            flags.setdefault(section, {})[key] = params[key]
    if strict_images:
        flags.setdefault("data", {})["strict_images"] = True
    config = api.configure(app.plugins, preset=preset, config_file=config_file, flags=flags, sets=list(sets))
    for line in config.notes:
        app.note(f"pixdex: note: {line}")
    if config["runtime"]["engine"] == "onnx":
        raise UsageError(
            "training runs on PyTorch: --engine onnx is for embed, index build/add, search, predict, evaluate and serve"
        )
    if resume:
        from pixdex.config import Config, parse_assignments, validate

        changed = {s: dict(v) for s, v in flags.items()}
        for s, v in parse_assignments(list(sets)).items():
            changed.setdefault(s, {}).update(v)
        config = Config(validate(resume_config(Path(run_dir), changed), app.plugins.registry))
    try:
        result = train(
            data,
            run_dir,
            app.plugins,
            config,
            resume=resume,
            force=force,
            world=world,
            notify=app.note,
            progress=not app.quiet,
        )
    finally:
        world.close()
    if not world.is_main:
        return
    write_skips(app, result.skipped, None, config["data"]["strict_images"])
    best = next((r for r in result.history if r["epoch"] == result.best_epoch), result.history[-1])
    payload = {
        "run_dir": str(result.run_dir),
        "epochs": result.epochs_done,
        "best_epoch": result.best_epoch,
        "best": best,
        "last": result.history[-1],
        "classes": result.manifest["data"]["classes"],
        "train_count": result.manifest["data"]["train_count"],
        "val_count": result.manifest["data"]["val_count"],
        "skipped": len(result.skipped),
        "stopped_early": result.manifest["stopped_early"],
        "recipe": result.manifest["recipe"],
    }
    rows = [
        {"epoch": r["epoch"], **{k: r[k] for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")}}
        for r in result.history
    ]
    emit(rows, resolve_format(fmt, as_json), payload=payload)


@click.command("evaluate")
@click.argument("run_dir", type=click.Path())
@click.argument("data")
@click.option("--split", default=None, help="Which split of DATA (default: test if it has one, else all).")
@click.option(
    "--labels",
    type=click.Choice(["auto", "folder", "none"]),
    default="auto",
    help="How labels are read from a plain path.",
)
@click.option(
    "--confusion",
    "confusion_png",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also draw the confusion matrix to this PNG (needs pixdex[plots]).",
)
@tta_option()
@runtime_options
@format_options
@pass_app
def evaluate_cmd(
    app: App,
    run_dir: str,
    data: str,
    split: str | None,
    labels: str,
    confusion_png: str | None,
    tta: str,
    sets: tuple[str, ...],
    skipped_file: str | None,
    strict_images: bool,
    fmt: str,
    as_json: bool,
    **params: Any,
) -> None:
    """Measure a trained run on labelled DATA: top-1, top-5, per-class precision, recall
    and F1, and the confusion matrix. Uses DATA's test split when it has one."""
    from pixdex.recognition.classify import evaluate

    runtime = runtime_for(app, params, sets, "evaluate")
    report = evaluate(
        run_dir,
        data,
        app.plugins,
        runtime,
        split=split,
        labels=labels,
        max_pixels=runtime["max_pixels"],
        notify=app.note,
        tta=tta,
    )
    write_skips(app, report.pop("_skipped_entries"), skipped_file, strict_images)
    if confusion_png:
        from pixdex.artifacts import atomic_write_bytes
        from pixdex.recognition.plots import plot_confusion

        png = plot_confusion(report["confusion"], report["classes"], notify=app.note)
        if png is not None:
            atomic_write_bytes(Path(confusion_png), png)
    fmt = resolve_format(fmt, as_json)
    emit(report["per_class"], fmt, payload=report, columns=["class", "precision", "recall", "f1", "support"])
    if fmt == "table":  # the headline figures are results too (json carries them as keys)
        click.echo(
            f"\n{report['count']} images ({report['split']} split): top1 {report['top1']:.4f}  "
            f"top5 {report['top5']:.4f}"
        )


@click.command("predict")
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True)
@click.option(
    "-k",
    "--top-k",
    "k",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="How many labels to report per image.",
)
@click.option(
    "--neighbours",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="With an index folder: how many nearest labelled images vote.",
)
@tta_option("Run folders only.")
@runtime_options
@format_options
@pass_app
def predict_cmd(
    app: App,
    model: str,
    images: tuple[str, ...],
    k: int,
    neighbours: int,
    tta: str,
    sets: tuple[str, ...],
    skipped_file: str | None,
    strict_images: bool,
    fmt: str,
    as_json: bool,
    **params: Any,
) -> None:
    """Label IMAGES (files or folders): the top-k classes with probabilities.

    MODEL is a run folder (its classifier decides) or an index folder (the labels of the
    nearest indexed images vote, weighted by similarity: the way to classify with a
    metric-learning model). Bad images are reported; exit 1 when none could be read.
    """
    from pathlib import Path

    runtime = runtime_for(app, params, sets, "predict")
    if (Path(model) / "manifest.json").exists():
        from pixdex.retrieval.search import predict_by_neighbours

        if tta != "none":
            raise UsageError(f"--tta applies to a run folder's classifier; {model} is an index folder")

        rows, skipped = predict_by_neighbours(
            model,
            list(images),
            app.plugins,
            runtime,
            k=neighbours,
            top=k,
            max_pixels=runtime["max_pixels"],
            notify=app.note,
        )
    else:
        from pixdex.recognition.classify import predict

        rows, skipped = predict(
            model,
            list(images),
            app.plugins,
            runtime,
            k=k,
            max_pixels=runtime["max_pixels"],
            notify=app.note,
            tta=tta,
        )
    write_skips(app, skipped, skipped_file, strict_images)
    emit(
        rows,
        resolve_format(fmt, as_json),
        columns=["path", "label", "probability", "top"],
        flatten=lambda r: {**r, "top": ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"])},
    )


def register(cli: click.Group) -> None:
    for command in (train_cmd, evaluate_cmd, predict_cmd):
        cli.add_command(command)
