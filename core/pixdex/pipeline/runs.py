"""Run folders: the model pipeline (backbone + head), its manifest, and loading it back.

A run folder alone rebuilds the whole pipeline: ``pixdex.json`` records the resolved
configuration, the classes and the data statistics; ``model.safetensors`` holds
``backbone.*`` and ``head.*`` (the loss's parameters, e.g. a classifier).
"""

from __future__ import annotations

import datetime as _dt
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixdex import __version__
from pixdex.artifacts import load_safetensors, reading, tensors_to_bytes
from pixdex.config import Config, validate
from pixdex.contracts import DataInfo, Transform
from pixdex.errors import ArtifactError, PixdexError
from pixdex.plugins import PluginSet

RUN_MANIFEST = "pixdex.json"
# backbone options that name where initial weights come from (a convention for backbone
# plugins, documented in docs/plugins.md); switched off when a saved model is rebuilt
WEIGHT_SOURCE_OPTIONS: dict[str, Any] = {"pretrained": False, "weights": ""}
RUN_FORMAT = "pixdex-run"
RUN_FORMAT_VERSION = 1


class NoHead(nn.Module):
    """The head of an embedding-only model (a backbone spec used for retrieval): no
    parameters, no classifier."""

    metric = "cosine"

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise PixdexError("this model has no loss: it only embeds (train a run to get one)")


class Pipeline(nn.Module):
    """backbone (images -> embeddings) and head (the loss module, maybe a classifier)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    @property
    def has_classifier(self) -> bool:
        return callable(getattr(self.head, "logits", None))

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.head.logits(embeddings)


@dataclass
class Built:
    """A freshly built pipeline and its transforms."""

    pipeline: Pipeline
    train_transform: Transform
    eval_transform: Transform
    data_config: dict[str, Any]


def build_pipeline(pset: PluginSet, config: Config, info: DataInfo) -> Built:
    """Build backbone, loss head and both transforms from a validated config."""
    registry = pset.registry
    b_name, b_opts = config.component("backbone")
    backbone = registry.build("backbone", b_name, b_opts, data=info)
    for attr in ("embed_dim", "data_config"):
        if not hasattr(backbone, attr):
            raise PixdexError(f"backbone '{b_name}' does not provide .{attr} (see docs/plugins.md)")
    data_config = dict(backbone.data_config)
    t_name, t_opts = config.component("transform")
    train_t = registry.build("transform", t_name, t_opts, train=True, data_config=data_config)
    eval_t = registry.build("transform", t_name, t_opts, train=False, data_config=data_config)
    if "loss" in config.sections:
        l_name, l_opts = config.component("loss")
        head = registry.build("loss", l_name, l_opts, embed_dim=int(backbone.embed_dim), num_classes=info.num_classes)
    else:
        head = NoHead()
    return Built(Pipeline(backbone, head), train_t, eval_t, data_config)


def check_weights_fit(module: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights that do not fit, listing the missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = [
        f"{k} {tuple(tensors[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(tensors))
        if tuple(own[k].shape) != tuple(tensors[k].shape)
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch (saved vs model)", shapes)):
        if keys:
            shown = ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise ArtifactError(f"{where} does not fit this architecture; " + "; ".join(problems))


def versions() -> dict[str, str]:
    import numpy
    import PIL

    out = {
        "pixdex": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
    }
    try:
        import timm

        out["timm"] = timm.__version__
    except ImportError:
        pass
    return out


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def data_info_from(record: dict[str, Any]) -> DataInfo:
    native = record.get("native_size")
    return DataInfo(
        in_chans=record["in_chans"],
        native_size=tuple(native) if native else None,
        num_classes=record["num_classes"],
        mean=tuple(record["mean"]),
        std=tuple(record["std"]),
        short_side=record.get("short_side"),  # absent from runs made before it was measured
    )


def data_info_record(info: DataInfo) -> dict[str, Any]:
    record = asdict(info)
    record["native_size"] = list(info.native_size) if info.native_size else None
    record["mean"], record["std"] = list(info.mean), list(info.std)
    return record


@dataclass
class LoadedRun:
    """A trained run ready for inference."""

    path: Path
    manifest: dict[str, Any]
    pipeline: Pipeline
    transform: Transform
    classes: list[str]
    # how this run embeds images for retrieval: a TTA mode ("flip", "crops", "flip-crops")
    # averages each image's embedding over its views (pipeline/inference.py). Set by
    # `index build --tta` / `embed --tta` and recorded with the index's model, so queries,
    # `index add` and `serve` embed the way the collection was.
    tta: str = "none"

    @property
    def has_classifier(self) -> bool:
        return self.pipeline.has_classifier


def read_run_manifest(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not (run_dir / RUN_MANIFEST).exists():
        if run_dir.is_dir() and (run_dir / "manifest.json").exists():
            raise ArtifactError(f"{run_dir} is an index folder, not a run folder (no {RUN_MANIFEST})")
        raise ArtifactError(f"{run_dir} is not a pixdex run folder (no {RUN_MANIFEST}); train one with `pixdex train`")
    with reading(run_dir, RUN_MANIFEST) as manifest:  # rolls an interrupted commit forward first
        manifest = dict(manifest)
    if manifest.get("format") != RUN_FORMAT:
        raise ArtifactError(f"{run_dir / RUN_MANIFEST} is not a pixdex run manifest")
    if int(manifest.get("format_version", 0)) > RUN_FORMAT_VERSION:
        raise ArtifactError(
            f"{run_dir} was written by a newer pixdex (run format {manifest['format_version']}); upgrade pixdex"
        )
    return manifest


def load_run(run_dir: str | Path, pset: PluginSet, *, weights: str = "model.safetensors") -> LoadedRun:
    """Rebuild a run's pipeline from its folder alone and load its best weights (CPU, eval mode)."""
    run_dir = Path(run_dir)
    manifest = read_run_manifest(run_dir)
    if not (run_dir / weights).exists():
        raise ArtifactError(
            f"{run_dir} has no {weights}: training did not finish an epoch; `pixdex train --resume` continues it"
        )
    saved = {s: dict(v) for s, v in manifest["config"].items()}
    # model.safetensors holds every weight: building the backbone must not fetch or read its
    # original weight source again (it may be gone, or need a network)
    for key, off in WEIGHT_SOURCE_OPTIONS.items():
        if key in saved.get("backbone", {}):
            saved["backbone"][key] = off
    sections = validate(saved, pset.registry, tuple(s for s in ("backbone", "transform", "loss") if s in saved))
    config = Config({**saved, **sections})
    built = build_pipeline(pset, config, data_info_from(manifest["data"]["info"]))
    tensors, _ = load_safetensors(run_dir / weights, "model weights")
    check_weights_fit(built.pipeline, tensors, str(run_dir / weights))
    built.pipeline.load_state_dict(tensors)
    built.pipeline.eval()
    return LoadedRun(run_dir, manifest, built.pipeline, built.eval_transform, list(manifest["data"]["classes"]))


def model_fingerprint(run: LoadedRun) -> str:
    """sha256 of the model's weights as pixdex saves them (identical weights, identical hash)."""
    import hashlib

    return hashlib.sha256(tensors_to_bytes(run.pipeline.state_dict(), {"format": "pixdex-model"})).hexdigest()
