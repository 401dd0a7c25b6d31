"""`pixdex serve` through Starlette's TestClient (real model, real Annoy index, real PNG
uploads decoded by Pillow), and once as a real subprocess on a loopback port."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import CPU_RUNTIME, invoke, serve_client
from recognition_data import make_folder_dataset, pattern_image

pytest.importorskip("starlette", reason="pixdex[serve] is part of [dev]")


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


def upload(*files: tuple[str, bytes], k: int | None = None) -> dict[str, Any]:
    data = {} if k is None else {"k": str(k)}
    return {"files": [("image", (name, data_, "image/png")) for name, data_ in files], "data": data}


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
    assert body["index"] == "annoy" and body["version"] == 1 and body["max_k"] == 100
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


def test_size_limits_are_enforced_before_decoding(gallery: Path, tiny_index: Path, tmp_path: Path):
    from pixdex.serve.app import Limits

    big = io.BytesIO()
    Image.new("L", (300, 300)).save(big, format="PNG")
    with serve_client(tiny_index, cache_dir=tmp_path, limits=Limits(max_upload_bytes=600)) as client:
        small = sorted((gallery / "top").iterdir())[0].read_bytes()
        assert len(small) < 500
        assert client.post("/api/search", **upload(("a.png", small))).status_code == 200
        response = client.post("/api/search", **upload(("big.png", big.getvalue() + b"\0" * 1000)))
        assert response.status_code == 413 and "limit" in response.json()["error"]
    with serve_client(tiny_index, cache_dir=tmp_path) as client:
        client.service.max_pixels = 100 * 100  # a decompression bomb is refused from its header
        response = client.post("/api/search", **upload(("huge.png", big.getvalue())))
        assert response.status_code == 413 and "too-large" in response.json()["error"]


def test_a_full_queue_answers_503_at_once(gallery: Path, tiny_index: Path, tmp_path: Path):
    from pixdex.serve.app import Limits

    good = sorted((gallery / "top").iterdir())[0].read_bytes()
    with serve_client(tiny_index, cache_dir=tmp_path, limits=Limits(max_pending=1)) as client:
        client.service._forward_lock.acquire()  # the one request in progress is stuck in its forward pass
        results: list[int] = []
        first = threading.Thread(
            target=lambda: results.append(client.post("/api/search", **upload(("a.png", good))).status_code)
        )
        first.start()
        try:
            deadline = time.monotonic() + 60  # a slow machine may take a while to start the first request
            while client.app.gate.pending < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            busy = client.get("/api/items/0/similar")  # needs no model, but there is no free slot
            assert busy.status_code == 503 and "busy" in busy.json()["error"], results
        finally:
            client.service._forward_lock.release()
            first.join(timeout=30)
        assert results == [200]
        assert client.get("/api/items/0/similar").status_code == 200


def test_token_protects_everything_but_healthz(tiny_index: Path, tmp_path: Path):
    token = "s3cret-token-123"
    with serve_client(tiny_index, cache_dir=tmp_path, token=token) as client:
        assert client.get("/healthz").status_code == 200
        for path in ("/api/info", "/", "/thumbs/0", "/static/app.js"):
            denied = client.get(path)
            assert denied.status_code == 401 and "token" in denied.json()["error"]
        assert client.get("/api/info", headers={"Authorization": "Bearer wrong-token-000"}).status_code == 401
        assert client.get("/api/info", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert client.get("/?token=wrong-token-000", follow_redirects=False).status_code == 401
        login = client.get(f"/?token={token}", follow_redirects=False)
        assert login.status_code == 303 and login.headers["location"] == "/"
        assert "httponly" in login.headers["set-cookie"].lower()
        assert client.get("/api/info").status_code == 200  # the cookie now stands for the token


def test_the_page_and_its_assets(index_client):
    page = index_client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js"' in page.text and "<script>" not in page.text  # nothing inline
    js = index_client.get("/static/app.js")
    assert js.headers["content-type"].startswith("text/javascript") and "innerHTML" not in js.text
    assert index_client.get("/static/style.css").headers["content-type"].startswith("text/css")


# --- hot reload --------------------------------------------------------------------------------


@pytest.fixture
def own_index(trained: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private collection and index that the test may change."""
    data = make_folder_dataset(tmp_path / "coll", per_class=4, seed=11)
    index = tmp_path / "index"
    result = invoke("-q", "index", "build", str(trained), str(data), "-o", str(index), *CPU_RUNTIME)
    assert result.exit_code == 0, result.stderr
    return data, index


def test_hot_reload_under_concurrent_requests(own_index: tuple[Path, Path], gallery: Path, tmp_path: Path):
    data, index = own_index
    logs: list[str] = []
    query = sorted((gallery / "top").iterdir())[0].read_bytes()
    with serve_client(index, cache_dir=tmp_path / "cache", log=logs.append) as client:
        assert client.get("/api/info").json()["count"] == 12
        statuses: list[int] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                statuses.append(client.get("/api/items/1/similar", params={"k": 3}).status_code)
                statuses.append(client.post("/api/search", **upload(("q.png", query), k=3)).status_code)

        workers = [threading.Thread(target=hammer) for _ in range(3)]
        for w in workers:
            w.start()
        try:
            rng = np.random.default_rng(3)
            for i in range(3):
                pattern_image("left", rng).save(data / "left" / f"new-{i}.png")
            added = invoke("-q", "index", "add", str(index), str(data), *CPU_RUNTIME)
            assert added.exit_code == 0, added.stderr
            assert client.service.reload_if_changed() == "reloaded"
            for _ in range(5):  # requests keep flowing on the new version
                threading.Event().wait(0.05)
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=60)
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        info = client.get("/api/info").json()
        assert info["count"] == 15 and info["version"] == 2
        assert any("reloaded" in line and "version 2" in line for line in logs)
        assert client.service.reload_if_changed() is None  # nothing new


def test_a_broken_new_version_is_refused_and_the_old_one_serves(own_index: tuple[Path, Path], tmp_path: Path):
    _, index = own_index
    logs: list[str] = []
    with serve_client(index, cache_dir=tmp_path / "cache", log=logs.append) as client:
        manifest = json.loads((index / "manifest.json").read_text())
        manifest["count"] = 999  # a hand edit: the digest no longer matches
        tmp = index / "manifest.json.edit"
        tmp.write_text(json.dumps(manifest))
        os.replace(tmp, index / "manifest.json")
        assert client.service.reload_if_changed() == "refused"
        assert any("refused" in line and "still serving version 1" in line for line in logs)
        assert client.get("/api/info").json()["count"] == 12
        assert client.get("/api/items/0/similar").status_code == 200
        assert client.service.reload_if_changed() is None  # the same broken version is not retried


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


def test_serve_refuses_an_open_host_without_a_token(tiny_index: Path):
    result = invoke("serve", str(tiny_index), "--host", "0.0.0.0")
    assert result.exit_code == 2 and "--token" in result.stderr and "Traceback" not in result.stderr
    result = invoke("serve", str(tiny_index), "--host", "0.0.0.0", "--token", "short")
    assert result.exit_code == 2 and "at least 8" in result.stderr


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
