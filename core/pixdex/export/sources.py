"""What to export and what to verify it on: the MODEL argument and the probe images.

Kept apart from :mod:`pixdex.export.folder` because these open index folders and datasets
(pixdex.retrieval), while writing and checking an export folder needs neither, so the
ONNX engine that retrieval itself uses can import the folder code without a circle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pixdex.artifacts import read_json
from pixdex.config import Config
from pixdex.errors import ArtifactError, PixdexError
from pixdex.export.folder import EXPORT_FORMAT, Source
from pixdex.export.verify import Probe, compare, spread
from pixdex.pipeline.runs import model_fingerprint
from pixdex.plugins import PluginSet

PROBE_IMAGES = 64


def open_source(spec: str, pset: PluginSet, config: Config) -> Source:
    """MODEL: an index folder (its stored model), a run folder or a backbone spec."""
    from pixdex.retrieval.index_folder import open_index
    from pixdex.retrieval.models import is_run_folder, open_model
    from pixdex.retrieval.search import index_model

    path = Path(spec)
    if (path / "manifest.json").is_file() and not is_run_folder(spec):
        manifest = read_json(path / "manifest.json", "manifest")
        if manifest.get("format") == EXPORT_FORMAT:
            raise PixdexError(f"{spec} is an export folder; export its source model, or check it with --check")
        index = open_index(path, pset)
        run = index_model(index, pset, purpose="`pixdex export`")
        if run.tta != "none":  # the graph embeds one view: its vectors would not match the index's
            raise PixdexError(
                f"{spec} was built with --tta {run.tta}, which an exported graph does not do: "
                "rebuild the index without --tta to export it"
            )
        return Source("index", str(path.resolve()), run, index.metric, index)
    run = open_model(spec, pset, config)
    kind = "run" if is_run_folder(spec) else "backbone"
    metric = str(run.manifest.get("metric") or "cosine")
    return Source(kind, str(path.resolve()) if kind == "run" else spec, run, metric)


def default_probe(source: Source, pset: PluginSet, images: str | None) -> Probe:
    """The images to verify on: ``images`` (DATA) when given; else a spread of the index's
    items, or of the run's training data when it is still there; else the bundled sample."""
    from pixdex.retrieval.embed import collect

    if images:
        collection = collect(images, pset)
        return Probe(spread([k for k, _ in collection.items], PROBE_IMAGES), collection.opener, images)
    if source.index is not None:
        items = source.index.items
        dataset = items[0].get("dataset") if items else None
        keys = [it["path"] for it in items if it.get("dataset") == dataset]
        opener = None
        if dataset:
            from pixdex.data.datasets import open_dataset

            opener = open_dataset(dataset, pset.registry).image
        return Probe(spread(keys, PROBE_IMAGES), opener, f"{len(keys)} indexed items")
    data_spec = (source.run.manifest.get("data") or {}).get("spec")
    if data_spec and _opens(data_spec):
        collection = collect(data_spec, pset)
        return Probe(spread([k for k, _ in collection.items], PROBE_IMAGES), collection.opener, data_spec)
    from pixdex.sample import sample_path

    sample = str(sample_path())
    collection = collect(sample, pset)
    return Probe(spread([k for k, _ in collection.items], PROBE_IMAGES), collection.opener, "the bundled sample")


def _opens(data_spec: str) -> bool:
    _, sep, rest = data_spec.partition(":")
    return Path(rest if sep and not Path(data_spec).exists() else data_spec).exists()


def check_folder(
    out: Path,
    manifest: dict[str, Any],
    pset: PluginSet,
    config: Config,
    *,
    images: str | None,
    max_pixels: int,
    notify: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """Re-verify an export (its files already checked by :func:`verify_files`) against its
    source model, which must be unchanged; ``config`` resolves that model's spec."""
    recorded = manifest["source"]
    source = open_source(recorded["spec"], pset, config)
    if model_fingerprint(source.run) != recorded["model_sha256"]:
        raise ArtifactError(
            f"{recorded['spec']} is no longer the model {out} was exported from (its weights changed); export again"
        )
    probe = default_probe(source, pset, images)
    report = compare(
        source.run, out / "model.onnx", probe, source.metric, index=source.index, max_pixels=max_pixels, notify=notify
    )
    return {"export": str(out), "source": recorded, "verification": report}
