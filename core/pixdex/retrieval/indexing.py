"""`index build`, `index add`, `index remove`, `index info` and `embed`: the operations
that write index folders. Each write is one atomic commit under the folder's lock."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from pixdex.artifacts import FolderWriter, crash_point, jsonl_bytes, reading
from pixdex.config import Config
from pixdex.contracts import METRICS
from pixdex.device import placement
from pixdex.errors import PixdexError
from pixdex.pipeline.inference import check_tta
from pixdex.pipeline.runs import LoadedRun, model_fingerprint, now
from pixdex.plugins import PluginSet
from pixdex.retrieval.embed import collect, embed_keys, npy_bytes, save_npy
from pixdex.retrieval.index_folder import (
    IndexContents,
    commit_index,
    index_size_on_disk,
    is_external,
    new_items,
    number_rows,
    open_index,
    read_items,
    resolve_metric,
    verify,
)
from pixdex.retrieval.item_table import ItemTable
from pixdex.retrieval.models import is_run_folder, open_model, stage_model
from pixdex.retrieval.records import FactTable, Selected, ShaSet, fact_table
from pixdex.retrieval.search import index_model, recorded_tta, stored_model
from pixdex.retrieval.stored import StoredItems, StoredVectors, holds_items
from pixdex.world import World


@dataclass
class Options:
    """Settings shared by the writing operations."""

    runtime: dict[str, Any]
    max_pixels: int
    labels: str = "auto"
    split: str | None = None
    progress: bool = True
    lock_timeout: float = 60.0
    notify: Callable[[str], None] = lambda m: None
    world: Any = field(default_factory=World)  # torchrun: each process embeds one shard
    shard_dir: Path | None = None  # where the shards meet (outside the output folder)
    tta: str = "none"  # test-time augmentation of a new collection's embeddings (build, embed)


def with_tta(run: LoadedRun, opts: Options) -> LoadedRun:
    """``run`` set to embed a new collection with ``opts.tta``; a run trained without flips
    or random crops is warned about (a backbone spec's pretrained weights have seen both)."""
    if opts.tta != "none" and run.manifest.get("kind") != "backbone":
        check_tta(run, opts.tta, opts.notify)
    return replace(run, tta=opts.tta)


def _embed_collection(
    run: LoadedRun, data_spec: str, pset: PluginSet, opts: Options, *, skip_sha: ShaSet | None = None
) -> tuple[Any, Any, FactTable, list[dict[str, Any]]]:
    """(collection, embedded, facts of the collection's sources, skipped) for DATA; with
    ``skip_sha``, images whose sha256 it holds are left out, and copies of one new image
    are embedded once."""
    coll = collect(data_spec, pset, labels=opts.labels, split=opts.split)
    if not coll.items and not coll.skipped:
        raise PixdexError(f"{data_spec} holds no images: the collection is empty")
    facts = fact_table([k for k, _ in coll.items], coll.opener)
    keep = list(range(len(coll.items)))
    if skip_sha is not None:
        keep = [i for i in keep if facts.sha256(i) is None or facts.sha256(i) not in skip_sha]
        hashed = np.asarray([i for i in keep if facts.sha[i]], dtype=np.int64)
        _, first = np.unique(facts.sha[hashed], return_index=True)  # the first copy of each digest
        kept = set(hashed[first].tolist())
        keep = [i for i in keep if not facts.sha[i] or i in kept]
    world = opts.world
    place = placement(opts.runtime["device"], opts.runtime["precision"], world=world, notify=opts.notify)
    lo, hi = contiguous_shard(len(keep), world)
    keys = [coll.items[i][0] for i in keep[lo:hi]]
    embedded = embed_keys(
        run,
        keys,
        opts.runtime,
        place,
        opener=coll.opener,
        max_pixels=opts.max_pixels,
        progress=opts.progress and world.is_main,
        notify=opts.notify,
    )
    embedded.positions = np.asarray([keep[lo + p] for p in embedded.positions.tolist()], dtype=np.int64)
    if world.distributed:
        embedded = gather_shards(embedded, world, opts.shard_dir)
    return coll, embedded, facts, list(coll.skipped) + embedded.skipped


def contiguous_shard(n: int, world: Any) -> tuple[int, int]:
    """[lo, hi) of process ``rank``: contiguous, sizes differing by at most one, no padding."""
    base, extra = divmod(n, world.size)
    lo = world.rank * base + min(world.rank, extra)
    return lo, lo + base + (1 if world.rank < extra else 0)


def gather_shards(mine: Any, world: Any, shard_dir: Path | None) -> Any:
    """Every process writes its shard into a staging folder; the main process reads them
    back in rank order (= item order). Other processes return an empty result."""
    import json as _json

    from pixdex.artifacts import atomic_write_bytes
    from pixdex.retrieval.embed import Embedded

    assert shard_dir is not None, "distributed embedding needs a staging folder"
    shard_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(shard_dir / f"rank{world.rank}.npy", npy_bytes(mine.embeddings))
    atomic_write_bytes(
        shard_dir / f"rank{world.rank}.json",
        _json.dumps({"positions": mine.positions.tolist(), "skipped": mine.skipped}).encode(),
    )
    world.barrier()
    if not world.is_main:
        return Embedded(mine.embeddings[:0], mine.positions[:0], [])
    parts, positions, skipped = [], [], []
    for rank in range(world.size):
        parts.append(np.load(shard_dir / f"rank{rank}.npy", allow_pickle=False))
        meta = _json.loads((shard_dir / f"rank{rank}.json").read_text())
        positions.extend(meta["positions"])
        skipped.extend(meta["skipped"])
    import shutil

    shutil.rmtree(shard_dir, ignore_errors=True)
    return Embedded(
        np.concatenate(parts).astype(np.float32, copy=False), np.asarray(positions, dtype=np.int64), skipped
    )


def build(
    model_spec: str,
    data_spec: str,
    out_dir: str | Path,
    pset: PluginSet,
    config: Config,
    opts: Options,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Embed DATA with MODEL and commit a new index folder."""
    out_dir = Path(out_dir)
    _refuse_existing(out_dir, force)
    run = with_tta(open_model(model_spec, pset, config), opts)
    metric = resolve_metric(config, run)
    opts.shard_dir = opts.shard_dir or shard_dir_for(out_dir)
    coll, embedded, facts, skipped = _embed_collection(run, data_spec, pset, opts)
    if not opts.world.is_main:
        return {}
    if len(embedded.positions) == 0:
        raise PixdexError(
            f"no image of {data_spec} could be embedded ({len(skipped)} skipped): an empty collection is refused"
        )
    items = number_rows(new_items(coll, embedded, facts, 0))
    contents = IndexContents(embedded.embeddings, items, len(items), skipped)
    with FolderWriter(out_dir, lock_timeout=opts.lock_timeout) as writer:
        model_record = stage_model(writer, run)
        commit_index(
            writer, pset, config, contents, metric=metric, model_record=model_record, created=now(), notify=opts.notify
        )
    return {**info_record(out_dir, _committed(out_dir)), "skipped_entries": skipped}


def _refuse_existing(out_dir: Path, force: bool) -> None:
    if (out_dir / "manifest.json").exists() and not force:
        raise PixdexError(
            f"{out_dir} already holds an index; use `pixdex index add` to extend it or --force to replace it"
        )


def build_from_embeddings(
    source_dir: str | Path,
    out_dir: str | Path,
    pset: PluginSet,
    config: Config,
    opts: Options,
    *,
    model_spec: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """`index build --from-embeddings DIR [MODEL]`: commit an index folder over embeddings
    made elsewhere (:mod:`pixdex.retrieval.precomputed`), without embedding anything.

    The model is MODEL, else the one the source records when it is a run folder here;
    either must make embeddings of the source's dim and, where the source recorded its
    weights' sha256, have those weights. Without one the index is marked ``external``:
    it holds no model, and the commands that embed images refuse it
    (:func:`pixdex.retrieval.search.index_model`)."""
    from pixdex.retrieval.precomputed import read_precomputed

    out_dir = Path(out_dir)
    _refuse_existing(out_dir, force)
    if opts.tta != "none":
        raise PixdexError(
            "--tta applies when images are embedded; --from-embeddings keeps the test-time "
            "augmentation the embeddings were made with (`pixdex embed --tta`)"
        )
    pre = read_precomputed(source_dir, notify=opts.notify)
    run = precomputed_model(pre, model_spec, pset, config, opts.notify)
    if run is not None:
        run = replace(run, tta=pre.tta)
    metric = config["retrieval"]["metric"]
    if metric == "auto":
        metric = pre.metric or (run.manifest.get("metric") if run is not None else None) or "cosine"
    if metric not in METRICS:
        raise PixdexError(f"Unknown metric '{metric}': use auto, {', '.join(METRICS)}")
    contents = IndexContents(pre.embeddings, pre.items, pre.items.next_id, [])  # items streamed, not held
    try:
        with FolderWriter(out_dir, lock_timeout=opts.lock_timeout) as writer:
            record = stage_model(writer, run) if run is not None else external_model_record(pre)
            commit_index(
                writer, pset, config, contents, metric=metric, model_record=record, created=now(), notify=opts.notify
            )
    finally:
        pre.items.close()
    return {**info_record(out_dir, _committed(out_dir)), "skipped_entries": []}


def precomputed_model(
    pre: Any, model_spec: str | None, pset: PluginSet, config: Config, notify: Callable[[str], None]
) -> LoadedRun | None:
    """The model to record for precomputed embeddings ``pre``, or None (external)."""
    spec = model_spec or pre.model_spec
    if spec is None or (model_spec is None and not is_run_folder(spec)):
        if spec:  # a backbone spec, or a run folder that is gone: its options are not recorded
            named = f"names the model {spec!r}, not a run folder here"
            hint = f"give MODEL ({spec} with the --set options it was embedded with; its weights are checked)"
        else:
            named, hint = "names no model", "give MODEL"
        notify(
            f"pixdex: note: {pre.source} {named}: the index is marked external (it holds no model; "
            f"search it with --vectors or --id, or {hint} to record one)"
        )
        return None
    run = open_model(spec, pset, config)
    dim = int(run.pipeline.backbone.embed_dim)
    if dim != pre.dim:
        raise PixdexError(f"{spec} makes {dim}-dim embeddings but {pre.source} holds {pre.dim}-dim ones")
    if pre.model_sha256 and model_fingerprint(run) != pre.model_sha256:
        raise PixdexError(
            f"{spec} is not the model that made the embeddings in {pre.source} (its weights' sha256 "
            "differs): give that model, or no MODEL to mark the index external"
        )
    if not pre.model_sha256:
        notify(f"pixdex: note: {pre.source} does not record which weights made it: {spec} is taken on trust")
    return run


def external_model_record(pre: Any) -> dict[str, Any]:
    """The manifest's model record of an index without a model."""
    return {
        "kind": "external",
        "source": pre.model_spec,
        "sha256": pre.model_sha256,  # lets `--model` prove itself later, when it was recorded
        "embed_dim": pre.dim,
        "classes": [],
        "loss": None,
    }


def _is_embeddings_folder(folder: Path) -> bool:
    from pixdex.artifacts import read_json

    return read_json(folder / "manifest.json", "manifest").get("format") == "pixdex-embeddings"


def shard_dir_for(out_dir: Path) -> Path:
    """A staging folder beside (not inside) the output, named per torchrun job."""
    import os

    job = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("MASTER_PORT") or str(os.getpid())
    return out_dir.parent / f".{out_dir.name}.shards-{job}"


def _current(folder: Path, pset: PluginSet) -> tuple[dict[str, Any], np.ndarray, ItemTable, list[dict[str, Any]]]:
    """The committed state of an index folder (verified) for a rewrite: the embeddings
    memory-mapped and the items read on demand (committed files are replaced by rename,
    never changed in place, so both stay valid while the new version is staged)."""
    with reading(folder) as manifest:
        verify(folder, manifest)
        items = ItemTable(folder / "items.jsonl")
        embeddings = np.load(folder / "embeddings.npy", mmap_mode="r", allow_pickle=False)
        skipped = read_items(folder / "skipped.jsonl") if (folder / "skipped.jsonl").exists() else []
    return manifest, embeddings, items, skipped


def stage_rows(
    writer: FolderWriter, parts: list[np.ndarray], dim: int, *, rows: np.ndarray | None = None
) -> np.ndarray:
    """Write ``parts`` one after another (only ``rows`` of a single part, when given) as the
    staged ``embeddings.npy``, a memory-mapped file filled in chunks, and return it
    memory-mapped read-only: the new matrix never exists in anonymous memory, and the ANN
    is built from its pages."""
    pieces = [(parts[0], rows)] if rows is not None else [(p, None) for p in parts]
    total = sum(len(p) if r is None else len(r) for p, r in pieces)
    out = np.lib.format.open_memmap(writer.path_for("embeddings.npy"), mode="w+", dtype=np.float32, shape=(total, dim))
    row = 0
    for part, selection in pieces:
        n = len(part) if selection is None else len(selection)
        for start in range(0, n, 65536):
            which = slice(start, start + 65536) if selection is None else selection[start : start + 65536]
            chunk = np.asarray(part[which], dtype=np.float32)
            out[row : row + len(chunk)] = chunk
            row += len(chunk)
    out.flush()
    del out
    return np.load(writer.path_for("embeddings.npy"), mmap_mode="r", allow_pickle=False)


def _index_config(pset: PluginSet, manifest: dict[str, Any], runtime: dict[str, Any]) -> Config:
    """The configuration an existing index was built with (its index component and options)."""
    from pixdex.config import resolve_config

    base = resolve_config(pset.registry, pset.registry_file, sections=("runtime", "retrieval", "data"), environ={})
    sections = base.to_dict()
    sections["runtime"] = dict(runtime)
    sections["index"] = {"name": manifest["index"]["name"], **(manifest["index"].get("options") or {})}
    return Config(sections)


def _carried(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in manifest["files"].items() if k.startswith("model/")}


def _recommit(
    writer: FolderWriter, pset: PluginSet, manifest: dict[str, Any], contents: IndexContents, opts: Options, **how: Any
) -> None:
    """Commit new ``contents`` of an existing index: its index component, metric, model and
    creation time as the manifest records them (``how``: ``previous`` or ``prepared``)."""
    commit_index(
        writer,
        pset,
        _index_config(pset, manifest, opts.runtime),
        contents,
        metric=manifest["metric"],
        model_record=manifest["model"],
        created=manifest["created"],
        carried_files=_carried(manifest),
        notify=opts.notify,
        **how,
    )


def add(index_dir: str | Path, data_spec: str, pset: PluginSet, opts: Options) -> dict[str, Any]:
    """Embed only images whose sha256 the index lacks, then grow the ANN by them (index
    plugins with the optional ``add``) or rebuild it from all rows (the others)."""
    folder = Path(index_dir)
    opened = open_index(folder, pset)  # verifies before anything is written
    if is_external(opened.manifest):
        index_model(opened, pset, purpose="`index add` of images")  # refuses, in one line
    if holds_items(opened.ann):
        return _add_stored(folder, data_spec, pset, opts)
    with FolderWriter(folder, lock_timeout=opts.lock_timeout) as writer:
        manifest, embeddings, items, skipped_old = _current(folder, pset)  # re-read under the lock
        run = stored_model(folder, manifest, pset)
        present = ShaSet(it.get("sha256") for it in items)
        coll, embedded, facts, skipped = _embed_collection(run, data_spec, pset, opts, skip_sha=present)
        added = new_items(coll, embedded, facts, int(manifest["next_id"]))
        crash_point("index:embedded")
        contents = IndexContents(
            stage_rows(writer, [embeddings, embedded.embeddings], int(manifest["dim"])),
            number_rows(items, added),
            int(manifest["next_id"]) + len(added),
            _merge_skips(skipped_old, skipped),
            embeddings_staged=True,
        )
        # rows are appended: plugins with `add` grow the committed index
        _recommit(writer, pset, manifest, contents, opts, previous=(folder / "index", len(embeddings)))
    return {**info_record(folder, _committed(folder)), "added": len(added), "skipped_entries": skipped}


def remove(index_dir: str | Path, paths: list[str], pset: PluginSet, opts: Options) -> dict[str, Any]:
    """Drop the rows of ``paths`` (as stored, or resolved); rows are compacted, ids kept."""
    folder = Path(index_dir)
    if holds_items(open_index(folder, pset).ann):
        return _remove_stored(folder, paths, pset, opts)
    with FolderWriter(folder, lock_timeout=opts.lock_timeout) as writer:
        manifest, embeddings, items, skipped_old = _current(folder, pset)
        drop, missing = _rows_to_remove(folder, items, paths)
        keep = np.setdiff1d(np.arange(len(items)), np.asarray(drop))
        contents = IndexContents(
            stage_rows(writer, [embeddings], int(manifest["dim"]), rows=keep),
            number_rows(Selected(items, keep)),
            int(manifest["next_id"]),
            skipped_old,
            embeddings_staged=True,
        )
        _recommit(writer, pset, manifest, contents, opts)
    return {**info_record(folder, _committed(folder)), "removed": len(drop), "not_found": missing}


def _rows_to_remove(folder: Path, items: Iterable[dict[str, Any]], paths: list[str]) -> tuple[list[int], list[str]]:
    """Rows whose path is one of ``paths``, and the paths not found; refused when none
    or all would go. Matched by the resolved path, so a relative, absolute or symlinked
    spelling all work."""
    key = {p: str(Path(p).resolve()) for p in paths}
    wanted = set(key.values())
    drop, found, count = [], set(), 0
    for row, item in enumerate(items):
        count += 1
        resolved = str(Path(item["path"]).resolve())
        if resolved in wanted:
            drop.append(row)
            found.add(resolved)
    missing = sorted(p for p in paths if key[p] not in found)
    if not drop:
        raise PixdexError(f"none of the given paths is in {folder}: {', '.join(paths[:5])}")
    if len(drop) == count:
        raise PixdexError(f"removing every item would leave {folder} empty; delete the folder instead")
    return drop, missing


# --- item-holding indexes (a database keeps the rows): add and remove write a new version ---


def _stored_change(
    folder: Path, pset: PluginSet, opts: Options, change: Callable[[Any, dict[str, Any]], Any]
) -> tuple[dict[str, Any], Any]:
    """Under the folder's lock: re-open the index, let ``change(opened, manifest)`` write
    the new version through the plugin (returning what the caller reports), and commit."""
    with FolderWriter(folder, lock_timeout=opts.lock_timeout) as writer:
        opened = open_index(folder, pset)  # re-read under the lock
        manifest = opened.manifest
        skipped_old = read_items(folder / "skipped.jsonl") if (folder / "skipped.jsonl").exists() else []
        outcome = change(opened, manifest)
        ann = opened.ann
        count = len(ann)
        contents = IndexContents(
            StoredVectors(ann, count, opened.dim),
            StoredItems(ann, count),
            int(manifest["next_id"]) + int(outcome.get("added", 0)),
            _merge_skips(skipped_old, outcome.get("skipped_entries", [])),
        )
        _recommit(writer, pset, manifest, contents, opts, prepared=ann)
    return outcome, _committed(folder)


def _add_stored(folder: Path, data_spec: str, pset: PluginSet, opts: Options) -> dict[str, Any]:
    def change(opened: Any, manifest: dict[str, Any]) -> dict[str, Any]:
        run = stored_model(folder, manifest, pset)
        present = ShaSet(it.get("sha256") for it in opened.items)
        coll, embedded, facts, skipped = _embed_collection(run, data_spec, pset, opts, skip_sha=present)
        added = new_items(coll, embedded, facts, int(manifest["next_id"]))
        crash_point("index:embedded")
        if added:
            first = len(opened.ann)
            rows = [{"id": it["id"], "row": first + i, **it} for i, it in enumerate(added)]
            try:
                opened.ann.add(embedded.embeddings, items=rows)
            except ValueError as exc:
                raise PixdexError(f"index '{manifest['index']['name']}' could not add the new rows: {exc}") from None
        return {"added": len(added), "skipped_entries": skipped}

    outcome, committed = _stored_change(folder, pset, opts, change)
    return {**info_record(folder, committed), **outcome}


def _remove_stored(folder: Path, paths: list[str], pset: PluginSet, opts: Options) -> dict[str, Any]:
    def change(opened: Any, manifest: dict[str, Any]) -> dict[str, Any]:
        drop, missing = _rows_to_remove(folder, opened.items, paths)
        try:
            opened.ann.remove(drop)
        except ValueError as exc:
            raise PixdexError(f"index '{manifest['index']['name']}' could not remove the rows: {exc}") from None
        return {"removed": len(drop), "not_found": missing}

    outcome, committed = _stored_change(folder, pset, opts, change)
    return {**info_record(folder, committed), **outcome}


def _committed(folder: Path) -> dict[str, Any]:
    """The manifest as committed (with the checksums and sizes the report needs)."""
    from pixdex.artifacts import read_json

    return read_json(Path(folder) / "manifest.json", "manifest")


def _merge_skips(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen = {s["path"]: s for s in old}
    for s in new:
        seen[s["path"]] = s
    return list(seen.values())


def info_record(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """What `pixdex index info` reports."""
    folder = Path(folder)
    if "files" in manifest and manifest["files"]:
        size = index_size_on_disk(folder, manifest)
    else:
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    params = manifest["index"].get("params", {})
    return {
        "path": str(folder),
        "count": manifest["count"],
        "dim": manifest["dim"],
        "metric": manifest["metric"],
        "skipped": manifest.get("skipped", 0),
        "next_id": manifest["next_id"],
        "index": manifest["index"]["name"],
        "options": manifest["index"].get("options", {}),
        "params": params,
        "recall_at_10": params.get("recall_at_10", params.get("measured_recall")),
        "model": {k: manifest["model"].get(k) for k in ("kind", "source", "sha256", "embed_dim", "loss")},
        "tta": recorded_tta(manifest),
        "size_bytes": size,
        "created": manifest["created"],
        "updated": manifest["updated"],
        "format_version": manifest["format_version"],
        "pixdex_version": manifest.get("pixdex_version"),
    }


def info(index_dir: str | Path, pset: PluginSet) -> dict[str, Any]:
    opened = open_index(index_dir, pset)
    return info_record(opened.path, opened.manifest)


def embed_to_folder(
    model_spec: str, data_spec: str, out_dir: str | Path, pset: PluginSet, config: Config, opts: Options
) -> dict[str, Any]:
    """`pixdex embed`: embeddings.npy + items.jsonl (+ skipped.jsonl), committed together."""
    out_dir = Path(out_dir)
    for other in ("pixdex.json", "manifest.json"):
        if (out_dir / other).exists() and not (other == "manifest.json" and _is_embeddings_folder(out_dir)):
            raise PixdexError(f"{out_dir} holds a run or an index; write embeddings to a folder of their own")
    run = with_tta(open_model(model_spec, pset, config), opts)
    opts.shard_dir = opts.shard_dir or shard_dir_for(out_dir)
    coll, embedded, facts, skipped = _embed_collection(run, data_spec, pset, opts)
    if not opts.world.is_main:
        return {}
    if len(embedded.positions) == 0:
        from pixdex.data.image_args import nothing_read

        raise nothing_read(f"no image of {data_spec}", skipped)
    items = number_rows(new_items(coll, embedded, facts, 0))
    with FolderWriter(out_dir, lock_timeout=opts.lock_timeout) as writer:
        save_npy(writer, "embeddings.npy", embedded.embeddings)
        writer.write_jsonl("items.jsonl", items)
        writer.write_bytes("skipped.jsonl", jsonl_bytes(skipped))
        writer.commit(
            lambda files: {
                "format": "pixdex-embeddings",
                "format_version": 1,
                "created": now(),
                "count": len(items),
                "dim": int(embedded.embeddings.shape[1]),
                "model": str(run.path.resolve()) if is_run_folder(model_spec) else model_spec,
                "model_sha256": model_fingerprint(run),  # checked by `index build --from-embeddings`
                "metric": str(run.manifest.get("metric") or "cosine"),
                "tta": run.tta,  # carried into an index built --from-embeddings
                "data": data_spec,
                "files": files,
            }
        )
    return {
        "path": str(out_dir),
        "count": len(items),
        "dim": int(embedded.embeddings.shape[1]),
        "skipped": len(skipped),
        "skipped_entries": skipped,
    }
