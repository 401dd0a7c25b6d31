"""docs/reliability.md, "crashes lose nothing" at moments no crash point names: an
`index build --force` over an existing index is SIGKILLed at 5 seeded random moments; each
time the folder opens as the old index (identical results) or the complete new one, and
the next write leaves no debris."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from recognition_data import make_folder_dataset

pytestmark = pytest.mark.slow
MODEL = [
    "--set",
    "backbone.widths=[4]",
    "--set",
    "backbone.embed_dim=8",
    "--set",
    "backbone.input_size=16",
    "--workers",
    "0",
    "--device",
    "cpu",
]


def command(data: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pixdex",
        "-q",
        "index",
        "build",
        "simple-cnn",
        str(data),
        "-o",
        str(out),
        "--force",
        *MODEL,
    ]


def state(index: Path) -> tuple[int, list]:
    from pixdex.plugins import load_plugins
    from pixdex.retrieval.index_folder import open_index

    opened = open_index(index, load_plugins(entry_points=[]))
    ids, _ = opened.ann.search(np.asarray(opened.embeddings[:4]), 3)
    return len(opened.items), ids.tolist()


def test_five_random_kills(tmp_path: Path):
    old_data = make_folder_dataset(tmp_path / "old", per_class=5, seed=1)
    new_data = make_folder_dataset(tmp_path / "new", per_class=7, seed=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXDEX_")}
    original = tmp_path / "original"
    subprocess.run(command(old_data, original), check=True, env=env, capture_output=True)
    before = state(original)
    start = time.perf_counter()
    subprocess.run(command(new_data, tmp_path / "timing"), check=True, env=env, capture_output=True)
    duration = time.perf_counter() - start
    after_new = state(tmp_path / "timing")
    rng = random.Random(20261127)
    outcomes = []
    for moment in sorted(rng.uniform(0.2, 1.0) * duration for _ in range(5)):
        index = tmp_path / f"kill-{moment:.2f}"
        shutil.copytree(original, index)
        proc = subprocess.Popen(command(new_data, index), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(moment)
        proc.kill()
        proc.wait()
        got = state(index)
        assert got in (before, after_new), f"killed after {moment:.2f}s: neither old nor new"
        outcomes.append("old" if got == before else "new")
        assert not [
            p
            for p in index.rglob("*")
            if ".tmp-" in p.name or p.name.startswith(".staging-") or p.name == "commit.json"
        ]
    print("outcomes:", outcomes)
