"""Retrieval quality on Fashion-MNIST: the 10,000 test images as queries against the
60,000 training images as the gallery (relevant = same class), side by side for

  raw        the pixels themselves (784-d, cosine)
  ce         the reference tutorial's network (--preset tutorial) trained 3 epochs with
             cross-entropy, its 128-d embedding (cosine)
  metric     a metric-learning recipe per --preset (repeatable; "default" = the automatic
             recipe with --loss, arcface unless given), its embedding (cosine)
  run        with --run DIR (repeatable): a run folder trained before (for example by
             bench/fashion_mnist.py --keep), its embedding, without training again

    python bench/retrieval_fashion_mnist.py /usr/share/datasets/fashion-mnist
    python bench/retrieval_fashion_mnist.py DIR --only metric --preset default --preset strong --loss cross-entropy
    python bench/retrieval_fashion_mnist.py DIR --only metric --metric-epochs 12 --set backbone.widths=[64,128]
    python bench/retrieval_fashion_mnist.py DIR --run runs/strong-seed0 --tta flip-crops

``--metric-epochs`` applies only when given; otherwise each preset's own epochs (or the
automatic recipe's) apply. ``--loss`` applies to "default" and to presets that set none.
``--tta MODE`` embeds every image as the mean of the embeddings of its views (``flip``: it and
its mirror image; ``flip-crops``: six views, see docs/recognition.md).

Metrics are exact (whole-gallery ranking, pixdex.retrieval.metrics): mAP, P@1, R@10,
MAP@R. Target for the metric-learning recipe: mAP >= 0.90 and P@1 >= 0.93.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pixdex import api
from pixdex.data.datasets import open_dataset
from pixdex.data.sources import TensorSource
from pixdex.device import placement
from pixdex.pipeline.inference import TTA_MODES, run_inference
from pixdex.pipeline.runs import load_run
from pixdex.recognition.train import train
from pixdex.retrieval.metrics import Side, evaluate


def metrics(gallery: np.ndarray, g_labels: list[str], queries: np.ndarray, q_labels: list[str], device: str) -> dict:
    report = evaluate(
        Side(gallery, g_labels, [None] * len(g_labels)),
        Side(queries, q_labels, [None] * len(q_labels)),
        metric="cosine",
        device=device,
    )
    return {
        "map": round(report["map"], 4),
        "precision_at_1": round(report["precision_at_1"], 4),
        "recall_at_10": round(report["recall_at_k"]["10"], 4),
        "map_at_r": round(report["map_at_r"], 4),
    }


def embed_split(run_dir: Path, pset, images: torch.Tensor, device: str, tta: str = "none") -> np.ndarray:
    run = load_run(run_dir, pset)
    place = placement(device, "auto", notify=lambda m: None)
    source = TensorSource(
        images, torch.zeros(len(images), dtype=torch.long), run.transform, batch_size=1024, device=place.device
    )
    return run_inference(run.pipeline, run.transform, source, place, want_logits=False, tta=tta).embeddings


def train_and_embed(
    name: str, spec: str, pset, config, tensors: dict, root: Path, device: str, tta: str = "none"
) -> dict:
    start = time.perf_counter()
    result = train(
        spec, root / name, pset, config, force=True, notify=lambda m: print(f"[{name}] {m}", file=sys.stderr)
    )
    seconds = time.perf_counter() - start
    gallery = embed_split(root / name, pset, tensors["train"][0], device, tta)
    queries = embed_split(root / name, pset, tensors["test"][0], device, tta)
    curve = [
        {
            "epoch": r["epoch"],
            "val_accuracy": r["val_accuracy"],
            "ema_val_accuracy": r.get("ema_val_accuracy"),
            "train_loss": round(r["train_loss"], 4),
        }
        for r in result.history
    ]
    return {"gallery": gallery, "queries": queries, "train_seconds": round(seconds, 1), "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=["raw", "ce", "metric"], action="append", default=None)
    parser.add_argument("--run", dest="runs", action="append", default=[], help="a trained run folder (repeatable)")
    parser.add_argument("--tta", choices=TTA_MODES, default="none", help="test-time augmentation of embeddings")
    parser.add_argument("--ce-epochs", type=int, default=3)
    parser.add_argument(
        "--metric-epochs", type=int, default=None, help="default: the preset's or the automatic recipe's"
    )
    parser.add_argument("--loss", default="arcface", help="for 'default' and presets that name no loss")
    parser.add_argument("--preset", dest="presets", action="append", default=None, help="repeatable; 'default' = auto")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], help="extra SECTION.KEY=VALUE for the metric recipe"
    )
    parser.add_argument(
        "--limit", type=int, default=0, help="use only the first N queries and 6N gallery images (smoke runs)"
    )
    args = parser.parse_args()
    parts = args.only or ([] if args.runs else ["raw", "ce", "metric"])
    spec = args.data if args.data.startswith("idx:") else f"idx:{args.data}"
    pset = api.load_plugins()
    ds = open_dataset(spec, pset.registry)
    tensors = {split: ds.as_tensors(split) for split in ("train", "test")}
    if args.limit:
        tensors = {
            "train": tuple(t[: 6 * args.limit] for t in tensors["train"]),
            "test": tuple(t[: args.limit] for t in tensors["test"]),
        }
    labels = {split: [ds.classes[int(i)] for i in tensors[split][1]] for split in tensors}
    command = "python bench/retrieval_fashion_mnist.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "raw" in parts:
            flat = {s: (tensors[s][0].reshape(len(tensors[s][0]), -1).float() / 255).numpy() for s in tensors}
            print(
                json.dumps(
                    {
                        "model": "raw pixels",
                        **metrics(flat["train"], labels["train"], flat["test"], labels["test"], args.device),
                    }
                ),
                flush=True,
            )
        if "ce" in parts:
            config = api.configure(
                pset, preset="tutorial", flags={"runtime": {"device": args.device}, "train": {"epochs": args.ce_epochs}}
            )
            got = train_and_embed("ce", spec, pset, config, tensors, root, args.device)
            print(
                json.dumps(
                    {
                        "model": f"tutorial CNN, cross-entropy, {args.ce_epochs} epochs",
                        **metrics(got["gallery"], labels["train"], got["queries"], labels["test"], args.device),
                        "train_seconds": got["train_seconds"],
                    }
                ),
                flush=True,
            )
        for run_dir in args.runs:
            measure_run(Path(run_dir), args, pset, tensors, labels, command)
        if "metric" in parts:
            for preset in args.presets or ["default"]:
                run_metric(args, pset, None if preset == "default" else preset, spec, tensors, labels, root, command)


def measure_run(run_dir: Path, args, pset, tensors: dict, labels: dict, command: str) -> None:
    """The retrieval figures of a run folder trained before: its embeddings, no training."""
    start = time.perf_counter()
    gallery = embed_split(run_dir, pset, tensors["train"][0], args.device, args.tta)
    queries = embed_split(run_dir, pset, tensors["test"][0], args.device, args.tta)
    manifest = json.loads((run_dir / "pixdex.json").read_text())
    config = manifest["config"]
    m = metrics(gallery, labels["train"], queries, labels["test"], args.device)
    print(
        json.dumps(
            {
                "model": f"run {run_dir}: {config['backbone']['name']} + {config['loss']['name']}, "
                f"{manifest['epochs_done']} epochs",
                **m,
                "tta": args.tta,
                "embed_seconds": round(time.perf_counter() - start, 1),
                "target_met": m["map"] >= 0.90 and m["precision_at_1"] >= 0.93,
                "command": command,
            }
        ),
        flush=True,
    )


def run_metric(
    args, pset, preset: str | None, spec: str, tensors: dict, labels: dict, root: Path, command: str
) -> None:
    flags: dict = {"runtime": {"device": args.device}, "train": {}}
    if args.metric_epochs is not None:
        flags["train"]["epochs"] = args.metric_epochs
    names_loss = preset is not None and "loss" in pset.registry_file.presets.get(preset, {})
    if not names_loss:
        flags["loss"] = {"name": args.loss}
    config = api.configure(pset, preset=preset, flags=flags, sets=args.sets)
    name = preset or "default"
    got = train_and_embed(f"metric-{name}", spec, pset, config, tensors, root, args.device, args.tta)
    m = metrics(got["gallery"], labels["train"], got["queries"], labels["test"], args.device)
    print(
        json.dumps(
            {
                "model": f"{name}: {config['backbone']['name']} + {config['loss']['name']}, {len(got['curve'])} epochs",
                **m,
                "train_seconds": got["train_seconds"],
                "tta": args.tta,
                "target_map": 0.90,
                "target_p1": 0.93,
                "target_met": m["map"] >= 0.90 and m["precision_at_1"] >= 0.93,
                "curve": got["curve"],
                "command": command,
                "config": {k: config[k] for k in ("backbone", "loss", "transform", "train")},
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
