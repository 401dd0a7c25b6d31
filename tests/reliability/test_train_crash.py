"""docs/reliability.md, "crashes lose nothing" for training: a run killed while committing a
checkpoint still loads as of its last complete epoch, and --resume finishes it exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import TINY_CNN
from recognition_data import make_folder_dataset

ARGS = [
    *TINY_CNN,
    "--seed",
    "1",
]


def train(data: Path, run: Path, *extra: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXDEX_")}
    if crash_at:
        env["PIXDEX_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "pixdex", "-q", "train", str(data), "-o", str(run), *ARGS, *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("crashdata"), per_class=8)


@pytest.fixture(scope="module")
def straight(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("straight") / "run"
    assert train(data, run, "--epochs", "3").returncode == 0
    return run


# every commit crash point is covered by test_artifact_commits; these three are the training
# checkpoint's own point and the two sides of commit.json
@pytest.mark.parametrize("point", ["train:checkpoint", "commit:recorded", "commit:manifest"])
def test_killed_during_the_second_checkpoint(point: str, data: Path, straight: Path, tmp_path: Path):
    run = tmp_path / "run"
    proc = train(data, run, "--epochs", "3", crash_at=f"{point}@2")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    from pixdex.pipeline.runs import load_run
    from pixdex.plugins import load_plugins

    loaded = load_run(run, load_plugins(entry_points=[]))  # opens, rolling forward if needed
    done = loaded.manifest["epochs_done"]
    # before commit.json is written the first epoch stands; after it the second is complete
    assert done == (1 if point == "train:checkpoint" else 2)
    resumed = train(data, run, "--epochs", "3", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert not any(
        ".tmp-" in p.name or p.name.startswith(".staging-") or p.name == "commit.json" for p in run.rglob("*")
    )
    a, b = load_file(straight / "last.safetensors"), load_file(run / "last.safetensors")
    assert all((a[k] == b[k]).all() for k in a if k.startswith("model."))
