"""The ``timm`` backbone module: a timm embedding model, an optional projection, its data config."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pixdex.plugin_api import ConfigError, PixdexError, check_weights_fit, suggest
from pixdex_timm.lite import load_lite_pretrained
from pixdex_timm.options import LITE_MODELS, TimmOptions
from pixdex_timm.weights import adapt_first_conv, create_hub_pretrained, read_state_dict, strip_prefix

if TYPE_CHECKING:
    from pixdex.plugin_api import DataInfo


class TimmBackbone(nn.Module):
    """``float[B, C, H, W] -> float[B, embed_dim]``: timm's pre-logits features, then ``proj``.

    ``body`` is ``timm.create_model(name, num_classes=0)``; ``proj`` is a linear layer when
    ``embed_dim`` was asked for, else the identity. Parameter names (``body.*``,
    ``proj.*``) are part of the run-folder format. ``classifier_state`` holds the weight
    and bias of the checkpoint's original classifier (e.g. ImageNet's 1000 classes) when
    the weights came with one; it is a plain attribute, not part of the state dict, so run
    folders and ``embed_dim`` never depend on it.
    """

    def __init__(
        self, body: nn.Module, *, model_name: str, embed_dim: int = 0, data_config: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.body = body
        self.model_name = model_name
        # the width of what a num_classes=0 model returns: timm calls it head_hidden_size when a
        # model has a head conv or MLP after its feature maps (mobilenetv3: 1024, not 288)
        self.num_features = int(getattr(body, "head_hidden_size", None) or body.num_features)
        self.proj: nn.Module = nn.Linear(self.num_features, embed_dim) if embed_dim > 0 else nn.Identity()
        self.embed_dim = embed_dim if embed_dim > 0 else self.num_features
        self.data_config: dict[str, Any] = dict(data_config or {})
        self.classifier_state: dict[str, torch.Tensor] | None = None
        self.weights_source = "random"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """timm's pre-logits features, before the projection: ``float[B, num_features]``."""
        return self.body(x)

    def pretrained_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Scores of the checkpoint's own classifier (ImageNet for pretrained weights).

        Runs on the pooled features, not the projection, so it works whatever ``embed_dim``.
        """
        if self.classifier_state is None:
            raise PixdexError(f"timm:{self.model_name} was loaded without a classifier (its weights had none)")
        feats = self.body(x)
        weight = self.classifier_state["weight"].to(feats.device, feats.dtype)
        bias = self.classifier_state.get("bias")
        return F.linear(feats, weight, None if bias is None else bias.to(feats.device, feats.dtype))


def resolve_model_name(name: str) -> str:
    """Check ``name`` (``arch`` or ``arch.tag``) against timm; return the architecture."""
    import timm

    arch, _, tag = name.partition(".")
    known = timm.list_models()
    if arch not in set(known):
        raise ConfigError(
            f"backbone 'timm': unknown model '{name}'.{suggest(arch, known)} "
            f"(`pixdex list backbones 'timm:*'` lists all {len(known)})"
        )
    if tag:
        tagged = timm.list_pretrained(f"{arch}.*")
        if name not in tagged:
            tags = ", ".join(t.partition(".")[2] for t in tagged[:8]) or "none"
            raise ConfigError(f"backbone 'timm': model '{arch}' has no pretrained tag '{tag}' (tags: {tags})")
    return arch


def fit_channels(values: Sequence[float], in_chans: int) -> list[float]:
    """Per-channel statistics for ``in_chans``: RGB averages to grey; other counts cycle."""
    values = [float(v) for v in values]
    if len(values) == in_chans:
        return values
    if in_chans == 1:
        return [sum(values) / len(values)]
    # timm's adapt_input_conv cycles RGB filters over extra channels; mirror it
    return [values[i % len(values)] for i in range(in_chans)]


def data_config_of(body: nn.Module, in_chans: int, size: int | None) -> dict[str, Any]:
    """The preprocessing timm's pretrained config asks for, as JSON-friendly lists."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(body)
    # timm reports the pretrained config's 3 channels even for in_chans=1: use the model's
    _, height, width = cfg["input_size"]
    if size is not None:
        height = width = size
    return {
        "input_size": [in_chans, int(height), int(width)],
        "mean": fit_channels(cfg["mean"], in_chans),
        "std": fit_channels(cfg["std"], in_chans),
        "interpolation": str(cfg.get("interpolation", "bicubic")),
        "crop_pct": float(cfg.get("crop_pct", 1.0)),
    }


def build_backbone(options: TimmOptions, *, data: DataInfo) -> TimmBackbone:
    """Create the timm model, load its weights (see the package docstring), wrap it."""
    import timm

    name = options.model.strip()
    arch = resolve_model_name(name)
    in_chans = int(data.in_chans) if options.in_chans == "auto" else int(options.in_chans)
    size = None if options.input_size == "auto" else int(options.input_size)
    kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": in_chans, "drop_rate": options.drop_rate}
    if options.drop_path_rate > 0:  # not every model takes it: pass it only when asked for
        kwargs["drop_path_rate"] = options.drop_path_rate
    if (
        size is not None
        and timm.models.get_pretrained_cfg(arch) is not None
        and getattr(timm.models.get_pretrained_cfg(arch), "fixed_input_size", False)
    ):
        kwargs["img_size"] = size  # ViT-like models bake their input size into the weights

    lite = options.pretrained and arch in LITE_MODELS
    if options.pretrained and not lite:
        body = create_hub_pretrained(name, arch, kwargs)
        source = "pretrained (timm hub)"
    else:
        try:
            body = timm.create_model(name, pretrained=False, **kwargs)
        except TypeError as exc:  # e.g. drop_path_rate or img_size on a model without them
            raise ConfigError(f"backbone 'timm:{name}' does not accept these options: {exc}") from None
        source = "random"

    backbone = TimmBackbone(
        body, model_name=name, embed_dim=options.embed_dim, data_config=data_config_of(body, in_chans, size)
    )
    if lite:
        backbone.classifier_state = load_lite_pretrained(body, arch)
        source = f"pretrained ({arch} ImageNet checkpoint from pixdex[pretrained])"
    elif options.weights:
        backbone.classifier_state = load_weights_file(backbone, options.weights, trust=options.trust_checkpoint)
        source = f"weights file {options.weights}"
    backbone.weights_source = source
    return backbone


def _names(value: Any) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def load_weights_file(backbone: TimmBackbone, path: str, *, trust: bool = False) -> dict[str, torch.Tensor] | None:
    """Load ``path`` into ``backbone``; return the file's classifier weights, if any.

    Accepts timm's own layout (``conv1.weight``, ...: loaded into ``backbone.body``), this
    backbone's (``body.*``, ``proj.*``) and a pixdex run's ``model.safetensors``
    (``backbone.*`` with ``head.*`` ignored). A ``module.`` prefix (DistributedDataParallel)
    is stripped; the classifier that a ``num_classes=0`` model lacks is set aside; a
    3-channel first convolution is adapted to the model's ``in_chans``. Anything else that
    does not match is an error listing the keys.
    """
    tensors = strip_prefix(read_state_dict(path, trust=trust), "module.")
    if any(k.startswith("backbone.") for k in tensors) and all(k.startswith(("backbone.", "head.")) for k in tensors):
        tensors = {k[len("backbone.") :]: v for k, v in tensors.items() if k.startswith("backbone.")}
    body = backbone.body
    wrapped = bool(tensors) and all(k.startswith(("body.", "proj.")) for k in tensors)
    target: nn.Module = backbone if wrapped else body
    prefix = "body." if wrapped else ""
    own = target.state_dict()
    cfg = dict(getattr(body, "pretrained_cfg", None) or {})

    classifier_state = None
    heads = _names(cfg.get("classifier"))
    for head in heads:
        extra = {k for k in tensors if k.startswith(f"{prefix}{head}.") and k not in own}
        if not extra:
            continue
        parts = {k[len(prefix) + len(head) + 1 :]: tensors.pop(k) for k in extra}
        if len(heads) == 1 and set(parts) <= {"weight", "bias"} and "weight" in parts and parts["weight"].ndim == 2:
            classifier_state = parts

    for conv in _names(cfg.get("first_conv")):
        key = f"{prefix}{conv}.weight"
        if key in tensors and key in own:
            tensors[key] = adapt_first_conv(tensors[key], own[key])

    # some exporters drop BatchNorm's step counters; they do not change what the model computes
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in tensors:
            tensors[key] = value
    check_weights_fit(target, tensors, f"weights file {path} for timm:{backbone.model_name}")
    target.load_state_dict(tensors)
    return classifier_state
