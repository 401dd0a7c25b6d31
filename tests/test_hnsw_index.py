"""The ``hnsw`` index through the CLI: a real usearch graph in a committed index folder,
built from images and from the tiny index's embeddings, searched, extended and reloaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CPU_RUNTIME, invoke
from recognition_data import make_folder_dataset


def run(*args: str) -> dict | list:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_hnsw_index_builds_searches_and_grows_without_a_rebuild(trained, gallery, tmp_path, monkeypatch):
    out = tmp_path / "hnsw"
    info = run("index", "build", str(trained), str(gallery), "-o", str(out), "--index", "hnsw", *CPU_RUNTIME)
    assert info["index"] == "hnsw" and info["count"] == 30 and info["recall_at_10"] >= 0.95
    assert {"connectivity", "ef", "ef_tuned", "recall_at_10"} <= set(info["params"])
    query = sorted(gallery.rglob("*.png"))[4]
    rows = run("search", str(out), str(query), "-k", "3", *CPU_RUNTIME)
    assert rows[0]["matches"][0]["path"] == str(query) and rows[0]["matches"][0]["score"] > 0.999
    extra = make_folder_dataset(tmp_path / "more", per_class=2, seed=21)
    graph_before = (out / "index" / "index.usearch").read_bytes()
    from pixdex_hnsw.index import HnswIndex

    def no_rebuild(self, vectors):
        raise AssertionError("index add rebuilt the graph instead of growing it")

    monkeypatch.setattr(HnswIndex, "build", no_rebuild)
    grown = run("index", "add", str(out), str(extra), *CPU_RUNTIME)
    assert grown["count"] == 30 + grown["added"] and grown["added"] > 0
    assert grown["recall_at_10"] >= 0.95  # measured again over every row
    new_query = sorted(extra.rglob("*.png"))[1]
    rows = run("search", str(out), str(new_query), "-k", "1", *CPU_RUNTIME)
    assert rows[0]["matches"][0]["path"] == str(new_query) and rows[0]["matches"][0]["id"] >= 30
    assert (out / "index" / "index.usearch").read_bytes() != graph_before


def test_an_annoy_index_is_rebuilt_as_hnsw_with_the_same_neighbours(tiny_index, tmp_path):
    out = tmp_path / "as-hnsw"
    run(
        "index",
        "build",
        "--from-embeddings",
        str(tiny_index),
        "-o",
        str(out),
        "--index",
        "hnsw",
        "--set",
        "index.ef=30",
    )
    vectors = np.load(tiny_index / "embeddings.npy")[:5]
    np.save(tmp_path / "q.npy", vectors)
    exact = run("search", str(tiny_index), "--vectors", str(tmp_path / "q.npy"), "-k", "5")
    graph = run("search", str(out), "--vectors", str(tmp_path / "q.npy"), "-k", "5")
    # ef = the collection's size: the graph search is exhaustive here, like annoy's tuned one
    assert [[m["id"] for m in r["matches"]][:1] for r in graph] == [[m["id"] for m in r["matches"]][:1] for r in exact]
    assert json.loads((out / "manifest.json").read_text())["index"]["params"]["ef"] == 30
    assert (Path(out) / "index" / "index.usearch").is_file()


def test_usearch_and_onnxruntime_load_in_either_order():
    # usearch 2.26.6 segfaulted when onnxruntime was imported after it (an hnsw index opened,
    # then engine auto exporting the model): a crash only a fresh process can show
    pytest.importorskip("onnxruntime")
    for first, second in (("usearch.index", "onnxruntime"), ("onnxruntime", "usearch.index")):
        code = f"import {first}; import {second}; print('ok')"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", (
            first,
            second,
            proc.returncode,
            proc.stderr[-500:],
        )
