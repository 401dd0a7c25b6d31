"""Shared by the browser tests: Debian's chromium through Playwright, and a real server.

Playwright is launched with ``executable_path`` (``playwright install`` is never run: it
downloads). Without chromium the importing test module skips, except under ``CI=true``,
where a missing browser is a failure (``.ci/run`` installs it with apt-get).
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

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def require_browser() -> None:
    """Skip the calling module without chromium or playwright (fail instead under CI=true)."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"CI=true and no chromium at {CHROMIUM}: apt-get install -y chromium")
        pytest.skip("no chromium (apt-get install -y chromium)", allow_module_level=True)
    pytest.importorskip("playwright.sync_api", reason="playwright is part of [dev]")


def serve_in_thread(folder: Path, cache: Path) -> Iterator[str]:
    """A real uvicorn server on a free loopback port, in this process (no model reload cost)."""
    import uvicorn

    from pixdex import api
    from pixdex.plugins import load_plugins
    from pixdex.serve.app import create_app
    from pixdex.serve.service import Service

    pset = load_plugins(entry_points=[])
    runtime = api.runtime_config(
        pset, flags={"runtime": {"device": "cpu", "workers": 0, "engine": "torch"}}, environ={}
    )
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
def browser():
    """A headless chromium for the module's tests."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
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
