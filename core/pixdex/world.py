"""The process world: rank, size and reductions. A no-op in one process.

Training and embedding take a World from the start, so scaling out (torchrun, issue 8)
adds a distributed World without touching their loops. Metrics are reduced as sums of
counts, never as averages of averages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass
class World:
    """One process of ``size``; ``is_main`` is the one that writes artifacts."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def sum(self, values: list[float]) -> list[float]:
        """Sum a list of numbers over all processes (identity in one process)."""
        if not self.distributed:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._reduce_device())
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """The main process's ``obj``, everywhere."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _reduce_device(self) -> str:
        """nccl reduces tensors on this process's GPU, gloo on the CPU."""
        import torch.distributed as dist

        from pixdex.device import process_device

        return process_device("cuda" if dist.get_backend() == "nccl" else "cpu", self, notify=lambda line: None)

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def launch_torchrun(app: Any, command: str) -> int:
    """Re-run this very command line under torchrun with ``--nproc N`` processes.

    Uses ``python -m torch.distributed.run --standalone`` (a local rendezvous on a free
    port), so ``pixdex train --nproc 2 ...`` equals ``torchrun --standalone
    --nproc-per-node 2 -m pixdex train ...``. Returns torchrun's exit code.
    """
    import subprocess
    import sys

    args = list(sys.argv[1:])
    nproc = None
    for i, arg in enumerate(args):
        if arg == "--nproc" and i + 1 < len(args):
            nproc = args[i + 1]
            del args[i : i + 2]
            break
        if arg.startswith("--nproc="):
            nproc = arg.split("=", 1)[1]
            del args[i]
            break
    if nproc is None:
        from pixdex.errors import UsageError

        raise UsageError("--nproc launches from the real command line only (use torchrun directly here)")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "pixdex",
        *args,
    ]
    app.note("pixdex: launching " + " ".join(cmd[1:]))
    return subprocess.call(cmd)


def world_from_env() -> World:
    """A World for this process: torchrun's RANK/WORLD_SIZE when set, else a single process.

    Under torchrun the process group is initialised here (nccl on CUDA, gloo on CPU).
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    import torch
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return World(rank=rank, size=size, local_rank=local_rank)
