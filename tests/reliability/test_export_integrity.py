"""Promises of `pixdex export` (docs/reliability.md, exports): a modified graph is refused
before it runs; an export that does not match PyTorch writes nothing and the previous one
stays; an existing export or another folder is never overwritten by accident."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import CPU_RUNTIME, invoke

pytest.importorskip("onnxruntime")  # the [export] extra, part of [dev]

FILES = ["classes.json", "manifest.json", "model.onnx", "preprocess.json"]


def own_copy(exported: Path, tmp_path: Path) -> Path:
    out = tmp_path / "export"
    shutil.copytree(exported, out)
    return out


def test_a_modified_graph_is_refused_before_it_runs(exported_index, tmp_path):
    out = own_copy(exported_index, tmp_path)
    with open(out / "model.onnx", "r+b") as fh:  # flip one byte inside the graph
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 0xFF]))
    result = invoke("export", "--check", str(out), *CPU_RUNTIME)
    assert result.exit_code == 1 and "model.onnx does not match its sha256" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_mismatch_writes_nothing_and_keeps_the_previous_export(exported_index, tiny_index, tmp_path, monkeypatch):
    from pixdex.export import verify

    out = own_copy(exported_index, tmp_path)
    before = {name: (out / name).read_bytes() for name in FILES}
    monkeypatch.setattr(verify, "MIN_COSINE", 1.5)  # no export can reach it: a forced mismatch
    result = invoke("export", str(tiny_index), "-o", str(out), "--force", *CPU_RUNTIME)
    assert result.exit_code == 1
    assert "does not match PyTorch" in result.stderr and "nothing was written" in result.stderr
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == FILES
    assert {name: (out / name).read_bytes() for name in FILES} == before


def test_exports_and_other_folders_are_not_overwritten_by_accident(exported_index, tiny_index, trained, tmp_path):
    result = invoke("export", str(tiny_index), "-o", str(exported_index), *CPU_RUNTIME)
    assert result.exit_code == 1 and "pass --force" in result.stderr
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    result = invoke("export", str(trained), "-o", str(other), *CPU_RUNTIME)
    assert result.exit_code == 1 and "not empty" in result.stderr
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    result = invoke("export", str(trained), "-o", str(tiny_index), "--force", *CPU_RUNTIME)
    assert result.exit_code == 1 and "holds another pixdex artifact" in result.stderr
