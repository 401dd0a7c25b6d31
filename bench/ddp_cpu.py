"""DistributedDataParallel on CPU: 1 against 2 gloo processes on Fashion-MNIST, through
the real torchrun launcher. On 2 cores correctness is the point, not speed.

    python bench/ddp_cpu.py /usr/share/datasets/fashion-mnist [--epochs 2]

Prints, per process count, the final test accuracy and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    spec = args.data if args.data.startswith("idx:") else f"idx:{args.data}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in (1, 2):
            run = Path(tmp) / f"run{nproc}"
            launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
            cmd = [
                sys.executable,
                *launcher,
                "-m",
                "pixdex",
                "-q",
                "train",
                spec,
                "-o",
                str(run),
                "--epochs",
                str(args.epochs),
                "--device",
                "cpu",
                "--workers",
                "0",
            ]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - start
            report = subprocess.run(
                [sys.executable, "-m", "pixdex", "-q", "evaluate", str(run), spec, "--json", "--device", "cpu"],
                check=True,
                capture_output=True,
                text=True,
                env=env,
            )
            rows[nproc] = {
                "processes": nproc,
                "epochs": args.epochs,
                "test_top1": round(json.loads(report.stdout)["top1"], 4),
                "wall_seconds": round(seconds, 1),
                "command": " ".join(cmd[1:]),
            }
            print(json.dumps(rows[nproc]), flush=True)
    print(
        json.dumps(
            {
                "bench": "ddp_cpu",
                "accuracy_gap": round(abs(rows[1]["test_top1"] - rows[2]["test_top1"]), 4),
                "time_ratio_2_over_1": round(rows[2]["wall_seconds"] / rows[1]["wall_seconds"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
