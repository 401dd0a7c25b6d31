"""Options shared by the commands, each defined once, and the layer they map to.

Every flag here maps to one configuration key through :func:`flags_layer`, the only
mapping: ``--device`` -> ``runtime.device``, ``--max-pixels`` -> ``data.max_pixels``, ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import click

from pixdex import api
from pixdex.config import Layer
from pixdex.device import PRECISIONS

if TYPE_CHECKING:
    from pixdex.cli.app import App

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# flag parameter -> (section, key) of the configuration
FLAG_KEYS: dict[str, tuple[str, str]] = {
    "device": ("runtime", "device"),
    "precision": ("runtime", "precision"),
    "workers": ("runtime", "workers"),
    "batch_size": ("runtime", "batch_size"),
    "engine": ("runtime", "engine"),
    "max_pixels": ("data", "max_pixels"),
}
COMPONENT_FLAGS: tuple[str, ...] = ("backbone", "transform", "loss", "index")


def _apply(options: list[Decorator], func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(options):
        func = option(func)
    return func


def _runtime_flags() -> list[Decorator]:
    return [
        click.option("--device", default=None, help="auto, cpu, cuda, cuda:N or mps [env PIXDEX_DEVICE]."),
        click.option(
            "--precision",
            type=click.Choice(PRECISIONS),
            default=None,
            help="Numeric precision; auto is bf16 on CUDA (fp16 without bf16 support), fp32 elsewhere.",
        ),
        click.option("--workers", type=click.IntRange(min=0), default=None, help="DataLoader worker processes."),
        click.option(
            "--engine",
            type=click.Choice(["auto", "torch", "onnx"]),
            default=None,
            help="Inference through PyTorch or the model's ONNX export (CPU only; extra [export]; made "
            "once into a user cache). auto: onnx on the CPU when [export] is installed and the model "
            "exports, else torch [runtime.engine]. Training always uses PyTorch.",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            default=None,
            help=(
                "Images per batch [default: auto: sized from the data and the memory budget when "
                "training, 128 or what fits for inference]."
            ),
        ),
    ]


def max_pixels_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """--max-pixels (data.max_pixels)."""
    return click.option(
        "--max-pixels",
        type=click.IntRange(min=1),
        default=None,
        help="Refuse images larger than this many pixels before decoding (decompression bombs) [data.max_pixels].",
    )(func)


# pixdex.pipeline.inference.TTA_MODES, spelled out so that `pixdex --help` imports no
# torch (tests/test_tta.py checks that the two agree)
TTA_CHOICES = ("none", "flip", "crops", "flip-crops")
TTA_VIEWS_HELP = (
    "Test-time augmentation, averaged over views: 'flip' the image and its mirror image (2x the "
    "work), 'crops' the image and centre crops of 95% and 90% of each side (3x), 'flip-crops' "
    "both (6x). Flips suit models trained with flips, crops those trained with random crops."
)


def tta_option(extra: str = "") -> Decorator:
    """--tta: the views :func:`pixdex.pipeline.inference.embed_batch` averages; ``extra`` ends the help."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        return click.option(
            "--tta",
            type=click.Choice(TTA_CHOICES),
            default="none",
            show_default=True,
            help=f"{TTA_VIEWS_HELP} {extra}".strip(),
        )(func)

    return decorate


def skip_report_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--skipped FILE and --strict-images, for commands that read many images."""
    return _apply(
        [
            click.option(
                "--skipped",
                "skipped_file",
                type=click.Path(dir_okay=False),
                default=None,
                help="Also write the skip report (JSON lines: path, reason, detail) to this file.",
            ),
            click.option("--strict-images", is_flag=True, help="Exit 1 if any image had to be skipped."),
        ],
        func,
    )


def config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--config, --preset, --set and the [runtime] flags, for commands that resolve a whole config."""
    return _apply(
        [
            click.option(
                "--config",
                "config_file",
                type=click.Path(dir_okay=False),
                default=None,
                help="A TOML config file (layered over the registry defaults and --preset).",
            ),
            click.option("--preset", default=None, help="A preset from registry.toml, e.g. 'tutorial'."),
            click.option(
                "--set",
                "sets",
                multiple=True,
                metavar="SECTION.KEY=VALUE",
                help="Set any config key, e.g. --set train.epochs=3 (repeatable).",
            ),
            *_runtime_flags(),
            click.option(
                "--trust-checkpoint",
                is_flag=True,
                default=None,
                help="Allow a backbone weights file that needs full unpickling (it can run code: "
                "only for files you trust). Same as --set backbone.trust_checkpoint=true.",
            ),
        ],
        func,
    )


def inference_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The [runtime] flags, --set runtime.KEY=VALUE and --max-pixels, for commands on a
    saved run or index (their model settings are fixed)."""
    return _apply(
        [
            *_runtime_flags(),
            click.option(
                "--set",
                "sets",
                multiple=True,
                metavar="runtime.KEY=VALUE",
                help="Override a [runtime] key (the run's model settings are fixed).",
            ),
            max_pixels_option,
        ],
        func,
    )


def runtime_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`inference_options` and the skip report, for commands that read many images."""
    return inference_options(skip_report_options(func))


def component_options(*sections: str) -> Decorator:
    """--backbone/--transform/--loss/--index NAME flags for the given sections."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        return _apply(
            [
                click.option(
                    f"--{section}",
                    f"{section}_name",
                    default=None,
                    metavar="NAME",
                    help=f"The {section} component by name (`pixdex list {section}...`).",
                )
                for section in sections
            ],
            func,
        )

    return decorate


def flags_layer(params: dict[str, Any]) -> Layer:
    """Collect dedicated flags from click params into a config layer."""
    layer: Layer = {}
    for param, (section, key) in FLAG_KEYS.items():
        if params.get(param) is not None:
            layer.setdefault(section, {})[key] = params[param]
    for section in COMPONENT_FLAGS:
        if params.get(f"{section}_name") is not None:
            layer.setdefault(section, {})["name"] = params[f"{section}_name"]
    if params.get("trust_checkpoint"):
        layer.setdefault("backbone", {})["trust_checkpoint"] = True
    return layer


def runtime_for(app: App, params: dict[str, Any], sets: tuple[str, ...], what: str) -> dict[str, Any]:
    """[runtime] (with ``max_pixels`` and ``k``) for a command on a saved run or index."""
    return api.runtime_config(app.plugins, flags=flags_layer(params), sets=list(sets), what=what)
