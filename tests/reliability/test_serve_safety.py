"""Promises of `pixdex serve` (docs/reliability.md, the server): a hot reload under
concurrent requests fails none of them; a broken new version is refused while the old one
keeps serving; uploads are limited before decoding; a full queue answers 503 at once; the
token guards every route but /healthz; an open host needs a token."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CPU_RUNTIME, invoke, serve_client, upload
from recognition_data import pattern_image

pytest.importorskip("starlette", reason="pixdex[serve] is part of [dev]")


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


def test_serve_refuses_an_open_host_without_a_token(tiny_index: Path):
    result = invoke("serve", str(tiny_index), "--host", "0.0.0.0")
    assert result.exit_code == 2 and "--token" in result.stderr and "Traceback" not in result.stderr
    result = invoke("serve", str(tiny_index), "--host", "0.0.0.0", "--token", "short")
    assert result.exit_code == 2 and "at least 8" in result.stderr
