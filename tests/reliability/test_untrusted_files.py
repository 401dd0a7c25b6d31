"""docs/reliability.md, "untrusted files never execute": a code-running pickle given as
weights is refused everywhere weights are accepted, broken weight files are one line, wrong
architectures list their mismatched keys, and pixdex itself writes no pickle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import invoke
from recognition_data import make_folder_dataset

RT = ["--workers", "0", "--device", "cpu", "--batch-size", "4"]
TIMM = ["--set", "backbone.input_size=32"]


class Evil:
    """Pickles into a call that writes a marker file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("untrusted"), per_class=4, seed=2, size=32)


def test_code_running_pickle_is_refused_everywhere(data: Path, tmp_path: Path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"conv1.weight": Evil(marker)}, evil)
    weights = ["--set", f"backbone.weights={evil}"]
    commands = {
        "train": ["train", str(data), "-o", str(tmp_path / "run"), "--backbone", "timm:resnet10t", "--epochs", "1"],
        "index build": ["index", "build", "timm:resnet10t", str(data), "-o", str(tmp_path / "idx")],
        "embed": ["embed", "timm:resnet10t", str(data), "-o", str(tmp_path / "emb")],
    }
    for name, args in commands.items():
        result = invoke(*args, *RT, *TIMM, *weights)
        assert result.exit_code == 1, (name, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "--trust-checkpoint" in lines[0], (name, result.stderr)
        assert not marker.exists(), f"{name} ran the pickle's code"


def test_broken_weight_files_are_one_line(data: Path, tmp_path: Path):
    good = tmp_path / "good.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.ones(4)}, good)
    cases = {
        "empty.safetensors": b"",
        "garbage.safetensors": b"definitely not safetensors" * 10,
        "truncated.safetensors": good.read_bytes()[:-3],
        "empty.pt": b"",
        "garbage.pt": b"\x00\x01 not a torch file" * 10,
    }
    torch.save({"a": torch.ones(3)}, tmp_path / "full.pt")
    cases["truncated.pt"] = (tmp_path / "full.pt").read_bytes()[:40]
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        result = invoke(
            "embed",
            "timm:resnet10t",
            str(data),
            "-o",
            str(tmp_path / f"out-{name}"),
            *RT,
            *TIMM,
            "--set",
            f"backbone.weights={path}",
        )
        assert result.exit_code == 1, (name, result.output)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, (name, result.stderr)


def test_wrong_architecture_lists_the_keys(data: Path, tmp_path: Path):
    import timm
    from safetensors.torch import save_file

    other = timm.create_model("resnet18", num_classes=0)
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, path)
    result = invoke(
        "embed",
        "timm:resnet10t",
        str(data),
        "-o",
        str(tmp_path / "out"),
        *RT,
        *TIMM,
        "--set",
        f"backbone.weights={path}",
    )
    assert result.exit_code == 1
    assert "does not fit" in result.stderr and ("missing" in result.stderr or "shape mismatch" in result.stderr)
    # a run folder whose weights were swapped for another architecture's
    run = tmp_path / "run"
    train_tiny(data, run, width=4)
    other_run = tmp_path / "run2"
    train_tiny(data, other_run, width=8)
    shutil.copy(other_run / "model.safetensors", run / "model.safetensors")
    refused = invoke("predict", str(run), str(next((data / "top").iterdir())), *RT)
    assert refused.exit_code == 1 and "shape mismatch" in refused.stderr and "backbone." in refused.stderr


def train_tiny(data: Path, run: Path, *, width: int) -> None:
    """One epoch of a one-stage simple-cnn of ``width`` channels into ``run``."""
    args = ["-q", "train", str(data), "-o", str(run), "--epochs", "1", *RT, "--backbone", "simple-cnn"]
    result = invoke(*args, "--set", f"backbone.widths=[{width}]")
    assert result.exit_code == 0, result.stderr


def test_pixdex_writes_no_pickle(data: Path, tmp_path: Path):
    run, index = tmp_path / "run", tmp_path / "index"
    train_tiny(data, run, width=4)
    assert invoke("-q", "index", "build", str(run), str(data), "-o", str(index), *RT).exit_code == 0
    for path in list(run.rglob("*")) + list(index.rglob("*")):
        if path.is_file() and path.stat().st_size:
            head = path.read_bytes()[:2]
            # pickle protocols 2-5 open with PROTO (0x80) and the protocol number; a
            # safetensors file opens with its header length, whose low byte may be 0x80
            assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), (
                f"{path} looks like a pickle"
            )
            assert head != b"PK", f"{path} looks like a torch.save zip archive"
            if path.suffix == ".safetensors":
                header = int.from_bytes(path.read_bytes()[:8], "little")
                assert path.read_bytes()[8:9] == b"{" and 8 + header <= path.stat().st_size
    assert json.loads((run / "last.json").read_text())["epoch"] == 1
