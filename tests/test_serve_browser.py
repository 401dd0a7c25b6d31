"""The `pixdex serve` page in a real headless browser: Debian's chromium driven by Playwright
(launched with ``executable_path``; ``playwright install`` is never run, it downloads).

Without chromium these tests skip, except under ``CI=true``, where a missing browser is a
failure (``.ci/run`` installs it with apt-get).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import CPU_RUNTIME, invoke
from recognition_data import pattern_image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HOSTILE = '<img src=x onerror="window.__pwned=1">'

if not os.path.exists(CHROMIUM):
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"CI=true and no chromium at {CHROMIUM}: apt-get install -y chromium")
    pytest.skip("no chromium (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is part of [dev]")


def serve_in_thread(folder: Path, cache: Path) -> Iterator[str]:
    """A real uvicorn server on a free loopback port, in this process (no model reload cost)."""
    import uvicorn

    from pixdex import api
    from pixdex.plugins import load_plugins
    from pixdex.serve.app import create_app
    from pixdex.serve.service import Service

    pset = load_plugins(entry_points=[])
    runtime = api.runtime_config(pset, flags={"runtime": {"device": "cpu", "workers": 0}}, environ={})
    app = create_app(Service(folder, pset, runtime, cache_dir=cache), reload_interval=0)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def hostile_index(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index whose class folder and file names are HTML: they must show as text."""
    import numpy as np

    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(4)
    for kind, label in (("top", "top"), ("left", HOSTILE)):
        folder = root / "coll" / label
        folder.mkdir(parents=True)
        for i in range(6):
            pattern_image(kind, rng).save(folder / f"{HOSTILE}{i}.png")
    index = root / "index"
    result = invoke("-q", "index", "build", str(trained), str(root / "coll"), "-o", str(index), *CPU_RUNTIME)
    assert result.exit_code == 0, result.stderr
    return index


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        yield browser
        browser.close()


def all_images_loaded(page) -> None:
    page.wait_for_function(
        "() => { const imgs = [...document.querySelectorAll('#results img')];"
        " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }",
        timeout=15000,
    )


def test_upload_see_the_grid_then_more_like_this_and_recommend(browser, tiny_index: Path, gallery: Path, tmp_path):
    query = sorted((gallery / "top").iterdir())[0]
    for url in serve_in_thread(tiny_index, tmp_path / "cache"):
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(url)
        page.wait_for_function("() => document.getElementById('summary').textContent.includes('30 items')")
        page.set_input_files("#file", str(query))
        page.wait_for_selector("#results figure")
        all_images_loaded(page)
        assert page.locator("#results figure").count() == 12
        first_path = page.locator("#results figure .path").first.text_content()
        assert first_path == str(query.resolve())  # a query in the index finds itself first
        page.locator("#results figure button.more").nth(1).click()
        page.wait_for_function("() => document.getElementById('query-title').textContent.startsWith('More like')")
        all_images_loaded(page)
        assert page.locator("#results figure").count() == 12
        for i in range(2):
            page.locator("#results input.like").nth(i).check()
        assert page.locator("#liked").text_content() == "2"
        page.click("#recommend")
        page.wait_for_function("() => document.getElementById('query-title').textContent.startsWith('Recommended')")
        all_images_loaded(page)
        assert page.locator("#results figure").count() == 12
        assert errors == []
        page.close()


def test_hostile_names_stay_inert(browser, hostile_index: Path, tmp_path: Path):
    hostile_file = tmp_path / f"{HOSTILE}.png"
    shutil.copy(next((hostile_index.parent / "coll" / HOSTILE).iterdir()), hostile_file)
    for url in serve_in_thread(hostile_index, tmp_path / "cache"):
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function("() => document.getElementById('summary').textContent.includes('12 items')")
        page.set_input_files("#file", str(hostile_file))
        page.wait_for_selector("#results figure")
        all_images_loaded(page)
        labels = page.locator("#results figure .label").all_text_contents()
        assert HOSTILE in labels  # shown as text...
        assert page.evaluate("() => window.__pwned") is None  # ...never run
        assert page.locator("#results img[src='x']").count() == 0
        assert HOSTILE in page.locator("#query-title").text_content()
        page.close()
