"""`pixdex config show`: the fully resolved, validated configuration."""

from __future__ import annotations

import json
from typing import Any

import click

from pixdex import api
from pixdex.cli.app import App, pass_app
from pixdex.cli.options import component_options, config_options, flags_layer


@click.group("config")
def config_group() -> None:
    """Inspect the layered configuration."""


@config_group.command("show")
@config_options
@component_options("backbone", "transform", "loss", "index")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["toml", "json"]),
    default="toml",
    show_default=True,
    help="toml round-trips: `pixdex config show --config <(pixdex config show)` is identical.",
)
@click.option("--json", "as_json", is_flag=True, help="Shorthand for --format json.")
@pass_app
def show(
    app: App, config_file: str | None, preset: str | None, sets: tuple[str, ...], fmt: str, as_json: bool, **params: Any
) -> None:
    """Print the configuration after every layer, validated.

    Layers, lowest first: registry.toml defaults < --preset < --config FILE <
    PIXDEX_* environment < flags and --set. Unknown sections, keys and component
    names are refused with suggestions.
    """
    config = api.configure(
        app.plugins, preset=preset, config_file=config_file, flags=flags_layer(params), sets=list(sets)
    )
    for line in config.notes:
        app.note(f"pixdex: note: {line}")
    if as_json or fmt == "json":
        click.echo(json.dumps(config.to_dict(), indent=2))
    else:
        click.echo(config.to_toml(), nl=False)


def register(cli: click.Group) -> None:
    cli.add_command(config_group)
