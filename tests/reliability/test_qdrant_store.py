"""docs/reliability.md, "crashes lose nothing" and "indexes are checked before they are
trusted", for an index whose rows live in a database (the qdrant plugin, embedded store):
`index add` killed (SIGKILL, a real subprocess) before the folder's commit leaves the
previous version serving, through the folder and through the alias; killed after the
commit but before the alias moved, the folder reads the new version and the next write
moves the alias. A commit that fails (Ctrl-C) leaves no version behind, and a collection
changed behind pixdex's back is refused in one line."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import numpy as np
import pytest
from test_index_crash import MODEL, RT, pixdex  # the same subprocess runner and tiny model

from conftest import CPU_RUNTIME, QDRANT_SET, invoke
from recognition_data import make_folder_dataset, pattern_image

pytest.importorskip("qdrant_client", reason="the [qdrant] extra is part of [dev]")


def state(index: Path) -> tuple[int, str, str | None, list[list[int]]]:
    """(count, the folder's version, the alias's target, top-3 rows of 4 stored vectors).
    The embedded store admits one process at a time: the client is closed after reading."""
    from pixdex.plugins import load_plugins
    from pixdex.retrieval.index_folder import open_index
    from pixdex_qdrant.store import close_clients

    try:
        opened = open_index(index, load_plugins(entry_points=[]))
        ids, _ = opened.ann.search(np.asarray(opened.embeddings[:4]), 3)
        return len(opened.items), opened.ann.version, opened.ann._alias_target(), ids.tolist()
    finally:
        close_clients()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    base = make_folder_dataset(tmp_path / "base", per_class=5, seed=8)
    extra = tmp_path / "extra" / "top"
    extra.mkdir(parents=True)
    rng = np.random.default_rng(9)
    for i in range(3):
        pattern_image("top", rng).save(extra / f"e{i}.png")
    index = tmp_path / "index"
    store = ["--index", "qdrant", "--set", f"index.path={tmp_path / 'store'}", "--set", "index.collection=crash"]
    proc = pixdex("index", "build", "simple-cnn", str(base), "-o", str(index), *RT, *MODEL, *store)
    assert proc.returncode == 0, proc.stderr
    return index, extra.parent


@pytest.mark.parametrize("point", ["index:staged", "commit:recorded", "index:committed"])
def test_add_killed(point: str, setup: tuple[Path, Path]):
    index, extra = setup
    before = state(index)
    assert before[1] == before[2]  # the build published its version
    proc = pixdex("index", "add", str(index), str(extra), *RT, crash_at=point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    after = state(index)
    if point == "index:staged":
        assert after == before  # nothing committed: the old version, identical results, alias unmoved
    else:
        count, version, alias, _ = after
        assert count == before[0] + 3 and version != before[1]  # the folder rolled forward
        assert alias == before[1]  # the alias moves only after the commit: still the old one
    proc = pixdex("index", "add", str(index), str(extra), *RT)  # the next writer
    assert proc.returncode == 0, proc.stderr
    count, version, alias, _ = state(index)
    assert count == before[0] + 3 and alias == version


def ok(*args: str) -> None:
    result = invoke(*args, *CPU_RUNTIME, "--json")
    assert result.exit_code == 0, result.stderr


def fails(*args: str, message: str) -> None:
    result = invoke(*args)
    assert result.exit_code != 0, result.stdout
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def collection() -> list[str]:
    return ["--index", "qdrant", "--set", f"index.collection=r{uuid.uuid4().hex[:10]}", *QDRANT_SET]


def opened(folder: Path):
    from pixdex.plugins import load_plugins
    from pixdex.retrieval.index_folder import open_index

    return open_index(folder, load_plugins(entry_points=[]))


def store_state(folder: Path) -> tuple[str, str | None, list[str]]:
    ann = opened(folder).ann
    return ann.version, ann._alias_target(), sorted(c for c in ann._collections() if c.startswith(ann.alias + "-"))


def test_the_collection_is_checked_against_the_manifest(trained, gallery, tmp_path):
    out = tmp_path / "idx"
    ok("index", "build", str(trained), str(gallery), "-o", str(out), *collection())
    ann = opened(out).ann
    ann.client.delete(ann.version, points_selector=[0], wait=True)  # changed behind pixdex's back
    fails("search", str(out), "--id", "1", message="holds count 29 but the manifest says 30")
    ann.client.delete_collection(ann.version)
    fails("search", str(out), "--id", "1", message="rebuild the index")


def test_a_failed_commit_leaves_no_version_behind(trained, gallery, tmp_path, monkeypatch):
    from pixdex.artifacts import FolderWriter

    out, store = tmp_path / "idx", collection()
    ok("index", "build", str(trained), str(gallery), "-o", str(out), *store)
    before = store_state(out)

    def interrupted(self, manifest):
        raise KeyboardInterrupt  # Ctrl-C at the commit

    monkeypatch.setattr(FolderWriter, "commit", interrupted)
    rebuilt = invoke("index", "build", str(trained), str(gallery), "-o", str(out), "--force", *store, *CPU_RUNTIME)
    shrunk = invoke("index", "remove", str(out), str(sorted(gallery.rglob("*.png"))[0]))
    monkeypatch.undo()
    assert rebuilt.exit_code != 0 and shrunk.exit_code != 0  # click turns Ctrl-C into "Aborted!"
    assert store_state(out) == before  # the alias, the folder's version and the versions kept
