"""`pixdex serve` through Starlette's TestClient (real model, real Annoy index, real PNG
uploads decoded by Pillow), and once as a real subprocess on a loopback port."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import CPU_RUNTIME, invoke, serve_client, upload

pytest.importorskip("starlette", reason="pixdex[serve] is part of [dev]")


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


@pytest.fixture
def index_client(tiny_index: Path, tmp_path: Path):
    with serve_client(tiny_index, cache_dir=tmp_path / "cache") as client:
        yield client


@pytest.fixture
def run_client(trained: Path, tmp_path: Path):
    with serve_client(trained, cache_dir=tmp_path / "cache") as client:
        yield client


def cli_json(*args: str) -> Any:
    result = invoke("-q", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


# --- the API on an index ---------------------------------------------------------------------


def test_info_healthz_and_security_headers(index_client, tiny_index: Path):
    info = index_client.get("/api/info")
    assert info.status_code == 200 and info.headers["content-type"] == "application/json"
    body = info.json()
    assert body["kind"] == "index" and body["count"] == 30 and body["dim"] == 16 and body["metric"] == "cosine"
    assert body["index"] == "hnsw" and body["version"] == 1 and body["max_k"] == 100
    assert body["digest"] == json.loads((tiny_index / "manifest.json").read_text())["digest"]
    assert info.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in info.headers["content-security-policy"]
    assert "unsafe-inline" not in info.headers["content-security-policy"]
    assert index_client.get("/healthz").json() == {"status": "ok", "kind": "index", "version": 1}


def test_search_by_upload_is_the_cli_search(index_client, gallery: Path, tiny_index: Path):
    query = sorted((gallery / "top").iterdir())[0]
    other = sorted((gallery / "left").iterdir())[0]
    response = index_client.post(
        "/api/search", **upload((query.name, png_bytes(query)), (other.name, png_bytes(other)), k=4)
    )
    assert response.status_code == 200, response.text
    rows = response.json()
    assert [r["query"] for r in rows] == [query.name, other.name]
    assert rows[0]["matches"][0]["path"] == str(query.resolve()) and rows[0]["matches"][0]["score"] > 0.999
    assert [len(r["matches"]) for r in rows] == [4, 4]
    cli = cli_json("search", str(tiny_index), str(query), "-k", "4", *CPU_RUNTIME)
    assert [m["id"] for m in cli[0]["matches"]] == [m["id"] for m in rows[0]["matches"]]
    np.testing.assert_allclose(
        [m["score"] for m in cli[0]["matches"]], [m["score"] for m in rows[0]["matches"]], atol=1e-5
    )


def test_more_like_this_uses_the_stored_embedding(index_client, tiny_index: Path):
    rows = index_client.get("/api/items/3/similar", params={"k": 5}).json()
    matches = rows[0]["matches"]
    assert rows[0]["query"] == "id:3" and len(matches) == 5 and 3 not in [m["id"] for m in matches]
    assert [m["rank"] for m in matches] == [1, 2, 3, 4, 5]
    assert cli_json("search", str(tiny_index), "--id", "3", "-k", "5") == rows
    labels = [m["label"] for m in matches]
    own = json.loads((tiny_index / "items.jsonl").read_text().splitlines()[3])["label"]
    assert labels.count(own) >= 3  # a trained model's neighbours share the class


def test_recommend_excludes_the_given_items_and_is_the_cli_recommend(index_client, tiny_index: Path):
    items = [json.loads(line) for line in (tiny_index / "items.jsonl").read_text().splitlines()]
    liked = [it["id"] for it in items if it["label"] == "top"][:3]
    disliked = [it["id"] for it in items if it["label"] == "left"][:1]
    body = {"positive": liked, "negative": disliked, "k": 6}
    rows = index_client.post("/api/recommend", json=body).json()
    got = [m["id"] for m in rows[0]["matches"]]
    assert len(got) == 6 and not set(got) & set(liked + disliked)
    assert [m["label"] for m in rows[0]["matches"]].count("top") >= 4
    like_args = [a for i in liked for a in ("--like", str(i))]
    cli = cli_json("recommend", str(tiny_index), *like_args, "--unlike", str(disliked[0]), "-k", "6")
    assert cli == rows


def test_recommend_rule_moves_away_from_dislikes(tiny_index: Path, pset):
    from pixdex.retrieval.by_item import RECOMMEND_BETA, recommend_query
    from pixdex.retrieval.index_folder import open_index

    index = open_index(tiny_index, pset)
    emb = np.asarray(index.embeddings, dtype=np.float64)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    liked, disliked = unit[[0, 1]].mean(0), unit[[5]].mean(0)
    np.testing.assert_allclose(recommend_query(index, [0, 1]), liked, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        recommend_query(index, [0, 1], [5]), liked + RECOMMEND_BETA * (liked - disliked), rtol=1e-5, atol=1e-6
    )


def test_predict_on_an_index_votes_like_the_cli(index_client, gallery: Path, tiny_index: Path):
    query = sorted((gallery / "bottom").iterdir())[1]
    rows = index_client.post("/api/predict", **upload((query.name, png_bytes(query)), k=2)).json()
    assert rows[0]["label"] == "bottom" and len(rows[0]["top"]) <= 2 and rows[0]["tta"] == "none"
    cli = cli_json("predict", str(tiny_index), str(query), "-k", "2", *CPU_RUNTIME)
    assert [t["label"] for t in cli[0]["top"]] == [t["label"] for t in rows[0]["top"]]


def test_thumbnails_are_cached_outside_the_index(index_client, tiny_index: Path, tmp_path: Path):
    before = sorted(p.relative_to(tiny_index) for p in tiny_index.rglob("*"))
    first = index_client.get("/thumbs/0")
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(first.content))
    assert image.size == (16, 16) and "x-pixdex-placeholder" not in first.headers
    digest = index_client.get("/api/info").json()["digest"]
    assert (tmp_path / "cache" / digest[:32] / "0.png").read_bytes() == first.content
    assert index_client.get("/thumbs/0").content == first.content
    assert sorted(p.relative_to(tiny_index) for p in tiny_index.rglob("*")) == before


# --- the API on a run folder -----------------------------------------------------------------


def test_a_run_folder_predicts_and_refuses_index_routes(run_client, trained: Path, gallery: Path):
    query = sorted((gallery / "left").iterdir())[0]
    rows = run_client.post("/api/predict", **upload((query.name, png_bytes(query)), k=3)).json()
    assert len(rows[0]["top"]) == 3 and {t["label"] for t in rows[0]["top"]} == {"top", "bottom", "left"}
    cli = cli_json("predict", str(trained), str(query), "-k", "3", *CPU_RUNTIME)
    np.testing.assert_allclose([t["probability"] for t in cli[0]["top"]], [t["probability"] for t in rows[0]["top"]])
    info = run_client.get("/api/info").json()
    assert info["kind"] == "run" and info["count"] is None and info["model"]["classes"] == ["bottom", "left", "top"]
    for response in (
        run_client.post("/api/search", **upload((query.name, png_bytes(query)))),
        run_client.get("/api/items/0/similar"),
        run_client.post("/api/recommend", json={"positive": [0]}),
        run_client.get("/thumbs/0"),
    ):
        assert response.status_code == 404
        assert "run folder" in response.json()["error"] and "pixdex index build" in response.json()["error"]


# --- errors ------------------------------------------------------------------------------------


def test_every_error_is_one_json_line_with_its_status(index_client, gallery: Path, tmp_path: Path):
    good = sorted((gallery / "top").iterdir())[0].read_bytes()
    cases = [
        (index_client.post("/api/search", **upload(("a.png", good), k=0)), 400, "k must be"),
        (index_client.post("/api/search", **upload(("a.png", good), k=101)), 400, "k must be"),
        (index_client.post("/api/search", data={"k": "3"}, files=[("other", ("a.png", good))]), 400, "no image"),
        (
            index_client.post("/api/search", content=b"{}", headers={"content-type": "application/json"}),
            415,
            "multipart",
        ),
        (index_client.post("/api/search", **upload(("notes.png", b"just text, not pixels"))), 415, "not-an-image"),
        (index_client.post("/api/search", **upload(("cut.png", good[: len(good) // 2]))), 400, "cut.png"),
        (index_client.post("/api/search", **upload(("empty.png", b""))), 400, "empty"),
        (index_client.get("/api/items/9999/similar"), 404, "no item with id 9999"),
        (index_client.get("/api/items/abc/similar"), 404, "no item"),
        (index_client.get("/thumbs/9999"), 404, "no item"),
        (index_client.post("/api/recommend", content=b"{not json"), 400, "JSON"),
        (index_client.post("/api/recommend", json={"positive": [0], "oops": 1}), 400, "unknown field"),
        (index_client.post("/api/recommend", json={"positive": []}), 400, "at least one"),
        (index_client.post("/api/recommend", json={"positive": ["0"]}), 400, "integers"),
        (index_client.post("/api/recommend", json={"positive": [1], "negative": [1]}), 400, "both"),
        (index_client.get("/api/nothing"), 404, "/api/nothing"),
        (index_client.get("/api/search"), 405, "GET /api/search"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, (words, response.status_code, response.text)
        body = response.json()
        assert set(body) == {"error"} and "\n" not in body["error"] and words in body["error"], body


def test_the_page_and_its_assets(index_client):
    page = index_client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js"' in page.text and "<script>" not in page.text  # nothing inline
    js = index_client.get("/static/app.js")
    assert js.headers["content-type"].startswith("text/javascript") and "innerHTML" not in js.text
    assert index_client.get("/static/style.css").headers["content-type"].startswith("text/css")


def test_a_missing_file_gets_a_placeholder_thumbnail(own_index: tuple[Path, Path], tmp_path: Path):
    data, index = own_index
    items = [json.loads(line) for line in (index / "items.jsonl").read_text().splitlines()]
    Path(items[2]["path"]).unlink()
    with serve_client(index, cache_dir=tmp_path / "cache") as client:
        response = client.get(f"/thumbs/{items[2]['id']}")
        assert response.status_code == 200 and response.headers["x-pixdex-placeholder"] == "1"
        assert Image.open(io.BytesIO(response.content)).size == (64, 64)


def test_dataset_keys_open_through_their_dataset(trained: Path, tmp_path: Path):
    from test_datasets import idx_folder

    x, _ = idx_folder(tmp_path / "idx", gz=False, n_train=12, n_test=4)
    index = tmp_path / "index"
    built = invoke("-q", "index", "build", str(trained), f"idx:{tmp_path / 'idx'}", "-o", str(index), *CPU_RUNTIME)
    assert built.exit_code == 0, built.stderr
    items = [json.loads(line) for line in (index / "items.jsonl").read_text().splitlines()]
    assert items[0]["path"].startswith("idx:") and items[0]["dataset"] == f"idx:{tmp_path / 'idx'}"
    with serve_client(index, cache_dir=tmp_path / "cache") as client:
        response = client.get("/thumbs/0")
        assert response.status_code == 200 and "x-pixdex-placeholder" not in response.headers
        pixels = np.asarray(Image.open(io.BytesIO(response.content)))
        first = next(it for it in items if it["id"] == 0)
        _, number = first["path"][4:].split("/")
        expected = x[int(number)]  # the test split is the first 4 training arrays
        assert pixels.shape == (28, 28) and np.array_equal(pixels, expected)


# --- the command -------------------------------------------------------------------------------


def test_a_real_server_on_a_free_loopback_port(tiny_index: Path, gallery: Path, tmp_path: Path):
    """A subprocess: the printed URL, real HTTP, and a graceful stop on SIGTERM."""
    import httpx

    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXDEX_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pixdex",
            "serve",
            str(tiny_index),
            "--port",
            "0",
            "--cache-dir",
            str(tmp_path),
            "--device",
            "cpu",
            "--workers",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/"), (url, proc.stderr.read())
        query = sorted((gallery / "top").iterdir())[0]
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.get("/healthz").json()["status"] == "ok"
            rows = http.post("/api/search", files=[("image", (query.name, query.read_bytes()))], data={"k": "2"})
            assert rows.status_code == 200 and rows.json()[0]["matches"][0]["path"] == str(query.resolve())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "pixdex: serve: stopped" in err and '"POST /api/search" 200' in err and "Traceback" not in err


def test_connections_get_tcp_nodelay():
    """asyncio sets TCP_NODELAY only on sockets whose proto is TCP; without it a keep-alive
    client waited ~40 ms per response (Nagle against delayed ACK: bench/serve.py measured a
    44 ms p50 for "more like this", curl on a fresh connection 1.7 ms)."""
    import asyncio
    import socket

    from pixdex.cli.serve import bind

    async def accepted_nodelay() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=bind("127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(seen, 10)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(accepted_nodelay()) != 0
