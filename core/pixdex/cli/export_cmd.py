"""`pixdex export`: write a model as ONNX with its preprocessing, verified against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pixdex import api
from pixdex.cli.app import App, pass_app
from pixdex.cli.options import config_options, flags_layer, max_pixels_option
from pixdex.cli.output import emit, format_options, resolve_format
from pixdex.config import Config
from pixdex.errors import UsageError


def _config(
    app: App, model: str, params: dict[str, Any], sets: tuple[str, ...], preset: Any, config_file: Any
) -> Config:
    """An index folder brings its own model; a run folder or backbone spec resolves as for embed."""
    from pixdex.cli.retrieval import _model_config

    if (Path(model) / "manifest.json").is_file():
        return api.configure(
            app.plugins, preset=preset, config_file=config_file, flags=flags_layer(params), sets=list(sets)
        )
    return _model_config(app, model, params, sets, preset, config_file)


@click.command("export")
@click.argument("model")
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="The export folder to write (model.onnx, preprocess.json, classes.json, manifest.json).",
)
@click.option(
    "--to",
    "model_format",
    type=click.Choice(["onnx"]),
    default="onnx",
    show_default=True,
    help="Model format (--format is the output format, as for every command).",
)
@click.option("--force", is_flag=True, help="Replace an existing export in -o.")
@click.option(
    "--check",
    is_flag=True,
    help="MODEL is an export folder: check its files' checksums and re-verify it against its source model.",
)
@click.option(
    "--images",
    default=None,
    metavar="DATA",
    help="Images to verify on (a folder or dataset spec) [default: the index's items, else the run's "
    "data, else the bundled sample; 64 of them, spread evenly].",
)
@config_options
@max_pixels_option
@format_options
@pass_app
def export_cmd(
    app: App,
    model: str,
    out_dir: str | None,
    model_format: str,
    force: bool,
    check: bool,
    images: str | None,
    config_file: str | None,
    preset: str | None,
    sets: tuple[str, ...],
    fmt: str,
    as_json: bool,
    **params: Any,
) -> None:
    """Export MODEL (a run folder, an index folder or a backbone spec) as ONNX into -o DIR.

    The graph takes uint8 images [batch, C, H, W], already resized and centre-cropped as
    preprocess.json says; it scales and normalises them itself and returns `embedding`
    (raw, what index folders store), `embedding_normalized` (cosine models) and `logits`
    (runs with a classifier), in fp32 with a dynamic batch axis. Before anything is
    written, the exported graph runs under ONNX Runtime on real images and is compared
    with PyTorch (cosine >= 0.9999 per row, same top-1 class, same top-10 neighbours for
    an index); a mismatch fails the command and leaves any previous export as it was.

    With --check, MODEL is an export folder: its files must match their checksums and its
    source model must be unchanged; the comparison is run again. See docs/deploying.md.
    """
    from pixdex.export.folder import export_folder, verify_files
    from pixdex.export.graph import require_export_libraries
    from pixdex.export.sources import check_folder, default_probe, open_source

    require_export_libraries()
    if params.pop("engine", None) is not None:
        raise UsageError("--engine does not apply to export: it exports from PyTorch and checks under ONNX Runtime")
    max_pixels_flag = params.pop("max_pixels", None)
    if check:
        if out_dir is not None or force:
            raise UsageError("--check takes the export folder as MODEL; it writes nothing (no -o, no --force)")
        manifest = verify_files(Path(model))
        config = _config(app, manifest["source"]["spec"], params, sets, preset, config_file)
        max_pixels = max_pixels_flag or config["data"]["max_pixels"]
        result = check_folder(
            Path(model), manifest, app.plugins, config, images=images, max_pixels=max_pixels, notify=app.note
        )
        _emit(result, fmt, as_json)
        if not result["verification"]["passed"]:
            raise click.exceptions.Exit(1)
        return
    if out_dir is None:
        raise UsageError("-o/--output is required: the folder to write the export to")
    config = _config(app, model, params, sets, preset, config_file)
    max_pixels = max_pixels_flag or config["data"]["max_pixels"]
    source = open_source(model, app.plugins, config)
    probe = default_probe(source, app.plugins, images)
    manifest = export_folder(source, Path(out_dir), probe, max_pixels=max_pixels, force=force, notify=app.note)
    _emit(
        {"export": str(Path(out_dir)), "source": manifest["source"], "verification": manifest["verification"]},
        fmt,
        as_json,
        outputs=manifest["outputs"],
        files=manifest["files"],
    )


def _emit(result: dict[str, Any], fmt: str, as_json: bool, **extra: Any) -> None:
    payload = {**result, **extra}
    v = result["verification"]
    row = {
        "export": result["export"],
        "source": result["source"]["spec"],
        "images": v["images"],
        "min_cosine": v.get("min_cosine"),
        "top1_agreement": v.get("top1_agreement"),
        "neighbours_agreement": v.get("neighbours_agreement"),
        "passed": v["passed"],
    }
    emit([row], resolve_format(fmt, as_json), payload=payload)
    if not v["passed"]:
        click.echo(f"pixdex: error: the export does not match PyTorch: {'; '.join(v['problems'])}", err=True)


def register(cli: click.Group) -> None:
    cli.add_command(export_cmd)
