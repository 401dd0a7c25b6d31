"""The built-in ``standard`` and ``augment`` transforms, built through the real plugin manager."""

from __future__ import annotations

import pickle
import subprocess
import sys
from typing import Any

import pytest
import torch
from PIL import Image

from pixdex.contracts import Transform
from pixdex.errors import ConfigError

RGB = {
    "input_size": [3, 16, 16],
    "mean": [0.4, 0.5, 0.6],
    "std": [0.2, 0.25, 0.3],
    "interpolation": "bilinear",
    "crop_pct": 1.0,
}
GREY = {"input_size": [1, 16, 16], "mean": [0.5], "std": [0.25], "interpolation": "bilinear", "crop_pct": 1.0}
# augment settings under which every random step is the identity
IDENTITY = {"scale": [1.0, 1.0], "ratio": [1.0, 1.0], "flip": 0.0, "jitter": 0.0, "erasing": 0.0}


def build(
    pset: Any, name: str, options: dict | None = None, *, train: bool = True, data_config: dict | None = None
) -> Any:
    return pset.registry.build("transform", name, options or {}, train=train, data_config=data_config or RGB)


def pattern(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A random image, so any misplaced pixel shows."""
    g = torch.Generator().manual_seed(seed)
    chans = 3 if mode == "RGB" else 1
    data = torch.randint(0, 256, (height, width, chans), dtype=torch.uint8, generator=g)
    return Image.fromarray(data.squeeze(-1).numpy() if chans == 1 else data.numpy(), mode)


def pixels(image: Image.Image) -> torch.Tensor:
    """uint8[C, H, W] of a PIL image, computed independently of the plugin."""
    t = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return t.view(image.height, image.width, -1).permute(2, 0, 1)


def batch_of(n: int = 6, chans: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, chans, size, size), dtype=torch.uint8, generator=g)


# -- load: channels, resizing, cropping -------------------------------------------------------


def test_both_are_registered_and_satisfy_the_contract(pset: Any) -> None:
    for name in ("standard", "augment"):
        for train in (True, False):
            t = build(pset, name, train=train)
            assert isinstance(t, Transform)
            assert (t.in_chans, t.size, t.train) == (3, (16, 16), train)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P"])
def test_load_gives_uint8_at_the_input_size_and_channels(pset: Any, mode: str) -> None:
    image = pattern(40, 30).convert(mode)
    for data_config, chans in ((RGB, 3), (GREY, 1)):
        x = build(pset, "standard", data_config=data_config).load(image)
        assert x.dtype == torch.uint8 and x.shape == (chans, 16, 16) and x.is_contiguous()


def test_grey_is_replicated_to_rgb_and_rgb_is_converted_to_grey(pset: Any) -> None:
    grey = pattern(16, 16, "L")
    x = build(pset, "standard").load(grey)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert torch.equal(x[0], pixels(grey)[0])
    rgb = pattern(16, 16)
    assert torch.equal(build(pset, "standard", data_config=GREY).load(rgb), pixels(rgb.convert("L")))


def test_an_image_of_the_input_size_is_left_untouched(pset: Any) -> None:
    image = pattern(16, 16)
    assert torch.equal(build(pset, "standard").load(image), pixels(image))


def test_shorter_side_is_resized_then_the_centre_cropped(pset: Any) -> None:
    image = pattern(40, 20)  # landscape: the height is the shorter side
    expected = pixels(image.resize((32, 16), Image.Resampling.BILINEAR))[:, :, 8:24]
    assert torch.equal(build(pset, "standard").load(image), expected)
    portrait = pattern(20, 40)
    expected = pixels(portrait.resize((16, 32), Image.Resampling.BILINEAR))[:, 8:24, :]
    assert torch.equal(build(pset, "standard").load(portrait), expected)


def test_crop_pct_leaves_a_margin_and_skips_a_needless_resize(pset: Any) -> None:
    # 16 / 0.5 = 32: a 64x32 image already has that shorter side, so it is only cropped
    image = pattern(64, 32)
    t = build(pset, "standard", data_config={**RGB, "crop_pct": 0.5})
    assert torch.equal(t.load(image), pixels(image)[:, 8:24, 24:40])


def test_a_non_square_input_size_is_covered_before_cropping(pset: Any) -> None:
    wide = {**RGB, "input_size": [3, 8, 24]}
    x = build(pset, "standard", data_config=wide).load(pattern(30, 30))
    assert x.shape == (3, 8, 24)  # resized to 24x24 (covering the width), then cropped


def test_interpolation_comes_from_the_data_config_or_the_option(pset: Any) -> None:
    small = pattern(5, 5)
    nearest = build(pset, "standard", data_config={**RGB, "interpolation": "nearest"}).load(small)
    bilinear = build(pset, "standard").load(small)
    override = build(pset, "standard", {"interpolation": "nearest"}).load(small)
    assert torch.equal(nearest, pixels(small.resize((16, 16), Image.Resampling.NEAREST)))
    assert torch.equal(override, nearest) and not torch.equal(bilinear, nearest)
    assert torch.equal(build(pset, "augment", {"interpolation": "nearest"}).load(small), nearest)


def test_load_is_the_same_for_train_and_eval(pset: Any) -> None:
    image = pattern(50, 37)
    loads = [build(pset, name, train=train).load(image) for name in ("standard", "augment") for train in (True, False)]
    assert all(torch.equal(loads[0], x) for x in loads[1:])


# -- batch: normalisation and augmentation ---------------------------------------------------


def test_batch_normalises_with_the_data_config_statistics(pset: Any) -> None:
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 4).contiguous()
    y = build(pset, "standard").batch(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    expected = [(0 - 0.4) / 0.2, (0.2 - 0.5) / 0.25, (1.0 - 0.6) / 0.3]
    assert torch.allclose(y[:, :, 0, 0], torch.tensor([expected, expected]), atol=1e-6)


def test_statistics_are_fitted_to_the_channel_count(pset: Any) -> None:
    t = build(pset, "standard", data_config={**GREY, "mean": [0.2, 0.4, 0.6], "std": [0.5, 0.5, 0.5]})
    assert t.mean == pytest.approx((0.4,)) and t.std == pytest.approx((0.5,))
    t = build(pset, "standard", data_config={**RGB, "mean": [0.5], "std": [0.25]})
    assert t.mean == (0.5, 0.5, 0.5) and t.std == (0.25, 0.25, 0.25)


def test_augment_in_eval_equals_standard_exactly(pset: Any) -> None:
    x = batch_of()
    image = pattern(33, 21)
    for data_config in (RGB, GREY):
        standard = build(pset, "standard", train=False, data_config=data_config)
        augment = build(pset, "augment", {"erasing": 1.0, "flip": 1.0}, train=False, data_config=data_config)
        xb = x[:, : data_config["input_size"][0]].contiguous()
        assert torch.equal(augment.batch(xb), standard.batch(xb))
        assert torch.equal(augment.load(image), standard.load(image))
    # standard never augments, even when training
    assert torch.equal(build(pset, "standard", train=True).batch(x), build(pset, "standard", train=False).batch(x))


def test_augment_in_training_is_random_but_reproducible_from_the_seed(pset: Any) -> None:
    t = build(pset, "augment")
    x = batch_of()
    torch.manual_seed(123)
    first, second = t.batch(x), t.batch(x)
    assert not torch.equal(first, second)
    torch.manual_seed(123)
    assert torch.equal(t.batch(x), first) and torch.equal(t.batch(x), second)
    # samples get their own parameters: identical inputs come out different
    same = x[:1].expand(6, -1, -1, -1).contiguous()
    out = t.batch(same)
    assert not all(torch.equal(out[0], out[i]) for i in range(1, 6))


@pytest.mark.parametrize("data_config", [RGB, GREY], ids=["rgb", "grey"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_augmented_batches_are_finite_and_keep_their_shape(pset: Any, data_config: dict, channels_last: bool) -> None:
    t = build(pset, "augment", {"erasing": 0.5, "jitter": 0.3}, data_config=data_config)
    x = batch_of(8, data_config["input_size"][0], 16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(0)
    y = t.batch(x)
    assert y.dtype == torch.float32 and y.shape == x.shape and torch.isfinite(y).all()
    # values stay in the normalised range of [0, 1] pixels (jitter clamps; erasing writes 0)
    mean, std = torch.tensor(t.mean).view(1, -1, 1, 1), torch.tensor(t.std).view(1, -1, 1, 1)
    assert (y >= (0 - mean) / std - 1e-5).all() and (y <= (1 - mean) / std + 1e-5).all()
    torch.manual_seed(0)
    assert torch.allclose(t.batch(x.contiguous()), y, atol=1e-5)  # the layout does not change the result


def test_empty_batches_and_autocast_are_handled(pset: Any) -> None:
    t = build(pset, "augment")
    assert t.batch(batch_of(0)).shape == (0, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the training loop may call batch under AMP
        y = t.batch(batch_of())
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_identity_settings_reproduce_standard_and_flip_mirrors(pset: Any) -> None:
    x = batch_of()
    standard = build(pset, "standard").batch(x)
    assert torch.allclose(build(pset, "augment", IDENTITY).batch(x), standard, atol=1e-5)
    flipped = build(pset, "augment", {**IDENTITY, "flip": 1.0}).batch(x)
    assert torch.allclose(flipped, standard.flip(-1), atol=1e-5)


def test_random_erasing_blanks_one_rectangle_to_the_mean(pset: Any) -> None:
    torch.manual_seed(0)
    y = build(pset, "augment", {**IDENTITY, "erasing": 1.0}).batch(batch_of(16, size=32))
    for sample in y:
        erased = (sample == 0).all(0)
        rows, cols = erased.any(1).nonzero().flatten(), erased.any(0).nonzero().flatten()
        height, width = len(rows), len(cols)
        assert erased.sum() == height * width  # one filled rectangle
        assert rows.max() - rows.min() + 1 == height and cols.max() - cols.min() + 1 == width
        assert 0.02 * 0.5 <= height * width / 32**2 <= 0.2 * 1.5  # 2%..20%, give or take rounding


def test_random_resized_crop_zooms_in(pset: Any) -> None:
    # a left-to-right ramp: a crop of 60% of the area keeps a narrower range of columns
    ramp = torch.linspace(0, 255, 32).round().to(torch.uint8).view(1, 1, 1, 32).expand(4, 3, 32, 32).contiguous()
    t = build(pset, "augment", {**IDENTITY, "scale": [0.6, 0.6]})
    y = t.batch(ramp)
    full = build(pset, "standard").batch(ramp)
    spread = y[:, 0, 0, -1] - y[:, 0, 0, 0]
    assert (spread < 0.9 * (full[:, 0, 0, -1] - full[:, 0, 0, 0])).all() and (spread > 0).all()


def test_transforms_survive_pickling(pset: Any) -> None:
    x = batch_of()
    image = pattern(20, 24)
    for name in ("standard", "augment"):
        t = build(pset, name)
        t.batch(x)  # fills the per-device cache, which must not travel
        copy = pickle.loads(pickle.dumps(t))
        assert repr(copy) == repr(t)
        assert torch.equal(copy.load(image), t.load(image))
        torch.manual_seed(5)
        a = t.batch(x)
        torch.manual_seed(5)
        assert torch.equal(copy.batch(x), a)


def test_batch_refuses_the_wrong_channel_count(pset: Any) -> None:
    with pytest.raises(ValueError, match="expected uint8"):
        build(pset, "standard").batch(batch_of(2, 1))


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("standard", {"size": 3}, "Unknown option 'size'"),
        ("standard", {"interpolation": "cubic"}, "interpolation"),
        ("augment", {"flipp": 0.5}, "Did you mean: flip"),
        ("augment", {"flip": 1.5}, "probability"),
        ("augment", {"scale": [0.8, 0.2]}, "scale"),
        ("augment", {"jitter": "lots"}, "jitter"),
    ],
)
def test_bad_options_are_refused(pset: Any, name: str, options: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build(pset, name, options)


def test_the_plugin_module_does_not_import_torch() -> None:
    code = (
        "import sys, pixdex_transforms; print(sorted(m for m in ('torch', 'numpy', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
