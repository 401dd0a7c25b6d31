"""docs/reliability.md, "crashes lose nothing" for indexes: `index build --force` and
`index add` killed (SIGKILL) at their crash points leave the previous index searchable
with identical results, or the new one complete; the next write cleans up."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import invoke
from recognition_data import make_folder_dataset, pattern_image

RT = ["--workers", "0", "--device", "cpu"]
MODEL = ["--set", "backbone.widths=[4]", "--set", "backbone.embed_dim=8", "--set", "backbone.input_size=16"]


def pixdex(*args: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXDEX_")}
    if crash_at:
        env["PIXDEX_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "pixdex", "-q", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("crashcoll")
    base = make_folder_dataset(root / "base", per_class=6, seed=21)
    extra = root / "extra" / "top"
    extra.mkdir(parents=True)
    rng = np.random.default_rng(4)
    for i in range(4):
        pattern_image("top", rng).save(extra / f"e{i}.png")
    return {"base": base, "extra": extra.parent}


@pytest.fixture(scope="module")
def original(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("orig") / "index"
    proc = pixdex("index", "build", "simple-cnn", str(data["base"]), "-o", str(out), *RT, *MODEL)
    assert proc.returncode == 0, proc.stderr
    return out


def results(index: Path) -> tuple[int, list]:
    """(count, top-5 ids for the first 6 stored vectors) through the public open path."""
    from pixdex.plugins import load_plugins
    from pixdex.retrieval.index_folder import open_index

    opened = open_index(index, load_plugins(entry_points=[]))
    ids, _ = opened.ann.search(np.asarray(opened.embeddings[:6]), 5)
    return len(opened.items), ids.tolist()


def leftovers(index: Path) -> list[str]:
    return [
        p.name
        for p in index.rglob("*")
        if ".tmp-" in p.name or p.name.startswith(".staging-") or p.name == "commit.json"
    ]


# the index's own points and both sides of commit.json; test_artifact_commits kills the
# commit protocol at every one of its points
BUILD_POINTS = ["index:built", "commit:recorded", "commit:manifest"]
ADD_POINTS = ["index:embedded", "index:staged", "commit:renamed-all"]


@pytest.mark.parametrize("point", BUILD_POINTS)
def test_rebuild_killed(point: str, original: Path, data: dict[str, Path], tmp_path: Path):
    index = tmp_path / "index"
    shutil.copytree(original, index)
    before = results(index)
    proc = pixdex(
        "index", "build", "simple-cnn", str(data["extra"]), "-o", str(index), "--force", *RT, *MODEL, crash_at=point
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    count, _ = after = results(index)
    if point in ("index:built", "commit:staged"):
        assert after == before  # nothing committed: the old index, identical results
    else:
        assert count == 4  # commit.json existed: opening rolled the new index forward
    assert leftovers(index) == []  # opening cleaned up


@pytest.mark.parametrize("point", ADD_POINTS)
def test_add_killed(point: str, original: Path, data: dict[str, Path], tmp_path: Path):
    index = tmp_path / "index"
    shutil.copytree(original, index)
    before = results(index)
    proc = pixdex("index", "add", str(index), str(data["extra"]), *RT, crash_at=point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    count, ids = results(index)
    if point in ("index:embedded", "index:staged"):
        assert (count, ids) == before
    else:
        assert count == before[0] + 4
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["count"] == count
    again = invoke("-q", "index", "add", str(index), str(data["extra"]), *RT)  # the next writer, in-process
    assert again.exit_code == 0, again.output
    assert results(index)[0] == before[0] + 4 and leftovers(index) == []
