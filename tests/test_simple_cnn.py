"""The built-in ``simple-cnn`` backbone, built through the real plugin manager."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch
from torch import nn

from pixdex.contracts import DataInfo
from pixdex.errors import ConfigError

MNIST = DataInfo(in_chans=1, native_size=(28, 28), num_classes=10, mean=(0.13,), std=(0.31,))
PHOTOS = DataInfo(in_chans=3, native_size=None, num_classes=5, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
SMALL = {"widths": [4, 8], "embed_dim": 16}
TUTORIAL = {"convs_per_stage": 1, "batch_norm": False, "input_size": 224, "in_chans": 3, "max_grid": 0}


def build(pset: Any, options: dict | None = None, data: DataInfo = MNIST) -> Any:
    return pset.registry.build("backbone", "simple-cnn", options or {}, data=data)


def test_auto_sizes_follow_the_data(pset: Any) -> None:
    model = build(pset, SMALL, MNIST)
    assert model.data_config == {
        "input_size": [1, 28, 28],
        "mean": [0.13],
        "std": [0.31],
        "interpolation": "bilinear",
        "crop_pct": 1.0,
    }
    assert model.embed_dim == 16
    assert model.fc.in_features == 8 * 7 * 7
    model = build(pset, SMALL, PHOTOS)  # unknown (mixed) size -> 224
    assert model.data_config["input_size"] == [3, 224, 224]
    assert model.data_config["mean"] == [0.4, 0.5, 0.6]
    # a 56 x 56 map is pooled to max_grid x max_grid (8), so the head does not grow with the input
    assert model.fc.in_features == 8 * 8 * 8
    flat = build(pset, {**SMALL, "max_grid": 0}, PHOTOS)  # the tutorial's flatten
    assert flat.fc.in_features == 8 * 56 * 56
    big = build(pset, {**SMALL, "input_size": 448}, PHOTOS)
    assert big.fc.in_features == model.fc.in_features


def test_auto_keeps_a_non_square_native_size_and_caps_large_ones(pset: Any) -> None:
    model = build(pset, SMALL, DataInfo(3, (20, 36), 2, (0.5,) * 3, (0.5,) * 3))
    assert model.data_config["input_size"] == [3, 20, 36]
    assert model(torch.randn(2, 3, 20, 36)).shape == (2, 16)
    # a common size too big for an fc over every pixel falls back to 224
    model = build(pset, SMALL, DataInfo(3, (512, 512), 2, (0.5,) * 3, (0.5,) * 3))
    assert model.data_config["input_size"] == [3, 224, 224]


@pytest.mark.parametrize(("short_side", "side"), [(32, 32), (48, 48), (9, 16), (700, 224), (None, 224)])
def test_auto_trains_mixed_sizes_at_their_median_short_side(pset: Any, short_side: int | None, side: int) -> None:
    # icons of 16-256 px: their typical size, not 224 (about 50x the work for a 32 px icon)
    data = DataInfo(3, None, 4, (0.5,) * 3, (0.5,) * 3, short_side=short_side)
    model = build(pset, SMALL, data)
    assert model.data_config["input_size"] == [3, side, side]
    assert model(torch.randn(2, 3, side, side)).shape == (2, 16)


def test_explicit_sizes_and_channels_override_auto(pset: Any) -> None:
    model = build(pset, {**SMALL, "input_size": 32, "in_chans": 3}, MNIST)
    assert model.data_config["input_size"] == [3, 32, 32]
    assert model.data_config["mean"] == [0.13] * 3 and model.data_config["std"] == [0.31] * 3
    model = build(pset, {**SMALL, "input_size": 32, "in_chans": 1}, PHOTOS)
    assert model.data_config["mean"] == pytest.approx([0.5]) and model.data_config["std"] == pytest.approx([0.25])
    assert model(torch.randn(3, 1, 32, 32)).shape == (3, 16)


def test_literal_tutorial_network(pset: Any) -> None:
    model = build(pset, TUTORIAL, PHOTOS)
    conv1, conv2 = 3 * 32 * 3 * 3 + 32, 32 * 64 * 3 * 3 + 64
    fc1 = 64 * 56 * 56 * 128 + 128
    assert (conv1, conv2) == (896, 18_496)
    assert sum(p.numel() for p in model.parameters()) == conv1 + conv2 + fc1 == 25_709_632
    assert model.embed_dim == 128

    class Tutorial(nn.Module):  # the reference tutorial's CNN, without its fc2 (the loss's head)
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 32, kernel_size=3, padding=1)
            self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
            self.pool = nn.MaxPool2d(2, 2)
            self.fc1 = nn.Linear(64 * 56 * 56, 128)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.pool(torch.relu(self.conv1(x)))
            x = self.pool(torch.relu(self.conv2(x)))
            return torch.relu(self.fc1(x.view(-1, 64 * 56 * 56)))

    tutorial = Tutorial()
    with torch.no_grad():  # same tensors in the same order: the architectures match layer by layer
        for mine, theirs in zip(model.parameters(), tutorial.parameters(), strict=True):
            theirs.copy_(mine)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), tutorial(x), atol=1e-5)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"widths": [4, 8, 16], "convs_per_stage": 1},
        {"widths": [6], "kernel_size": 5, "batch_norm": False, "dropout": 0.3, "embed_dim": 7},
    ],
)
def test_forward_maps_images_to_embeddings(pset: Any, options: dict) -> None:
    model = build(pset, options, MNIST).train()
    out = model(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, model.embed_dim) and torch.isfinite(out).all()
    assert (out >= 0).all()  # the embedding is the fc's ReLU output, as in the tutorial


def test_layers_follow_the_options(pset: Any) -> None:
    model = build(pset, {"widths": [4, 8], "convs_per_stage": 2, "batch_norm": True}, MNIST)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 4, 8, 8]
    assert all(c.bias is None for c in convs)  # batch norm makes a conv bias redundant
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 4
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2
    plain = build(pset, {"widths": [4], "convs_per_stage": 1, "batch_norm": False}, MNIST)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert all(c.bias is not None for c in plain.modules() if isinstance(c, nn.Conv2d))


def test_kaiming_initialisation(pset: Any) -> None:
    model = build(pset, {"widths": [32, 64], "batch_norm": False}, MNIST)
    fc = model.fc.weight
    assert fc.std().item() == pytest.approx((2 / fc.shape[1]) ** 0.5, rel=0.05)
    assert all((m.bias == 0).all() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_channels_last_gives_the_same_embeddings(pset: Any) -> None:
    model = build(pset, SMALL, MNIST).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(got, expected, atol=1e-5)


def test_bfloat16_autocast_on_cpu(pset: Any) -> None:
    model = build(pset, SMALL, MNIST).to(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        out.float().sum().backward()
    assert out.shape == (4, 16) and out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"width": [8]}, "Unknown option 'width'.*Did you mean: widths"),
        ({"widths": []}, "widths"),
        ({"widths": [8, "x"]}, "widths"),
        ({"kernel_size": 4}, "kernel_size"),
        ({"input_size": "big"}, "input_size"),
        ({"in_chans": 2}, "in_chans"),
        ({"dropout": 1.0}, "dropout"),
        ({"input_size": 3}, "too small"),
    ],
)
def test_bad_options_are_refused(pset: Any, options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build(pset, options, MNIST)


def test_the_plugin_module_does_not_import_torch() -> None:
    code = (
        "import sys, pixdex_simple_cnn; print(sorted(m for m in ('torch', 'numpy', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
