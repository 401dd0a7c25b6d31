"""docs/reliability.md, "determinism": same seed, same data, CPU, 2 DataLoader workers ->
identical loss history, weights, embeddings and search results; augmentation draws differ
between batches, epochs and processes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import invoke as _invoke
from recognition_data import make_folder_dataset

ARGS = [
    "--backbone",
    "simple-cnn",
    "--set",
    "backbone.widths=[4,8]",
    "--set",
    "backbone.embed_dim=16",
    "--batch-size",
    "8",
    "--workers",
    "2",
    "--device",
    "cpu",
    "--epochs",
    "2",
    "--seed",
    "5",
    "--preset",
    "photos",
]


def invoke(*args: str):
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def twice(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("det")
    data = make_folder_dataset(root / "data", per_class=10, seed=3)
    out = []
    for name in ("a", "b"):
        run = root / name
        invoke("-q", "train", str(data), "-o", str(run), *ARGS)
        invoke(
            "-q", "index", "build", str(run), str(data), "-o", str(run / "index"), "--workers", "2", "--device", "cpu"
        )
        search = invoke(
            "-q",
            "search",
            str(run / "index"),
            str(data / "top"),
            "-k",
            "5",
            "--json",
            "--workers",
            "2",
            "--device",
            "cpu",
        )
        (run / "search.json").write_text(search.stdout)
        out.append(run)
    return out


def test_identical_history_and_weights(twice: list[Path]):
    a, b = twice

    def strip(run: Path) -> list[dict[str, str]]:  # all but the timing columns
        with open(run / "history.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_second")} for row in rows]

    assert strip(a) == strip(b) and len(strip(a)[0]) == 9  # 11 history columns less the 2 timings
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_identical_embeddings_and_search(twice: list[Path]):
    a, b = twice
    assert np.array_equal(np.load(a / "index" / "embeddings.npy"), np.load(b / "index" / "embeddings.npy"))
    assert json.loads((a / "search.json").read_text()) == json.loads((b / "search.json").read_text())


def test_augmentation_draws_differ_by_batch_epoch_and_process():
    from pixdex.plugins import load_plugins

    pset = load_plugins(entry_points=[])
    data_config = {
        "input_size": [3, 16, 16],
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
    }
    t = pset.registry.build("transform", "augment", {}, train=True, data_config=data_config)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    draws = {}
    for epoch in (0, 1):
        for rank in (0, 1):
            torch.manual_seed(5 * 1_000_003 + epoch * 1_009 + rank)  # the trainer's per-epoch seeding
            draws[(epoch, rank)] = (t.batch(x), t.batch(x))
    first, second = draws[(0, 0)]
    assert not torch.equal(first, second)  # successive batches draw anew
    assert not torch.equal(draws[(0, 0)][0], draws[(1, 0)][0])  # so does the next epoch
    assert not torch.equal(draws[(0, 0)][0], draws[(0, 1)][0])  # and another process
    torch.manual_seed(5 * 1_000_003)
    assert torch.equal(t.batch(x), first)  # while the same (seed, epoch, process) repeats exactly
