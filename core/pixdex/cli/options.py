"""Options shared by every command that reads the layered configuration."""

from __future__ import annotations

from typing import Any, Callable

import click

from pixdex.config import Layer
from pixdex.device import PRECISIONS


def config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--config, --preset, --set and the [runtime] flags."""
    options = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                     help="A TOML config file (layered over the registry defaults and --preset)."),
        click.option("--preset", default=None, help="A preset from registry.toml, e.g. 'tutorial'."),
        click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="Set any config key, e.g. --set train.epochs=3 (repeatable)."),
        click.option("--device", default=None, help="auto, cpu, cuda, cuda:N or mps [env PIXDEX_DEVICE]."),
        click.option("--precision", type=click.Choice(PRECISIONS), default=None,
                     help="Numeric precision; auto is bf16 on CUDA (fp16 without bf16 support), fp32 elsewhere."),
        click.option("--workers", type=click.IntRange(min=0), default=None, help="DataLoader worker processes."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per batch."),
        click.option("--trust-checkpoint", is_flag=True, default=None,
                     help="Allow a backbone weights file that needs full unpickling (it can run code: "
                          "only for files you trust). Same as --set backbone.trust_checkpoint=true."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def component_options(*sections: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--backbone/--transform/--loss/--index NAME flags for the given sections."""
    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for section in reversed(sections):
            func = click.option(f"--{section}", f"{section}_name", default=None, metavar="NAME",
                                help=f"The {section} component by name (`pixdex list {section}...`).")(func)
        return func
    return decorate


def flags_layer(params: dict[str, Any]) -> Layer:
    """Collect dedicated flags from click params into a config layer."""
    layer: Layer = {}
    for key in ("device", "precision", "workers", "batch_size"):
        if params.get(key) is not None:
            layer.setdefault("runtime", {})[key] = params[key]
    for section in ("backbone", "transform", "loss", "index"):
        if params.get(f"{section}_name") is not None:
            layer.setdefault(section, {})["name"] = params[f"{section}_name"]
    if params.get("trust_checkpoint"):
        layer.setdefault("backbone", {})["trust_checkpoint"] = True
    return layer
