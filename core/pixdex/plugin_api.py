"""Everything a plugin may use from the core, in one place.

Plugins (the built-in ones included) import from here and from :mod:`pixdex.hookspecs`
only; the rest of the core may change between releases without breaking them. Names
whose module needs torch, numpy or Pillow are imported on first use (module
``__getattr__``), so ``import pixdex.plugin_api`` stays as cheap as ``pixdex --help``.

Errors (raise them; the CLI prints their message as one line):
    PixdexError, UsageError, ConfigError, ArtifactError, DeviceError, MissingDependencyError,
    suggest (a "Did you mean" hint)
Registration and contracts:
    hookimpl, Register, DataInfo, Item, Transform, Dataset, SkipReport, METRICS, natural_key
Optional libraries:
    import_optional(module, purpose)
Devices:
    resolve_device(spec)
Files pixdex can make again (an embedded store, exports):
    cache_root()
Weights (lazy, torch):
    load_safetensors(path, what), check_weights_fit(module, tensors, where)
Images (lazy, Pillow):
    open_image, list_images, has_image_extension, skip_entry, ImageSkip
Vectors (lazy, numpy):
    check_matrix, normalise, check_metric, check_dim
Recall against exact search, for indexes that tune a search effort (lazy, numpy):
    measure_recall, recall_truth, held_out_sample, exact_topk, sample_ids, rank_keys, TUNE_K
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from pixdex.cache_dir import cache_root
from pixdex.components import Register, natural_key
from pixdex.contracts import METRICS, DataInfo, Dataset, Item, SkipReport, Transform
from pixdex.device import resolve_device
from pixdex.errors import (
    ArtifactError,
    ConfigError,
    DeviceError,
    MissingDependencyError,
    PixdexError,
    UsageError,
    suggest,
)
from pixdex.hookspecs import hookimpl
from pixdex.optional import import_optional

# name -> module that defines it, imported when the name is first used
_LAZY = {
    "load_safetensors": "pixdex.artifacts",
    "check_weights_fit": "pixdex.pipeline.runs",
    "open_image": "pixdex.data.images",
    "list_images": "pixdex.data.images",
    "has_image_extension": "pixdex.data.images",
    "skip_entry": "pixdex.data.images",
    "ImageSkip": "pixdex.data.images",
    "check_matrix": "pixdex.vectors",
    "normalise": "pixdex.vectors",
    "check_metric": "pixdex.vectors",
    "check_dim": "pixdex.vectors",
    "TUNE_K": "pixdex.recall",
    "sample_ids": "pixdex.recall",
    "rank_keys": "pixdex.recall",
    "exact_topk": "pixdex.recall",
    "recall_truth": "pixdex.recall",
    "held_out_sample": "pixdex.recall",
    "measure_recall": "pixdex.recall",
}

__all__ = [
    "ArtifactError",
    "ConfigError",
    "DataInfo",
    "Dataset",
    "DeviceError",
    "Item",
    "METRICS",
    "MissingDependencyError",
    "PixdexError",
    "Register",
    "SkipReport",
    "Transform",
    "UsageError",
    "cache_root",
    "hookimpl",
    "import_optional",
    "natural_key",
    "resolve_device",
    "suggest",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
