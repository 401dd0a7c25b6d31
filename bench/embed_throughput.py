"""Embedding throughput from JPEG files: images/s of pixdex's embedding pipeline against the
model alone on pre-decoded tensors (the limit), a naive one-image-at-a-time loop and a
plain DataLoader, with the same model, transform and batch size, side by side in one process.

    python bench/embed_throughput.py [--n 2000] [--out DIR] [--draft both|on|off]

The JPEGs are real photo crops (sklearn's bundled china.jpg and flower.jpg: random crops of
60-100% of the width, 4:3 or 3:4, random flips, a little sensor-like noise), resized so the
long side is one of --long-sides (default 800, 1024, 1280, 1600: ordinary camera and web
sizes, upscaled from the 640 px sources) and saved at quality 90. They are written once
into --out (default: a folder in the temp dir) and reused while n, seed and sizes match.

Figures (batch size 64, timm:resnet18 at 224 px, random init, torch threads as default):

* model_only: ``model(transform.batch(x))`` on uint8 tensors decoded beforehand;
* pixdex: :func:`pixdex.retrieval.embed.embed_keys` (DataLoader workers decode with
  :func:`pixdex.data.images.open_image` and the transform's ``.load``), JPEG draft decoding on;
* pixdex_nodraft: the same with draft decoding turned off (``--draft`` picks which run);
* naive: in the main process, one image at a time: PIL open, ``.load``, a batch of 1;
* dataloader: a plain ``torch.utils.data.DataLoader`` (PIL open + ``.load`` in workers).

After a short warm-up, the ways take turns on --rounds slices of the images (the naive loop
on slices of its first --naive-n), in an order that rotates each round; ratios are of
images/s against model_only. CPU milliseconds per image (this process and its workers)
are printed too: on a machine shared with other work they are the steadier measure of
what each way costs. Target: pixdex >= 0.90 x model_only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pixdex import api
from pixdex.device import placement
from pixdex.retrieval.embed import embed_keys
from pixdex.retrieval.models import open_model

BACKBONE = "timm:resnet18"
TARGET = 0.90


# ----------------------------------------------------------------------------- data


def make_jpegs(out: Path, n: int, long_sides: list[int], seed: int = 0) -> list[str]:
    """Write (or reuse) n JPEG photo crops in ``out``; return their paths in order."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    recipe = {"n": n, "long_sides": long_sides, "seed": seed, "quality": 90, "version": 1}
    paths = [str(out / f"img_{i:05d}.jpg") for i in range(n)]
    stamp = out / "recipe.json"
    if stamp.exists() and json.loads(stamp.read_text()) == recipe and all(os.path.exists(p) for p in paths):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    sources = [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for path in paths:
        src = sources[int(rng.integers(len(sources)))]
        sw, sh = src.size
        aspect = float(rng.choice([3 / 4, 4 / 3]))  # height / width
        cw = int(sw * rng.uniform(0.6, 1.0))
        ch = int(cw * aspect)
        if ch > sh:
            ch, cw = sh, int(sh / aspect)
        x0, y0 = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
        crop = src.crop((x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        long_side = int(rng.choice(long_sides))
        scale = long_side / max(cw, ch)
        im = crop.resize((round(cw * scale), round(ch * scale)), Image.Resampling.BICUBIC)
        arr = np.asarray(im, dtype=np.float32) + rng.normal(0.0, 2.0, (im.height, im.width, 3)).astype(np.float32)
        Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    stamp.write_text(json.dumps(recipe))
    print(f"wrote {n} JPEGs to {out} in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return paths


def describe(paths: list[str]) -> dict:
    from PIL import Image

    pixels = []
    for p in paths:
        with Image.open(p) as im:
            pixels.append(im.width * im.height)
    size = sum(os.path.getsize(p) for p in paths)
    return {
        "files": len(paths),
        "mean_megapixels": round(float(np.mean(pixels)) / 1e6, 3),
        "mean_kib": round(size / len(paths) / 1024, 1),
    }


# --------------------------------------------------------------------------- peers


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the DataLoader workers, once joined)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, *args, **kwargs) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - wall, cpu_seconds() - cpu


class PlainFiles(torch.utils.data.Dataset):
    """What a PyTorch user writes: PIL open + convert + the same ``.load``."""

    def __init__(self, paths: list[str], load) -> None:
        self.paths, self.load = paths, load

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.load(im.convert("RGB"))


@torch.no_grad()
def model_only(model, transform, images: torch.Tensor, bs: int) -> None:
    for i in range(0, len(images), bs):
        model(transform.batch(images[i : i + bs]))


def pixdex_embed(run, paths: list[str], runtime: dict, place, draft: bool) -> None:
    import pixdex.data.sources as sources

    real = sources.draft_size_for
    if not draft:  # the switch: FileSource asks this function for the draft size
        sources.draft_size_for = lambda transform: None
    try:
        out = embed_keys(run, paths, runtime, place)
    finally:
        sources.draft_size_for = real
    assert len(out.positions) == len(paths), f"{len(out.skipped)} skipped: {out.skipped[:2]}"


@torch.no_grad()
def naive(model, transform, paths: list[str]) -> None:
    from PIL import Image

    for p in paths:
        with Image.open(p) as im:
            x = transform.load(im.convert("RGB"))
        model(transform.batch(x[None]))


@torch.no_grad()
def dataloader(model, transform, paths: list[str], bs: int, workers: int) -> None:
    loader = torch.utils.data.DataLoader(PlainFiles(paths, transform.load), batch_size=bs, num_workers=workers)
    for x in loader:
        model(transform.batch(x))


def stage_costs(paths: list[str], transform, draft_size) -> dict:
    """Single-thread milliseconds per image of each decoding stage, on a sample."""
    from PIL import Image

    from pixdex.data.images import open_image

    sample = paths[:100]

    def per_image(fn) -> float:
        start = time.perf_counter()
        for p in sample:
            fn(p)
        return round((time.perf_counter() - start) / len(sample) * 1000, 2)

    def pil_decode(p: str) -> None:
        with Image.open(p) as im:
            im.load()

    return {
        "ms_pil_decode_full": per_image(pil_decode),
        "ms_open_image_full": per_image(lambda p: open_image(p)),
        "ms_open_image_draft": per_image(lambda p: open_image(p, draft_size=draft_size)),
        "ms_open_image_full_plus_load": per_image(lambda p: transform.load(open_image(p))),
        "ms_open_image_draft_plus_load": per_image(lambda p: transform.load(open_image(p, draft_size=draft_size))),
    }


# ---------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "pixdex-bench-embed-jpegs"))
    parser.add_argument("--long-sides", default="800,1024,1280,1600")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--draft",
        choices=["both", "on", "off"],
        default="both",
        help="pixdex runs with JPEG draft decoding on, off, or both side by side",
    )
    parser.add_argument(
        "--naive-n",
        type=int,
        default=320,
        help="images for the naive loop, the first ones (0: all n); it is the slowest by far",
    )
    parser.add_argument("--skip", default="", help="comma-separated peers to leave out: naive, dataloader")
    parser.add_argument("--rounds", type=int, default=4, help="slices the ways take turns on")
    args = parser.parse_args()
    skip = {s for s in args.skip.split(",") if s}

    paths = make_jpegs(Path(args.out), args.n, [int(s) for s in args.long_sides.split(",")])
    pset = api.load_plugins()
    config = api.configure(
        pset,
        flags={
            "backbone": {"name": BACKBONE, "pretrained": False},
            "runtime": {"device": "cpu", "workers": args.workers, "batch_size": args.batch_size},
        },
    )
    run = open_model(BACKBONE, pset, config)
    runtime = dict(config["runtime"])
    place = placement(runtime["device"], runtime["precision"])
    model = run.pipeline.eval()
    transform = run.transform
    bs = args.batch_size
    from pixdex.data.images import open_image
    from pixdex.data.sources import draft_size_for

    draft_size = draft_size_for(transform)
    print(
        json.dumps(
            {
                "bench": "embed_throughput",
                "stage": "data",
                **describe(paths),
                "transform": repr(transform),
                "draft_size": draft_size,
                "torch_threads": torch.get_num_threads(),
                **stage_costs(paths, transform, draft_size),
            }
        ),
        flush=True,
    )

    # pre-decoded tensors for the limit (full decode, as the non-draft path gives them)
    images = torch.stack([transform.load(open_image(p)) for p in paths])

    # warm-up: allocator, kernels, worker start-up code paths
    model_only(model, transform, images[:bs], bs)
    embed_keys(run, paths[:bs], runtime, place)

    # The images are split into --rounds slices; each round runs every way on its slice,
    # in an order that rotates from round to round, so a machine whose speed drifts (other
    # work on it) slows all of them alike. Seconds and CPU seconds are summed per way.
    ways = ["model_only"]
    if args.draft in ("both", "on"):
        ways.append("pixdex")
    if args.draft in ("both", "off"):
        ways.append("pixdex_nodraft")
    ways += [w for w in ("naive", "dataloader") if w not in skip]
    naive_paths = paths[: args.naive_n] if args.naive_n else paths
    totals = {w: [0.0, 0.0, 0] for w in ways}  # wall s, cpu s, images

    def run_way(way: str, lo: int, hi: int, nlo: int, nhi: int) -> None:
        if way == "model_only":
            count, call = hi - lo, lambda: model_only(model, transform, images[lo:hi], bs)
        elif way in ("pixdex", "pixdex_nodraft"):
            count, call = hi - lo, lambda: pixdex_embed(run, paths[lo:hi], runtime, place, draft=way == "pixdex")
        elif way == "naive":
            count, call = nhi - nlo, lambda: naive(model, transform, naive_paths[nlo:nhi])
        else:
            count, call = hi - lo, lambda: dataloader(model, transform, paths[lo:hi], bs, args.workers)
        wall, cpu = timed(call)
        totals[way][0] += wall
        totals[way][1] += cpu
        totals[way][2] += count
        print(
            json.dumps({"way": way, "images": count, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}),
            file=sys.stderr,
            flush=True,
        )

    rounds = max(1, min(args.rounds, len(paths) // bs))
    for r in range(rounds):
        lo, hi = len(paths) * r // rounds, len(paths) * (r + 1) // rounds
        nlo, nhi = len(naive_paths) * r // rounds, len(naive_paths) * (r + 1) // rounds
        shift = r % len(ways)
        for way in ways[shift:] + ways[:shift]:
            run_way(way, lo, hi, nlo, nhi)

    ips = {way: images_done / wall for way, (wall, _, images_done) in totals.items()}
    cpu_ms = {way: 1000 * cpu / images_done for way, (_, cpu, images_done) in totals.items()}
    record = {
        "bench": "embed_throughput",
        "backbone": BACKBONE,
        "n": len(paths),
        "batch_size": bs,
        "workers": args.workers,
        "draft_size": draft_size,
    }
    record.update({f"{name}_images_per_s": round(v, 2) for name, v in ips.items()})
    record.update({f"ratio_{name}": round(v / ips["model_only"], 3) for name, v in ips.items() if name != "model_only"})
    # CPU milliseconds per image (this process + its workers): the work each way costs,
    # which a busy machine distorts less than wall time
    record.update({f"{name}_cpu_ms_per_image": round(v, 1) for name, v in cpu_ms.items()})
    key = "pixdex" if "pixdex" in ips else "pixdex_nodraft"
    record.update({"target": TARGET, "target_met": ips[key] / ips["model_only"] >= TARGET})
    if "naive" in ways:
        record["naive_n"] = len(naive_paths)
    record["rounds"] = rounds
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
