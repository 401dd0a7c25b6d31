"""Mixup and CutMix (train.mixup_alpha, train.cutmix_alpha): soft targets that match the
pixels actually blended, losses that take them, and a one-line refusal for those that do not."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import invoke
from pixdex.recognition.mixing import BatchMixer, MixSettings, cutmix_box
from recognition_data import make_folder_dataset

TINY = ["--backbone", "simple-cnn", "--set", "backbone.widths=[4,8]", "--set", "backbone.embed_dim=16"]
TINY += ["--batch-size", "8", "--workers", "0", "--device", "cpu", "--lr", "0.01", "--epochs", "2"]
MIX = ["--set", "train.mixup_alpha=0.4", "--set", "train.cutmix_alpha=1.0"]


def constant_batch(n: int = 6, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is filled with the value i and has label i: a mixed image tells its partners."""
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size, size).contiguous()
    return images, torch.arange(n)


def test_mixup_targets_are_the_blend_of_the_pixels():
    torch.manual_seed(0)
    images, labels = constant_batch()
    mixed, targets, dominant = BatchMixer(MixSettings(mixup_alpha=0.4), 6).mix(images, labels)
    assert torch.allclose(targets.sum(1), torch.ones(6))
    for i in range(6):
        # pixel value = sum_c target[i, c] * c: the labels carry exactly the blend of the images
        assert torch.allclose(mixed[i], torch.full_like(mixed[i], float(targets[i] @ torch.arange(6.0))), atol=1e-5)
        assert targets[i, dominant[i]] >= 0.5 - 1e-6


def test_cutmix_targets_are_the_share_of_pasted_pixels():
    torch.manual_seed(1)
    images, labels = constant_batch(size=16)
    mixed, targets, _ = BatchMixer(MixSettings(cutmix_alpha=1.0), 6).mix(images, labels)
    pasted = (mixed[:, 0] != images[:, 0]).float().mean(dim=(1, 2))
    own = targets[torch.arange(6), labels]
    moved = own < 1  # images paired with themselves keep all their pixels
    assert torch.allclose(1 - own[moved], pasted[moved], atol=1e-6)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.9, 1.0])
def test_cutmix_box_clips_and_reports_what_it_left(lam: float):
    torch.manual_seed(2)
    for _ in range(20):
        top, bottom, left, right, kept = cutmix_box(10, 14, lam)
        assert 0 <= top <= bottom <= 10 and 0 <= left <= right <= 14
        assert kept == pytest.approx(1 - (bottom - top) * (right - left) / 140)
        assert kept >= lam - 1e-9  # clipping only ever pastes less


def test_a_batch_not_drawn_for_mixing_is_untouched():
    images, labels = constant_batch()
    mixed, targets, dominant = BatchMixer(MixSettings(mixup_alpha=1.0, prob=0.0), 6).mix(images, labels)
    assert mixed is images and torch.equal(targets, F.one_hot(labels, 6).float()) and torch.equal(dominant, labels)


def test_cross_entropy_takes_soft_targets(pset):
    loss = pset.registry.build("loss", "cross-entropy", {"label_smoothing": 0.1}, embed_dim=4, num_classes=3)
    assert loss.soft_targets
    emb, labels = torch.randn(5, 4), torch.tensor([0, 2, 1, 1, 0])
    assert torch.allclose(loss(emb, labels), loss(emb, F.one_hot(labels, 3).float()))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("mixdata"), per_class=10, seed=4)


def test_training_with_mixing_is_deterministic(data: Path, tmp_path: Path):
    losses = []
    for name in ("a", "b"):
        result = invoke("-q", "train", str(data), "-o", str(tmp_path / name), *TINY, *MIX)
        assert result.exit_code == 0, result.stderr
        with open(tmp_path / name / "history.csv") as fh:
            losses.append([row["train_loss"] for row in csv.DictReader(fh)])
    assert losses[0] == losses[1] and len(losses[0]) == 2
    plain = invoke("-q", "train", str(data), "-o", str(tmp_path / "plain"), *TINY)
    assert plain.exit_code == 0, plain.stderr
    with open(tmp_path / "plain" / "history.csv") as fh:
        assert [row["train_loss"] for row in csv.DictReader(fh)] != losses[0]  # mixing changed the batches


@pytest.mark.parametrize("loss", ["triplet", "supcon", "arcface"])
def test_losses_without_soft_targets_are_refused(data: Path, tmp_path: Path, loss: str):
    result = invoke("train", str(data), "-o", str(tmp_path / "run"), *TINY, "--loss", loss, *MIX)
    assert result.exit_code == 2, result.stderr
    assert f"loss '{loss}' takes only hard labels" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
