"""The CUDA path, measured in one script (JSON lines, under 8 minutes on an H100/H200):

  (a) Fashion-MNIST training of the default simple-cnn recipe through pixdex, against a
      minimal hand-written loop with the data already on the GPU (same model, recipe,
      batch size, epochs); test accuracy and wall time of both, and the ratio;
  (b) embedding throughput of timm:tf_efficientnet_lite0 and timm:resnet50 at 224 px
      through pixdex's pipeline from tensors (transform.batch + model, bf16 autocast,
      channels_last) against model-only forward on ready tensors; ratio;
  (c) flat exact search QPS against a raw torch matrix product + topk (60k x 128
      gallery, 10k queries); ratio.

    python bench/gpu.py /usr/share/datasets/fashion-mnist            # on a GPU
    python bench/gpu.py /usr/share/datasets/fashion-mnist --device cpu --small

Run from a checkout with PYTHONPATH=core:plugins when pixdex is not installed (annoy is
not needed). --small shrinks every part so the script keeps working on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pixdex import api
from pixdex.device import placement


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def subset_idx(src: str, dst: Path, n_train: int, n_test: int) -> str:
    """Write the first n images of each IDX split to ``dst`` (for --small runs)."""
    dst.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        for kind, header in (("images-idx3-ubyte", 16), ("labels-idx1-ubyte", 8)):
            name = f"{split}-{kind}"
            path = Path(src) / f"{name}.gz"
            raw = gzip.open(path).read() if path.exists() else (Path(src) / name).read_bytes()
            head = bytearray(raw[:header])
            head[4:8] = n.to_bytes(4, "big")
            item = 784 if "images" in kind else 1
            (dst / name).write_bytes(bytes(head) + raw[header : header + n * item])
    return str(dst)


def part_a(spec: str, pset, device: str, epochs: int, batch_size: int) -> None:
    from pixdex.data.prepare import measure, prepare_training
    from pixdex.pipeline.runs import build_pipeline
    from pixdex.recognition.classify import evaluate
    from pixdex.recognition.schedule import lr_factor
    from pixdex.recognition.train import train

    config = api.configure(
        pset, flags={"runtime": {"device": device, "batch_size": batch_size}, "train": {"epochs": epochs}}
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = train(spec, Path(tmp) / "run", pset, config, force=True, progress=False, notify=lambda m: None)
        sync(device)
        ours_s = time.perf_counter() - start
        ours_acc = evaluate(Path(tmp) / "run", spec, pset, config["runtime"], notify=lambda m: None)["top1"]
    train_images = result.manifest["data"]["train_count"] * epochs
    # the hand loop: data on the device, same model, recipe and batches per epoch
    prep = prepare_training(spec, pset, config["data"], 0)
    info = measure(prep, config["data"]["max_pixels"], len(prep.classes), 0)
    torch.manual_seed(0)
    built = build_pipeline(pset, config, info)
    model = built.pipeline.to(device).to(memory_format=torch.channels_last)
    x_all = prep.tensors[0][torch.tensor(prep.train.positions)].to(device)
    y_all = torch.tensor(prep.train.labels, device=device)
    t = config["train"]
    opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    steps = len(x_all) // batch_size
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()
    sync(device)
    start = time.perf_counter()
    step = 0
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_all), device=device)
        for i in range(steps):
            for g in opt.param_groups:
                g["lr"] = t["lr"] * lr_factor(step, total_steps=steps * epochs, warmup_steps=steps, schedule="cosine")
            idx = order[i * batch_size : (i + 1) * batch_size]
            x = built.train_transform.batch(x_all[idx].contiguous(memory_format=torch.channels_last))
            with amp:
                loss = model.head(model(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    sync(device)
    hand_s = time.perf_counter() - start
    from pixdex.data.datasets import open_dataset

    test_x, test_y = open_dataset(spec, pset.registry).as_tensors("test")
    model.eval()
    correct = 0
    with torch.no_grad(), amp:
        for i in range(0, len(test_x), 1024):
            x = built.eval_transform.batch(test_x[i : i + 1024].to(device))
            correct += int((model.logits(model(x)).argmax(1).cpu() == test_y[i : i + 1024]).sum())
    emit(
        {
            "part": "a_train",
            "device": device,
            "epochs": epochs,
            "batch_size": batch_size,
            "pixdex_seconds": round(ours_s, 2),
            "pixdex_test_top1": round(ours_acc, 4),
            "pixdex_images_per_s": round(train_images / ours_s, 1),
            "hand_loop_seconds": round(hand_s, 2),
            "hand_loop_test_top1": round(correct / len(test_x), 4),
            "ratio_seconds": round(ours_s / hand_s, 3),
            "target_ratio": 1.2,
            "note": "pixdex_seconds includes data loading, validation and per-epoch checkpoints",
        }
    )


def part_b(pset, device: str, batch_size: int, batches: int, models: list[str]) -> None:
    from pixdex.data.sources import TensorSource
    from pixdex.pipeline.inference import autocast
    from pixdex.retrieval.models import open_model

    place = placement(device, "auto", notify=lambda m: None)
    for name in models:
        config = api.configure(pset, flags={"backbone": {"name": name}, "runtime": {"device": device}})
        run = open_model(name, pset, config)
        model = run.pipeline.to(place.device).eval()
        if place.channels_last:
            model = model.to(memory_format=torch.channels_last)
        c, h, w = run.manifest["data_config"]["input_size"]
        images = torch.randint(0, 256, (batch_size * batches, c, h, w), dtype=torch.uint8)
        ready = run.transform.batch(images[:batch_size].to(place.device))
        if place.channels_last:
            ready = ready.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), autocast(place):
            model(ready)  # warm-up (cudnn autotune, lazy init)
            sync(device)
            start = time.perf_counter()
            for _ in range(batches):
                model(ready)
            sync(device)
            model_only = batch_size * batches / (time.perf_counter() - start)
            source = TensorSource(
                images,
                torch.zeros(len(images), dtype=torch.long),
                run.transform,
                batch_size=batch_size,
                device=place.device,
            )
            warm, _, _ = next(iter(source.batches(0)))
            model(run.transform.batch(warm)).float()  # the same warm-up the model-only side had
            sync(device)
            start = time.perf_counter()
            for x, _, _ in source.batches(0):
                if place.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                model(run.transform.batch(x)).float()
            sync(device)
            pipeline = len(images) / (time.perf_counter() - start)
        emit(
            {
                "part": "b_embed",
                "model": name,
                "device": place.device,
                "precision": place.precision,
                "batch_size": batch_size,
                "model_only_images_per_s": round(model_only, 1),
                "pixdex_images_per_s": round(pipeline, 1),
                "ratio": round(pipeline / model_only, 3),
                "target": 0.9,
            }
        )


def part_c(pset, device: str, n: int, queries: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((n, dim), dtype=np.float32)
    q = rng.standard_normal((queries, dim), dtype=np.float32)
    index = pset.registry.build("index", "flat", {"device": device}, dim=dim, metric="ip")
    index.build(gallery)
    index.search(q[:10], 10)
    sync(device)
    start = time.perf_counter()
    index.search(q, 10)
    sync(device)
    ours = queries / (time.perf_counter() - start)
    g = torch.from_numpy(gallery).to(device)
    torch.topk(torch.from_numpy(q[:10]).to(device) @ g.T, 10)
    sync(device)
    start = time.perf_counter()
    scores, ids = torch.topk(torch.from_numpy(q).to(device) @ g.T, 10, dim=1)
    ids.cpu(), scores.cpu()
    sync(device)
    raw = queries / (time.perf_counter() - start)
    emit(
        {
            "part": "c_flat",
            "device": device,
            "gallery": n,
            "queries": queries,
            "dim": dim,
            "flat_qps": round(ours),
            "raw_torch_qps": round(raw),
            "ratio": round(ours / raw, 3),
            "target": 0.9,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny sizes, for a CPU")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--parts", default="abc")
    args = parser.parse_args()
    pset = api.load_plugins()
    emit(
        {
            "bench": "gpu",
            "device": args.device,
            "small": args.small,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = subset_idx(args.data, Path(tmp) / "fashion-mnist-small", 2000, 500) if args.small else args.data
        spec = f"idx:{data}"
        if "a" in args.parts:
            part_a(spec, pset, args.device, args.epochs or (1 if args.small else 15), 256)
        if "b" in args.parts:
            part_b(
                pset,
                args.device,
                8 if args.small else 256,
                2 if args.small else 20,
                ["timm:tf_efficientnet_lite0", "timm:resnet50"],
            )
        if "c" in args.parts:
            part_c(pset, args.device, 5000 if args.small else 60000, 500 if args.small else 10000, 128)


if __name__ == "__main__":
    main()
