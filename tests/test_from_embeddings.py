"""`pixdex index build --from-embeddings DIR [MODEL]`: indexes over embeddings made before
(by `pixdex embed`, by an index, by another program), and "external" indexes without a
model, searched by `--vectors` and `--id`. Real embeddings of the shared tiny run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import CPU_RUNTIME, invoke


@pytest.fixture(scope="module")
def embedded(trained: Path, gallery: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("emb") / "emb"
    result = invoke("-q", "embed", str(trained), str(gallery), "-o", str(out), *CPU_RUNTIME)
    assert result.exit_code == 0, result.stderr
    return out


@pytest.fixture
def foreign(embedded: Path, tmp_path: Path) -> Path:
    """What another program might write: the arrays and the items, no pixdex manifest, no ids."""
    folder = tmp_path / "foreign"
    folder.mkdir()
    shutil.copy(embedded / "embeddings.npy", folder / "embeddings.npy")
    items = [json.loads(line) for line in (embedded / "items.jsonl").read_text().splitlines()]
    lines = [json.dumps({"path": it["path"], "label": it["label"]}) for it in items]
    (folder / "items.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def ok(*args: str, runtime: bool = True) -> tuple[dict, str]:
    result = invoke(*args, *(CPU_RUNTIME if runtime else []), "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def matches(index: Path, *queries: str) -> list[list[tuple[int, float]]]:
    rows, _ = ok("search", str(index), *queries, "-k", "5")
    return [[(m["id"], round(m["score"], 5)) for m in row["matches"]] for row in rows]


def one_line_error(result, message: str) -> None:
    assert result.exit_code != 0, result.stdout
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_an_embed_folder_indexes_like_embedding_again(trained, gallery, embedded, tmp_path):
    direct, reused = tmp_path / "direct", tmp_path / "reused"
    ok("index", "build", str(trained), str(gallery), "-o", str(direct), "--index", "flat")
    info, _ = ok("index", "build", "--from-embeddings", str(embedded), "-o", str(reused), "--index", "flat")
    assert info["count"] == 30 and info["model"]["kind"] == "run"  # the run folder the embed manifest names
    queries = [str(p) for p in sorted(gallery.rglob("*.png"))[::6]]
    assert matches(reused, *queries) == matches(direct, *queries)
    a = json.loads((direct / "manifest.json").read_text())["model"]["sha256"]
    assert json.loads((reused / "manifest.json").read_text())["model"]["sha256"] == a


def test_an_index_folder_is_rebuilt_as_another_index_type_without_embedding(tiny_index, gallery, tmp_path):
    out = tmp_path / "flat"
    info, _ = ok("index", "build", "--from-embeddings", str(tiny_index), "-o", str(out), "--index", "flat")
    assert info["index"] == "flat" and info["count"] == 30
    old = [json.loads(x) for x in (tiny_index / "items.jsonl").read_text().splitlines()]
    new = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines()]
    assert [(o["id"], o["path"], o["sha256"]) for o in old] == [(n["id"], n["path"], n["sha256"]) for n in new]
    query = str(sorted(gallery.rglob("*.png"))[0])
    assert matches(out, query)[0][0][0] == matches(tiny_index, query)[0][0][0]


def test_foreign_embeddings_make_an_external_index_searched_by_vectors_and_ids(foreign, gallery, tmp_path):
    out = tmp_path / "ext"
    info, err = ok("index", "build", "--from-embeddings", str(foreign), "-o", str(out))
    assert info["model"]["kind"] == "external" and "marked external" in err and "no pixdex manifest" in err
    assert not (out / "model").exists()
    vectors = np.load(foreign / "embeddings.npy")[[3, 17]]
    np.save(tmp_path / "q.npy", vectors)
    rows, _ = ok("search", str(out), "--vectors", str(tmp_path / "q.npy"), "-k", "3")
    assert [r["query"] for r in rows] == ["q.npy#0", "q.npy#1"]
    assert [r["matches"][0]["id"] for r in rows] == [3, 17]  # ids numbered by row when the items have none
    np.save(tmp_path / "row.npy", vectors[0])  # one [dim] row is one query
    rows, _ = ok("search", str(out), "--vectors", str(tmp_path / "row.npy"), "-k", "1")
    assert rows[0]["matches"][0]["id"] == 3
    rows, _ = ok("search", str(out), "--id", "5", "-k", "2")
    assert rows[0]["matches"] and all(m["id"] != 5 for m in rows[0]["matches"])
    # what reads stored embeddings only works without a model too
    report, _ = ok("evaluate-retrieval", str(out), "--leave-one-out")
    assert report["queries"] == 30
    ok("cluster", str(out), "-k", "3", runtime=False)
    ok("duplicates", str(out), runtime=False)
    first = json.loads((foreign / "items.jsonl").read_text().splitlines()[0])["path"]
    removed, _ = ok("index", "remove", str(out), first, runtime=False)
    assert removed["count"] == 29 and removed["model"]["kind"] == "external"


def test_an_external_index_refuses_what_needs_a_model_in_one_line(foreign, gallery, trained, tmp_path):
    out = tmp_path / "ext"
    ok("index", "build", "--from-embeddings", str(foreign), "-o", str(out))
    image = str(sorted(gallery.rglob("*.png"))[0])
    refused = [
        ["search", str(out), image],
        ["index", "add", str(out), str(gallery)],
        ["serve", str(out)],
        ["export", str(out), "-o", str(tmp_path / "onnx")],
        ["evaluate-retrieval", str(out), str(gallery)],
    ]
    for args in refused:
        result = invoke(*args, *CPU_RUNTIME)
        one_line_error(result, "was built from embeddings without a model")
    # the model that made the vectors (the foreign folder recorded no weights: dim is checked)
    rows, _ = ok("search", str(out), image, "--model", str(trained), "-k", "1")
    assert rows[0]["matches"][0]["path"] == image


def test_a_model_that_did_not_make_the_embeddings_is_refused(embedded, foreign, tmp_path):
    other = ["--set", "backbone.widths=[4,8]", "--set", "backbone.embed_dim=16", "--set", "backbone.dropout=0.5"]
    result = invoke(
        "index", "build", "simple-cnn", "--from-embeddings", str(embedded), "-o", str(tmp_path / "a"), *other
    )
    one_line_error(result, "is not the model that made the embeddings")
    result = invoke("index", "build", "simple-cnn", "--from-embeddings", str(foreign), "-o", str(tmp_path / "b"))
    one_line_error(result, "makes 128-dim embeddings but")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _write(folder: Path, array: object = None, items: list | None = None, raw: str | None = None) -> None:
    if array is not None:
        np.save(folder / "embeddings.npy", array)
    if raw is not None or items is not None:
        text = raw if raw is not None else "".join(json.dumps(it) + "\n" for it in items or [])
        (folder / "items.jsonl").write_text(text)


GOOD = np.eye(3, 4, dtype=np.float32)
PATHS = [{"path": f"/x/{i}.png"} for i in range(3)]


@pytest.mark.parametrize(
    "array, items, raw, message",
    [
        (np.array([[1, 0], [0, np.nan], [1, 1]], dtype=np.float32), PATHS, None, "row 1 holds NaN or inf"),
        (np.eye(3, 4, dtype=np.int64), PATHS, None, "holds int64 values"),
        (np.ones(4, dtype=np.float32), PATHS, None, "must be [items, dim]"),
        (GOOD, PATHS[:2], None, "has 2 items but embeddings.npy has 3 rows"),
        (GOOD, [{"path": "/a", "id": 1}, {"path": "/b", "id": 1}, {"path": "/c", "id": 2}], None, "id 1 appears"),
        (GOOD, [{"path": "/a", "id": 1}, {"path": "/b"}, {"path": "/c"}], None, "give every item one, or none"),
        (GOOD, [{"path": "/a"}, {"label": "x"}, {"path": "/c"}], None, 'with a "path" string'),
        (GOOD, None, '{"path": "/a"}\nnot json\n', "line 2: not JSON"),
        (GOOD, None, None, "has no items.jsonl"),
    ],
)
def test_bad_precomputed_files_are_refused_in_one_line(tmp_path, array, items, raw, message):
    source = tmp_path / "src"
    source.mkdir()
    _write(source, array, items, raw)
    result = invoke("index", "build", "--from-embeddings", str(source), "-o", str(tmp_path / "out"), *CPU_RUNTIME)
    one_line_error(result, message)
    assert not (tmp_path / "out").exists()


def test_a_tampered_embed_folder_is_refused(embedded, tmp_path):
    copy = tmp_path / "emb"
    shutil.copytree(embedded, copy)
    array = np.load(copy / "embeddings.npy")
    array[0, 0] += 1.0
    np.save(copy / "embeddings.npy", array)
    result = invoke("index", "build", "--from-embeddings", str(copy), "-o", str(tmp_path / "out"))
    one_line_error(result, "embeddings.npy does not match its checksum")


@pytest.mark.parametrize(
    "args, message",
    [
        (["index", "build", "simple-cnn", "-o", "x"], "give MODEL and DATA, or --from-embeddings"),
        (["index", "build", "m", "data", "--from-embeddings", "e", "-o", "x"], "give at most MODEL, not DATA"),
        (["search", "idx", "--vectors", "q.npy", "--id", "1"], "exactly one of them"),
    ],
)
def test_argument_misuse_is_a_usage_error(args, message):
    result = invoke(*args)
    assert result.exit_code == 2 and message in result.stderr


def test_vectors_of_the_wrong_dim_are_refused(tiny_index, tmp_path):
    np.save(tmp_path / "q.npy", np.ones((2, 5), dtype=np.float32))
    result = invoke("search", str(tiny_index), "--vectors", str(tmp_path / "q.npy"))
    one_line_error(result, "holds 5-dim vectors but the index holds 16-dim ones")
