"""Shared fixtures. Everything here is offline and builds a fresh plugin manager per test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

from recognition_data import make_folder_dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("PIXDEX_CRASH_AT", None)

REPO = Path(__file__).resolve().parent.parent
# Tests run PyTorch unless they choose an engine: the default, auto, would export every tiny
# model of the suite to ONNX on first use (tests/test_engine.py tests auto itself). Any export
# that slips through lands in a throwaway cache, never in the developer's ~/.cache.
_CACHE = tempfile.mkdtemp(prefix="pixdex-test-cache-")
PINNED_ENV = {"PIXDEX_ENGINE": "torch", "PIXDEX_CACHE_DIR": _CACHE}
os.environ.update(PINNED_ENV)  # for session fixtures too, which start before the autouse one
# The qdrant tests use the embedded store (in the throwaway cache) unless this names a
# Qdrant server: the same tests then run against it. Read before the autouse fixture
# below clears PIXDEX_* variables.
QDRANT_URL = os.environ.get("PIXDEX_TEST_QDRANT_URL", "")
QDRANT_OPTIONS: dict[str, str] = {"url": QDRANT_URL} if QDRANT_URL else {}
QDRANT_SET: list[str] = ["--set", f"index.url={QDRANT_URL}"] if QDRANT_URL else []


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _clean_pixdex_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start from no PIXDEX_* settings but :data:`PINNED_ENV`, whatever the
    developer's shell has."""
    for var in list(os.environ):
        if var.startswith("PIXDEX_"):
            monkeypatch.delenv(var)
    for var, value in PINNED_ENV.items():
        monkeypatch.setenv(var, value)


@pytest.fixture
def pset() -> Any:
    """The built-in plugins only (no third-party entry points), freshly loaded."""
    from pixdex.plugins import load_plugins

    return load_plugins(entry_points=[])


def invoke(*args: str, plugins: Any = None, input: str | None = None, env: dict | None = None) -> Any:
    """Run `pixdex ARGS` in-process with CliRunner (built-in plugins only unless given);
    stdout and stderr apart. Safe in session fixtures: PIXDEX_* variables are reset to
    :data:`PINNED_ENV` (``env`` overrides them)."""
    from click.testing import CliRunner

    from pixdex.cli import build_cli
    from pixdex.plugins import load_plugins

    runner = CliRunner(mix_stderr=False) if _has_mix_stderr() else CliRunner()
    with pytest.MonkeyPatch.context() as mp:
        for var in [v for v in os.environ if v.startswith("PIXDEX_")]:
            mp.delenv(var)
        for var, value in PINNED_ENV.items():
            mp.setenv(var, value)
        cli = build_cli(plugins if plugins is not None else load_plugins(entry_points=[]))
        return runner.invoke(cli, list(args), input=input, env=env, catch_exceptions=False)


@pytest.fixture
def cli_run():
    """:func:`invoke` as a fixture."""
    return invoke


def _has_mix_stderr() -> bool:
    import inspect

    from click.testing import CliRunner

    return "mix_stderr" in inspect.signature(CliRunner.__init__).parameters


def run_pixdex(
    *args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run `python -m pixdex ARGS` in a real subprocess (for exit codes and import checks)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PIXDEX_")}
    full_env.update(PINNED_ENV)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pixdex", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or REPO,
        timeout=timeout,
    )


def make_dist(
    site: Path, dist: str, module: str, source: str, *, ep_name: str | None = None, version: str = "0.1"
) -> Path:
    """Install a tiny real distribution into ``site``: a module plus a dist-info with an
    entry point in group ``pixdex``, which importlib.metadata discovers like any pip install."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[pixdex]\n{ep_name or dist} = {module}\n")
    (info / "RECORD").write_text("")
    return site


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh folder on sys.path where tests install tiny plugin distributions."""
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    import importlib

    importlib.invalidate_caches()
    yield path
    for name in list(sys.modules):
        if name.startswith("pixdex_test_"):
            del sys.modules[name]


# --- one tiny trained run and one tiny index, shared by the retrieval and serve tests ---------

TINY_CNN = [
    "--backbone",
    "simple-cnn",
    "--set",
    "backbone.widths=[4,8]",
    "--set",
    "backbone.embed_dim=16",
    "--batch-size",
    "8",
    "--workers",
    "0",
    "--device",
    "cpu",
]
CPU_RUNTIME = ["--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="session")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("gallery"), per_class=10, seed=5)


@pytest.fixture(scope="session")
def trained(gallery: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("retrun") / "run"
    result = invoke("-q", "train", str(gallery), "-o", str(run), "--epochs", "4", "--lr", "0.01", *TINY_CNN)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="session")
def tiny_index(trained: Path, gallery: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny index (the default, hnsw) shared by the read-only tests."""
    out = tmp_path_factory.mktemp("idx") / "index"
    result = invoke("-q", "index", "build", str(trained), str(gallery), "-o", str(out), *CPU_RUNTIME, "--json")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def exported_index(tiny_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pixdex export` of the tiny index (needs the [export] extra), for read-only tests."""
    out = tmp_path_factory.mktemp("exported") / "export"
    result = invoke("-q", "export", str(tiny_index), "-o", str(out), *CPU_RUNTIME)
    assert result.exit_code == 0, result.output
    return out


def serve_client(folder: Path, *, token: str | None = None, limits: Any = None, log: Any = None, **service_kw: Any):
    """A Starlette TestClient over `pixdex serve FOLDER` (CPU, no reload watcher: tests call
    ``client.service.reload_if_changed()`` themselves). Use as a context manager."""
    from starlette.testclient import TestClient

    from pixdex import api
    from pixdex.plugins import load_plugins
    from pixdex.serve.app import create_app
    from pixdex.serve.service import Service

    pset = load_plugins(entry_points=[])
    runtime = api.runtime_config(
        pset, flags={"runtime": {"device": "cpu", "workers": 0, "engine": "torch"}}, environ={}
    )
    service = Service(folder, pset, runtime, log=log or (lambda m: None), **service_kw)
    app = create_app(service, limits=limits, token=token, reload_interval=0, log=log or (lambda m: None))
    client = TestClient(app, raise_server_exceptions=True)
    client.service = service  # type: ignore[attr-defined]
    return client


def upload(*files: tuple[str, bytes], k: int | None = None) -> dict[str, Any]:
    """TestClient keyword arguments for a multipart upload of ``(name, bytes)`` files."""
    data = {} if k is None else {"k": str(k)}
    return {"files": [("image", (name, data_, "image/png")) for name, data_ in files], "data": data}


@pytest.fixture
def own_index(trained: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private collection and index that the test may change."""
    data = make_folder_dataset(tmp_path / "coll", per_class=4, seed=11)
    index = tmp_path / "index"
    result = invoke("-q", "index", "build", str(trained), str(data), "-o", str(index), *CPU_RUNTIME)
    assert result.exit_code == 0, result.stderr
    return data, index
