"""Device and precision choice. There is no GPU here: CUDA availability is mocked where noted."""

from __future__ import annotations

import pytest
import torch

from pixdex.device import check_device_spec, placement, resolve_device, resolve_precision
from pixdex.errors import DeviceError, UsageError


def test_cpu_and_auto_on_this_machine():
    notes: list[str] = []
    assert resolve_device("cpu", notify=notes.append) == "cpu"
    assert notes == []
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto", notify=notes.append) == expected
    assert notes == [f"pixdex: device auto -> {expected}"]


def test_auto_prefers_cuda_when_present(monkeypatch):
    # mocked: no GPU exists on the test machines
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_device("auto", notify=lambda m: None) == "cuda:0"
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(DeviceError, match="has 2 CUDA device"):
        resolve_device("cuda:2")
    plan = placement("cuda", "auto")
    assert plan.to_dict() == {"device": "cuda:0", "precision": "bf16", "channels_last": True}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_absent_cuda_is_a_clear_error():
    with pytest.raises(DeviceError, match="Device 'cuda' is not available: this machine has no usable CUDA GPU"):
        resolve_device("cuda")


def test_bad_specs():
    with pytest.raises(UsageError, match="Unknown device 'gpu'"):
        check_device_spec("gpu")
    with pytest.raises(UsageError, match="Unknown precision 'fp8'"):
        resolve_precision("fp8", "cpu")
    with pytest.raises(DeviceError, match="fp16 is not supported on the CPU"):
        resolve_precision("fp16", "cpu")
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"


def test_the_cpu_uses_channels_last():
    # oneDNN's CPU convolutions run faster in channels_last (docs/recognition.md, "Devices")
    assert placement("cpu", "auto").to_dict() == {"device": "cpu", "precision": "fp32", "channels_last": True}


def _two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mocked: no GPU can exist on the test machines; torch is told there are two."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)


def test_each_process_of_a_gpu_world_gets_its_own_device(monkeypatch):
    from pixdex.world import World

    _two_gpus(monkeypatch)
    notes: list[str] = []
    second = World(rank=1, size=2, local_rank=1)
    assert placement("auto", "auto", world=second, notify=notes.append).device == "cuda:1"
    assert placement("cuda", "auto", world=second, notify=notes.append).device == "cuda:1"
    assert notes[0] == "pixdex: device auto -> cuda:1 (process 1 of 2)"
    assert placement("cuda:0", "auto", world=second).device == "cuda:0"  # explicit wins
    assert placement("cpu", "auto", world=second).device == "cpu"
    assert placement("auto", "auto", world=World(), notify=notes.append).device == "cuda:0"  # one process


def test_collectives_use_the_process_gpu_under_nccl(monkeypatch):
    import torch.distributed as dist

    from pixdex.world import World

    _two_gpus(monkeypatch)
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")  # mocked: no process group here
    assert World(rank=1, size=2, local_rank=1)._reduce_device() == "cuda:1"
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    assert World(rank=1, size=2, local_rank=1)._reduce_device() == "cpu"


class _Placed(Exception):
    """Raised by the placement spy: the device is decided, nothing more is needed."""


def _spy_placement(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    import importlib

    from pixdex import device

    def spy(spec: str, precision: str = "auto", *, world=None, notify=None):
        raise _Placed(device.placement(spec, precision, world=world, notify=lambda m: None))

    monkeypatch.setattr(importlib.import_module(module), "placement", spy)


def test_process_1_trains_and_embeds_on_cuda_1(monkeypatch, tmp_path, pset):
    """Training and embedding ask the one device decision with their process world."""
    from pixdex import api
    from pixdex.recognition.train import Trainer
    from pixdex.retrieval.indexing import Options, _embed_collection
    from pixdex.world import World
    from recognition_data import make_folder_dataset

    data = str(make_folder_dataset(tmp_path / "data", per_class=3))
    second = World(rank=1, size=2, local_rank=1)
    _two_gpus(monkeypatch)
    config = api.configure(pset, flags={"runtime": {"device": "auto", "workers": 0}})

    _spy_placement(monkeypatch, "pixdex.recognition.train")
    trainer = Trainer(pset, config, data, tmp_path / "run", world=second, notify=lambda m: None, progress=False)
    with pytest.raises(_Placed) as trained:
        trainer.setup()
    assert trained.value.args[0].device == "cuda:1"

    _spy_placement(monkeypatch, "pixdex.retrieval.indexing")
    opts = Options(runtime=config["runtime"], max_pixels=config["data"]["max_pixels"], world=second, progress=False)
    with pytest.raises(_Placed) as embedded:
        _embed_collection(None, data, pset, opts)  # the run is not reached: placement comes first
    assert embedded.value.args[0].device == "cuda:1"
