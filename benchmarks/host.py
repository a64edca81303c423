"""The engine host in one process, on a GPU: host gather vs device gather, one host vs two in parallel.

    python -m benchmarks.host --repository REPO --device cuda:0 --out DIR

For a gpu-python build (issue 26): the engine host either gathers the rows of the hash tables on the host (from
the memory-mapped tables, then copies the embeddings to the GPU: about 1 KiB per entity per candidate) or keeps
the tables on the GPU and gathers there (only the hashes cross). Each is timed at a few (B, C); then two hosts
of the same model run side by side in two threads (Triton's two instances per GPU: one's copies overlapping the
other's compute) against one host, as requests per second. Writes host.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.measure import latency_stats
from phoenix_runtime.host import EngineHost
from phoenix_runtime.manifest import RANKER, read_manifest

SHAPES = ((1, 64), (16, 64), (64, 1024))


def request(host: EngineHost, b: int, c: int, seed: int = 0) -> dict:
    """Valid random arrays of host's inputs with B users and C candidates."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in host.inputs:
        if s.get("optional"):
            continue
        shape = [b if d == "B" else c if d == "C" else d for d in s["shape"]]
        if s.get("check") in ("hash", "index"):
            out[s["name"]] = rng.integers(0, s["high"], shape).astype(s["dtype"])
        else:
            out[s["name"]] = (rng.random(shape) < 0.1).astype(s["dtype"])
    return out


def timed(host: EngineHost, arrays: dict, seconds: float) -> list[float]:
    host.run([arrays])
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        (result,) = host.run([arrays])
        if isinstance(result, Exception):
            raise result
        times.append(time.perf_counter() - t)
    return times


def parallel_rate(hosts: list[EngineHost], arrays: dict, seconds: float) -> float:
    """Requests per second with one thread per host, each sending its next request when the last returns."""
    counts = [0] * len(hosts)

    def loop(i):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            hosts[i].run([arrays])
            counts[i] += 1
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(hosts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.host", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", required=True, help="a gpu-python build (python -m export.build --target "
                                                        "gpu-python --engines torch|aoti|tensorrt)")
    ap.add_argument("--device", default="cuda:0", help="the device of the engine host (default: cuda:0)")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement (default: 2)")
    ap.add_argument("--out", default=None, help="folder for host.json (default: print only)")
    args = ap.parse_args(argv)
    repo = Path(args.repository)
    manifest = read_manifest(repo)
    hosts = {"device gather": EngineHost.open(repo, manifest, RANKER, args.device, device_tables=True),
             "host gather": EngineHost.open(repo, manifest, RANKER, args.device, device_tables=False)}
    rows = []
    for b, c in SHAPES:
        if b > hosts["host gather"].limits.max_batch_size or c > hosts["host gather"].limits.max_candidates:
            continue
        arrays = request(hosts["host gather"], b, c)
        for name, host in hosts.items():
            stats = latency_stats(timed(host, arrays, args.seconds))
            rows.append({"gather": name, "B": b, "C": c, **stats})
            print(f"{name:14} B={b:<3} C={c:<5} p50 {stats['p50_ms']:.3f} ms", flush=True)
    arrays = request(hosts["device gather"], 16, 64)
    second = EngineHost.open(repo, manifest, RANKER, args.device, device_tables=True)
    rates = {"1 instance": parallel_rate([hosts["device gather"]], arrays, args.seconds),
             "2 instances": parallel_rate([hosts["device gather"], second], arrays, args.seconds)}
    print(f"B=16 C=64 requests/s: {rates}", flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "host.json").write_text(json.dumps({"repository": str(repo), "device": args.device,
                                                              "latency": rows, "rate": rates}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
