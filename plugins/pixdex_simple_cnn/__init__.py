"""pixdex_simple_cnn: the ``simple-cnn`` backbone, a small CNN trained from scratch.

Built in, but shaped exactly like a third-party plugin package: it talks to pixdex only
through :mod:`pixdex.hookspecs` and the ``register`` callable. This module holds only the
options and the registration (stdlib only); torch is imported by the factory, so
``pixdex --help`` stays fast.

With ``convs_per_stage=1, batch_norm=false`` at 224x224x3 it is exactly the reference
tutorial's network (conv 3->32, pool, conv 32->64, pool, fc 64*56*56 -> 128, ReLU), minus
its last fc 128 -> 10, which is the loss's classifier head here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pixdex.hookspecs import hookimpl
from pixdex.plugin_api import ConfigError

if TYPE_CHECKING:
    from pixdex.plugin_api import DataInfo, Register
    from pixdex_simple_cnn.model import SimpleCNN

__all__ = ["SimpleCNNOptions", "make_simple_cnn", "resolve_input_size", "register_backbones"]

DEFAULT_SIZE = 224
# "auto" adopts the data's own size only up to this: the flattening fc grows with H x W,
# and at a photo's native 1024x768 it would hold billions of weights
MAX_AUTO_SIZE = 224
MIN_AUTO_SIZE = 16  # mixed sizes train at their median short side, but not below this


@dataclass
class SimpleCNNOptions:
    """Options of the ``simple-cnn`` backbone.

    ``input_size``: side of the square input, or "auto": the images' common size when they
    all share one that fits in 224x224 (MNIST stays 28x28); for images of mixed sizes, a
    square of their median short side (16 to 224 px: a folder of 16-256 px icons trains at
    its typical size, not at 224, which would be ~50x the work); else 224. ``in_chans``: 1 or 3,
    or "auto" (the data's). ``widths``: output channels of each stage; a stage is
    ``convs_per_stage`` x (conv ``kernel_size`` [+ batch norm] + ReLU) then a 2x2 max pool.
    ``dropout`` applies before the fc; ``embed_dim`` is the width of the fc, i.e. the
    embedding. ``max_grid``: the last feature map is average-pooled to at most this many
    cells a side before the fc, so the fc does not grow with the input (28 px images keep
    their 7x7 map; 224 px ones pool 56x56 to 8x8); 0 flattens every cell, as the reference
    tutorial does.
    """

    input_size: int | str = "auto"
    in_chans: int | str = "auto"
    widths: list[int] = field(default_factory=lambda: [32, 64])
    convs_per_stage: int = 2
    batch_norm: bool = True
    kernel_size: int = 3
    dropout: float = 0.0
    embed_dim: int = 128
    max_grid: int = 8


def resolve_input_size(value: int | str, data: DataInfo) -> tuple[int, int]:
    """(H, W) for ``input_size``: an int gives a square; "auto" follows ``data.native_size``."""
    if value == "auto":
        native = data.native_size
        if native is not None and max(native) <= MAX_AUTO_SIZE:
            return int(native[0]), int(native[1])
        if native is None and data.short_side is not None:
            side = min(max(int(data.short_side), MIN_AUTO_SIZE), MAX_AUTO_SIZE)
            return side, side
        return DEFAULT_SIZE, DEFAULT_SIZE
    if isinstance(value, str):
        raise ConfigError(f"backbone 'simple-cnn' option 'input_size' must be an integer or \"auto\", got {value!r}")
    if value < 1:
        raise ConfigError(f"backbone 'simple-cnn' option 'input_size' must be positive, got {value}")
    return value, value


def _resolve_in_chans(value: int | str, data: DataInfo) -> int:
    if value == "auto":
        return int(data.in_chans)
    if value not in (1, 3):  # the transforms load images as L or RGB
        raise ConfigError(f"backbone 'simple-cnn' option 'in_chans' must be 1, 3 or \"auto\", got {value!r}")
    return int(value)


def _check(options: SimpleCNNOptions) -> None:
    problems = []
    if not options.widths or any(w < 1 for w in options.widths):
        problems.append(f"'widths' must be a non-empty list of positive integers, got {options.widths}")
    if options.convs_per_stage < 1:
        problems.append(f"'convs_per_stage' must be at least 1, got {options.convs_per_stage}")
    if options.kernel_size < 1 or options.kernel_size % 2 == 0:
        problems.append(
            f"'kernel_size' must be a positive odd integer (so padding keeps the size), got {options.kernel_size}"
        )
    if not 0.0 <= options.dropout < 1.0:
        problems.append(f"'dropout' must be in [0, 1), got {options.dropout}")
    if options.embed_dim < 1:
        problems.append(f"'embed_dim' must be at least 1, got {options.embed_dim}")
    if options.max_grid < 0:
        problems.append(f"'max_grid' must be 0 (flatten every cell) or positive, got {options.max_grid}")
    if problems:
        raise ConfigError("backbone 'simple-cnn' option " + "; ".join(problems))


def make_simple_cnn(options: SimpleCNNOptions | None, *, data: DataInfo) -> SimpleCNN:
    """Factory for ``simple-cnn``: resolve the "auto" options against ``data``; build on the CPU."""
    options = options or SimpleCNNOptions()
    _check(options)
    size = resolve_input_size(options.input_size, data)
    in_chans = _resolve_in_chans(options.in_chans, data)
    height, width = size
    for _stage in options.widths:  # each stage's max pool halves the size, rounding down
        height, width = height // 2, width // 2
    if height < 1 or width < 1:
        raise ConfigError(
            f"backbone 'simple-cnn': input size {size[0]}x{size[1]} is too small for "
            f"{len(options.widths)} pooling stages; use fewer 'widths' or a larger 'input_size'"
        )
    from pixdex_simple_cnn.model import SimpleCNN, data_config

    model = SimpleCNN(
        in_chans=in_chans,
        input_size=size,
        widths=list(options.widths),
        convs_per_stage=options.convs_per_stage,
        batch_norm=options.batch_norm,
        kernel_size=options.kernel_size,
        dropout=options.dropout,
        embed_dim=options.embed_dim,
        max_grid=options.max_grid,
    )
    model.data_config = data_config(in_chans, size, data.mean, data.std)
    return model


@hookimpl
def register_backbones(register: Register) -> None:
    """Register the ``simple-cnn`` backbone."""
    register(
        "simple-cnn",
        make_simple_cnn,
        options=SimpleCNNOptions,
        description="small CNN trained from scratch (the reference tutorial's network, configurable)",
    )
