"""The automatic recipe: sizing as a pure function of the data, the auto backbone rule,
best-epoch selection, early stopping, the memory cap, and explicit settings beating auto.

The rules are tested as pure functions over many collection sizes; the end-to-end tests
train tiny real runs on generated PNGs through the CLI in-process."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pixdex.recognition.train as train_module
from conftest import invoke
from pixdex.recognition import recipe
from pixdex.recognition.recipe import auto_batch_size, auto_epochs, choose_backbone, drops_last, plan, steps_per_epoch
from recognition_data import make_folder_dataset

RT = ["--workers", "0", "--device", "cpu"]
SMALL_CNN = ["--set", "backbone.widths=[4]", "--set", "backbone.embed_dim=8"]


# --- sizing: pure functions ------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, 17, 64, 300, 450, 1000, 1278, 2500, 5000, 12000, 54000, 600_000])
def test_auto_batch_and_epochs_for_many_sizes(n: int):
    batch = auto_batch_size(n)
    assert batch & (batch - 1) == 0, "a power of two"
    assert batch <= 2 ** math.ceil(math.log2(max(n, 1))) and batch <= 256
    if n >= 16:
        assert batch >= 16
    steps = steps_per_epoch(n, batch)
    epochs = auto_epochs(n, batch, pretrained=False)
    assert 10 <= epochs <= 20
    if 640 <= n <= 10240:  # the range where the batch can aim at ~40 steps an epoch
        assert 20 <= steps <= 80
    if epochs < 20:  # not capped: the step target is met
        assert epochs * steps >= 800 or epochs == 10
    fine = auto_epochs(n, batch, pretrained=True)
    assert 5 <= fine <= 15 and fine <= epochs


def test_sizing_figures_of_the_issue():
    assert auto_batch_size(1278) == 32 and steps_per_epoch(1278, 32) == 40  # 39 full + 30 kept
    assert auto_epochs(1278, 32, pretrained=False) == 20
    assert auto_batch_size(54000) == 256 and auto_epochs(54000, 256, pretrained=False) == 10
    assert auto_batch_size(300) == 16
    assert auto_batch_size(5) == 8  # never far above the collection


def test_memory_cap_halves_the_batch():
    assert auto_batch_size(54000, max_fit=100) == 64
    assert auto_batch_size(54000, max_fit=0) == 1
    capped = plan(54000, max_fit=100)
    assert capped.batch_size == 64 and any("memory budget" in r for r in capped.reasons)
    assert not plan(54000, max_fit=10_000).reasons


@pytest.mark.parametrize(
    "n, batch, dropped",
    [(1278, 32, False), (1000, 32, False), (1025, 32, True), (1026, 32, True), (20, 32, False), (64, 32, False)],
)
def test_only_a_tiny_last_batch_is_dropped(n: int, batch: int, dropped: bool):
    assert drops_last(n, batch) is dropped
    full, rest = divmod(n, batch)
    assert steps_per_epoch(n, batch) == max(1, full + (rest > 0 and not dropped))


def test_plan_keeps_explicit_values_and_early_stops_only_with_auto_epochs():
    assert plan(1278, batch_size=100, epochs=3, early_stop="auto") == recipe.Recipe(100, 3, 13, 0)
    auto = plan(1278)
    assert auto.early_stop == max(4, auto.epochs // 3)
    assert plan(1278, early_stop=2).early_stop == 2
    assert plan(1278, epochs=7, early_stop=2).early_stop == 2


# --- the auto backbone rule --------------------------------------------------------------------


def test_backbone_rule():
    grey = choose_backbone(1, 28, pretrained_installed=True)
    assert grey.backbone == {"name": "simple-cnn"} and grey.transform_preset is None and not grey.pretrained
    tiny_colour = choose_backbone(3, 32, pretrained_installed=True)
    assert tiny_colour.backbone == {"name": "simple-cnn"} and tiny_colour.rule.endswith("at native size")
    icons = choose_backbone(3, 32, pretrained_installed=True, mixed_sizes=True)  # 16-256 px icons
    assert icons.backbone == {"name": "simple-cnn"} and "median short side" in icons.rule
    photos = choose_backbone(3, 96, pretrained_installed=True)
    assert photos.backbone == {"name": "timm:tf_efficientnet_lite0", "pretrained": True, "input_size": 96}
    assert photos.pretrained
    assert photos.transform_preset == "photos" and photos.train["lr"] < 0.002
    fallback = choose_backbone(3, 96, pretrained_installed=False)
    assert fallback.backbone["name"] == "simple-cnn" and fallback.backbone["input_size"] == 112
    assert "pip install 'pixdex[pretrained]'" in fallback.note


@pytest.mark.parametrize(("short_side", "size"), [(64, 96), (96, 96), (100, 128), (128, 128), (200, 224), (1080, 224)])
def test_fine_tuning_trains_at_the_images_own_scale(short_side, size):
    assert recipe.pretrained_input_size(short_side) == size


def colour_photos(root: Path, per_class: int = 6, size: tuple[int, int] = (80, 72)) -> Path:
    """Colour PNGs of photo size whose dominant hue is the class."""
    rng = np.random.default_rng(5)
    for c, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            a = rng.integers(0, 90, (size[1], size[0], 3)).astype(np.uint8)
            a[..., c] += 140
            Image.fromarray(a, "RGB").save(root / name / f"{i}.png")
    return root


def train(data: Path, run: Path, *args: str, monkeypatch: pytest.MonkeyPatch | None = None):
    result = invoke("train", str(data), "-o", str(run), *RT, "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), result.stderr, json.loads((run / "pixdex.json").read_text())


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_photos(tmp_path_factory.mktemp("photos"))


def test_auto_backbone_photos_without_the_extra_fall_back_with_a_note(photos, tmp_path, monkeypatch):
    monkeypatch.setattr(recipe, "pretrained_available", lambda: False)  # the extra is absent
    out, err, manifest = train(photos, tmp_path / "run", "--epochs", "1")
    backbone = manifest["config"]["backbone"]
    assert backbone["name"] == "simple-cnn" and backbone["input_size"] == 112
    assert manifest["config"]["transform"]["flip"] == 0.5  # the photos preset's augmentation
    assert manifest["config"]["transform"]["scale"] == [0.85, 1.0]
    assert "pip install 'pixdex[pretrained]'" in err
    assert "backbone auto: colour photos, short side 72 px -> simple-cnn at 112 px" in err
    assert out["recipe"]["backbone_rule"].startswith("colour photos")


def test_auto_backbone_photos_with_the_extra_fine_tune_lite0(photos, tmp_path, monkeypatch):
    monkeypatch.setattr(recipe, "pretrained_available", lambda: True)  # installed in [dev]
    out, err, manifest = train(photos, tmp_path / "run", "--epochs", "1", "--batch-size", "6")
    config = manifest["config"]
    assert config["backbone"]["name"] == "timm:tf_efficientnet_lite0" and config["backbone"]["pretrained"]
    assert config["train"]["lr"] == recipe.PRETRAINED_TRAIN["lr"]
    assert config["train"]["head_lr_mult"] == recipe.PRETRAINED_TRAIN["head_lr_mult"]
    assert "(ImageNet-pretrained), fine-tuned at 96 px" in err
    assert config["backbone"]["input_size"] == 96  # 72 px photos: not upsampled to 224


def test_auto_backbone_small_grey_images_train_simple_cnn_natively(tmp_path, monkeypatch):
    monkeypatch.setattr(recipe, "pretrained_available", lambda: True)  # even with the extra
    data = make_folder_dataset(tmp_path / "grey", per_class=8)
    out, err, manifest = train(data, tmp_path / "run", "--epochs", "1")
    config = manifest["config"]
    assert config["backbone"]["name"] == "simple-cnn" and config["backbone"]["input_size"] == "auto"
    assert config["transform"]["flip"] == 0.0
    assert "greyscale images, short side 16 px -> simple-cnn from scratch at native size" in err


def test_explicit_settings_beat_auto(photos, tmp_path, monkeypatch):
    monkeypatch.setattr(recipe, "pretrained_available", lambda: True)
    config_file = tmp_path / "c.toml"
    config_file.write_text("[train]\nlr = 0.02\n")
    out, err, manifest = train(
        photos,
        tmp_path / "run",
        "--config",
        str(config_file),
        "--backbone",
        "simple-cnn",
        *SMALL_CNN,
        "--batch-size",
        "5",
        "--epochs",
        "2",
        "--early-stop",
        "1",
        "--set",
        "transform.flip=0.25",
    )
    config = manifest["config"]
    assert config["backbone"]["name"] == "simple-cnn" and config["backbone"]["input_size"] == "auto"
    assert config["runtime"]["batch_size"] == 5 and config["train"]["epochs"] == 2
    assert config["train"]["early_stop"] == 1 and config["train"]["lr"] == 0.02
    assert config["transform"]["flip"] == 0.25
    assert out["recipe"]["auto"] == [] and out["recipe"]["backbone_rule"] is None
    # a preset is explicit too: 'classic' is the old fixed recipe
    _, _, classic = train(photos, tmp_path / "classic", "--preset", "classic", *SMALL_CNN, "--epochs", "1")
    assert classic["config"]["backbone"]["name"] == "simple-cnn"
    assert classic["config"]["runtime"]["batch_size"] == 256
    assert classic["config"]["transform"]["flip"] == 0.5


def test_backbone_options_without_a_backbone_name_are_refused(tmp_path):
    data = make_folder_dataset(tmp_path / "d", per_class=4)
    result = invoke("train", str(data), "-o", str(tmp_path / "run"), *RT, *SMALL_CNN)
    assert result.exit_code == 2
    assert "backbone 'auto' chooses the backbone from the data" in result.stderr
    assert "--backbone simple-cnn" in result.stderr


# --- the recipe recorded, best epoch, early stopping ------------------------------------------


@pytest.fixture(scope="module")
def grey(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("grey"), per_class=12)


def history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_auto_recipe_is_printed_and_recorded_as_numbers(grey, tmp_path):
    out, err, manifest = train(grey, tmp_path / "run", "--backbone", "simple-cnn", *SMALL_CNN)
    line = next(x for x in err.splitlines() if x.startswith("pixdex: recipe:"))
    n_train = out["train_count"]
    expected = plan(n_train)
    assert line.startswith(f"pixdex: recipe: {n_train} training images -> batch {expected.batch_size}, ")
    assert "auto: batch_size, epochs, early_stop" in line
    config = manifest["config"]
    assert config["runtime"]["batch_size"] == expected.batch_size
    assert config["train"]["epochs"] == expected.epochs and config["train"]["early_stop"] == expected.early_stop
    assert manifest["recipe"]["auto"] == ["batch_size", "epochs", "early_stop"]
    rows = history(tmp_path / "run")
    assert [int(r["best"]) for r in rows].count(1) == 1
    best = next(int(r["epoch"]) for r in rows if r["best"] == "1")
    assert best == manifest["best_epoch"] == out["best_epoch"]
    accuracies = [float(r["val_accuracy"]) for r in rows]
    losses = [float(r["val_loss"]) for r in rows]
    assert accuracies[best - 1] == max(accuracies)  # ties broken by a clearly lower loss:
    tied = [i for i, a in enumerate(accuracies) if a == max(accuracies)]
    assert losses[best - 1] <= min(losses[i] for i in tied) + train_module.LOSS_TIE_MARGIN
    if manifest["stopped_early"]:
        assert len(rows) - best >= expected.early_stop and len(rows) < expected.epochs
    else:
        assert len(rows) == expected.epochs


def test_early_stop_ends_training_when_validation_stops_improving(grey, tmp_path):
    # lr 1e-9: the weights barely move, so validation stops improving once the batch-norm
    # running statistics have settled (their drift lowers the loss for a few epochs)
    out, err, manifest = train(
        grey,
        tmp_path / "run",
        "--backbone",
        "simple-cnn",
        *SMALL_CNN,
        "--epochs",
        "9",
        "--early-stop",
        "2",
        "--lr",
        "1e-9",
    )
    stopped, best = out["epochs"], out["best_epoch"]
    assert out["stopped_early"] is True and stopped < 9 and stopped - best == 2
    assert f"early stop after epoch {stopped}: no improvement for 2 epochs (best epoch {best})" in err
    assert manifest["status"] == "complete" and manifest["stopped_early"] is True
    # resuming a run that stopped early says how to go on, instead of stopping again at once
    result = invoke("train", str(grey), "-o", str(tmp_path / "run"), *RT, "--resume")
    assert result.exit_code == 2 and f"stopped early after epoch {stopped}" in result.stderr
    result = invoke("train", str(grey), "-o", str(tmp_path / "run"), *RT, "--resume", "--early-stop", "0")
    assert result.exit_code == 0, result.stderr
    assert len(history(tmp_path / "run")) == 9


def test_without_validation_the_last_epoch_is_kept(grey, tmp_path):
    out, err, _ = train(
        grey, tmp_path / "run", "--backbone", "simple-cnn", *SMALL_CNN, "--epochs", "3", "--val-fraction", "0"
    )
    assert "no validation images" in err and "keeps the last epoch" in err
    assert out["best_epoch"] == 3 and out["val_count"] == 0
    assert [r["best"] for r in history(tmp_path / "run")] == ["0", "0", "1"]


def test_metric_learning_loss_is_selected_by_knn_accuracy(grey, tmp_path):
    out, _, _ = train(
        grey, tmp_path / "run", "--backbone", "simple-cnn", *SMALL_CNN, "--loss", "triplet", "--epochs", "2"
    )
    assert all(r["val_accuracy"] is not None and 0 <= r["val_accuracy"] <= 1 for r in (out["best"], out["last"]))


def test_small_memory_budget_caps_the_auto_batch(tmp_path):
    data = make_folder_dataset(tmp_path / "d", per_class=200, size=32)
    free, _, manifest = train(data, tmp_path / "free", "--backbone", "simple-cnn", "--epochs", "1")
    tight, err, tight_manifest = train(
        data, tmp_path / "tight", "--backbone", "simple-cnn", "--epochs", "1", "--set", "runtime.memory_budget_mb=1"
    )
    assert free["recipe"]["batch_size"] == auto_batch_size(free["train_count"])
    assert tight["recipe"]["batch_size"] < free["recipe"]["batch_size"]
    assert "capped" in err and "by the memory budget" in err


def test_validation_ties_in_accuracy_are_broken_by_a_clearly_lower_loss():
    better = train_module.better
    margin = train_module.LOSS_TIE_MARGIN
    assert better((0.9, -0.5), (0.8, -0.1))  # accuracy first
    assert not better((0.8, -0.1), (0.9, -0.5))
    assert better((1.0, -0.30), (1.0, -0.45))  # saturated accuracy: the lower loss wins...
    assert not better((1.0, -0.45 + margin / 2), (1.0, -0.45))  # ...only by more than the margin
    assert not better((1.0, -0.45), (1.0, -0.45))
    assert better((-0.2,), (-0.3,)) and not better((-0.3,), (-0.2,))  # loss alone
    assert better((0.9, -0.2), (0.9,)) is False  # a score without a loss (older runs): accuracy only
