"""Device and precision choice: the one place that decides where each process runs.

Training, embedding, evaluation, search and the process world's collectives all resolve
their device here (:func:`placement`, :func:`process_device`), so a process under torchrun
on GPUs always lands on ``cuda:LOCAL_RANK``. torch is imported only when a device is
actually resolved.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from pixdex.errors import DeviceError, UsageError


class World(Protocol):
    """What placement needs of :class:`pixdex.world.World` (a protocol, so that the world's
    own collectives can ask this module for their device without an import circle)."""

    rank: int
    size: int
    local_rank: int

    @property
    def distributed(self) -> bool: ...


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class Placement:
    """Where tensors live and how matmuls run: recorded in run folders."""

    device: str  # "cpu", "cuda:0", "mps"
    precision: str  # "fp32", "bf16", "fp16"
    channels_last: bool

    @property
    def amp_dtype(self) -> Any:
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "precision": self.precision, "channels_last": self.channels_last}


def check_device_spec(spec: str) -> str:
    """Validate the text of a device spec without importing torch."""
    spec = spec.strip().lower()
    if not _DEVICE_RE.match(spec):
        raise UsageError(f"Unknown device '{spec}': use auto, cpu, cuda, cuda:N or mps")
    return spec


def check_precision(spec: str) -> str:
    spec = spec.strip().lower()
    if spec not in PRECISIONS:
        raise UsageError(f"Unknown precision '{spec}': use {', '.join(PRECISIONS)}")
    return spec


def resolve_device(spec: str = "auto", *, notify: Callable[[str], None] | None = None) -> str:
    """Turn 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' into an available device name.

    ``auto`` picks cuda, then mps, then cpu, and says which through ``notify`` (stderr).
    Asking for a device this machine lacks is a :class:`DeviceError`.
    """
    import torch

    spec = check_device_spec(spec)
    notify = notify or (lambda line: print(line, file=sys.stderr))
    if spec == "auto":
        if torch.cuda.is_available():
            chosen = "cuda:0"
        elif _mps_available(torch):
            chosen = "mps"
        else:
            chosen = "cpu"
        notify(f"pixdex: device auto -> {chosen}")
        return chosen
    if spec == "cpu":
        return "cpu"
    if spec == "mps":
        if not _mps_available(torch):
            raise DeviceError("Device 'mps' is not available on this machine: use --device cpu or auto")
        return "mps"
    if not torch.cuda.is_available():
        raise DeviceError(
            f"Device '{spec}' is not available: this machine has no usable CUDA GPU; use --device cpu or auto"
        )
    index = int(spec.split(":")[1]) if ":" in spec else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(
            f"Device '{spec}' is not available: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})"
        )
    return f"cuda:{index}"


def resolve_precision(spec: str, device: str) -> str:
    """'auto' is bf16 on CUDA (fp16 on GPUs without bf16), fp32 elsewhere. fp16 on the CPU is
    refused; bf16 on the CPU is allowed (CPU autocast supports it)."""
    spec = check_precision(spec)
    kind = device.split(":")[0]
    if spec == "auto":
        if kind == "cuda":
            import torch

            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if spec == "fp16" and kind == "cpu":
        raise DeviceError("Precision fp16 is not supported on the CPU: use fp32 or bf16")
    return spec


def rank_device_spec(spec: str, world: World | None) -> str:
    """The device spec of this process: under torchrun with CUDA, ``auto`` and ``cuda`` mean
    ``cuda:LOCAL_RANK`` (one GPU per process, the one DDP and nccl expect). An explicit
    ``cuda:N``, ``cpu`` or ``mps`` is kept; a single process is unchanged."""
    spec = check_device_spec(spec)
    if world is None or not world.distributed or spec not in ("auto", "cuda"):
        return spec
    import torch

    return f"cuda:{world.local_rank}" if torch.cuda.is_available() else spec


def process_device(spec: str, world: World | None = None, *, notify: Callable[[str], None] | None = None) -> str:
    """:func:`resolve_device` for this process of ``world`` (see :func:`rank_device_spec`)."""
    ranked = rank_device_spec(spec, world)
    if ranked != check_device_spec(spec) and world is not None:
        (notify or (lambda line: print(line, file=sys.stderr)))(
            f"pixdex: device {spec} -> {ranked} (process {world.rank} of {world.size})"
        )
    return resolve_device(ranked, notify=notify)


def placement(
    device: str = "auto",
    precision: str = "auto",
    *,
    world: World | None = None,
    notify: Callable[[str], None] | None = None,
) -> Placement:
    """Resolve device and precision together for this process of ``world`` (default: a
    single process). channels_last is used on CUDA and on the CPU, where oneDNN's convolutions
    run faster in it (simple-cnn trains 1.1-1.4x as fast, tf_efficientnet_lite0 1.4-1.7x;
    docs/recognition.md, "Devices and precision"); not on MPS."""
    dev = process_device(device, world, notify=notify)
    prec = resolve_precision(precision, dev)
    return Placement(dev, prec, channels_last=dev.startswith("cuda") or dev == "cpu")


def _mps_available(torch: Any) -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
