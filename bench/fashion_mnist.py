"""Fashion-MNIST: test accuracy, curve and wall time of training recipes, for several seeds,
side by side.

    python bench/fashion_mnist.py /usr/share/datasets/fashion-mnist
    python bench/fashion_mnist.py DIR --epochs 10 --seeds 0 1 2 --device cpu
    python bench/fashion_mnist.py DIR --preset default --preset strong --seeds 0 --tta flip-crops
    python bench/fashion_mnist.py DIR --preset classic   # the fixed recipe before issue 12

``--preset`` (repeatable) names the recipes to compare; ``default`` is the automatic
recipe (``pixdex train`` with no flags), also what runs without any ``--preset``. An
explicit ``--epochs`` applies to every recipe; without it each preset's own epochs (or the
automatic recipe's) apply.

Trains through pixdex's own API (what `pixdex train idx:DIR` runs), evaluates on the
10,000 test images, prints one JSON line per (preset, seed) with its validation curve, and
a side-by-side summary with the full command.
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
from pixdex.pipeline.inference import TTA_MODES
from pixdex.recognition.classify import evaluate
from pixdex.recognition.train import train


def run_one(args: argparse.Namespace, pset, spec: str, preset: str | None, seed: int, root: Path) -> dict:
    flags: dict = {"runtime": {"device": args.device}, "train": {"seed": seed}}
    if args.epochs is not None:
        flags["train"]["epochs"] = args.epochs
    for section in ("backbone", "loss"):
        if getattr(args, section):
            flags[section] = {"name": getattr(args, section)}
    config = api.configure(pset, preset=preset, flags=flags, sets=args.sets)
    folder = root / f"{preset or 'default'}-seed{seed}"
    start = time.perf_counter()
    result = train(spec, folder, pset, config, force=True, notify=lambda m: print(m, file=sys.stderr))
    train_seconds = time.perf_counter() - start
    report = evaluate(folder, spec, pset, config["runtime"], notify=lambda m: None, tta=args.tta)
    return {
        "preset": preset or "default",
        "seed": seed,
        "epochs": result.epochs_done,
        "stopped_early": result.manifest["stopped_early"],
        "batch_size": result.manifest["recipe"]["batch_size"],
        "best_weights": result.manifest["best_weights"],
        "tta": args.tta,
        "test_top1": round(report["top1"], 4),
        "best_val_accuracy": round(
            max(max(r["val_accuracy"] or 0.0, r.get("ema_val_accuracy") or 0.0) for r in result.history), 4
        ),
        "train_seconds": round(train_seconds, 1),
        "seconds_per_epoch": round(sum(r["seconds"] for r in result.history) / len(result.history), 1),
        "curve": [
            {
                "epoch": r["epoch"],
                "val_accuracy": r["val_accuracy"],
                "ema_val_accuracy": r.get("ema_val_accuracy"),
                "seconds": r["seconds"],
            }
            for r in result.history
        ],
        "config": config.to_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--epochs", type=int, default=None, help="default: the automatic recipe or the preset's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--preset", dest="presets", action="append", default=None, help="repeatable; 'default' = auto")
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--loss", default=None)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="SECTION.KEY=VALUE (repeatable)")
    parser.add_argument("--tta", choices=TTA_MODES, default="none", help="test-time augmentation to evaluate")
    parser.add_argument("--target", type=float, default=0.93, help="accuracy every seed should reach")
    parser.add_argument("--keep", default=None, help="keep the run folders under this folder")
    args = parser.parse_args()

    pset = api.load_plugins()
    spec = args.data if args.data.startswith("idx:") else f"idx:{args.data}"
    presets = [None if p == "default" else p for p in (args.presets or ["default"])]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pixdex-fmnist-"))
    rows = []
    for preset in presets:
        for seed in args.seeds:
            row = run_one(args, pset, spec, preset, seed, root)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
    command = "python bench/fashion_mnist.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"\n{'preset':14s} {'seeds':>8s} {'test top-1 per seed':>28s} {'mean':>7s} {'train s per seed':>24s}")
    summary = []
    for preset in presets:
        mine = [r for r in rows if r["preset"] == (preset or "default")]
        tops, secs = [r["test_top1"] for r in mine], [r["train_seconds"] for r in mine]
        mean = round(sum(tops) / len(tops), 4)
        print(
            f"{preset or 'default':14s} {' '.join(str(r['seed']) for r in mine):>8s} "
            f"{' / '.join(f'{t:.4f}' for t in tops):>28s} {mean:7.4f} {' / '.join(f'{s:.0f}' for s in secs):>24s}"
        )
        summary.append(
            {
                "preset": preset or "default",
                "test_top1": tops,
                "mean_test_top1": mean,
                "worst_test_top1": min(tops),
                "train_seconds": secs,
                "target": args.target,
                "target_met": min(tops) >= args.target,
                "config": mine[0]["config"],
            }
        )
    print(json.dumps({"summary": True, "command": command, "recipes": summary}))


if __name__ == "__main__":
    main()
