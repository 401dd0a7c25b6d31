"""`--engine onnx`: the same answers as PyTorch through the model's ONNX export, made once
into a user cache (never into the run or index folder). Real exports, ONNX Runtime, the
shared tiny run and index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import CPU_RUNTIME, invoke

pytest.importorskip("onnxruntime")  # the [export] extra, part of [dev]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {"PIXDEX_CACHE_DIR": str(tmp_path_factory.mktemp("onnx-cache"))}


def run_json(*args: str, env: dict[str, str], workers: int = 0) -> tuple[object, str]:
    result = invoke(*args, "--device", "cpu", "--workers", str(workers), "--json", env=env)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def files(folder: Path) -> list[str]:
    """What a folder holds, lock files aside (readers create those)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.name.endswith("lock"))


def queries(gallery: Path) -> list[str]:
    return [str(p) for p in sorted(gallery.rglob("*.png"))[::7]]


def test_search_gives_pytorchs_top10_and_caches_the_export_outside_the_index(tiny_index, gallery, cache):
    before = files(tiny_index)
    torch_rows, _ = run_json("search", str(tiny_index), *queries(gallery), "-k", "10", env=cache)
    onnx_rows, err = run_json("search", str(tiny_index), *queries(gallery), "-k", "10", "--engine", "onnx", env=cache)
    assert "exporting the model once" in err
    for a, b in zip(torch_rows, onnx_rows, strict=True):
        assert [m["id"] for m in a["matches"]] == [m["id"] for m in b["matches"]]
        assert np.allclose([m["score"] for m in a["matches"]], [m["score"] for m in b["matches"]], atol=1e-5)
    assert files(tiny_index) == before  # nothing written into the index
    entries = list((Path(cache["PIXDEX_CACHE_DIR"]) / "onnx").iterdir())
    assert len(entries) == 1 and (entries[0] / "model.onnx").is_file()
    _, err = run_json("search", str(tiny_index), *queries(gallery), "--engine", "onnx", env=cache)
    assert "exporting" not in err  # the second use runs the cached export


def test_predict_and_embed_agree_with_pytorch(trained, gallery, cache, tmp_path):
    images = queries(gallery)
    torch_rows, _ = run_json("predict", str(trained), *images, env=cache)
    onnx_rows, _ = run_json("predict", str(trained), *images, "--engine", "onnx", env=cache)
    assert [r["label"] for r in torch_rows] == [r["label"] for r in onnx_rows]
    assert np.allclose([r["probability"] for r in torch_rows], [r["probability"] for r in onnx_rows], atol=1e-5)
    run_json("embed", str(trained), str(gallery), "-o", str(tmp_path / "t"), env=cache)
    # one DataLoader worker: the uint8 transform crosses into a worker process
    run_json("embed", str(trained), str(gallery), "-o", str(tmp_path / "o"), "--engine", "onnx", env=cache, workers=1)
    a, b = np.load(tmp_path / "t" / "embeddings.npy"), np.load(tmp_path / "o" / "embeddings.npy")
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert a.shape == b.shape and cos.min() >= 0.9999


def test_a_damaged_cache_entry_is_rebuilt_not_run(trained, gallery, tmp_path):
    env = {"PIXDEX_CACHE_DIR": str(tmp_path / "cache")}
    images = queries(gallery)[:3]
    first, _ = run_json("predict", str(trained), *images, "--engine", "onnx", env=env)
    (entry,) = (tmp_path / "cache" / "onnx").iterdir()
    with open(entry / "model.onnx", "r+b") as fh:
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    again, err = run_json("predict", str(trained), *images, "--engine", "onnx", env=env)
    assert "rebuilding the damaged ONNX cache entry" in err and again == first


def test_serve_answers_through_the_onnx_engine(tiny_index, gallery, cache, monkeypatch):
    from pixdex import api
    from pixdex.plugins import load_plugins
    from pixdex.serve.service import Service, Upload

    monkeypatch.setenv("PIXDEX_CACHE_DIR", cache["PIXDEX_CACHE_DIR"])
    pset = load_plugins(entry_points=[])
    ups = [Upload(Path(p).name, Path(p).read_bytes()) for p in queries(gallery)[:4]]
    answers = []
    for engine in ("torch", "onnx"):
        runtime = api.runtime_config(
            pset, flags={"runtime": {"device": "cpu", "workers": 0, "engine": engine}}, environ={}
        )
        answers.append(Service(tiny_index, pset, runtime).search(ups, 5))
    assert [[m["id"] for m in r["matches"]] for r in answers[0]] == [
        [m["id"] for m in r["matches"]] for r in answers[1]
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--engine", "onnx", "--device", "cuda"], "engine 'onnx' runs on the CPU only"),
        (["--engine", "onnx", "--tta", "flip"], "averages embeddings in PyTorch: use --engine torch"),
    ],
)
def test_engine_misuse_is_one_line(trained, gallery, args, message, cache):
    image = queries(gallery)[0]
    result = invoke("predict", str(trained), image, "--workers", "0", *args, env=cache)
    assert result.exit_code != 0 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_training_refuses_the_onnx_engine(gallery, tmp_path):
    result = invoke("train", str(gallery), "-o", str(tmp_path / "run"), "--engine", "onnx", *CPU_RUNTIME)
    assert result.exit_code == 2 and "training runs on PyTorch" in result.stderr


# --- engine auto (the default) ----------------------------------------------------------------


def test_auto_runs_onnx_on_the_cpu_only_where_it_can(monkeypatch):
    import importlib.util

    from pixdex.export.engine import auto_engine

    assert auto_engine("cpu")[0] == "onnx"
    assert auto_engine("cuda") == ("torch", "the model runs on cuda")
    assert auto_engine("cpu", tta="flip")[0] == "torch"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert auto_engine("cpu")[0] == "torch"
    monkeypatch.delenv("WORLD_SIZE")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    engine, why = auto_engine("cpu")
    assert engine == "torch" and "onnxruntime not installed" in why and "pixdex[export]" in why


def test_auto_exports_on_first_use_and_answers_like_pytorch(tiny_index, gallery, tmp_path):
    auto = {"PIXDEX_ENGINE": "auto", "PIXDEX_CACHE_DIR": str(tmp_path / "cache")}
    torch_rows, _ = run_json("search", str(tiny_index), *queries(gallery), "-k", "10", "--engine", "torch", env=auto)
    auto_rows, err = run_json("search", str(tiny_index), *queries(gallery), "-k", "10", env=auto)
    assert "exporting the model once" in err and (tmp_path / "cache" / "onnx").is_dir()
    for a, b in zip(torch_rows, auto_rows, strict=True):
        assert [m["id"] for m in a["matches"]] == [m["id"] for m in b["matches"]]


def test_auto_with_test_time_flips_runs_pytorch_where_onnx_refuses(trained, gallery, tmp_path):
    auto = {"PIXDEX_ENGINE": "auto", "PIXDEX_CACHE_DIR": str(tmp_path / "cache")}
    rows, _ = run_json("predict", str(trained), *queries(gallery)[:2], "--tta", "flip", env=auto)
    assert [r["tta"] for r in rows] == ["flip", "flip"] and not (tmp_path / "cache").exists()


def test_auto_falls_back_to_pytorch_when_a_model_does_not_export(trained, gallery, tmp_path, monkeypatch):
    import torch

    attempts = []

    def broken_export(*args, **kwargs):  # stands in for a backbone torch's exporter cannot trace
        attempts.append(1)
        raise RuntimeError("unsupported operator aten::frobnicate")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    env = {"PIXDEX_ENGINE": "auto", "PIXDEX_CACHE_DIR": str(tmp_path / "cache")}
    images = queries(gallery)[:3]
    expected, _ = run_json("predict", str(trained), *images, "--engine", "torch", env=env)
    rows, err = run_json("predict", str(trained), *images, env=env)
    assert rows == expected and "engine auto: running PyTorch: ONNX export of" in err
    assert "RuntimeError: unsupported operator" in err
    again, err = run_json("predict", str(trained), *images, env=env)
    assert again == expected and "did not export to ONNX before" in err and len(attempts) == 1
    # an explicit --engine onnx is not silently replaced: it fails in one line
    result = invoke("predict", str(trained), *images, "--device", "cpu", "--workers", "0", "--engine", "onnx", env=env)
    assert result.exit_code != 0 and "unsupported operator" in result.stderr and "Traceback" not in result.stderr
