"""The weight average (train.ema_decay): the update rule, model selection, exact resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import invoke
from pixdex.recognition.ema import WeightAverage, effective_decay
from recognition_data import make_folder_dataset

TINY = ["--backbone", "simple-cnn", "--set", "backbone.widths=[4,8]", "--set", "backbone.embed_dim=16"]
TINY += ["--batch-size", "8", "--workers", "0", "--device", "cpu", "--lr", "0.01", "--val-fraction", "0.2"]
EMA = ["--set", "train.ema_decay=0.9"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("emadata"), per_class=10, seed=3)


def train(data: Path, run: Path, *args: str) -> None:
    result = invoke("-q", "train", str(data), "-o", str(run), *TINY, *args)
    assert result.exit_code == 0, result.stderr


def test_update_rule_with_its_warm_up():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = WeightAverage(model, decay=0.99)
    start = {k: v.clone() for k, v in ema.state.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(4, 2))  # moves the running statistics and the step counter
    ema.update(model)
    d = effective_decay(0.99, 0)
    assert d == pytest.approx(0.1)  # (1 + 0) / (10 + 0): the random start is forgotten fast
    live = model.state_dict()
    for key in ("0.weight", "0.bias", "1.running_mean", "1.running_var"):
        assert torch.allclose(ema.state[key], d * start[key] + (1 - d) * live[key])
    assert ema.state["1.num_batches_tracked"] == live["1.num_batches_tracked"] == 1  # integers are copied
    assert effective_decay(0.99, 10_000) == 0.99 and ema.updates == 1


def test_swapped_weights_are_put_back_even_on_an_error():
    model = nn.Linear(3, 1)
    ema = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(2.0)
    live = model.weight.clone()
    with pytest.raises(RuntimeError), ema.swapped_into(model):
        assert not torch.equal(model.weight, live)  # the average is in place
        raise RuntimeError("validation failed")
    assert torch.equal(model.weight, live)


def test_without_validation_the_average_is_the_model(data: Path, tmp_path: Path):
    run = tmp_path / "run"
    train(data, run, "--epochs", "2", "--val-fraction", "0", *EMA)
    manifest = json.loads((run / "pixdex.json").read_text())
    assert manifest["best_weights"] == "ema" and manifest["best_epoch"] == 2
    model, last = load_file(run / "model.safetensors"), load_file(run / "last.safetensors")
    assert model and all(torch.equal(model[k], last[f"ema.{k}"]) for k in model)
    assert any(not torch.equal(model[k], last[f"model.{k}"]) for k in model)  # not the live weights
    assert json.loads((run / "last.json").read_text())["ema_updates"] == manifest["recipe"]["steps_per_epoch"] * 2


def test_both_are_validated_and_the_better_is_kept(data: Path, tmp_path: Path):
    run = tmp_path / "run"
    train(data, run, "--epochs", "3", *EMA)
    with open(run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert all(r["ema_val_accuracy"] != "" and r["val_accuracy"] != "" for r in rows)
    manifest = json.loads((run / "pixdex.json").read_text())
    best = next(r for r in rows if r["best"] == "1")
    live, average = float(best["val_accuracy"]), float(best["ema_val_accuracy"])
    assert manifest["best_weights"] == ("ema" if average > live else "live")
    scores = [max(float(r["val_accuracy"]), float(r["ema_val_accuracy"])) for r in rows]
    assert max(scores) == scores[int(best["epoch"]) - 1]  # the best epoch has the best of either


def test_resume_continues_the_average_exactly(data: Path, tmp_path: Path):
    train(data, tmp_path / "straight", "--epochs", "4", *EMA)
    train(data, tmp_path / "split", "--epochs", "2", "--set", "train.schedule_epochs=4", *EMA)
    train(data, tmp_path / "split", "--epochs", "4", "--resume")
    a, b = (load_file(tmp_path / name / "last.safetensors") for name in ("straight", "split"))
    ema_keys = [k for k in a if k.startswith("ema.")]
    assert ema_keys and all(torch.equal(a[k], b[k]) for k in ema_keys)


@pytest.mark.parametrize("decay", ["1.0", "-0.5"])
def test_a_bad_decay_is_one_line(data: Path, tmp_path: Path, decay: str):
    result = invoke(
        "train", str(data), "-o", str(tmp_path / "run"), *TINY, "--epochs", "1", "--set", f"train.ema_decay={decay}"
    )
    assert result.exit_code == 2 and "train.ema_decay" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
