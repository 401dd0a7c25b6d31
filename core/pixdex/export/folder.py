"""The export folder: ``model.onnx``, ``preprocess.json``, ``classes.json`` and a manifest.

Written like every pixdex artifact (:class:`pixdex.artifacts.FolderWriter`): the new files
are staged, the staged graph is verified under ONNX Runtime, and only then committed with a
manifest that records each file's sha256, the source model's weights hash and the
verification figures. A failed verification commits nothing, so the previous export stays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pixdex import __version__
from pixdex.artifacts import FolderWriter, file_matches, read_json, reading
from pixdex.errors import ArtifactError, PixdexError
from pixdex.export.graph import export_onnx, preprocess_spec
from pixdex.export.verify import Probe, compare
from pixdex.pipeline.runs import LoadedRun, model_fingerprint, now, versions

EXPORT_FORMAT = "pixdex-export"
EXPORT_FORMAT_VERSION = 1
FILES = ("model.onnx", "preprocess.json", "classes.json")


@dataclass
class Source:
    """What is being exported: the model, its metric, and the index it serves (if any)."""

    kind: str  # "run", "index" or "backbone"
    spec: str  # the MODEL argument as recorded (absolute for folders)
    run: LoadedRun
    metric: str
    index: Any = None  # an OpenIndex, for the neighbour check


def check_target(out: Path, force: bool) -> None:
    """Refuse to write over something that is not an export folder, or over an export
    without ``force``."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ArtifactError(f"{out} exists and is not a folder")
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        if read_json(manifest_path, "manifest").get("format") != EXPORT_FORMAT:
            raise ArtifactError(f"{out} holds another pixdex artifact; choose another -o folder")
        if not force:
            raise ArtifactError(f"{out} already holds an export; pass --force to replace it")
    elif any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise ArtifactError(f"{out} is not empty and holds no export; choose an empty or new -o folder")


def export_folder(
    source: Source,
    out: Path,
    probe: Probe,
    *,
    max_pixels: int,
    force: bool = False,
    notify: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """Export ``source`` into ``out``, verify the staged graph, commit; the manifest."""
    check_target(out, force)
    fingerprint = model_fingerprint(source.run)  # before export: the graph holds these weights
    preprocess = preprocess_spec(source.run, source.metric)
    with FolderWriter(out) as writer:
        staged = writer.path_for("model.onnx")
        notify(f"pixdex: exporting {source.kind} {source.spec} to ONNX")
        outputs = export_onnx(source.run, staged, source.metric)
        notify(f"pixdex: verifying under ONNX Runtime on {len(probe.keys)} images ({probe.source})")
        report = compare(
            source.run, staged, probe, source.metric, index=source.index, max_pixels=max_pixels, notify=notify
        )
        if not report["passed"]:
            raise PixdexError(
                f"the exported model does not match PyTorch ({'; '.join(report['problems'])}); nothing was written"
            )
        writer.write_json("preprocess.json", preprocess)
        writer.write_json("classes.json", list(source.run.classes))

        def manifest(files: dict[str, dict[str, Any]]) -> dict[str, Any]:
            return {
                "format": EXPORT_FORMAT,
                "format_version": EXPORT_FORMAT_VERSION,
                "pixdex_version": __version__,
                "created": now(),
                "format_of_model": "onnx",
                "source": {"kind": source.kind, "spec": source.spec, "model_sha256": fingerprint},
                "input": preprocess["input"],
                "outputs": outputs,
                "metric": source.metric,
                "embed_dim": int(source.run.pipeline.backbone.embed_dim),
                "classes": list(source.run.classes),
                "verification": report,
                "versions": {**versions(), **_runtime_versions()},
                "files": files,
            }

        writer.commit(manifest)
    return read_json(out / "manifest.json", "manifest")


def verify_files(out: Path) -> dict[str, Any]:
    """The export's manifest, after checking every file against its recorded sha256."""
    with reading(out) as manifest:
        if manifest.get("format") != EXPORT_FORMAT:
            raise ArtifactError(f"{out} is not a pixdex export folder (manifest format {manifest.get('format')!r})")
        if int(manifest.get("format_version", 0)) > EXPORT_FORMAT_VERSION:
            raise ArtifactError(f"{out} was written by a newer pixdex; upgrade pixdex")
        for name in FILES:
            fact = (manifest.get("files") or {}).get(name)
            if fact is None or not (out / name).is_file():
                raise ArtifactError(f"{out}: {name} is missing; export again")
            if not file_matches(out / name, fact):
                raise ArtifactError(
                    f"{out}: {name} does not match its sha256 in the manifest (modified or corrupted); export again"
                )
    return manifest


def _runtime_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
