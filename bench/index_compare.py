"""Index comparison: pixdex's ``flat``, ``annoy`` and ``hnsw`` index plugins with their
defaults (annoy's search_k and hnsw's ef tuned at build time to recall@10 >= 0.95 on
sampled rows), side by side on the same vectors, plus raw usearch searching the hnsw
plugin's own file at its ef (what the plugin's Python around usearch costs), and raw
hnswlib at hnsw's graph settings and tuned ef when it is installed (the peer library the
plugin was chosen against).

    python bench/index_compare.py [--n 60000] [--dim 128] [--queries 1000] [--data DIR]
                                  [--indexes flat,annoy,hnsw] [--json OUT]

Vectors as bench/index_overhead.py makes them: gaussian clusters by default, or with
``--data DIR`` Fashion-MNIST's pixels projected to --dim (rows: train, queries: test).
Cosine metric. For each index: build seconds (with the tuning), file size, then in a fresh
child process that loads the saved files memory-mapped, as pixdex does: recall@10 of the
held-out queries against exact search, QPS one query at a time and for one batch of every
query (the fastest of --rounds tries each), and the child's peak RSS above a child that
imported the same libraries and built a 20-row index instead (for raw hnswlib, hnsw's).
Every figure comes from this run; the machine is shared, so compare the ratios in the
QPS 1 / annoy column.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from index_overhead import exact_top, fashion_projection, gaussian_clusters, recall, unit

K = 10


def build(name: str, rows: np.ndarray, folder: Path) -> dict:
    from pixdex.plugins import load_plugins

    registry = load_plugins(entry_points=[]).registry
    index = registry.build("index", name, {}, dim=rows.shape[1], metric="cosine")
    t0 = time.perf_counter()
    index.build(rows)
    seconds = time.perf_counter() - t0
    folder.mkdir(parents=True)
    files = index.save(folder)
    size = sum((folder / f).stat().st_size for f in files)
    return {"index": name, "build_s": seconds, "file_mb": size / 2**20, "params": index.params}


def build_hnswlib(rows: np.ndarray, folder: Path, m: int, ef_construction: int, ef: int) -> dict:
    import hnswlib

    index = hnswlib.Index(space="cosine", dim=rows.shape[1])
    t0 = time.perf_counter()
    index.init_index(max_elements=len(rows), M=m, ef_construction=ef_construction, random_seed=0)
    index.set_num_threads(1)  # as the plugin builds: one thread
    index.add_items(rows, np.arange(len(rows)))
    seconds = time.perf_counter() - t0
    folder.mkdir(parents=True)
    index.save_index(str(folder / "index.bin"))
    size = (folder / "index.bin").stat().st_size
    return {"index": "raw hnswlib", "build_s": seconds, "file_mb": size / 2**20, "params": {"M": m, "ef": ef}}


def child(spec: dict) -> dict:
    """Load ``spec['folder']`` (nothing when ``spec['name']`` is None) and time its searches."""
    queries = np.load(spec["queries"])
    truth = np.load(spec["truth"])
    name = spec["name"]
    if name == "raw usearch":  # the hnsw plugin's own file, searched by usearch with nothing around it
        from usearch.index import Index

        index = Index.restore(spec["folder"], view=True)
        index.expansion_search = spec["ef"]

        def search(q: np.ndarray) -> np.ndarray:
            threads = 1 if len(q) < 64 else 0  # as the plugin: one thread for one query
            return np.asarray(index.search(q, K, threads=threads).keys, dtype=np.int64).reshape(len(q), -1)
    elif name == "raw hnswlib":
        import hnswlib

        index = hnswlib.Index(space="cosine", dim=queries.shape[1])
        index.load_index(spec["folder"], max_elements=spec["n"])
        index.set_ef(spec["ef"])
        index.set_num_threads(1)

        def search(q: np.ndarray) -> np.ndarray:
            return index.knn_query(q, k=K)[0].astype(np.int64)
    else:
        from pixdex.plugins import load_plugins

        registry = load_plugins(entry_points=[]).registry
        index = registry.build("index", name, {}, dim=queries.shape[1], metric="cosine")
        if not spec["load"]:  # the baseline: the same imports, a tiny index of its own, no files
            index.build(queries[:20])
            index.search(queries[:5], 3)
            return {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        index.load(Path(spec["folder"]), mmap=True)

        def search(q: np.ndarray) -> np.ndarray:
            return index.search(q, K)[0]

    found = search(queries)
    singles = queries[: spec["singles"]]
    one = batch = float("inf")
    for _ in range(spec["rounds"]):
        t0 = time.perf_counter()
        for q in singles:
            search(q[None])
        one = min(one, time.perf_counter() - t0)
        t0 = time.perf_counter()
        search(queries)
        batch = min(batch, time.perf_counter() - t0)
    return {
        "recall_at_10": recall(found, truth),
        "qps_1": len(singles) / one,
        "qps_batch": len(queries) / batch,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_child(spec: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"child for {spec['name']} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=60000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--singles", type=int, default=300, help="queries timed one at a time")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", default=None, help="Fashion-MNIST IDX folder (else gaussian clusters)")
    parser.add_argument("--indexes", default="flat,annoy,hnsw")
    parser.add_argument("--json", default=None, help="append the rows as JSON lines to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.data:
        rows, queries, source = fashion_projection(args.data, args.n, args.queries, args.dim)
    else:
        rows, queries, source = gaussian_clusters(args.n, args.queries, args.dim)
    print(f"{len(rows):,} x {args.dim} rows, {len(queries):,} queries: {source}; cosine, k={K}")
    with tempfile.TemporaryDirectory(prefix="pixdex-index-compare-") as tmp:
        work = Path(tmp)
        np.save(work / "queries.npy", queries)
        np.save(work / "truth.npy", exact_top(unit(rows), unit(queries), K))
        common = {"queries": str(work / "queries.npy"), "truth": str(work / "truth.npy"), "n": len(rows)}
        common |= {"singles": min(args.singles, len(queries)), "rounds": args.rounds}
        results = []
        for name in args.indexes.split(","):
            record = build(name, rows, work / name)
            record |= run_child({**common, "name": name, "folder": str(work / name), "load": True})
            base = run_child({**common, "name": name, "folder": "", "load": False})["rss_mb"]
            record["rss_above_baseline_mb"] = record["rss_mb"] - base
            results.append(record)
            if name == "hnsw":
                p = record["params"]
                usearch_file = str(work / "hnsw" / "index.usearch")
                raw_us = {"index": "raw usearch", "build_s": record["build_s"], "file_mb": record["file_mb"]}
                raw_us |= {"params": {"ef": p["ef"], "connectivity": p["connectivity"]}}
                raw_us |= run_child(
                    {**common, "name": "raw usearch", "folder": usearch_file, "ef": p["ef"], "load": True}
                )
                raw_us["rss_above_baseline_mb"] = raw_us["rss_mb"] - base
                results.append(raw_us)
                try:
                    import hnswlib  # noqa: F401
                except ImportError:
                    print("raw hnswlib: not installed (pip install hnswlib), skipped")
                    continue
                raw = build_hnswlib(rows, work / "hnswlib", p["connectivity"], p["expansion_add"], p["ef"])
                folder = str(work / "hnswlib" / "index.bin")
                raw |= run_child({**common, "name": "raw hnswlib", "folder": folder, "ef": p["ef"], "load": True})
                raw["rss_above_baseline_mb"] = raw["rss_mb"] - base  # the plugin child's baseline: numpy and usearch
                results.append(raw)
    annoy = next((r for r in results if r["index"] == "annoy"), None)
    header = "| index | build s | file MB | RSS MB | recall@10 | QPS 1 | QPS batch | QPS 1 / annoy | settings |"
    print(header)
    print("|" + "---|" * 9)
    for r in results:
        ratio = f"{r['qps_1'] / annoy['qps_1']:.2f}x" if annoy else ""
        settings = {k: r["params"][k] for k in ("search_k", "n_trees", "connectivity", "ef", "M") if k in r["params"]}
        print(
            f"| {r['index']} | {r['build_s']:.1f} | {r['file_mb']:.1f} | {r['rss_above_baseline_mb']:.0f} | "
            f"{r['recall_at_10']:.4f} | {r['qps_1']:,.0f} | {r['qps_batch']:,.0f} | {ratio} | {settings} |"
        )
    if args.json:
        with open(args.json, "a", encoding="utf-8") as fh:
            for r in results:
                fh.write(json.dumps({"n": len(rows), "dim": args.dim, "source": source, **r}) + "\n")


if __name__ == "__main__":
    main()
