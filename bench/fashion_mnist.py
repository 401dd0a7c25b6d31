"""Fashion-MNIST: test accuracy and wall time of a training recipe, for several seeds.

    python bench/fashion_mnist.py /usr/share/datasets/fashion-mnist
    python bench/fashion_mnist.py DIR --epochs 10 --seeds 0 1 2 --device cpu
    python bench/fashion_mnist.py DIR --preset tutorial --seeds 0
    python bench/fashion_mnist.py DIR --preset classic   # the fixed recipe before issue 12

Without --epochs (or a preset that sets them) the automatic recipe applies, as in
`pixdex train` with no flags.

Trains through pixdex's own API (what `pixdex train idx:DIR` runs), evaluates on the
10,000 test images, prints one JSON line per seed and a summary with the full command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from pixdex import api
from pixdex.recognition.classify import evaluate
from pixdex.recognition.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--epochs", type=int, default=None, help="default: the automatic recipe or the preset's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--loss", default=None)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="SECTION.KEY=VALUE (repeatable)")
    parser.add_argument("--target", type=float, default=0.93, help="accuracy every seed should reach")
    parser.add_argument("--keep", default=None, help="keep the run folders under this folder")
    args = parser.parse_args()

    pset = api.load_plugins()
    spec = args.data if args.data.startswith("idx:") else f"idx:{args.data}"
    flags: dict = {"runtime": {"device": args.device}, "train": {}}
    if args.epochs is not None:
        flags["train"]["epochs"] = args.epochs
    for section in ("backbone", "loss"):
        if getattr(args, section):
            flags[section] = {"name": getattr(args, section)}
    results = []
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pixdex-fmnist-"))
    for seed in args.seeds:
        flags["train"]["seed"] = seed
        config = api.configure(pset, preset=args.preset, flags=flags, sets=args.sets)
        start = time.perf_counter()
        result = train(spec, root / f"seed{seed}", pset, config, force=True, notify=lambda m: print(m, file=sys.stderr))
        train_seconds = time.perf_counter() - start
        report = evaluate(root / f"seed{seed}", spec, pset, config["runtime"], notify=lambda m: None)
        row = {
            "seed": seed,
            "epochs": result.epochs_done,
            "stopped_early": result.manifest["stopped_early"],
            "batch_size": result.manifest["recipe"]["batch_size"],
            "test_top1": round(report["top1"], 4),
            "best_val_accuracy": round(max(r["val_accuracy"] or 0.0 for r in result.history), 4),
            "train_seconds": round(train_seconds, 1),
            "seconds_per_epoch": round(sum(r["seconds"] for r in result.history) / len(result.history), 1),
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    command = "python bench/fashion_mnist.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    worst = min(r["test_top1"] for r in results)
    print(
        json.dumps(
            {
                "summary": True,
                "command": command,
                "worst_test_top1": worst,
                "mean_test_top1": round(sum(r["test_top1"] for r in results) / len(results), 4),
                "target": args.target,
                "target_met": worst >= args.target,
                "config": config.to_dict(),
            }
        )
    )


if __name__ == "__main__":
    main()
