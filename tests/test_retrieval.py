"""Retrieval end to end on tiny generated collections: embed, index build/add/remove/info,
search in every format with the HTML sheet, predict by neighbours, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_CNN, invoke
from recognition_data import pattern_image

TINY = TINY_CNN  # conftest: a tiny simple-cnn on the CPU
RT = ["--workers", "0", "--device", "cpu"]


def test_index_folder_layout(tiny_index: Path):
    manifest = json.loads((tiny_index / "manifest.json").read_text())
    for key in (
        "format_version",
        "model",
        "dim",
        "metric",
        "normalized",
        "count",
        "index",
        "pixdex_version",
        "created",
        "files",
    ):
        assert key in manifest
    assert manifest["count"] == 30 and manifest["dim"] == 16 and manifest["metric"] == "cosine"
    assert manifest["index"]["name"] == "hnsw" and 0 <= manifest["index"]["params"]["recall_at_10"] <= 1
    assert np.load(tiny_index / "embeddings.npy").shape == (30, 16)
    items = [json.loads(line) for line in (tiny_index / "items.jsonl").read_text().splitlines()]
    assert [it["row"] for it in items] == list(range(30)) and [it["id"] for it in items] == list(range(30))
    assert {"id", "row", "path", "label", "size", "mtime", "sha256"} <= set(items[0])
    assert (tiny_index / "model" / "model.safetensors").exists() and (tiny_index / "model" / "pixdex.json").exists()
    assert set(manifest["files"]) >= {"embeddings.npy", "items.jsonl", "model/model.safetensors", "index/index.usearch"}


def test_search_finds_itself_first_in_every_format(tiny_index: Path, gallery: Path, tmp_path: Path):
    query = sorted((gallery / "top").iterdir())[0]
    result = invoke("-q", "search", str(tiny_index), str(query), "-k", "5", "--json", *RT)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows[0]["query"] == str(query)
    top = rows[0]["matches"][0]
    assert top["path"] == str(query) and top["score"] == pytest.approx(1.0, abs=1e-4) and top["rank"] == 1
    assert sum(m["label"] == "top" for m in rows[0]["matches"]) >= 4
    jsonl = invoke("-q", "search", str(tiny_index), str(query), "-k", "3", "--format", "jsonl", *RT).stdout
    assert [json.loads(line)["rank"] for line in jsonl.splitlines()] == [1, 2, 3]
    csv_head = invoke("-q", "search", str(tiny_index), str(query), "--format", "csv", *RT).stdout.splitlines()[0]
    assert csv_head == "query,rank,score,label,path,id"


def test_k_larger_than_the_collection(tiny_index: Path, gallery: Path):
    query = sorted((gallery / "left").iterdir())[0]
    rows = json.loads(invoke("-q", "search", str(tiny_index), str(query), "-k", "100", "--json", *RT).stdout)
    assert len(rows[0]["matches"]) == 30


def test_html_contact_sheet_is_self_contained_and_inert(trained: Path, tmp_path: Path):
    hostile = tmp_path / "coll" / "top"
    hostile.mkdir(parents=True)
    rng = np.random.default_rng(0)
    evil = hostile / "<img src=x onerror=alert(1)>.png"
    pattern_image("top", rng).save(evil)
    for i in range(3):
        pattern_image("bottom", rng).save(tmp_path / "coll" / "top" / f"b{i}.png")
    (tmp_path / "coll" / "left").mkdir()
    pattern_image("left", rng).save(tmp_path / "coll" / "left" / "x.png")
    out = tmp_path / "idx"
    assert invoke("-q", "index", "build", str(trained), str(tmp_path / "coll"), "-o", str(out), *RT).exit_code == 0
    html_file = tmp_path / "sheet.html"
    result = invoke("-q", "search", str(out), str(evil), "-k", "3", "--html", str(html_file), *RT)
    assert result.exit_code == 0, result.output
    page = html_file.read_text()
    assert "<img src=x onerror" not in page and "&lt;img src=x onerror=alert(1)&gt;.png" in page
    assert page.count("data:image/png;base64,") >= 4  # thumbnails embedded, no external files
    assert 'src="/' not in page and "src='" not in page


def test_predict_by_neighbours(tiny_index: Path, gallery: Path, tmp_path: Path):
    rng = np.random.default_rng(42)
    for kind in ("top", "bottom", "left"):
        pattern_image(kind, rng).save(tmp_path / f"{kind}.png")
    result = invoke("-q", "predict", str(tiny_index), str(tmp_path), "--json", *RT)
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).stem: r for r in json.loads(result.stdout)}
    assert sum(rows[k]["label"] == k for k in rows) >= 2
    assert all(abs(sum(t["probability"] for t in r["top"]) - 1) < 1e-6 for r in rows.values())


def test_add_then_remove_gives_back_the_original_results(trained: Path, gallery: Path, tmp_path: Path):
    out = tmp_path / "idx"
    assert (
        invoke("-q", "index", "build", str(trained), str(gallery), "-o", str(out), *RT, "--index", "flat").exit_code
        == 0
    )
    query = sorted((gallery / "bottom").iterdir())[1]
    before = json.loads(invoke("-q", "search", str(out), str(query), "-k", "8", "--json", *RT).stdout)
    extra = tmp_path / "extra" / "bottom"
    extra.mkdir(parents=True)
    rng = np.random.default_rng(9)
    for i in range(4):
        pattern_image("bottom", rng).save(extra / f"new{i}.png")
    added = invoke("-q", "index", "add", str(out), str(tmp_path / "extra"), "--json", *RT)
    assert added.exit_code == 0, added.output
    info = json.loads(added.stdout)
    assert info["count"] == 34 and info["next_id"] == 34
    again = invoke("-q", "index", "add", str(out), str(tmp_path / "extra"), "--json", *RT)
    assert json.loads(again.stdout)["count"] == 34  # same sha256: nothing embedded twice
    removed = invoke("-q", "index", "remove", str(out), *[str(p) for p in sorted(extra.iterdir())], "--json")
    assert removed.exit_code == 0, removed.output
    assert json.loads(removed.stdout)["count"] == 30 and json.loads(removed.stdout)["next_id"] == 34
    after = json.loads(invoke("-q", "search", str(out), str(query), "-k", "8", "--json", *RT).stdout)
    assert [m["path"] for m in after[0]["matches"]] == [m["path"] for m in before[0]["matches"]]
    assert [m["id"] for m in after[0]["matches"]] == [m["id"] for m in before[0]["matches"]]


def test_backbone_spec_as_model(gallery: Path, tmp_path: Path):
    out = tmp_path / "idx"
    result = invoke(
        "-q",
        "index",
        "build",
        "simple-cnn",
        str(gallery),
        "-o",
        str(out),
        *RT,
        "--set",
        "backbone.widths=[4]",
        "--set",
        "backbone.embed_dim=8",
        "--set",
        "backbone.input_size=16",
        "--json",
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["kind"] == "backbone" and manifest["dim"] == 8
    query = sorted((gallery / "top").iterdir())[0]
    rows = json.loads(invoke("-q", "search", str(out), str(query), "-k", "1", "--json", *RT).stdout)
    assert rows[0]["matches"][0]["path"] == str(query)


def test_embed_command(trained: Path, gallery: Path, tmp_path: Path):
    (gallery_bad := tmp_path / "g" / "top").mkdir(parents=True)
    rng = np.random.default_rng(3)
    pattern_image("top", rng).save(gallery_bad / "a.png")
    (gallery_bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = invoke("embed", str(trained), str(tmp_path / "g"), "-o", str(tmp_path / "emb"), "--json", *RT)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["count"] == 1
    assert np.load(tmp_path / "emb" / "embeddings.npy").shape == (1, 16)
    skipped = [json.loads(line) for line in (tmp_path / "emb" / "skipped.jsonl").read_text().splitlines()]
    assert [s["path"] for s in skipped] == [str(gallery_bad / "broken.png")]


def test_empty_collection_is_refused(trained: Path, tmp_path: Path):
    (tmp_path / "empty").mkdir()
    result = invoke("index", "build", str(trained), str(tmp_path / "empty"), "-o", str(tmp_path / "idx"), *RT)
    assert result.exit_code == 1 and "empty" in result.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"")
    result = invoke("index", "build", str(trained), str(tmp_path / "bad"), "-o", str(tmp_path / "idx2"), *RT)
    assert result.exit_code == 1 and "an empty collection is refused" in result.stderr
    assert not (tmp_path / "idx2" / "manifest.json").exists()


def test_model_override_must_match(tiny_index: Path, trained: Path, gallery: Path, tmp_path: Path):
    query = str(sorted((gallery / "top").iterdir())[0])
    same = invoke("-q", "search", str(tiny_index), query, "--model", str(trained), "--json", *RT)
    assert same.exit_code == 0, same.output
    other = tmp_path / "other"
    assert invoke("-q", "train", str(gallery), "-o", str(other), "--epochs", "1", "--seed", "7", *TINY).exit_code == 0
    refused = invoke("search", str(tiny_index), query, "--model", str(other), *RT)
    assert refused.exit_code == 1 and "does not match the model" in refused.stderr


def test_embed_refuses_a_run_or_index_folder(tiny_index: Path, trained: Path, gallery: Path):
    for target in (tiny_index, trained):
        result = invoke("embed", str(trained), str(gallery), "-o", str(target), *RT)
        assert result.exit_code == 1 and "holds a run or an index" in result.stderr
    assert json.loads((tiny_index / "manifest.json").read_text())["format"] == "pixdex-index"


def test_dataset_specs_are_recorded_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from pixdex.retrieval.embed import absolute_spec

    (tmp_path / "fm").mkdir()
    monkeypatch.chdir(tmp_path)
    assert absolute_spec("idx:fm") == f"idx:{tmp_path / 'fm'}"
    assert absolute_spec("fm") == str(tmp_path / "fm")
    assert absolute_spec("idx:missing") == "idx:missing"  # left alone: the reader reports it
    assert absolute_spec("csv:list.csv") == "csv:list.csv"


# --- items.jsonl read on demand ----------------------------------------------------------------


def test_item_table_reads_rows_like_read_items(tmp_path, monkeypatch):
    from pixdex.errors import ArtifactError
    from pixdex.retrieval import item_table
    from pixdex.retrieval.index_folder import read_items
    from pixdex.retrieval.item_table import ItemTable, RowsById

    records = [{"id": 7, "path": "a b.png"}, {"id": 2, "path": "x\udcff", "label": "ü"}, {"id": 40, "label": None}]
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    path = tmp_path / "items.jsonl"
    path.write_bytes(("\n" + "\n\n".join(lines) + "\n  \n").encode("utf-8", "surrogateescape"))  # blank lines too
    for scan in (item_table._SCAN, 5):  # line ends found across scan chunks as well
        monkeypatch.setattr(item_table, "_SCAN", scan)
        table = ItemTable(path)
        assert len(table) == 3 and list(table) == read_items(path) == records
        assert table[-1] == records[2] and table[1:] == records[1:]
    by_id = RowsById(table)
    assert [by_id[i] for i in (7, 2, 40)] == [0, 1, 2] and 3 not in by_id and "7" not in by_id
    with pytest.raises(IndexError):
        table[3]
    path.write_text('{"id": 1}\n{"id": 2')  # no newline at the end, and not JSON
    table = ItemTable(path)
    assert len(table) == 2 and table[0] == {"id": 1}
    with pytest.raises(ArtifactError, match="row 1 is not valid JSON"):
        table[1]
