"""Run and index folders committed as a unit, so a crash never destroys the previous one.

The commit protocol (docs/architecture.md):

1. every new file is written as ``NAME.tmp-<pid>`` (or into ``.staging-<pid>/`` for a
   plugin that saves a set of files) and fsynced;
2. ``commit.json`` (the renames with sizes and sha256, plus the new manifest) is written
   atomically;
3. the renames are done (``os.replace``: a reader that holds the old file keeps it);
4. the manifest is replaced last, then ``commit.json`` is deleted.

Opening a folder rolls a leftover ``commit.json`` forward and deletes orphan temporary
files. Writers hold an ``fcntl.flock`` on ``.lock`` for their whole run; the short commit
step also takes ``.commit-lock``, which readers share while they open files, so a reader
never sees half a commit. Files are never modified in place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from pixdex.errors import ArtifactError

COMMIT_RECORD = "commit.json"
LOCK_FILE = ".lock"
COMMIT_LOCK_FILE = ".commit-lock"
CRASH_POINTS: tuple[str, ...] = (
    "commit:staged",  # new files written and fsynced, no record yet
    "commit:recorded",  # commit.json written, nothing renamed
    "commit:renamed-one",  # the first rename done
    "commit:renamed-all",  # every rename done, manifest still old
    "commit:manifest",  # manifest replaced, commit.json still present
)
_TMP_RE = re.compile(r"\.tmp-(\d+)$")
_crash_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL when ``PIXDEX_CRASH_AT`` names this point.

    ``PIXDEX_CRASH_AT=NAME`` kills at the first hit, ``NAME@N`` at the N-th, so tests can
    crash deterministically at any step (for example the third epoch's checkpoint).
    """
    wanted = os.environ.get("PIXDEX_CRASH_AT")
    if not wanted:
        return
    target, _, nth = wanted.partition("@")
    if target != name:
        return
    _crash_hits[name] = _crash_hits.get(name, 0) + 1
    if _crash_hits[name] >= (int(nth) if nth.isdigit() else 1):
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


# --- small durable-file helpers --------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_matches(path: Path, fact: dict[str, Any]) -> bool:
    """Whether ``path`` exists with the size (when recorded) and sha256 of its manifest entry."""
    if not path.is_file() or ("size" in fact and path.stat().st_size != fact["size"]):
        return False
    return sha256_file(path) == fact["sha256"]


def tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def json_text(obj: Any, **kw: Any) -> str:
    """JSON that is valid UTF-8: a non-UTF-8 file name (which Python holds with surrogate
    escapes) is written as \\udcXX escapes, and json.loads gives the same path back."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, **kw)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, ensure_ascii=True, allow_nan=False, **kw)
    return text


def to_json(obj: Any) -> bytes:
    return (json_text(obj, indent=2) + "\n").encode("utf-8")


def jsonl_bytes(records: Any) -> bytes:
    """One JSON document per line (items.jsonl, skipped.jsonl)."""
    return "".join(json_text(r) + "\n" for r in records).encode("utf-8")


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read JSON with a one-line error for a missing or corrupt file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{what} {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{what} {path} is not valid JSON ({exc}); it may be truncated") from None
    except OSError as exc:
        raise ArtifactError(f"cannot read {what} {path}: {exc.strerror}") from None


# --- locks -----------------------------------------------------------------------------------


@contextlib.contextmanager
def flock(path: Path, *, shared: bool = False, timeout: float = 0.0, what: str = "folder") -> Iterator[None]:
    """Hold an flock on ``path``; wait up to ``timeout`` seconds, then fail with one line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    deadline = time.monotonic() + timeout
    told = False
    try:
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise ArtifactError(
                        f"{what} {path.parent} is being written by another pixdex process; "
                        f"wait for it to finish (or raise --lock-timeout, now {timeout:g}s)"
                    ) from None
                if not told and timeout >= 1:
                    print(f"pixdex: waiting for another writer of {path.parent} ...", file=sys.stderr)
                    told = True
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def try_flock(path: Path) -> int | None:
    """Take an exclusive lock without waiting; return the fd (close it to release) or None."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError:
        os.close(fd)
        return None


# --- recovery --------------------------------------------------------------------------------


def _apply_record(folder: Path, record: dict[str, Any], manifest_name: str) -> None:
    """Finish a commit described by ``record`` (idempotent: safe to run again after a crash)."""
    for i, step in enumerate(record["renames"]):
        src, dst = folder / step["src"], folder / step["dst"]
        if src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        elif not (dst.exists() and dst.stat().st_size == step["size"] and sha256_file(dst) == step["sha256"]):
            raise ArtifactError(
                f"{folder}: an interrupted commit cannot be finished ({step['dst']} is missing or differs); "
                f"rebuild this folder"
            )
        if i == 0:
            crash_point("commit:renamed-one")
    for name in record.get("removes", []):
        with contextlib.suppress(FileNotFoundError):  # already removed by an earlier attempt
            (folder / name).unlink()
    for sub in {(folder / s["dst"]).parent for s in record["renames"]} | {folder}:
        fsync_dir(sub)
    crash_point("commit:renamed-all")
    atomic_write_bytes(folder / manifest_name, to_json(record["manifest"]))
    crash_point("commit:manifest")
    (folder / COMMIT_RECORD).unlink()
    fsync_dir(folder)


def _roll_forward(folder: Path, manifest_name: str) -> bool:
    record_path = folder / COMMIT_RECORD
    if not record_path.exists():
        return False
    record = read_json(record_path, "commit record")
    _apply_record(folder, record, record.get("manifest_name", manifest_name))
    return True


def _remove_orphans(folder: Path) -> list[str]:
    """Delete temporary files and staging folders that no live commit refers to."""
    removed = []
    for path in list(folder.rglob("*")):
        if path.name.startswith(".staging-") and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path.relative_to(folder)))
        elif _TMP_RE.search(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(str(path.relative_to(folder)))
    return removed


def recover(folder: Path, manifest_name: str = "manifest.json") -> None:
    """Roll forward an interrupted commit and, when no writer is active, delete orphans."""
    if not folder.is_dir():
        return
    with flock(folder / COMMIT_LOCK_FILE, timeout=60.0):
        _roll_forward(folder, manifest_name)
    fd = try_flock(folder / LOCK_FILE)
    if fd is not None:  # no writer is running, so every temporary file is an orphan
        try:
            _remove_orphans(folder)
        finally:
            os.close(fd)


@contextlib.contextmanager
def reading(folder: str | Path, manifest_name: str = "manifest.json") -> Iterator[dict[str, Any]]:
    """Recover ``folder``, then hold the shared commit lock while the caller opens its files.

    Yields the manifest. Files opened (or memory-mapped) inside the block stay valid after
    it, even if a later commit replaces them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder} does not exist or is not a folder")
    recover(folder, manifest_name)
    with flock(folder / COMMIT_LOCK_FILE, shared=True, timeout=60.0):
        yield read_json(folder / manifest_name, "manifest")


# --- the writer ------------------------------------------------------------------------------


class FolderWriter:
    """Stage new files for a folder and commit them together with a new manifest.

    Use as a context manager; leaving the block without :meth:`commit` discards every
    staged file and leaves the previous folder untouched::

        with FolderWriter(run_dir, manifest_name="pixdex.json") as w:
            w.write_bytes("model.safetensors", data)
            w.commit(manifest)
    """

    def __init__(self, folder: str | Path, *, manifest_name: str = "manifest.json", lock_timeout: float = 60.0) -> None:
        self.folder = Path(folder)
        self.manifest_name = manifest_name
        # readers hold .lock for an instant while they clean up, so never give up at once
        self.lock_timeout = max(lock_timeout, 1.0)
        self._staged: dict[str, Path] = {}  # final name -> staged path
        self._removes: list[str] = []
        self._lock: contextlib.ExitStack | None = None
        self._staging: Path | None = None
        self.committed = False

    def __enter__(self) -> "FolderWriter":
        if self.folder.exists() and not self.folder.is_dir():
            raise ArtifactError(f"{self.folder} exists and is not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        stack = contextlib.ExitStack()
        stack.enter_context(flock(self.folder / LOCK_FILE, timeout=self.lock_timeout))
        self._lock = stack
        try:
            with flock(self.folder / COMMIT_LOCK_FILE, timeout=60.0):
                _roll_forward(self.folder, self.manifest_name)
            _remove_orphans(self.folder)  # we hold the writer lock: nobody else is staging
        except BaseException:
            stack.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:  # whatever is staged but not committed is discarded
            for path in self._staged.values():
                path.unlink(missing_ok=True)
            if self._staging is not None:
                shutil.rmtree(self._staging, ignore_errors=True)
        finally:
            assert self._lock is not None
            self._lock.close()

    def exists(self, name: str) -> bool:
        return (self.folder / name).exists()

    def path_for(self, name: str) -> Path:
        """A temporary path to write ``name`` to; it becomes ``name`` at commit."""
        _check_name(name)
        final = self.folder / name
        final.parent.mkdir(parents=True, exist_ok=True)
        path = tmp_name(final)
        self._staged[name] = path
        return path

    def write_bytes(self, name: str, data: bytes) -> None:
        path = self.path_for(name)
        with open(path, "wb") as fh:
            fh.write(data)

    def write_json(self, name: str, obj: Any) -> None:
        self.write_bytes(name, to_json(obj))

    def write_jsonl(self, name: str, records: Iterable[Any]) -> None:
        """``name`` as one JSON document per line, the bytes of :func:`jsonl_bytes`,
        written as ``records`` come (an iterable need not fit in memory)."""
        with open(self.path_for(name), "w", encoding="utf-8", newline="\n") as fh:
            for record in records:
                fh.write(json_text(record) + "\n")

    def copy_file(self, name: str, src: str | Path) -> None:
        shutil.copyfile(src, self.path_for(name))

    def staging_dir(self) -> Path:
        """A fresh folder for a plugin to save files into; adopt them with :meth:`adopt`."""
        if self._staging is None:
            self._staging = self.folder / f".staging-{os.getpid()}"
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging.mkdir()
        return self._staging

    def adopt(self, names: list[str], prefix: str = "") -> None:
        """Stage files a plugin wrote into :meth:`staging_dir` as ``prefix + name``."""
        assert self._staging is not None
        for name in names:
            _check_name(prefix + name)
            src = self._staging / name
            if not src.is_file():
                raise ArtifactError(f"plugin said it wrote {name}, but {src} is not a file")
            self._staged[prefix + name] = src

    def remove(self, name: str) -> None:
        """Delete ``name`` from the folder as part of the commit."""
        _check_name(name)
        self._removes.append(name)

    def commit(
        self, manifest: dict[str, Any] | Callable[[dict[str, dict[str, Any]]], dict[str, Any]]
    ) -> dict[str, str]:
        """Make every staged file and ``manifest`` current, all together.

        ``manifest`` may be a function of the staged files' ``{name: {size, sha256}}``, so
        a manifest can record the checksums of exactly what it commits. Returns the
        sha256 of each committed file. The writer stays usable: a long job (training)
        commits a checkpoint per epoch under one lock.
        """
        renames = []
        for name, path in self._staged.items():
            fsync_file(path)
            renames.append(
                {
                    "src": str(path.relative_to(self.folder)),
                    "dst": name,
                    "size": path.stat().st_size,
                    "sha256": sha256_file(path),
                }
            )
        for sub in {p.parent for p in self._staged.values()}:
            fsync_dir(sub)
        crash_point("commit:staged")
        if callable(manifest):
            manifest = manifest({r["dst"]: {"size": r["size"], "sha256": r["sha256"]} for r in renames})
        record = {
            "version": 1,
            "manifest_name": self.manifest_name,
            "renames": renames,
            "removes": [r for r in self._removes if r not in self._staged],
            "manifest": manifest,
        }
        with flock(self.folder / COMMIT_LOCK_FILE, timeout=60.0):
            atomic_write_bytes(self.folder / COMMIT_RECORD, to_json(record))
            # from here the staged files belong to commit.json: if finishing fails, the next
            # open rolls forward, so __exit__ must not delete them
            self._staged, self._removes = {}, []
            staging, self._staging = self._staging, None
            crash_point("commit:recorded")
            _apply_record(self.folder, record, self.manifest_name)
        self.committed = True
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        return {r["dst"]: r["sha256"] for r in renames}


def _check_name(name: str) -> None:
    reserved = (COMMIT_RECORD, LOCK_FILE, COMMIT_LOCK_FILE)
    if (
        name.startswith("/")
        or ".." in Path(name).parts
        or name in reserved
        or _TMP_RE.search(name)
        or any(part.startswith(".staging-") for part in Path(name).parts)
    ):
        raise ArtifactError(f"invalid artifact file name {name!r}")


# --- safetensors -----------------------------------------------------------------------------


def tensors_to_bytes(tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise CPU tensors as safetensors (contiguous copies; shared storage is not allowed)."""
    from safetensors.torch import save

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return save(clean, metadata=metadata)


def load_safetensors(path: str | Path, what: str = "weights file") -> tuple[dict[str, Any], dict[str, str]]:
    """Load tensors and metadata; a missing, empty, truncated or garbage file is one clear line."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ArtifactError(f"{what} {path} is a folder, not a file") from None
    except OSError as exc:
        raise ArtifactError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not data:
        raise ArtifactError(f"{what} {path} is empty (0 bytes)")
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise ArtifactError(
            f"{what} {path} is not a valid safetensors file ({exc}); it may be truncated or corrupt"
        ) from None
    return tensors, header.get("__metadata__", {}) or {}
