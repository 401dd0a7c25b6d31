"""How many images a batch may hold: the memory budget and what one image costs.

The budget is ``runtime.memory_budget_mb`` when set, else a quarter of the memory that is
free now (at most 2 GB on the CPU, so the default never needs more than a few GB in all),
or half of the free memory of the GPU. What one image costs is measured, not guessed: one
forward pass of two blank images through the placed model, counting the distinct tensors
its layers produce (those autograd keeps for the backward pass). It is an estimate (the
backward pass, the optimiser and the allocator add to it), hence the safety factors.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from pixdex.contracts import Transform
from pixdex.device import Placement

MB = 1 << 20
CPU_BUDGET_CAP = 2048 * MB
TRAIN_FACTOR = 1.5  # activations kept for backward, plus their gradients in flight
INFER_FACTOR = 3.0  # a layer's input, its output and a workspace
INFERENCE_BATCH = 128  # runtime.batch_size = "auto" for evaluate, predict, embed and search


def free_bytes(device: str) -> int:
    """Memory free for this process now: the GPU's free memory, or the host's available
    memory (the tighter of /proc/meminfo and a cgroup limit)."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    candidates = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        with open("/sys/fs/cgroup/memory.current") as fh:
            used = int(fh.read().strip())
        if limit != "max":
            candidates.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    if not candidates:  # not Linux: the physical pages that are free
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            candidates.append(8 * CPU_BUDGET_CAP)
    return min(candidates)


def budget_bytes(runtime: dict[str, Any], device: str) -> int:
    """The most an automatic batch may use (see the module docstring)."""
    if int(runtime.get("memory_budget_mb") or 0) > 0:
        return int(runtime["memory_budget_mb"]) * MB
    free = free_bytes(device)
    if device.startswith("cuda"):
        return free // 2
    return min(free // 4, CPU_BUDGET_CAP)


def image_bytes(model: torch.nn.Module, transform: Transform, place: Placement) -> tuple[int, int]:
    """(sum, largest) bytes of the distinct tensors one image makes flow through ``model``.

    Measured on two blank images in eval mode (batch-norm statistics are not touched) with
    the RNG state restored afterwards, so measuring changes nothing in the run.
    """
    sizes: dict[int, int] = {}

    def record(_: Any, __: Any, output: Any) -> None:
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                sizes[storage.data_ptr()] = storage.nbytes()  # in-place layers share their input's

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(record) for m in leaves]
    was_training = model.training
    devices = [torch.device(place.device)] if place.device.startswith("cuda") else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            model.eval()
            height, width = transform.size
            blank = torch.zeros((2, transform.in_chans, height, width), dtype=torch.uint8, device=place.device)
            model(transform.batch(blank))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    values = list(sizes.values()) or [0]
    return sum(values) // 2, max(values) // 2


def parameter_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def max_train_batch(model: torch.nn.Module, transform: Transform, place: Placement, runtime: dict[str, Any]) -> int:
    """The largest training batch whose estimated memory fits the budget (at least 2:
    batch norm cannot train on one image).

    The fixed part is the weights with their gradients and AdamW's two moments (4x)."""
    total, _ = image_bytes(model, transform, place)
    room = budget_bytes(runtime, place.device) - 4 * parameter_bytes(model)
    return max(2, int(room // max(1.0, TRAIN_FACTOR * total)))


def inference_batch(model: torch.nn.Module, transform: Transform, place: Placement, runtime: dict[str, Any]) -> int:
    """``runtime.batch_size`` when set, else :data:`INFERENCE_BATCH` halved until the estimate fits."""
    if runtime["batch_size"] != "auto":
        return int(runtime["batch_size"])
    _, largest = image_bytes(model, transform, place)
    room = budget_bytes(runtime, place.device) - parameter_bytes(model)
    batch = INFERENCE_BATCH
    while batch > 1 and batch * INFER_FACTOR * largest > room:
        batch //= 2
    return batch
