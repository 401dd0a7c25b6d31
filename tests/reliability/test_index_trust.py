"""docs/reliability.md, "indexes are checked before they are trusted" and "concurrency":
every manifest/file mismatch is refused with one line before the index library (usearch for
the default hnsw, Annoy) loads anything (in a subprocess, so a segfault fails the test);
readers survive a replacement; concurrent searchers agree with a serial one; two concurrent
`index add` never corrupt an index."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from recognition_data import make_folder_dataset, pattern_image

RT = ["--workers", "0", "--device", "cpu"]
MODEL = ["--set", "backbone.widths=[4]", "--set", "backbone.embed_dim=8", "--set", "backbone.input_size=16"]


def pixdex(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("PIXDEX_")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pixdex", *args], capture_output=True, text=True, env=full, timeout=120
    )


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("trustdata"), per_class=8, seed=11)


# the native library's file of each index whose loader is checked (both can crash on a bad file)
ANN_FILES = {"hnsw": "index.usearch", "annoy": "index.ann"}


@pytest.fixture(scope="module")
def pristines(collection: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One index of each type in ANN_FILES over the same collection (hnsw is the default)."""
    out = {}
    for name in ANN_FILES:
        out[name] = tmp_path_factory.mktemp("trust") / name
        proc = pixdex(
            "-q", "index", "build", "simple-cnn", str(collection), "-o", str(out[name]), "--index", name, *RT, *MODEL
        )
        assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def pristine(pristines: dict[str, Path]) -> Path:
    return pristines["hnsw"]


def _copy(pristine: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "index"
    shutil.copytree(pristine, dst, ignore=shutil.ignore_patterns(".lock", ".commit-lock"))
    return dst


def _edit_manifest(index: Path, **changes) -> None:
    manifest = json.loads((index / "manifest.json").read_text())
    manifest.update(changes)
    (index / "manifest.json").write_text(json.dumps(manifest))


def _resign(index: Path) -> None:
    """Recompute the digest, as a careful forger would, to reach the deeper checks."""
    from pixdex.retrieval.index_folder import seal

    manifest = json.loads((index / "manifest.json").read_text())
    (index / "manifest.json").write_text(json.dumps(seal(manifest)))


def _ann_file(index: Path) -> Path:
    name = json.loads((index / "manifest.json").read_text())["index"]["name"]
    return index / "index" / ANN_FILES[name]


CASES = {
    "dim": (lambda ix: (_edit_manifest(ix, dim=32), _resign(ix)), "embeddings have dim 8 but the manifest says 32"),
    "metric": (lambda ix: _edit_manifest(ix, metric="l2"), "manifest.json was modified"),
    "count": (lambda ix: (_edit_manifest(ix, count=99), _resign(ix)), "rows but the manifest says count 99"),
    "format version": (
        lambda ix: (_edit_manifest(ix, format_version=99), _resign(ix)),
        "index format version 99 is not supported",
    ),
    "truncated index file": (
        lambda ix: _ann_file(ix).write_bytes(_ann_file(ix).read_bytes()[:100]),
        "index/{file} is 100 bytes",
    ),
    "replaced index file": (
        lambda ix: _ann_file(ix).write_bytes(bytes(len(_ann_file(ix).read_bytes()))),
        "does not match its checksum",
    ),
    "replaced model": (
        lambda ix: (ix / "model" / "model.safetensors").write_bytes(
            (ix / "model" / "model.safetensors").read_bytes()[::-1]
        ),
        "model/model.safetensors does not match",
    ),
    "missing embeddings": (lambda ix: (ix / "embeddings.npy").unlink(), "embeddings.npy is missing"),
    "edited items": (lambda ix: (ix / "items.jsonl").write_text("{}\n"), "items.jsonl is"),
}


SEARCH_ALL = r"""
import json, sys
from click.testing import CliRunner
from pixdex.cli import build_cli
query, folders = sys.argv[1], sys.argv[2:]
out = {}
for folder in folders:
    result = CliRunner().invoke(build_cli(), ["search", folder, query, "--workers", "0", "--device", "cpu"])
    out[folder] = [result.exit_code, result.stderr]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def refusals(
    pristines: dict[str, Path], collection: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], list]:
    """Every tampered copy of every index type searched in ONE subprocess (one torch
    import): a segfault in any of them kills it and fails every case."""
    root = tmp_path_factory.mktemp("tampered")
    folders = {}
    for name, pristine in pristines.items():
        for case, (tamper, _) in CASES.items():
            folders[name, case] = _copy(pristine, root / name / case.replace(" ", "-"))
            tamper(folders[name, case])
    query = str(sorted((collection / "top").iterdir())[0])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXDEX_")}
    proc = subprocess.run(
        [sys.executable, "-c", SEARCH_ALL, query, *map(str, folders.values())],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    got = json.loads(proc.stdout)
    return {key: got[str(folder)] for key, folder in folders.items()}


@pytest.mark.parametrize("index", sorted(ANN_FILES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_mismatch_is_refused_before_the_index_loads(index: str, case: str, refusals: dict[tuple[str, str], list]):
    code, stderr = refusals[index, case]
    message = CASES[case][1].format(file=ANN_FILES[index])
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1, stderr
    assert lines[0].startswith("pixdex: error:") and message in lines[0], stderr


def test_pristine_copy_still_works(pristine: Path, collection: Path, tmp_path: Path):
    index = _copy(pristine, tmp_path)
    proc = pixdex("-q", "search", str(index), str(sorted((collection / "top").iterdir())[0]), *RT)
    assert proc.returncode == 0, proc.stderr


def test_replacing_an_index_does_not_disturb_an_open_searcher(pristine: Path, collection: Path, tmp_path: Path):
    from pixdex.plugins import load_plugins
    from pixdex.retrieval.index_folder import open_index

    index = _copy(pristine, tmp_path)
    opened = open_index(index, load_plugins(entry_points=[]))
    queries = np.asarray(opened.embeddings[:5])
    before = opened.ann.search(queries, 5)
    other = tmp_path / "other"
    other.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        pattern_image("left", rng).save(other / f"{i}.png")
    proc = pixdex(
        "-q", "index", "build", "simple-cnn", str(other), "-o", str(index), "--force", *RT, *MODEL, "--labels", "none"
    )
    assert proc.returncode == 0, proc.stderr
    after = opened.ann.search(queries, 5)
    assert (before[0] == after[0]).all() and np.allclose(before[1], after[1])
    assert json.loads((index / "manifest.json").read_text())["count"] == 6


def test_eight_threads_equal_serial(pristine: Path):
    from pixdex.plugins import load_plugins
    from pixdex.retrieval.index_folder import open_index

    opened = open_index(pristine, load_plugins(entry_points=[]))
    queries = [np.asarray(opened.embeddings[i : i + 1]) for i in range(len(opened.embeddings))]
    serial = [opened.ann.search(q, 7) for q in queries]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(lambda q: opened.ann.search(q, 7), queries * 4))
    for i, (ids, scores) in enumerate(threaded):
        assert (ids == serial[i % len(queries)][0]).all() and np.allclose(scores, serial[i % len(queries)][1])


def test_two_concurrent_adds_never_corrupt(pristine: Path, tmp_path: Path):
    index = _copy(pristine, tmp_path)
    folders = []
    rng = np.random.default_rng(2)
    for name in ("a", "b"):
        folder = tmp_path / name / "bottom"
        folder.mkdir(parents=True)
        for i in range(3):
            pattern_image("bottom", rng).save(folder / f"{name}{i}.png")
        folders.append(folder.parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXDEX_")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pixdex", "-q", "index", "add", str(index), str(f), *RT],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for f in folders
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    info = pixdex("index", "info", str(index), "--json")
    assert info.returncode == 0, info.stderr
    record = json.loads(info.stdout)
    assert record["count"] == 24 + 6 and record["next_id"] == 30
    items = [json.loads(line) for line in (index / "items.jsonl").read_text().splitlines()]
    assert len({it["id"] for it in items}) == 30
