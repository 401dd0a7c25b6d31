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
