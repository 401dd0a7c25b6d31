"""`pixdex serve` under load, against the in-process API (the limit) and the CLI (the cold path).

    make demo                                  # builds demo-output/index
    python bench/serve.py demo-output/index    # about 2 minutes on 2 cores

Starts a real `pixdex serve` subprocess on a free loopback port over a private copy of the
index, then for 1, 4 and 16 concurrent clients (threads, one keep-alive HTTP connection
each), for ``--seconds`` each:

* ``upload``: POST /api/search with one real 28x28 PNG from the bundled sample's test split;
* ``similar``: GET /api/items/ID/similar ("more like this", no decoding);

and prints requests/s, p50/p95/p99 latency, errors and the server's RSS. Side by side, in
this process on the same index and images: ``Service.search`` called from the same number
of threads (the limit: decoding, forward pass and ANN search without HTTP), and one
``pixdex search`` process per query (the cold path, a few queries). Last, a hot reload
under load: 4 clients upload while `pixdex index add` commits new images into the served
folder; every request must succeed and the server must report the new version.

Targets (issue 14, this 2-core CPU, the demo's simple-cnn index): upload p50 <= 25 ms at
1 client, similar p50 <= 5 ms, HTTP throughput >= 0.7 x the in-process limit at 4 clients,
zero errors, zero failed requests across the reload.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def load(worker: Callable[[int], Callable[[], bool]], clients: int, seconds: float) -> dict[str, Any]:
    """Run ``clients`` threads, each calling its request function until time is up."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start_gate = threading.Barrier(clients + 1)
    deadline = [0.0]

    def run(i: int) -> None:
        call = worker(i)
        start_gate.wait()
        while time.perf_counter() < deadline[0]:
            t = time.perf_counter()
            ok = call()
            latencies[i].append((time.perf_counter() - t) * 1000)
            errors[i] += 0 if ok else 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + seconds
    start_gate.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    flat = [x for part in latencies for x in part]
    return {
        "clients": clients,
        "requests": len(flat),
        "rps": len(flat) / wall,
        "p50_ms": percentile(flat, 50),
        "p95_ms": percentile(flat, 95),
        "p99_ms": percentile(flat, 99),
        "errors": sum(errors),
    }


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set of a process, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def start_server(index: Path, cache: Path) -> tuple[subprocess.Popen, str]:
    cmd = [
        sys.executable,
        "-m",
        "pixdex",
        "serve",
        str(index),
        "--port",
        "0",
        "--cache-dir",
        str(cache),
        "--reload-interval",
        "0.5",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit(f"pixdex serve did not start: {url!r}")
    return proc, url


def verdict(results: dict[str, Any]) -> dict[str, bool]:
    """Print and return each issue-14 target as met or not, from the measured figures."""
    by_clients = {level["clients"]: level for level in results["levels"]}
    checks: dict[str, tuple[str, bool]] = {}
    if 1 in by_clients:
        one = by_clients[1]
        checks["upload_p50"] = (f"upload p50 {one['upload']['p50_ms']:.1f} ms <= 25", one["upload"]["p50_ms"] <= 25)
        checks["similar_p50"] = (f"similar p50 {one['similar']['p50_ms']:.1f} ms <= 5", one["similar"]["p50_ms"] <= 5)
    if 4 in by_clients:
        ratio = by_clients[4]["http_vs_inproc"]
        checks["throughput_4"] = (f"HTTP / in-process at 4 clients {ratio:.2f}x >= 0.7", ratio >= 0.7)
    errors = sum(level[path]["errors"] for level in results["levels"] for path in ("upload", "similar", "in-proc"))
    checks["no_errors"] = (f"errors under load {errors} == 0", errors == 0)
    reload = results["reload"]
    reloaded = reload["errors"] == 0 and reload["index_add"].get("rc") == 0 and reload["count_after"] > results["count"]
    checks["hot_reload"] = (f"reload: {reload['errors']} failed requests, new version served", reloaded)
    for text, ok in checks.values():
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")
    return {name: ok for name, (_, ok) in checks.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", type=Path, nargs="?", default=Path("demo-output/index"))
    parser.add_argument("--seconds", type=float, default=8.0, help="per load level")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--cold", type=int, default=3, help="CLI processes for the cold path")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    from pixdex import api
    from pixdex.plugins import load_plugins
    from pixdex.sample import sample_path
    from pixdex.serve.service import Service, Upload

    if not (args.index / "manifest.json").exists():
        raise SystemExit(f"{args.index} is not an index folder; run `make demo` first")
    queries = sorted((Path(sample_path()) / "test").rglob("*.png"))[:64]
    payloads = [(q.name, q.read_bytes()) for q in queries]
    work = Path(tempfile.mkdtemp(prefix="pixdex-bench-serve-"))
    index = work / "index"
    shutil.copytree(args.index, index)  # the reload phase changes it
    count = json.loads((index / "manifest.json").read_text())["count"]
    results: dict[str, Any] = {"index": str(args.index), "count": count, "levels": []}

    proc, url = start_server(index, work / "cache")
    print(f"server {url} (pid {proc.pid}), index {args.index} ({count} items), {args.seconds:.0f} s per level")
    try:
        with httpx.Client(base_url=url) as warm:  # first requests pay for lazy initialisation
            for name, data in payloads[:4]:
                warm.post("/api/search", files=[("image", (name, data))], data={"k": "10"}).raise_for_status()

        def http_upload(i: int) -> Callable[[], bool]:
            client = httpx.Client(base_url=url, timeout=30)
            n = [i]

            def call() -> bool:
                name, data = payloads[n[0] % len(payloads)]
                n[0] += 1
                return client.post("/api/search", files=[("image", (name, data))], data={"k": "10"}).status_code == 200

            return call

        def http_similar(i: int) -> Callable[[], bool]:
            client = httpx.Client(base_url=url, timeout=30)
            n = [i * 97]

            def call() -> bool:
                n[0] += 1
                return client.get(f"/api/items/{n[0] % count}/similar", params={"k": 10}).status_code == 200

            return call

        pset = load_plugins()
        runtime = api.runtime_config(pset, flags={"runtime": {"device": "cpu"}})
        service = Service(index, pset, runtime, cache_dir=work / "cache-inproc")

        def inproc_upload(i: int) -> Callable[[], bool]:
            n = [i]

            def call() -> bool:
                name, data = payloads[n[0] % len(payloads)]
                n[0] += 1
                return len(service.search([Upload(name, data)], 10)) == 1

            return call

        header = f"{'path':10} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}"
        print(header)
        for clients in args.clients:
            level: dict[str, Any] = {"clients": clients}
            for name, worker in (("upload", http_upload), ("similar", http_similar), ("in-proc", inproc_upload)):
                r = load(worker, clients, args.seconds)
                level[name] = r
                print(
                    f"{name:10} {clients:7d} {r['rps']:8.1f} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} "
                    f"{r['p99_ms']:8.2f} {r['errors']:6d}"
                )
            ratio = level["upload"]["rps"] / level["in-proc"]["rps"]
            level["http_vs_inproc"] = ratio
            print(f"{'':10} {clients:7d} HTTP upload / in-process = {ratio:.2f}x")
            results["levels"].append(level)
        rss, peak = rss_mb(proc.pid)
        results["server_rss_mb"], results["server_peak_rss_mb"] = rss, peak
        print(f"server RSS {rss:.0f} MB (peak {peak:.0f} MB)")

        cold = []
        for name, data in payloads[: args.cold]:
            path = work / name
            path.write_bytes(data)
            t = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "pixdex", "-q", "search", str(index), str(path), "--json"],
                check=True,
                capture_output=True,
            )
            cold.append((time.perf_counter() - t) * 1000)
        results["cold_cli_ms"] = cold
        print(
            f"cold path: one `pixdex search` process per query: median {statistics.median(cold):.0f} ms "
            f"({len(cold)} runs), {statistics.median(cold) / results['levels'][0]['upload']['p50_ms']:.0f}x "
            f"the served p50 at {results['levels'][0]['clients']} client(s)"
        )

        # hot reload under load: 4 clients upload while `index add` commits new images
        extra = work / "extra"
        for q in queries[:20]:
            (extra / q.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(q, extra / q.parent.name / q.name)
        added: dict[str, Any] = {}

        def add_later() -> None:
            time.sleep(args.seconds / 3)
            t = time.perf_counter()
            r = subprocess.run(
                [sys.executable, "-m", "pixdex", "-q", "index", "add", str(index), str(extra), "--json"],
                capture_output=True,
                text=True,
            )
            added.update(rc=r.returncode, seconds=time.perf_counter() - t)

        adder = threading.Thread(target=add_later)
        adder.start()
        r = load(http_upload, 4, args.seconds * 2)
        adder.join()
        time.sleep(1.5)  # the watcher polls every 0.5 s
        info = httpx.get(url.rstrip("/") + "/api/info").json()
        results["reload"] = {**r, "index_add": added, "version_after": info["version"], "count_after": info["count"]}
        print(
            f"hot reload under 4 clients: {r['requests']} requests, {r['errors']} errors; index add rc "
            f"{added.get('rc')}; server now version {info['version']} with {info['count']} items "
            f"(was {count})"
        )
        results["targets"] = verdict(results)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
