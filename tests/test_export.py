"""`pixdex export`: ONNX graphs verified against PyTorch, the export folder, the deploy snippet.

Real parts throughout: tiny runs trained for one epoch on generated colour images of odd
sizes and modes (RGB, RGBA, palette, greyscale), real torch.onnx exports, ONNX Runtime.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import invoke

pytest.importorskip("onnxruntime")  # the [export] extra, part of [dev]

DOC = Path(__file__).resolve().parent.parent / "docs" / "deploying.md"
RT = ["--device", "cpu", "--workers", "0"]
CNN = ["--backbone", "simple-cnn", "--set", "backbone.widths=[4,8]", "--set", "backbone.embed_dim=16"]
CNN += ["--set", "backbone.input_size=24", "--set", "backbone.in_chans=3"]


def colour_images(root: Path, per_class: int = 6) -> Path:
    """Three classes of colour blobs, each image a different size and Pillow mode."""
    rng = np.random.default_rng(0)
    modes = ["RGB", "RGBA", "P", "L", "RGB", "RGBA"]
    for c, colour in enumerate([(200, 40, 40), (40, 180, 60), (50, 60, 210)]):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            w, h = int(rng.integers(20, 70)), int(rng.integers(20, 70))
            a = rng.integers(0, 80, (h, w, 3)).astype(np.uint8)
            a[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = colour
            im = Image.fromarray(a, "RGB")
            mode = modes[i % len(modes)]
            if mode == "RGBA":
                alpha = np.full((h, w), 255, np.uint8)
                alpha[: h // 3] = 90  # partly transparent: composited onto white
                im.putalpha(Image.fromarray(alpha, "L"))
            elif mode in ("P", "L"):
                im = im.convert(mode)
            im.save(folder / f"img{i}.png")
    return root


def train(data: Path, run: Path, *args: str) -> Path:
    result = invoke("train", str(data), "-o", str(run), *RT, "--epochs", "1", "--batch-size", "6", *args)
    assert result.exit_code == 0, result.stderr
    return run


def export(*args: str) -> Any:
    return invoke("export", *args, *RT)


@pytest.fixture(scope="session")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    data = colour_images(root / "data")
    run = train(data, root / "run", *CNN)
    result = invoke("index", "build", str(run), str(data), "-o", str(root / "index"), *RT, "--index", "flat")
    assert result.exit_code == 0, result.stderr
    result = export(str(run), "-o", str(root / "run-onnx"), "--json")
    assert result.exit_code == 0, result.stderr
    return {"root": root, "data": data, "run": run, "index": root / "index", "run_onnx": root / "run-onnx"}


def test_run_export_matches_pytorch_and_records_it(made):
    out = made["run_onnx"]
    manifest = json.loads((out / "manifest.json").read_text())
    v = manifest["verification"]
    assert v["passed"] and v["images"] == 18 and v["min_cosine"] >= 0.9999 and v["top1_agreement"] == 1.0
    assert manifest["outputs"] == ["embedding", "embedding_normalized", "logits"]
    assert manifest["source"]["kind"] == "run" and len(manifest["source"]["model_sha256"]) == 64
    pre = json.loads((out / "preprocess.json").read_text())
    assert pre["input"] == {"name": "images", "dtype": "uint8", "layout": "NCHW", "shape": ["batch", 3, 24, 24]}
    assert pre["mode"] == "RGB" and pre["resize"]["size"] == [24, 24]
    assert json.loads((out / "classes.json").read_text()) == ["class0", "class1", "class2"]
    import hashlib

    for name, fact in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == fact["sha256"]


def test_the_graph_takes_any_batch_size_and_returns_fp32(made):
    import onnxruntime as ort

    session = ort.InferenceSession(str(made["run_onnx"] / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        images = np.random.default_rng(batch).integers(0, 256, (batch, 3, 24, 24), dtype=np.uint8)
        embedding, normalized, logits = session.run(None, {"images": images})
        assert embedding.shape == (batch, 16) and logits.shape == (batch, 3) and embedding.dtype == np.float32
        assert np.allclose(np.linalg.norm(normalized, axis=1), 1.0, atol=1e-5)


def test_index_export_keeps_the_top10_neighbours(made, tmp_path):
    result = export(str(made["index"]), "-o", str(tmp_path / "idx"), "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    v = doc["verification"]
    assert v["passed"] and v["neighbours_agreement"] == 1.0 and v["neighbours_k"] == 10
    assert v["source"] == "18 indexed items" and doc["source"]["kind"] == "index"


def test_check_reverifies_an_export(exported_index):
    result = export("--check", str(exported_index), "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["verification"]["passed"] and doc["source"]["kind"] == "index"
    assert doc["verification"]["neighbours_agreement"] == 1.0


def test_engine_is_refused_by_export(made, tmp_path):
    result = export(str(made["run"]), "-o", str(tmp_path / "x"), "--engine", "onnx")
    assert result.exit_code == 2 and "--engine does not apply to export" in result.stderr


def test_missing_export_extra_is_one_line(made, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the [export] extra were absent
    result = export(str(made["run"]), "-o", str(tmp_path / "x"))
    assert result.exit_code == 1 and "pip install 'pixdex[export]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_same_neighbours_ignores_swaps_between_near_ties():
    from pixdex.export.verify import same_neighbours

    ids = np.array([[1, 2, 3], [1, 2, 3]])
    scores = np.array([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]])
    swapped = np.array([[1, 3, 2], [1, 2, 4]])
    near = scores + np.array([[0, 5e-6, -5e-6], [0, 0, 0.02]])
    assert same_neighbours(ids, scores, ids, scores).tolist() == [True, True]
    assert same_neighbours(ids, scores, swapped, near).tolist() == [True, False]


# --- the deploy snippet of docs/deploying.md, run as written ------------------------------


def deploy_snippet() -> dict[str, Any]:
    text = DOC.read_text()
    block = re.search(r"<!-- snippet: deploy -->\n```python\n(.*?)\n```", text, re.DOTALL)
    assert block, "docs/deploying.md has no deploy snippet"
    namespace: dict[str, Any] = {}
    exec(compile(block.group(1), str(DOC), "exec"), namespace)
    return namespace


def pixdex_embeddings(model: Path, paths: list[Path]) -> np.ndarray:
    from pixdex import api
    from pixdex.device import placement
    from pixdex.pipeline.runs import load_run
    from pixdex.plugins import load_plugins
    from pixdex.retrieval.embed import embed_keys

    pset = load_plugins(entry_points=[])
    run = load_run(model, pset)
    runtime = api.runtime_config(pset, flags={"runtime": {"device": "cpu", "workers": 0, "batch_size": 8}})
    embedded = embed_keys(run, [str(p) for p in paths], runtime, placement("cpu", "fp32"))
    assert len(embedded.positions) == len(paths)
    return embedded.embeddings


def snippet_agrees(export_dir: Path, model: Path, paths: list[Path]) -> np.ndarray:
    ns = deploy_snippet()
    pre, session = ns["load_export"](str(export_dir))
    got = ns["run"]([str(p) for p in paths], pre, session)["embedding"]
    want = pixdex_embeddings(model, paths)
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    return cos


def test_deploy_snippet_gives_pixdex_embeddings_for_simple_cnn(made):
    paths = sorted(made["data"].rglob("*.png"))
    assert len(snippet_agrees(made["run_onnx"], made["run"], paths)) == 18
    assert snippet_agrees(made["run_onnx"], made["run"], paths).min() >= 0.9999


@pytest.mark.timeout(300)  # torch's exporter traces lite0 for ~20 s on an idle 2-core CPU
def test_lite0_run_exports_and_the_snippet_matches(made, tmp_path):
    """tf_efficientnet_lite0 ("SAME" padding, crop_pct 0.875, bicubic): random weights,
    one epoch at 32 px; the resize rule and the padding are what this checks."""
    run = train(
        made["data"],
        tmp_path / "lite",
        "--backbone",
        "timm:tf_efficientnet_lite0",
        "--set",
        "backbone.input_size=32",
    )
    result = export(str(run), "-o", str(tmp_path / "lite-onnx"), "--json")
    assert result.exit_code == 0, result.stderr
    v = json.loads(result.stdout)["verification"]
    assert v["passed"] and v["min_cosine"] >= 0.9999 and v["top1_agreement"] == 1.0
    pre = json.loads((tmp_path / "lite-onnx" / "preprocess.json").read_text())
    assert pre["resize"]["crop_pct"] < 1.0  # the crop rule is exercised
    paths = sorted(made["data"].rglob("*.png"))
    assert snippet_agrees(tmp_path / "lite-onnx", run, paths).min() >= 0.9999


def test_unreadable_probe_images_are_skipped_and_reported(made, tmp_path):
    import shutil

    images = tmp_path / "images" / "class0"
    images.mkdir(parents=True)
    for path in sorted((made["data"] / "class0").glob("*.png"))[:3]:
        shutil.copy(path, images / path.name)
    (images / "broken.png").write_bytes((images / "img0.png").read_bytes()[:60])  # truncated
    result = export(str(made["run"]), "-o", str(tmp_path / "x"), "--images", str(tmp_path / "images"), "--json")
    assert result.exit_code == 0, result.stderr
    assert f"{images / 'broken.png'}: truncated" in result.stderr
    v = json.loads(result.stdout)["verification"]
    assert v["images"] == 3 and v["skipped"] == 1 and v["passed"]
