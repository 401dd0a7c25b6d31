"""Test-time augmentation (--tta flip, crops, flip-crops for evaluate and predict, and for
the embeddings of embed and index build): flip symmetry, centred crops, recorded in the
output and the index, a warning for runs trained without flips or crops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import invoke
from pixdex.cli.options import TTA_CHOICES
from pixdex.contracts import DataInfo
from pixdex.pipeline.inference import TTA_CROP_SIDES, TTA_MODES, centre_zoom, embed_batch
from recognition_data import make_folder_dataset

RT = ["--workers", "0", "--device", "cpu"]
TINY = ["--backbone", "simple-cnn", "--set", "backbone.widths=[4,8]", "--set", "backbone.embed_dim=16"]
TINY += ["--batch-size", "8", "--lr", "0.01", "--epochs", "2", *RT]


def test_a_mirror_image_gets_the_same_tta_embedding(pset):
    torch.manual_seed(0)
    data = DataInfo(3, (12, 20), 3, (0.5,) * 3, (0.5,) * 3)
    model = pset.registry.build("backbone", "simple-cnn", {"widths": [4, 8], "embed_dim": 8}, data=data).eval()
    x = torch.randn(4, 3, 12, 20)
    with torch.no_grad():
        plain, mirrored = embed_batch(model, x), embed_batch(model, x.flip(-1))
        assert not torch.allclose(plain, mirrored)  # the network itself is not symmetric
        assert torch.allclose(embed_batch(model, x, "flip"), embed_batch(model, x.flip(-1), "flip"), atol=1e-6)
        for tta in ("flip-crops",):  # centre crops commute with the mirror
            assert torch.allclose(embed_batch(model, x, tta), embed_batch(model, x.flip(-1), tta), atol=1e-6)
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        embed_batch(model, x, "rotate")


def test_centre_zoom_is_the_centre_crop_resized_back():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    zoomed = centre_zoom(x, 0.5)
    # the central 4 x 4 pixels, upsampled to 8 x 8; the outer ring differs only in how
    # each resampler treats the crop's edge (grid_sample reads the pixels beyond it)
    expected = F.interpolate(x[..., 2:6, 2:6], size=(8, 8), mode="bilinear", align_corners=False)
    assert zoomed.shape == x.shape
    assert torch.allclose(zoomed[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=1e-4)
    assert torch.allclose(centre_zoom(x, 1.0), x, atol=1e-4)


def test_crops_average_the_image_and_its_centre_crops(pset):
    torch.manual_seed(0)
    data = DataInfo(1, (16, 16), 1, (0.5,), (0.5,))
    model = pset.registry.build("backbone", "simple-cnn", {"widths": [4, 8], "embed_dim": 8}, data=data).eval()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        views = [x] + [centre_zoom(x, side) for side in TTA_CROP_SIDES]
        expected = sum(model(v) for v in views) / len(views)
        assert torch.allclose(embed_batch(model, x, "crops"), expected, atol=1e-6)
        mirrored = views + [v.flip(-1) for v in views]
        both = sum(model(v) for v in mirrored) / len(mirrored)
        assert torch.allclose(embed_batch(model, x, "flip-crops"), both, atol=1e-6)


def test_the_cli_offers_every_tta_mode():
    assert TTA_CHOICES == TTA_MODES


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tta")
    data = make_folder_dataset(root / "data", per_class=8, test_per_class=4, seed=6)
    result = invoke("-q", "train", str(data), "-o", str(root / "run"), *TINY)
    assert result.exit_code == 0, result.stderr
    return root / "run", data


def test_evaluate_records_tta_and_warns_without_flip_training(run: tuple[Path, Path]):
    run_dir, data = run
    plain = invoke("evaluate", str(run_dir), str(data), "--json", *RT)
    flipped = invoke("evaluate", str(run_dir), str(data), "--json", "--tta", "flip", *RT)
    assert plain.exit_code == 0 and flipped.exit_code == 0, flipped.stderr
    assert json.loads(plain.stdout)["tta"] == "none" and json.loads(flipped.stdout)["tta"] == "flip"
    assert "trained without flips" in flipped.stderr and "trained without flips" not in plain.stderr
    assert "trained without random crops" not in flipped.stderr
    both = invoke("evaluate", str(run_dir), str(data), "--json", "--tta", "flip-crops", *RT)
    assert both.exit_code == 0, both.stderr
    assert json.loads(both.stdout)["tta"] == "flip-crops"
    assert "trained without flips" in both.stderr and "trained without random crops" in both.stderr


def test_predict_rows_record_tta(run: tuple[Path, Path]):
    run_dir, data = run
    image = sorted((data / "test" / "top").iterdir())[0]
    result = invoke("predict", str(run_dir), str(image), "--json", "--tta", "flip", *RT)
    assert result.exit_code == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["tta"] == "flip" and 0 <= row["probability"] <= 1


def test_tta_on_an_index_folder_is_refused(run: tuple[Path, Path], tmp_path: Path):
    run_dir, data = run
    index = tmp_path / "index"
    built = invoke("index", "build", str(run_dir), str(data / "train"), "-o", str(index), "--index", "flat", *RT)
    assert built.exit_code == 0, built.stderr
    image = sorted((data / "test" / "top").iterdir())[0]
    result = invoke("predict", str(index), str(image), "--tta", "flip", *RT)
    assert result.exit_code == 2 and "--tta applies to a run folder" in result.stderr


def _mirror(image: Path, out: Path) -> Path:
    from PIL import Image, ImageOps

    with Image.open(image) as im:
        ImageOps.mirror(im).save(out)
    return out


def flip_index(run_dir: Path, data: Path, tmp_path: Path, tta: str = "flip") -> Path:
    """An index of DATA's training images built with ``--tta tta``."""
    index = tmp_path / "index"
    built = invoke("index", "build", str(run_dir), str(data / "train"), "-o", str(index), "--tta", tta, *RT)
    assert built.exit_code == 0, built.stderr
    return index


def test_an_index_built_with_tta_finds_an_items_mirror_image_at_score_one(run: tuple[Path, Path], tmp_path: Path):
    # the index records --tta, so the query (a mirror image the index never saw) is embedded
    # the same way as the items: the mean of both views is the same vector for both images
    run_dir, data = run
    item = sorted((data / "train" / "top").iterdir())[0]
    mirror = _mirror(item, tmp_path / "mirror.png")
    scores = {}
    for tta in ("none", "flip"):
        index = tmp_path / f"index-{tta}"
        built = invoke(
            "index", "build", str(run_dir), str(data / "train"), "-o", str(index), "--tta", tta, "--json", *RT
        )
        assert built.exit_code == 0, built.stderr
        assert json.loads(built.stdout)["tta"] == tta
        assert ("trained without flips" in built.stderr) == (tta == "flip")
        found = invoke("search", str(index), str(mirror), "-k", "1", "--json", *RT)
        assert found.exit_code == 0, found.stderr
        (match,) = json.loads(found.stdout)[0]["matches"]
        scores[tta] = (match["path"], match["score"])
    assert scores["flip"][0] == str(item) and scores["flip"][1] == pytest.approx(1.0, abs=1e-5)
    assert scores["none"][1] < 0.9999  # without it the mirror image is another vector


def test_index_add_embeds_with_the_recorded_tta(run: tuple[Path, Path], tmp_path: Path):
    run_dir, data = run
    index = flip_index(run_dir, data, tmp_path, tta="flip-crops")  # six views, symmetric too
    item = sorted((data / "train" / "top").iterdir())[0]
    new = tmp_path / "new"
    new.mkdir()
    _mirror(item, new / "mirror.png")
    added = invoke("index", "add", str(index), str(new), *RT)
    assert added.exit_code == 0, added.stderr
    rows = [json.loads(line) for line in (index / "items.jsonl").read_text().splitlines()]
    row_of = {r["path"]: r["row"] for r in rows}
    embeddings = np.load(index / "embeddings.npy")
    assert np.allclose(embeddings[row_of[str(new / "mirror.png")]], embeddings[row_of[str(item)]], atol=1e-5)


def test_embed_tta_carries_into_an_index_built_from_the_embeddings(run: tuple[Path, Path], tmp_path: Path):
    run_dir, data = run
    emb = tmp_path / "emb"
    made = invoke("embed", str(run_dir), str(data / "train"), "-o", str(emb), "--tta", "flip", *RT)
    assert made.exit_code == 0, made.stderr
    assert json.loads((emb / "manifest.json").read_text())["tta"] == "flip"
    index = tmp_path / "index"
    built = invoke("index", "build", "--from-embeddings", str(emb), "-o", str(index), "--json", *RT)
    assert built.exit_code == 0, built.stderr
    assert json.loads(built.stdout)["tta"] == "flip"
    again = invoke("index", "build", "--from-embeddings", str(emb), "-o", str(tmp_path / "i2"), "--tta", "flip", *RT)
    assert again.exit_code == 1 and "--from-embeddings keeps the test-time augmentation" in again.stderr
    assert "Traceback" not in again.stderr


def test_an_index_built_with_tta_is_not_exported(run: tuple[Path, Path], tmp_path: Path):
    run_dir, data = run
    index = flip_index(run_dir, data, tmp_path)
    result = invoke("export", str(index), "-o", str(tmp_path / "exp"))
    assert result.exit_code == 1 and "built with --tta flip" in result.stderr


def test_serve_embeds_uploads_with_the_recorded_tta(run: tuple[Path, Path], tmp_path: Path):
    pytest.importorskip("starlette", reason="pixdex[serve] is part of [dev]")
    from conftest import serve_client, upload

    run_dir, data = run
    index = flip_index(run_dir, data, tmp_path)
    item = sorted((data / "train" / "top").iterdir())[0]
    mirror = _mirror(item, tmp_path / "mirror.png")
    with serve_client(index, cache_dir=tmp_path / "cache") as client:
        response = client.post("/api/search", **upload(("mirror.png", mirror.read_bytes()), k=1))
    assert response.status_code == 200, response.text
    (match,) = response.json()[0]["matches"]
    assert match["path"] == str(item) and match["score"] == pytest.approx(1.0, abs=1e-5)
