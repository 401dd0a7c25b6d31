"""Test-time augmentation (--tta flip for evaluate and predict): flip symmetry, recorded in
the output, a warning for runs trained without flips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import invoke
from pixdex.contracts import DataInfo
from pixdex.pipeline.inference import embed_batch
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
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        embed_batch(model, x, "rotate")


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
