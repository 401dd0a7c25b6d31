"""The MODEL argument of retrieval commands: a trained run folder, or a backbone spec.

A backbone spec (``timm:tf_efficientnet_lite0`` with ``--set backbone.pretrained=true``,
or ``simple-cnn``) becomes an embedding-only model: the configured backbone with no
loss head. Either way the model can be written into an index folder's ``model/`` as a
run-shaped folder (``pixdex.json`` + ``model.safetensors``), so the index folder alone
rebuilds the pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pixdex.artifacts import FolderWriter, sha256_file, tensors_to_bytes
from pixdex.config import Config
from pixdex.contracts import DataInfo
from pixdex.errors import PixdexError
from pixdex.pipeline.runs import (
    RUN_FORMAT,
    RUN_FORMAT_VERSION,
    LoadedRun,
    build_pipeline,
    data_info_record,
    load_run,
    now,
    versions,
)
from pixdex.plugins import PluginSet


def is_run_folder(spec: str | Path) -> bool:
    return (Path(spec) / "pixdex.json").is_file()


def model_layer(spec: str) -> dict[str, dict[str, Any]]:
    """The config layer a MODEL argument adds: a backbone spec names the backbone (so
    options given for the default backbone are dropped); a run folder adds nothing."""
    return {} if is_run_folder(spec) else {"backbone": {"name": spec}}


def open_model(spec: str, pset: PluginSet, config: Config) -> LoadedRun:
    """A run folder (its own saved configuration) or a backbone spec built from ``config``,
    resolved with :func:`model_layer` so that its [backbone] is the spec."""
    if is_run_folder(spec):
        return load_run(spec, pset)
    if Path(spec).exists():
        raise PixdexError(f"{spec} is neither a pixdex run folder (no pixdex.json) nor a backbone name")
    assert config["backbone"]["name"] == spec, "resolve the config with model_layer(spec)"
    cfg = Config({s: dict(v) for s, v in config.sections.items() if s != "loss"})
    # no data to measure: 3-channel images at the backbone's own size, ImageNet-neutral stats
    info = DataInfo(in_chans=3, native_size=None, num_classes=0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    torch.manual_seed(0)  # a randomly initialised backbone is at least reproducible
    built = build_pipeline(pset, cfg, info)
    built.pipeline.eval()
    manifest = {
        "format": RUN_FORMAT,
        "format_version": RUN_FORMAT_VERSION,
        "status": "complete",
        "kind": "backbone",
        "created": now(),
        "updated": now(),
        "source": spec,
        "config": {s: cfg.sections[s] for s in ("backbone", "transform") if s in cfg.sections},
        "data": {"spec": None, "classes": [], "info": data_info_record(info)},
        "data_config": built.data_config,
        "embed_dim": int(built.pipeline.backbone.embed_dim),
        "metric": "cosine",
        "has_classifier": False,
        "versions": versions(),
    }
    return LoadedRun(Path(spec), manifest, built.pipeline, built.eval_transform, [])


def stage_model(writer: FolderWriter, run: LoadedRun, prefix: str = "model/") -> dict[str, Any]:
    """Write the model into the folder being committed; returns its manifest record."""
    weights = tensors_to_bytes(run.pipeline.state_dict(), {"format": "pixdex-model"})
    import hashlib

    sha = hashlib.sha256(weights).hexdigest()
    manifest = dict(run.manifest)
    manifest["files"] = {"model.safetensors": sha}
    writer.write_bytes(prefix + "model.safetensors", weights)
    writer.write_json(prefix + "pixdex.json", manifest)
    source = str(run.path.resolve()) if run.manifest.get("kind") != "backbone" else run.manifest.get("source")
    record = {
        "sha256": sha,
        "source": source,
        "kind": run.manifest.get("kind", "run"),
        "embed_dim": int(run.pipeline.backbone.embed_dim),
        "classes": run.classes,
        "backbone": run.manifest["config"]["backbone"],
        "transform": run.manifest["config"].get("transform"),
        "loss": run.manifest["config"].get("loss", {}).get("name"),
        "data_config": run.manifest["data_config"],
    }
    if run.tta != "none":  # absent means none: indexes built before --tta read the same
        record["tta"] = run.tta
    weights_src = run.manifest["config"]["backbone"].get("weights")
    if weights_src:
        record["weights_file"] = (
            {"path": weights_src, "sha256": sha256_file(weights_src)}
            if Path(weights_src).is_file()
            else {"path": weights_src}
        )
    return record
