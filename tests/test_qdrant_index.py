"""The ``qdrant`` index (plugins/pixdex_qdrant): an index folder whose rows live in a Qdrant
collection. Real qdrant-client, in its embedded mode (a store in the test cache), or
against the server that PIXDEX_TEST_QDRANT_URL names: the same tests run there.

Checked against the flat index over the same embeddings: search (images, --id, --vectors,
--label), evaluate-retrieval, duplicates and cluster give the same answers; build, add and
remove write new collection versions and move the alias only after the folder's commit;
the collection is checked against the manifest on every open
(tests/reliability/test_qdrant_store.py, with the crash tests).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import CPU_RUNTIME, QDRANT_SET, invoke
from recognition_data import pattern_image

pytest.importorskip("qdrant_client", reason="the [qdrant] extra is part of [dev]")


def ok(*args: str, runtime: bool = True) -> Any:
    result = invoke(*args, *(CPU_RUNTIME if runtime else []), "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def fails(*args: str, message: str) -> None:
    result = invoke(*args)
    assert result.exit_code != 0, result.stdout
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def collection() -> list[str]:
    """``--set`` arguments for a qdrant index of its own (a fresh alias)."""
    return ["--index", "qdrant", "--set", f"index.collection=t{uuid.uuid4().hex[:10]}", *QDRANT_SET]


def opened(folder: Path) -> Any:
    from pixdex.plugins import load_plugins
    from pixdex.retrieval.index_folder import open_index

    return open_index(folder, load_plugins(entry_points=[]))


def store_state(folder: Path) -> tuple[str, str | None, list[str]]:
    """(the folder's version, the alias's target, every version of the alias)."""
    ann = opened(folder).ann
    prefix = ann.alias + "-"
    return ann.version, ann._alias_target(), sorted(c for c in ann._collections() if c.startswith(prefix))


@pytest.fixture(scope="module")
def pair(tiny_index: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A flat and a qdrant index over the same embeddings (the shared tiny index's)."""
    root = tmp_path_factory.mktemp("qpair")
    flat, qdrant = root / "flat", root / "qdrant"
    source = ["index", "build", "--from-embeddings", str(tiny_index), str(tiny_index / "model"), "-o"]
    ok(*source, str(flat), "--index", "flat")
    ok(*source, str(qdrant), *collection())
    return flat, qdrant


def answers(rows: list[dict[str, Any]]) -> list[list[tuple[int, float]]]:
    return [[(m["id"], round(m["score"], 4)) for m in row["matches"]] for row in rows]


def test_the_folder_keeps_the_connection_not_the_rows_nor_a_secret(trained, gallery, tmp_path, monkeypatch):
    monkeypatch.setenv("QDRANT_API_KEY", "s3cret-never-written")
    out = tmp_path / "idx"
    info = ok("index", "build", str(trained), str(gallery), "-o", str(out), *collection())
    assert info["count"] == 30 and info["index"] == "qdrant" and info["recall_at_10"] >= 0.95
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert "embeddings.npy" not in files and "items.jsonl" not in files
    assert "index/connection.json" in files
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["index"]["holds_items"] is True
    connection = json.loads((out / "index" / "connection.json").read_text())
    assert connection["version"].startswith(connection["collection"] + "-")
    assert not any(b"s3cret" in p.read_bytes() for p in out.rglob("*") if p.is_file())
    version, alias_target, versions = store_state(out)
    assert alias_target == version and versions == [version]  # published once the folder committed


def test_search_answers_as_the_flat_index(pair, gallery, tiny_index, tmp_path):
    flat, qdrant = pair
    queries = [str(p) for p in sorted(gallery.rglob("*.png"))[::7]]
    assert answers(ok("search", str(qdrant), *queries, "-k", "5")) == answers(
        ok("search", str(flat), *queries, "-k", "5")
    )
    by_id = ["--id", "3", "--id", "17", "-k", "4"]
    assert answers(ok("search", str(qdrant), *by_id)) == answers(ok("search", str(flat), *by_id))
    np.save(tmp_path / "q.npy", np.load(tiny_index / "embeddings.npy")[[1, 20]])
    vec = ["--vectors", str(tmp_path / "q.npy"), "-k", "6"]
    assert answers(ok("search", str(qdrant), *vec)) == answers(ok("search", str(flat), *vec))


def test_label_filters_use_the_payload_and_agree_with_exact_search(pair, gallery):
    flat, qdrant = pair
    label = sorted(p.name for p in gallery.iterdir() if p.is_dir())[1]
    query = [str(sorted((gallery / sorted(p.name for p in gallery.iterdir() if p.is_dir())[0]).glob("*.png"))[0])]
    got = ok("search", str(qdrant), *query, "-k", "5", "--label", label)
    assert {m["label"] for m in got[0]["matches"]} == {label} and len(got[0]["matches"]) == 5
    assert answers(got) == answers(ok("search", str(flat), *query, "-k", "5", "--label", label))
    for index in (flat, qdrant):
        fails("search", str(index), *query, "--label", "no-such-label", message="has no item labelled 'no-such-label'")


def groups(found: dict[str, Any]) -> list[tuple[list[int], float]]:
    return [([it["id"] for it in g["items"]], round(g["max_score"], 4)) for g in found["groups"]]


def test_evaluation_duplicates_and_clusters_read_the_database(pair, tmp_path):
    flat, qdrant = pair
    a = ok("evaluate-retrieval", str(flat), "--leave-one-out")
    b = ok("evaluate-retrieval", str(qdrant), "--leave-one-out")
    assert b["queries"] == a["queries"] == 30
    assert b["map"] == pytest.approx(a["map"], abs=1e-9) and b["precision_at_1"] == a["precision_at_1"]
    dup = ["--threshold", "0.99", "-o"]
    d_flat = ok("duplicates", str(flat), *dup, str(tmp_path / "df"), runtime=False)
    d_q = ok("duplicates", str(qdrant), *dup, str(tmp_path / "dq"), runtime=False)
    assert groups(d_q) == groups(d_flat) and len(d_flat["groups"]) > 0
    clusters = ["--clusters", "3", "--seed", "1", "--device", "cpu", "-o"]
    c_flat = ok("cluster", str(flat), *clusters, str(tmp_path / "cf"), runtime=False)
    c_q = ok("cluster", str(qdrant), *clusters, str(tmp_path / "cq"), runtime=False)
    assert [c["size"] for c in c_q["clusters"]] == [c["size"] for c in c_flat["clusters"]]


def test_add_and_remove_write_versions_and_move_the_alias(trained, gallery, tmp_path):
    out = tmp_path / "idx"
    ok("index", "build", str(trained), str(gallery), "-o", str(out), *collection())
    v1, _, _ = store_state(out)
    extra = tmp_path / "extra" / "new"
    extra.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(3):
        pattern_image("new", rng).save(extra / f"n{i}.png")
    (extra / "broken.png").write_bytes(b"not an image")
    added = ok("index", "add", str(out), str(extra.parent))
    assert added["added"] == 3 and added["count"] == 33
    v2, target, versions = store_state(out)
    assert v2 != v1 and target == v2 and versions == sorted([v1, v2])  # the one before is kept
    again = ok("index", "add", str(out), str(extra.parent))  # the same images: nothing new
    assert again["added"] == 0 and again["count"] == 33
    hit = ok("search", str(out), str(extra / "n1.png"), "-k", "1")
    assert Path(hit[0]["matches"][0]["path"]) == (extra / "n1.png").resolve()
    assert hit[0]["matches"][0]["id"] == 31  # ids continue from next_id
    removed = ok("index", "remove", str(out), str(extra / "n1.png"), runtime=False)
    assert removed["removed"] == 1 and removed["count"] == 32
    v3, target, versions = store_state(out)
    assert target == v3 and v1 not in versions and len(versions) == 2  # older than the last one: dropped
    items = list(opened(out).items)
    assert [it["row"] for it in items] == list(range(32)) and 31 not in {it["id"] for it in items}


def test_serve_answers_from_the_database(pair, gallery):
    from conftest import serve_client, upload

    flat, qdrant = pair
    query = sorted(gallery.rglob("*.png"))[4]
    got = []
    for index in (flat, qdrant):
        with serve_client(index) as client:
            similar = client.get("/api/items/3/similar", params={"k": 4}).json()
            searched = client.post("/api/search", **upload((query.name, query.read_bytes()), k=3)).json()
            thumb = client.get("/thumbs/0")
            assert thumb.status_code == 200 and thumb.headers["content-type"].startswith("image/")
            got.append((answers(similar), answers(searched)))
    assert got[1] == got[0] and len(got[0][0][0]) == 4


def test_an_unreachable_server_is_one_line(tiny_index, tmp_path):
    fails(
        "index", "build", "--from-embeddings", str(tiny_index), "-o", str(tmp_path / "idx"), "--index", "qdrant",
        "--set", "index.url=http://127.0.0.1:9", "--set", "index.timeout=2",
        message="check that the server is running and index.url (or PIXDEX_QDRANT_URL) points to it",
    )  # fmt: skip
    assert not (tmp_path / "idx" / "manifest.json").exists()
