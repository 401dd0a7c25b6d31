"""docs/reliability.md, "crashes lose nothing": a folder commit killed at every named crash
point (a real SIGKILL in a real subprocess) leaves a folder that opens whole, old or new."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pixdex import artifacts
from pixdex.artifacts import CRASH_POINTS, FolderWriter, reading
from pixdex.errors import ArtifactError

WRITER = r"""
import sys
from pixdex.artifacts import FolderWriter
folder, version = sys.argv[1], sys.argv[2]
with FolderWriter(folder) as w:
    w.write_bytes("data.bin", f"data {version}".encode() * 1000)
    w.write_json("sub/meta.json", {"version": version})
    staging = w.staging_dir()
    (staging / "plugin.idx").write_bytes(f"index {version}".encode())
    w.adopt(["plugin.idx"])
    if version == "2":
        w.remove("old.txt")
    w.commit({"version": version})
"""


def write_version(folder: Path, version: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PIXDEX_CRASH_AT"}
    if crash_at:
        env["PIXDEX_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-c", WRITER, str(folder), version], env=env, capture_output=True, text=True, timeout=60
    )


def assert_whole(folder: Path) -> str:
    """The folder opens, and every file agrees with the manifest's version."""
    with reading(folder) as manifest:
        version = manifest["version"]
    assert (folder / "data.bin").read_bytes() == f"data {version}".encode() * 1000
    assert json.loads((folder / "sub/meta.json").read_text()) == {"version": version}
    assert (folder / "plugin.idx").read_bytes() == f"index {version}".encode()
    assert (folder / "old.txt").exists() == (version == "1")
    return version


def leftovers(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if ".tmp-" in p.name or p.name.startswith(".staging-") or p.name == "commit.json"
    )


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_at_each_crash_point_keeps_a_whole_folder(tmp_path: Path, point: str):
    folder = tmp_path / "art"
    assert write_version(folder, "1").returncode == 0
    (folder / "old.txt").write_text("kept until version 2")  # a file version 2 removes
    proc = write_version(folder, "2", crash_at=point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert leftovers(folder), "the crash should leave something to clean up"
    # before commit.json exists the old version stands; after it, opening rolls forward
    expected = "1" if point == "commit:staged" else "2"
    assert assert_whole(folder) == expected
    assert write_version(folder, "3").returncode == 0
    assert leftovers(folder) == []
    with reading(folder) as manifest:
        assert manifest["version"] == "3"


def test_an_exception_inside_the_writer_discards_everything(tmp_path: Path):
    folder = tmp_path / "art"
    assert write_version(folder, "1").returncode == 0
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with pytest.raises(RuntimeError):
        with FolderWriter(folder) as w:
            w.write_bytes("data.bin", b"half")
            w.staging_dir()
            raise RuntimeError("interrupted")
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert leftovers(folder) == []


def test_second_writer_fails_with_a_clear_message(tmp_path: Path):
    folder = tmp_path / "art"
    with FolderWriter(folder):
        with pytest.raises(ArtifactError, match="is being written by another pixdex process"):
            with FolderWriter(folder, lock_timeout=0.2):
                pass


def test_second_writer_waits_for_the_first(tmp_path: Path):
    folder = tmp_path / "art"
    order = []

    def slow():
        with FolderWriter(folder) as w:
            order.append("first-start")
            time.sleep(0.3)
            w.write_bytes("x", b"1")
            w.commit({"v": 1})
            order.append("first-done")

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.1)
    with FolderWriter(folder, lock_timeout=10) as w:
        order.append("second")
        w.write_bytes("x", b"2")
        w.commit({"v": 2})
    t.join()
    assert order == ["first-start", "first-done", "second"]
    assert (folder / "x").read_bytes() == b"2"


def test_reader_keeps_the_file_it_opened_across_a_replace(tmp_path: Path):
    folder = tmp_path / "art"
    assert write_version(folder, "1").returncode == 0
    with reading(folder):
        handle = open(folder / "data.bin", "rb")
    assert write_version(folder, "2").returncode == 0
    assert handle.read() == b"data 1" * 1000  # never modified in place
    handle.close()


def test_commit_record_checksums_guard_roll_forward(tmp_path: Path):
    folder = tmp_path / "art"
    assert write_version(folder, "1").returncode == 0
    assert write_version(folder, "2", crash_at="commit:renamed-one").returncode == -signal.SIGKILL
    record = json.loads((folder / "commit.json").read_text())
    first = record["renames"][0]
    (folder / first["dst"]).write_bytes(b"tampered")  # the renamed file no longer matches
    with pytest.raises(ArtifactError, match="cannot be finished"):
        assert_whole(folder)
    assert hashlib.sha256(b"tampered").hexdigest() != first["sha256"]


def test_crash_point_nth_hit(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(artifacts, "_crash_hits", {})
    monkeypatch.setenv("PIXDEX_CRASH_AT", "other@2")
    artifacts.crash_point("commit:staged")  # a different name never fires
    artifacts.crash_point("other")  # the first hit of other@2 does not fire either
    assert artifacts._crash_hits == {"other": 1}


def test_safetensors_errors_are_one_line(tmp_path: Path):
    import torch

    good = tmp_path / "w.safetensors"
    good.write_bytes(artifacts.tensors_to_bytes({"a": torch.ones(3)}, {"k": "v"}))
    tensors, meta = artifacts.load_safetensors(good)
    assert meta == {"k": "v"} and tensors["a"].tolist() == [1.0, 1.0, 1.0]
    cases = {"empty": b"", "garbage": b"not a safetensors file at all", "truncated": good.read_bytes()[:-5]}
    for name, data in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        with pytest.raises(ArtifactError) as info:
            artifacts.load_safetensors(path)
        assert "\n" not in str(info.value)
    with pytest.raises(ArtifactError, match="does not exist"):
        artifacts.load_safetensors(tmp_path / "missing.safetensors")
