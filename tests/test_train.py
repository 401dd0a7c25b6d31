"""Training end to end on tiny generated images: the run folder, exact resume, determinism,
evaluate and predict, through the CLI in-process."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import TINY_CNN
from recognition_data import make_folder_dataset, pattern_image

TINY = [
    *TINY_CNN,
    "--val-fraction",
    "0.2",
]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("data"), per_class=12, test_per_class=6)


@pytest.fixture(scope="session")
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny trained run shared by the evaluate and predict tests."""
    from click.testing import CliRunner

    from pixdex.cli import build_cli
    from pixdex.plugins import load_plugins

    run = tmp_path_factory.mktemp("runs") / "run"
    result = CliRunner().invoke(
        build_cli(load_plugins(entry_points=[])),
        ["-q", "train", str(tiny_data), "-o", str(run), "--epochs", "6", "--lr", "0.01", *TINY],
    )
    assert result.exit_code == 0, result.output
    return run


def test_run_folder_contents(tiny_run: Path):
    names = {p.name for p in tiny_run.iterdir()}
    assert {
        "model.safetensors",
        "last.safetensors",
        "last.json",
        "pixdex.json",
        "history.csv",
        "skipped.jsonl",
        "curves.png",
    } <= names
    manifest = json.loads((tiny_run / "pixdex.json").read_text())
    assert manifest["status"] == "complete" and manifest["epochs_done"] == 6
    assert manifest["data"]["classes"] == ["bottom", "left", "top"]
    assert manifest["data"]["train_count"] + manifest["data"]["val_count"] == 36  # test/ never read
    assert manifest["data"]["info"]["in_chans"] == 1 and manifest["data"]["info"]["native_size"] == [16, 16]
    assert manifest["data_config"]["input_size"] == [1, 16, 16]
    keys = load_file(tiny_run / "model.safetensors").keys()
    assert any(k.startswith("backbone.") for k in keys) and any(k.startswith("head.") for k in keys)
    with open(tiny_run / "history.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 6
    assert not any(".tmp-" in n or n == "commit.json" for n in names)


def test_training_learns_the_patterns(tiny_run: Path, cli_run, tiny_data: Path):
    result = cli_run("-q", "evaluate", str(tiny_run), str(tiny_data), "--json", "--workers", "0")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["split"] == "test" and report["count"] == 18
    assert report["top1"] >= 0.8  # three trivially separable classes
    assert set(report) >= {"top1", "top5", "per_class", "count", "confusion"}
    assert {"class", "precision", "recall", "f1", "support"} == set(report["per_class"][0])
    assert sum(map(sum, report["confusion"])) == 18


def test_predict_every_format(tiny_run: Path, cli_run, tiny_data: Path, tmp_path: Path):
    folder = tiny_data / "test" / "top"
    rows = json.loads(cli_run("-q", "predict", str(tiny_run), str(folder), "--json", "-k", "2").stdout)
    assert len(rows) == 6
    assert (
        set(rows[0]) == {"path", "label", "probability", "top", "tta"}
        and len(rows[0]["top"]) == 2
        and rows[0]["tta"] == "none"
    )
    assert sum(r["label"] == "top" for r in rows) >= 5
    assert 0.0 <= rows[0]["probability"] <= 1.0
    jsonl = cli_run("-q", "predict", str(tiny_run), str(folder), "--format", "jsonl").stdout.splitlines()
    assert len(jsonl) == 6
    csv_text = cli_run("-q", "predict", str(tiny_run), str(folder), "--format", "csv").stdout
    assert csv_text.splitlines()[0] == "path,label,probability,top"


def test_predict_reports_bad_images_and_fails_when_none_read(tiny_run: Path, cli_run, tmp_path: Path):
    good = tmp_path / "good.png"
    pattern_image("top", __import__("numpy").random.default_rng(1)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    mixed = cli_run("predict", str(tiny_run), str(good), str(bad), "--json", "--workers", "0")
    assert mixed.exit_code == 0
    assert [r["path"] for r in json.loads(mixed.stdout)] == [str(good)]
    assert f"{bad}: not-an-image" in mixed.stderr
    single = cli_run("predict", str(tiny_run), str(bad))
    assert single.exit_code == 1 and single.stderr.strip().startswith("pixdex: error: cannot read")
    assert len(single.stderr.strip().splitlines()) == 1
    strict = cli_run("predict", str(tiny_run), str(good), str(bad), "--strict-images", "--workers", "0")
    assert strict.exit_code == 1


def test_existing_run_needs_resume_or_force(tiny_run: Path, tiny_data: Path, cli_run):
    result = cli_run("train", str(tiny_data), "-o", str(tiny_run), *TINY)
    assert result.exit_code == 2 and "use --resume" in result.stderr


def _train(cli_run, data: Path, out: Path, *args: str) -> None:
    result = cli_run("-q", "train", str(data), "-o", str(out), *TINY, *args)
    assert result.exit_code == 0, result.stderr


def test_resume_is_exact(tiny_data: Path, cli_run, tmp_path: Path):
    _train(cli_run, tiny_data, tmp_path / "straight", "--epochs", "4")
    _train(cli_run, tiny_data, tmp_path / "split", "--epochs", "2", "--set", "train.schedule_epochs=4")
    _train(cli_run, tiny_data, tmp_path / "split", "--epochs", "4", "--resume")
    a = load_file(tmp_path / "straight" / "last.safetensors")
    b = load_file(tmp_path / "split" / "last.safetensors")
    model_keys = [k for k in a if k.startswith("model.")]
    assert model_keys and all((a[k] == b[k]).all() for k in model_keys)
    with open(tmp_path / "split" / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    with open(tmp_path / "straight" / "history.csv") as fh:
        straight = list(csv.DictReader(fh))
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in straight]


def test_resume_refuses_config_changes(tiny_data: Path, cli_run, tmp_path: Path):
    _train(cli_run, tiny_data, tmp_path / "r", "--epochs", "1")
    result = cli_run("train", str(tiny_data), "-o", str(tmp_path / "r"), "--resume", "--epochs", "2", "--lr", "0.5")
    assert result.exit_code == 2 and "train.lr cannot change" in result.stderr


def test_same_seed_same_run(tiny_data: Path, cli_run, tmp_path: Path):
    for name in ("a", "b"):
        _train(cli_run, tiny_data, tmp_path / name, "--epochs", "2", "--seed", "3", "--transform", "augment")
    a, b = (load_file(tmp_path / n / "model.safetensors") for n in ("a", "b"))
    assert all((a[k] == b[k]).all() for k in a)
    assert (tmp_path / "a" / "history.csv").read_text().split("seconds")[0] == (
        tmp_path / "b" / "history.csv"
    ).read_text().split("seconds")[0]


def test_unlabelled_data_is_refused(cli_run, tmp_path: Path):
    import numpy as np

    (tmp_path / "flat").mkdir()
    for i in range(3):
        pattern_image("top", np.random.default_rng(i)).save(tmp_path / "flat" / f"{i}.png")
    result = cli_run("train", str(tmp_path / "flat"), "-o", str(tmp_path / "run"), *TINY)
    assert result.exit_code == 1 and "has no labels" in result.stderr


def test_all_bad_images_is_an_error_not_an_empty_model(cli_run, tmp_path: Path):
    for cls in ("a", "b"):
        (tmp_path / "bad" / cls).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "bad" / cls / f"{i}.png").write_bytes(b"")
    result = cli_run("train", str(tmp_path / "bad"), "-o", str(tmp_path / "run"), *TINY)
    assert result.exit_code == 1
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_freeze_backbone_is_a_linear_probe(tiny_data: Path, cli_run, tmp_path: Path):
    for name, lr in (("a", "0.01"), ("b", "0.05")):
        _train(cli_run, tiny_data, tmp_path / name, "--epochs", "1", "--lr", lr, "--set", "train.freeze_backbone=true")
    a, b = (load_file(tmp_path / n / "model.safetensors") for n in ("a", "b"))
    backbone = [k for k in a if k.startswith("backbone.")]
    head = [k for k in a if k.startswith("head.")]
    assert backbone and all((a[k] == b[k]).all() for k in backbone)  # frozen: the lr never touched it
    assert any(not (a[k] == b[k]).all() for k in head)


def test_unfreeze_after_and_head_lr(tiny_data: Path, cli_run, tmp_path: Path):
    _train(cli_run, tiny_data, tmp_path / "a", "--epochs", "2", "--set", "train.unfreeze_after=1")
    _train(
        cli_run,
        tiny_data,
        tmp_path / "b",
        "--epochs",
        "2",
        "--set",
        "train.unfreeze_after=1",
        "--set",
        "train.head_lr_mult=3.0",
    )
    a, b = (load_file(tmp_path / n / "model.safetensors") for n in ("a", "b"))
    assert any(not (a[k] == b[k]).all() for k in a if k.startswith("head."))


def test_metric_loss_run_predicts_through_an_index(tiny_data: Path, cli_run, tmp_path: Path):
    run = tmp_path / "triplet"
    _train(
        cli_run,
        tiny_data,
        run,
        "--epochs",
        "2",
        "--loss",
        "triplet",
        "--set",
        "loss.classes_per_batch=3",
        "--set",
        "loss.images_per_class=2",
    )
    manifest = json.loads((run / "pixdex.json").read_text())
    assert manifest["metric"] == "cosine" and manifest["has_classifier"] is False
    image = next((tiny_data / "test" / "top").iterdir())
    refused = cli_run("predict", str(run), str(image))
    assert refused.exit_code == 1 and "pixdex index build" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    index = tmp_path / "index"
    assert (
        cli_run(
            "-q",
            "index",
            "build",
            str(run),
            str(tiny_data / "train"),
            "-o",
            str(index),
            "--workers",
            "0",
            "--device",
            "cpu",
        ).exit_code
        == 0
    )
    voted = cli_run("-q", "predict", str(index), str(image), "--json", "--workers", "0", "--device", "cpu")
    assert voted.exit_code == 0 and json.loads(voted.stdout)[0]["label"] in ("top", "bottom", "left")
