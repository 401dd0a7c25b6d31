"""Three ways to run pixdex (editable, a wheel installed with --target, a bare checkout) and a
real third-party plugin package installed next to it. Nothing here installs into .venv or
creates a venv with torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PROBE = (
    "import json, sys, pixdex, pixdex.plugins as p\n"
    "ps = p.load_plugins()\n"
    "print(json.dumps({'pixdex': pixdex.__file__, 'registry': str(ps.registry_file.path),\n"
    "  'files': {i.name: i.file for i in ps.plugins},\n"
    "  'indexes': ps.registry.names('index'), 'torch': 'torch' in sys.modules}))\n"
)


def _pip(*args: str, cwd: Path = REPO) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _probe(env_path: str, cwd: Path, *, no_site: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXDEX_")}
    env["PYTHONPATH"] = env_path
    cmd = [sys.executable] + (["-S"] if no_site else []) + ["-c", PROBE]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def wheel_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pixdex built as a wheel and installed with --target into a temporary folder."""
    out = tmp_path_factory.mktemp("wheel")
    _pip("wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", str(out / "dist"))
    (wheel,) = (out / "dist").glob("pixdex-*.whl")
    _pip("install", "--no-deps", "-q", "--target", str(out / "target"), str(wheel))
    return out / "target"


def test_editable_install_runs_from_the_checkout():
    import pixdex

    assert Path(pixdex.__file__).resolve().is_relative_to(REPO / "core")


def test_wheel_installed_with_target_is_self_contained(wheel_target: Path, tmp_path: Path):
    got = _probe(str(wheel_target), cwd=tmp_path)
    assert Path(got["pixdex"]).is_relative_to(wheel_target)
    assert got["registry"] == str(wheel_target / "pixdex" / "registry.toml")
    assert len(got["files"]) == 9  # the built-in plugins of registry.toml
    for name, file in got["files"].items():
        assert Path(file).is_relative_to(wheel_target), f"{name} loaded from {file}"
    assert not got["torch"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXDEX_")}
    env["PYTHONPATH"] = str(wheel_target)
    proc = subprocess.run(
        [sys.executable, "-m", "pixdex", "plugins", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert all(Path(r["file"]).is_relative_to(wheel_target) for r in json.loads(proc.stdout))


def test_bare_checkout_with_pythonpath(tmp_path: Path):
    # -S skips site-packages' .pth files (so the editable install is invisible); the
    # libraries come from site-packages on PYTHONPATH, pixdex from core/ and plugins/.
    import click

    libs = str(Path(click.__file__).parent.parent)
    got = _probe(os.pathsep.join([str(REPO / "core"), str(REPO / "plugins"), libs]), cwd=REPO, no_site=True)
    assert Path(got["pixdex"]).is_relative_to(REPO / "core")
    assert got["registry"] == str(REPO / "registry.toml")
    assert all(Path(f).is_relative_to(REPO / "plugins") for f in got["files"].values())
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXDEX_")}
    env["PYTHONPATH"] = os.pathsep.join(["core", "plugins", libs])
    proc = subprocess.run(
        [sys.executable, "-S", "-m", "pixdex", "plugins"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "pixdex_annoy" in proc.stdout


@pytest.fixture(scope="session")
def example_plugin_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """docs/examples/pixdex-example-plugin built and installed with --target."""
    out = tmp_path_factory.mktemp("example")
    _pip(
        "wheel",
        str(REPO / "docs/examples/pixdex-example-plugin"),
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(out / "dist"),
    )
    (wheel,) = (out / "dist").glob("*.whl")
    _pip("install", "--no-deps", "-q", "--target", str(out / "target"), str(wheel))
    return out / "target"


def test_example_plugin_is_listed(example_plugin_target: Path, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXDEX_")}
    env["PYTHONPATH"] = str(example_plugin_target)
    plugins = subprocess.run(
        [sys.executable, "-m", "pixdex", "plugins", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert plugins.returncode == 0, plugins.stderr
    row = next(r for r in json.loads(plugins.stdout) if r["name"] == "pixdex-example-plugin")
    assert row["source"] == "entry point example" and row["components"] == {"indexes": ["numpy-brute"]}
    assert Path(row["file"]).is_relative_to(example_plugin_target)
    indexes = subprocess.run(
        [sys.executable, "-m", "pixdex", "list", "indexes", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert "numpy-brute" in [r["name"] for r in json.loads(indexes.stdout)]


def test_example_plugin_index_builds_and_searches_by_name(example_plugin_target: Path, tmp_path: Path):
    import sys as _sys

    _sys.path.insert(0, str(REPO / "tests"))
    from recognition_data import make_folder_dataset

    data = make_folder_dataset(tmp_path / "data", per_class=4, seed=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXDEX_")}
    env["PYTHONPATH"] = str(example_plugin_target)
    common = ["--workers", "0", "--device", "cpu"]
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pixdex",
            "-q",
            "index",
            "build",
            "simple-cnn",
            str(data),
            "-o",
            str(tmp_path / "idx"),
            "--index",
            "numpy-brute",
            "--set",
            "backbone.widths=[4]",
            "--set",
            "backbone.input_size=16",
            *common,
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    assert json.loads(build.stdout)["index"] == "numpy-brute"
    query = sorted((data / "top").iterdir())[0]
    found = subprocess.run(
        [
            sys.executable,
            "-m",
            "pixdex",
            "-q",
            "search",
            str(tmp_path / "idx"),
            str(query),
            "-k",
            "3",
            "--json",
            *common,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)[0]["matches"][0]["path"] == str(query)
