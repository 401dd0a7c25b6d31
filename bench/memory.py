"""Peak memory against the embeddings' own size (docs/reliability.md, promise 8).

  (1) evaluate-retrieval of 10,000 query items against a 60,000-item gallery (synthetic,
      labelled 128-d embeddings in real, sealed index folders);
  (2) index build over 100,000 generated small images;
  (3) index build --from-embeddings of 1,000,000 x 128 precomputed vectors (a foreign
      embeddings.npy + items.jsonl, the flat index so that the ANN adds no structure of its
      own beyond its copy of the vectors), then one search --vectors of the result.

Each command runs in its own process; its peak RSS (ru_maxrss) is compared with a
baseline process that imports the same libraries and opens the same index
(`pixdex index info`), and the difference with the size of the embeddings involved.

Parts 2 and 3 also run the ANN alone, side by side: a process that builds the same index
plugin over the same vectors (held in memory for 2, memory-mapped from the source for 3,
as pixdex holds them) and saves it, against one that only imports the same libraries.
What pixdex needs beyond that is its own bookkeeping (listing, facts, item records,
manifest, checksums): ``bookkeeping_mb`` = (pixdex - its baseline) - (ANN alone - its
baseline), and ``bookkeeping_over_embeddings`` its ratio to the embeddings' size.

    python bench/memory.py [--gallery 60000] [--queries 10000] [--images 100000]
                           [--vectors 1000000] [--parts 123]
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

import numpy as np


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{err[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def synthetic_index(folder: Path, n: int, dim: int, classes: int, seed: int) -> None:
    """A real index folder (model, manifest, checksums) whose embeddings are synthetic."""
    from pixdex import api
    from pixdex.artifacts import FolderWriter
    from pixdex.pipeline.runs import now
    from pixdex.retrieval.index_folder import IndexContents, commit_index, number_rows
    from pixdex.retrieval.models import open_model, stage_model

    pset = api.load_plugins()
    config = api.configure(
        pset,
        flags={"backbone": {"name": "simple-cnn"}, "index": {"name": "flat"}},
        sets=[f"backbone.embed_dim={dim}", "backbone.widths=[4]", "backbone.input_size=16"],
    )
    run = open_model("simple-cnn", pset, config)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    vectors = (centres[labels] + 1.5 * rng.standard_normal((n, dim))).astype(np.float32)
    items = number_rows(
        [
            {
                "id": i,
                "path": f"synthetic/{seed}/{i}.png",
                "label": f"class{labels[i]}",
                "size": None,
                "mtime": None,
                "sha256": f"{seed:04d}{i:060d}",
            }
            for i in range(n)
        ]
    )
    with FolderWriter(folder) as writer:
        record = stage_model(writer, run)
        commit_index(
            writer,
            pset,
            config,
            IndexContents(vectors, items, n, []),
            metric="cosine",
            model_record=record,
            created=now(),
        )


ANN_ALONE = r"""
import sys, tempfile
import numpy as np
from pixdex.plugins import load_plugins
source, n, dim, build = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "build"
pset = load_plugins(entry_points=[])
if not build:  # the baseline: the same imports and a 20-row index, so only the vectors differ
    source, n = "-", 20
if source == "-":  # the embeddings in memory, as an image build holds them
    x = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
else:  # memory-mapped, as --from-embeddings reads them
    x = np.load(source, mmap_mode="r")
index = pset.registry.build("index", "flat", {}, dim=dim, metric="cosine")
index.build(np.ascontiguousarray(x, dtype=np.float32))
with tempfile.TemporaryDirectory() as tmp:
    index.save(tmp)
"""


def ann_alone_mb(source: str, n: int, dim: int) -> tuple[float, float]:
    """(peak RSS of building the flat index alone over the vectors, of the same process
    over 20 rows), in MiB."""
    py = [sys.executable, "-c", ANN_ALONE, source, str(n), str(dim)]
    return peak_rss_mb(py + ["build"])[0], peak_rss_mb(py + ["none"])[0]


def split(peak: float, base: float, ann_peak: float, ann_base: float, emb_mb: float) -> dict[str, float]:
    """The bookkeeping share of a build's extra memory (see the module docstring)."""
    ann = ann_peak - ann_base
    book = (peak - base) - ann
    return {
        "ann_alone_extra_mb": round(ann, 1),
        "bookkeeping_mb": round(book, 1),
        "bookkeeping_over_embeddings": round(book / emb_mb, 2),
    }


def part_evaluate(tmp: Path, gallery: int, queries: int, dim: int) -> None:
    synthetic_index(tmp / "gallery", gallery, dim, 10, 1)
    synthetic_index(tmp / "queries", queries, dim, 10, 2)
    py = [sys.executable, "-m", "pixdex", "-q"]
    base, _ = peak_rss_mb(py + ["index", "info", str(tmp / "gallery")])
    peak, seconds = peak_rss_mb(
        py + ["evaluate-retrieval", str(tmp / "gallery"), str(tmp / "queries"), "--json", "--device", "cpu"]
    )
    emb_mb = (gallery + queries) * dim * 4 / 2**20
    qxg_mb = gallery * queries * 4 / 2**20
    print(
        json.dumps(
            {
                "part": "evaluate_retrieval",
                "gallery": gallery,
                "queries": queries,
                "dim": dim,
                "embeddings_mb": round(emb_mb, 1),
                "queries_x_gallery_float32_mb": round(qxg_mb, 1),
                "baseline_rss_mb": round(base, 1),
                "peak_rss_mb": round(peak, 1),
                "extra_over_baseline_mb": round(peak - base, 1),
                "extra_over_embeddings": round((peak - base) / emb_mb, 2),
                "seconds": round(seconds, 1),
            }
        ),
        flush=True,
    )


def part_build(tmp: Path, images: int, dim: int) -> None:
    from PIL import Image

    root = tmp / "images"
    rng = np.random.default_rng(0)
    for c in range(10):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(root / f"c{i % 10}" / f"{i:06d}.png")
    py = [sys.executable, "-m", "pixdex", "-q"]
    args = [
        "--set",
        f"backbone.embed_dim={dim}",
        "--set",
        "backbone.widths=[4]",
        "--set",
        "backbone.input_size=8",
        "--index",
        "flat",
        "--device",
        "cpu",
        "--workers",
        "0",  # decoding in the process itself: DataLoader workers' own peaks would blur the figure
        "--batch-size",
        "512",
    ]
    small = tmp / "small"
    for c in range(10):
        (small / f"c{c}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(small / f"c{c}" / "x.png")
    base, _ = peak_rss_mb(py + ["index", "build", "simple-cnn", str(small), "-o", str(tmp / "small-index"), *args])
    peak, seconds = peak_rss_mb(py + ["index", "build", "simple-cnn", str(root), "-o", str(tmp / "index"), *args])
    emb_mb = images * dim * 4 / 2**20
    ann = split(peak, base, *ann_alone_mb("-", images, dim), emb_mb)
    print(
        json.dumps(
            {
                "part": "index_build",
                "images": images,
                "dim": dim,
                "embeddings_mb": round(emb_mb, 1),
                "baseline_rss_mb": round(base, 1),
                "peak_rss_mb": round(peak, 1),
                "extra_over_baseline_mb": round(peak - base, 1),
                "extra_over_embeddings": round((peak - base) / emb_mb, 2),
                **ann,
                "seconds": round(seconds, 1),
                "baseline": "the same build over 10 images",
            }
        ),
        flush=True,
    )


def part_precomputed(tmp: Path, n: int, dim: int) -> None:
    source, small = tmp / "vectors", tmp / "vectors-small"
    rng = np.random.default_rng(0)
    for folder, count in ((source, n), (small, 10)):
        folder.mkdir()
        out = np.lib.format.open_memmap(folder / "embeddings.npy", mode="w+", dtype=np.float32, shape=(count, dim))
        for start in range(0, count, 100_000):  # written in pieces: the bench itself stays small
            out[start : start + 100_000] = rng.standard_normal((min(100_000, count - start), dim))
        out.flush()
        del out
        with open(folder / "items.jsonl", "w", encoding="utf-8") as fh:
            for i in range(count):
                fh.write(f'{{"path": "photos/{i:08d}.jpg", "label": "class{i % 100}", "sha256": "{i:064x}"}}\n')
    py = [sys.executable, "-m", "pixdex", "-q"]
    build = ["index", "build", "--from-embeddings"]
    base, _ = peak_rss_mb(py + [*build, str(small), "-o", str(tmp / "small-idx"), "--index", "flat"])
    peak, seconds = peak_rss_mb(py + [*build, str(source), "-o", str(tmp / "big-idx"), "--index", "flat"])
    np.save(tmp / "q.npy", rng.standard_normal((10, dim)).astype(np.float32))
    search = ["search", "--vectors", str(tmp / "q.npy"), "-k", "10", "--json"]
    search_base, _ = peak_rss_mb(py + [search[0], str(tmp / "small-idx"), *search[1:]])
    search_peak, search_s = peak_rss_mb(py + [search[0], str(tmp / "big-idx"), *search[1:]])
    emb_mb = n * dim * 4 / 2**20
    items_mb = (source / "items.jsonl").stat().st_size / 2**20
    ann = split(peak, base, *ann_alone_mb(str(source / "embeddings.npy"), n, dim), emb_mb)
    print(
        json.dumps(
            {
                "part": "index_build_from_embeddings",
                "vectors": n,
                "dim": dim,
                "index": "flat",
                "embeddings_mb": round(emb_mb, 1),
                "items_jsonl_mb": round(items_mb, 1),
                "baseline_rss_mb": round(base, 1),
                "peak_rss_mb": round(peak, 1),
                "extra_over_baseline_mb": round(peak - base, 1),
                "extra_over_embeddings": round((peak - base) / emb_mb, 2),
                **ann,
                "limit_mb": round(1.5 * emb_mb + 1536, 1),
                "seconds": round(seconds, 1),
                "search_peak_rss_mb": round(search_peak, 1),
                "search_extra_over_baseline_mb": round(search_peak - search_base, 1),
                "search_seconds": round(search_s, 1),
                "baseline": "the same commands on 10 vectors",
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", type=int, default=60000)
    parser.add_argument("--queries", type=int, default=10000)
    parser.add_argument("--images", type=int, default=100000)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--parts", default="123")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if "1" in args.parts:
            part_evaluate(Path(tmp), args.gallery, args.queries, args.dim)
        if "2" in args.parts:
            part_build(Path(tmp), args.images, args.dim)
        if "3" in args.parts:
            part_precomputed(Path(tmp), args.vectors, args.dim)


if __name__ == "__main__":
    main()
