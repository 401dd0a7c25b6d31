"""Training-loop overhead: seconds per epoch of pixdex's trainer against a minimal
hand-written PyTorch loop with the same model, transform, optimizer, batch size and
tensors (validation excluded), median of alternating runs.

    python bench/train_overhead.py /usr/share/datasets/fashion-mnist [--runs 3] [--device cpu]

Target: pixdex / hand loop <= 1.10.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from pixdex import api
from pixdex.data.datasets import open_dataset
from pixdex.data.prepare import measure, prepare_training
from pixdex.pipeline.runs import build_pipeline
from pixdex.recognition.train import train


def hand_loop(spec: str, pset, config, device: str) -> float:
    """The loop a PyTorch user would write: shuffle, augment+normalise, forward, step."""
    prep = prepare_training(spec, pset, config["data"], config["train"]["seed"])
    info = measure(prep, config["data"]["max_pixels"], len(prep.classes), 0)
    torch.manual_seed(0)
    built = build_pipeline(pset, config, info)
    model = built.pipeline.to(device).train()
    images = prep.tensors[0][torch.tensor(prep.train.positions)].to(device)
    labels = torch.tensor(prep.train.labels).to(device)
    t = config["train"]
    opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    bs = config["runtime"]["batch_size"]
    start = time.perf_counter()
    order = torch.randperm(len(images), device=device)
    for i in range(0, len(order) - len(order) % bs, bs):
        idx = order[i : i + bs]
        x = built.train_transform.batch(images[idx])
        loss = model.head(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    spec = args.data if args.data.startswith("idx:") else f"idx:{args.data}"
    pset = api.load_plugins()
    config = api.configure(pset, flags={"runtime": {"device": args.device}, "train": {"epochs": 1}}, sets=args.sets)
    open_dataset(spec, pset.registry)  # fail early on a bad path
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            result = train(spec, Path(tmp) / f"run{i}", pset, config, force=True, progress=False, notify=lambda m: None)
            ours.append(result.history[0]["seconds"])
            theirs.append(hand_loop(spec, pset, config, args.device))
            print(
                json.dumps({"run": i, "pixdex_seconds": round(ours[-1], 2), "hand_loop_seconds": round(theirs[-1], 2)}),
                file=sys.stderr,
                flush=True,
            )
    ratio = statistics.median(ours) / statistics.median(theirs)
    print(
        json.dumps(
            {
                "bench": "train_overhead",
                "device": args.device,
                "batch_size": config["runtime"]["batch_size"],
                "pixdex_epoch_seconds_median": round(statistics.median(ours), 2),
                "hand_loop_epoch_seconds_median": round(statistics.median(theirs), 2),
                "ratio": round(ratio, 3),
                "target": 1.10,
                "target_met": ratio <= 1.10,
                "runs": args.runs,
            }
        )
    )


if __name__ == "__main__":
    main()
