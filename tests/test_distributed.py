"""torchrun on CPU: 2 gloo processes through the real launcher (loopback rendezvous,
OMP_NUM_THREADS=1) against one process, for training and for index building."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_CNN
from recognition_data import make_folder_dataset

TINY = [
    *TINY_CNN,
    "--epochs",
    "6",
    "--lr",
    "0.01",
]
pytestmark = pytest.mark.slow


def run(*args: str, nproc: int = 1) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXDEX_")}
    env["OMP_NUM_THREADS"] = "1"
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else []
    proc = subprocess.run(
        [sys.executable, *launcher, "-m", "pixdex", "-q", *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("ddpdata"), per_class=16, test_per_class=10, seed=8)


@pytest.fixture(scope="module")
def runs(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("ddpruns")
    for nproc in (1, 2):
        run("train", str(data), "-o", str(root / f"run{nproc}"), *TINY, nproc=nproc)
    return {1: root / "run1", 2: root / "run2"}


def test_ddp_training_matches_one_process(runs: dict[int, Path], data: Path):
    accuracy = {}
    for nproc, path in runs.items():
        report = json.loads(run("evaluate", str(path), str(data), "--json", "--workers", "0", "--device", "cpu").stdout)
        accuracy[nproc] = report["top1"]
    assert accuracy[1] >= 0.9
    assert abs(accuracy[1] - accuracy[2]) <= 0.02, accuracy
    manifest = json.loads((runs[2] / "pixdex.json").read_text())
    assert manifest["epochs_done"] == 6 and not list(runs[2].glob("*.tmp-*"))
    # every process saw a disjoint half of each epoch: twice the images per step overall
    assert manifest["data"]["train_count"] == json.loads((runs[1] / "pixdex.json").read_text())["data"]["train_count"]


def test_ddp_index_build_equals_one_process(runs: dict[int, Path], data: Path, tmp_path: Path):
    common = ["--index", "flat", "--workers", "0", "--device", "cpu"]
    run("index", "build", str(runs[1]), str(data), "-o", str(tmp_path / "one"), *common)
    run("index", "build", str(runs[1]), str(data), "-o", str(tmp_path / "two"), *common, nproc=2)
    one, two = (np.load(tmp_path / name / "embeddings.npy") for name in ("one", "two"))
    assert one.shape == two.shape and np.abs(one - two).max() <= 1e-4
    items = [
        [(json.loads(line)["id"], json.loads(line)["path"]) for line in (tmp_path / n / "items.jsonl").open()]
        for n in ("one", "two")
    ]
    assert items[0] == items[1]
    assert not any(p.name.startswith(".two.shards") for p in tmp_path.iterdir())  # staging cleaned up


def test_auto_batch_is_global_under_ddp(data: Path, tmp_path: Path):
    from pixdex.recognition.recipe import plan

    fixed = {"--batch-size": "8", "--epochs": "6"}  # the flags the automatic recipe would otherwise size
    auto = [a for i, a in enumerate(TINY) if a not in fixed and (i == 0 or TINY[i - 1] not in fixed)]
    run("train", str(data), "-o", str(tmp_path / "run"), *auto, "--epochs", "1", nproc=2)
    manifest = json.loads((tmp_path / "run" / "pixdex.json").read_text())
    recipe = manifest["recipe"]
    expected = plan(manifest["data"]["train_count"]).batch_size
    assert recipe["processes"] == 2 and recipe["batch_size"] == expected
    assert recipe["per_process_batch_size"] == expected // 2 == manifest["config"]["runtime"]["batch_size"]


def test_ema_under_ddp(data: Path, tmp_path: Path):
    # every process averages its own, identical parameters (DDP keeps them equal), so rank 0's
    # average, which is saved, is the average of the run; one update per optimiser step
    from safetensors.torch import load_file

    out = tmp_path / "run"
    fixed = TINY.index("--epochs")
    args = TINY[:fixed] + TINY[fixed + 2 :] + ["--epochs", "2", "--set", "train.ema_decay=0.9"]
    run("train", str(data), "-o", str(out), *args, nproc=2)
    manifest = json.loads((out / "pixdex.json").read_text())
    last = json.loads((out / "last.json").read_text())
    assert last["ema_updates"] == 2 * manifest["recipe"]["steps_per_epoch"]
    tensors = load_file(out / "last.safetensors")
    weights = [k for k in tensors if k.startswith("ema.") and k.endswith("weight")]
    assert weights and any(not (tensors[k] == tensors["model." + k[4:]]).all() for k in weights)
    assert manifest["best_weights"] in ("live", "ema")
    assert manifest["metrics"]["last"]["ema_val_accuracy"] is not None
