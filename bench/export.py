"""Embedding throughput on the CPU: ONNX Runtime against PyTorch eager (and torch.compile).

    python bench/export.py                       # simple-cnn, resnet18, tf_efficientnet_lite0
    python bench/export.py --models simple-cnn --batches 1 64 --seconds 3

For each model, the graph `pixdex export` writes (uint8 images in, normalisation inside,
embedding out) is timed three ways in this one process on the same random uint8 batches:
PyTorch eager (the `DeployModule` that was exported, under no_grad), `torch.compile` of it
(when inductor works on this machine; otherwise the reason is printed), and ONNX Runtime's
CPU provider on the exported file. Both runtimes use the same number of threads. Printed:
images/s for each, the ratio ONNX Runtime / eager, and the agreement (minimum row cosine,
largest absolute difference) on the timed batch. Weights are random (backbone specs with
no checkpoint): throughput does not depend on them, agreement is checked regardless.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

MODELS = ["simple-cnn", "timm:resnet18", "timm:tf_efficientnet_lite0"]


def rate(call: Callable[[], Any], batch: int, seconds: float) -> float:
    """Images per second of ``call`` (one batch each), after two warm-up calls."""
    call()
    call()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        done += 1
    return done * batch / (time.perf_counter() - start)


def bench_model(spec: str, batches: list[int], seconds: float, threads: int, work: Path) -> list[dict[str, Any]]:
    from pixdex import api
    from pixdex.export.graph import DeployModule, export_onnx, input_shape
    from pixdex.export.verify import session
    from pixdex.plugins import load_plugins
    from pixdex.retrieval.models import model_layer, open_model

    pset = load_plugins()
    config = api.configure(pset, flags=model_layer(spec))
    run = open_model(spec, pset, config)
    path = work / (spec.replace(":", "_") + ".onnx")
    t = time.perf_counter()
    export_onnx(run, path, "cosine")
    export_s = time.perf_counter() - t
    sess = session(path)
    eager = DeployModule(run, "cosine").eval()
    compiled, compile_note = None, ""
    try:
        compiled = torch.compile(DeployModule(run, "cosine").eval())
        with torch.no_grad():
            compiled(torch.zeros((1, *input_shape(run)), dtype=torch.uint8))
    except Exception as exc:  # inductor needs a working C++ toolchain; report, do not hide
        compiled, compile_note = None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    rows = []
    for batch in batches:
        x = torch.from_numpy(np.random.default_rng(batch).integers(0, 256, (batch, *input_shape(run)), dtype=np.uint8))
        feed = {"images": x.numpy()}
        with torch.no_grad():
            want = eager(x)[0].numpy()
            eager_rate = rate(lambda: eager(x), batch, seconds)
            compiled_rate = rate(lambda: compiled(x), batch, seconds) if compiled is not None else None
        got = sess.run(["embedding"], feed)[0]
        onnx_rate = rate(lambda: sess.run(["embedding"], feed), batch, seconds)
        cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        rows.append(
            {
                "model": spec,
                "input": list(input_shape(run)),
                "batch": batch,
                "threads": threads,
                "export_s": export_s,
                "torch_eager_ips": eager_rate,
                "torch_compile_ips": compiled_rate,
                "torch_compile_note": compile_note,
                "onnxruntime_ips": onnx_rate,
                "onnx_vs_eager": onnx_rate / eager_rate,
                "min_cosine": float(cos.min()),
                "max_abs_diff": float(np.abs(got - want).max()),
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="for both runtimes")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # ONNX Runtime's default intra-op pool follows the cores

    rows: list[dict[str, Any]] = []
    header = (
        f"{'model':28} {'input':>11} {'batch':>5} {'eager img/s':>12} {'compile img/s':>14} "
        f"{'onnx img/s':>11} {'onnx/eager':>10} {'min cos':>9} {'max |d|':>9}"
    )
    print(header)
    with tempfile.TemporaryDirectory(prefix="pixdex-bench-export-") as tmp:
        for spec in args.models:
            for r in bench_model(spec, args.batches, args.seconds, args.threads, Path(tmp)):
                rows.append(r)
                compiled = f"{r['torch_compile_ips']:14.1f}" if r["torch_compile_ips"] is not None else f"{'n/a':>14}"
                print(
                    f"{r['model']:28} {'x'.join(map(str, r['input'])):>11} {r['batch']:5d} "
                    f"{r['torch_eager_ips']:12.1f} {compiled} {r['onnxruntime_ips']:11.1f} "
                    f"{r['onnx_vs_eager']:9.2f}x {r['min_cosine']:9.6f} {r['max_abs_diff']:9.2e}"
                )
            if rows[-1]["torch_compile_note"]:
                print(f"  torch.compile: {rows[-1]['torch_compile_note']}")
            print(f"  export took {rows[-1]['export_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
