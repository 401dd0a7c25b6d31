"""`pixdex plugins` and `pixdex list`: what is installed and what it provides."""

from __future__ import annotations

from typing import Any

import click

from pixdex import api
from pixdex.cli.app import App, pass_app
from pixdex.cli.output import emit, format_options, resolve_format
from pixdex.components import PLURALS


def _flat_plugin(row: dict[str, Any]) -> dict[str, Any]:
    parts = [f"{kind}: {', '.join(names)}" for kind, names in row["components"].items()]
    return {**row, "components": "; ".join(parts) or "-"}


@click.command("plugins")
@format_options
@pass_app
def plugins_cmd(app: App, fmt: str, as_json: bool) -> None:
    """List loaded plugins: name, version, source, module file and components.

    Built-in plugins come from registry.toml; third-party ones from the `pixdex`
    entry-point group. A plugin that failed to load is reported on stderr and skipped
    (PIXDEX_STRICT_PLUGINS=1 makes that fatal).
    """
    rows = api.plugins_report(app.plugins)
    emit(
        rows,
        resolve_format(fmt, as_json),
        columns=["name", "version", "source", "components", "file"],
        flatten=_flat_plugin,
    )


@click.command("list")
@click.argument("kind", type=click.Choice(sorted(PLURALS.values()) + sorted(PLURALS)), metavar="KIND")
@click.argument("pattern", required=False)
@format_options
@pass_app
def list_cmd(app: App, kind: str, pattern: str | None, fmt: str, as_json: bool) -> None:
    """List components of KIND (backbones, transforms, losses, indexes, datasets).

    PATTERN filters names with shell wildcards, e.g. `pixdex list indexes 'a*'`; a
    pattern like 'timm:resnet*' also lists the models a component offers.
    """
    rows = api.list_components(app.plugins, kind, pattern)
    emit(rows, resolve_format(fmt, as_json), columns=["name", "plugin", "description"])


def register(cli: click.Group) -> None:
    cli.add_command(plugins_cmd)
    cli.add_command(list_cmd)
