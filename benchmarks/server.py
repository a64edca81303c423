"""Server mode: the served model end to end through a real tritonserver, over gRPC.

For each preset: build a model repository (`python -m export.build`, cached by source hash) and start
tritonserver on free ports with `serving.server.TritonServer`, or use a running server (`url`). Then:

- closed loop at each concurrency (1, 2, 4, ... 64): that many client threads, each sending its next
  request as soon as the previous answer arrives, for a fixed time;
- open loop: Poisson arrivals at a rate (requests/s; by default fractions of the closed-loop peak),
  latency measured from the scheduled arrival, so a saturated server shows up as growing latency;
- both for `phoenix` (named scores: on the cpu target the engine and the scoring in one process, elsewhere
  an ensemble of the ranker and the postprocess) and for the ranker alone `phoenix_ranker` (the difference is
  what the scoring costs);
- per step, Triton's own split per model (queue, compute_input, compute_infer, compute_output, average
  batch size) from the statistics API, as the difference of the counters before and after the step;
- peak memory (RSS) of the server process plus its Python-backend stub processes, sampled every 50 ms
  from start-up to the end of the measurements, and the sum of each live process's own peak (VmHWM,
  an upper bound that no sampling gap can miss).

Requests hold valid hashes only: random raw ids hashed by `serving.client` with the server's own hash
parameters (`demo_request` + `PhoenixClient.build_row`).
"""
from __future__ import annotations

import itertools
import queue
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.measure import latency_stats
from benchmarks.memory import MemorySampler
from phoenix_runtime.manifest import MANIFEST

MODELS = ("phoenix", "phoenix_ranker")
STAT_PARTS = ("queue", "compute_input", "compute_infer", "compute_output")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ServerSweep:
    url: str | None = None                        # a running server (gRPC host:port); None: start one per preset
    presets: tuple[str, ...] = ("mini", "nano")
    full_presets: tuple[str, ...] = ("mini",)     # concurrency sweep + Poisson; the others: concurrency 1 only
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    models: tuple[str, ...] = MODELS
    users_per_request: int = 1
    candidates: int = 64
    seconds: float = 3.0                           # per closed-loop step
    warmup_requests: int = 5
    poisson_fractions: tuple[float, ...] = (0.5, 0.9)  # of the closed-loop peak requests/s
    poisson_rates: tuple[float, ...] = ()          # explicit rates instead (requests/s)
    poisson_seconds: float = 5.0
    build_args: tuple[str, ...] = ("--target", "cpu")
    cache_dir: str | None = None
    seed: int = 0


# ------------------------------------------------------------------------------------------ repository

def build_repository(preset: str, cache_dir: Path, build_args=(), log=print) -> Path:
    """`python -m export.build --preset P --output DIR ...` once per preset and source version."""
    from benchmarks.engine import source_key

    out = Path(cache_dir) / f"repo-{preset}-{source_key('repo', preset, tuple(build_args))}"
    if (out / MANIFEST).exists():
        log(f"repository for {preset}: cached at {out}")
        return out
    cmd = [sys.executable, "-m", "export.build", "--preset", preset, "--output", str(out), *build_args]
    log(f"building: {' '.join(cmd)}")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"export.build failed for preset {preset} (exit {p.returncode}): " + " | ".join(tail))
    log(f"built {preset} in {time.perf_counter() - t0:.0f} s")
    return out


# ------------------------------------------------------------------------------------------ requests

def request_pool(client, n: int, users: int, candidates: int, seed: int) -> list[dict]:
    """n distinct requests of `users` users x `candidates` candidates, valid hashes only."""
    from serving.cli import demo_request

    return [client.arrays([demo_request(client.actions, seed=seed + i * users + u, num_history=client.history_len,
                                        num_candidates=candidates) for u in range(users)]) for i in range(n)]


def check_response(model: str, out: dict, users: int, candidates: int):
    """Fail loudly on empty or wrong-shaped outputs (the numpy-2 failure mode) or an input error."""
    key = "logits" if model == "phoenix_ranker" else "final_score"
    if key not in out or out[key].shape[:2] != (users, candidates):
        shapes = {k: v.shape for k, v in out.items()}
        raise RuntimeError(f"{model}: expected {key} of shape ({users}, {candidates}, ...), got {shapes}")
    if "input_error" in out and np.any(out["input_error"] != 0):
        raise RuntimeError(f"{model}: input_error set for a valid request: {out['input_error'].ravel()[:8]}")


# ------------------------------------------------------------------------------------------ Triton statistics

def model_stats(client) -> dict:
    """{model: {part: (count, ns)} + inference/execution counts} from the statistics API."""
    raw = client.get_inference_statistics(as_json=True)
    out = {}
    for m in raw.get("model_stats", []):
        s = m.get("inference_stats", {})
        d = {p: (int(s.get(p, {}).get("count", 0)), int(s.get(p, {}).get("ns", 0)))
             for p in ("success", "fail", *STAT_PARTS)}
        d["inference_count"] = int(m.get("inference_count", 0))
        d["execution_count"] = int(m.get("execution_count", 0))
        out[m["name"]] = d
    return out


def stats_diff(before: dict, after: dict) -> dict:
    """Per model with traffic in between: requests, avg batch, ms per request of each part."""
    out = {}
    for name, a in after.items():
        b = before.get(name, {})
        n = a["success"][0] - b.get("success", (0, 0))[0]
        if n <= 0:
            continue
        row = {"requests": n, "failed": a["fail"][0] - b.get("fail", (0, 0))[0],
               "server_ms": (a["success"][1] - b.get("success", (0, 0))[1]) / n / 1e6}
        for p in STAT_PARTS:
            row[f"{p}_ms"] = (a[p][1] - b.get(p, (0, 0))[1]) / n / 1e6
        execs = a["execution_count"] - b.get("execution_count", 0)
        infers = a["inference_count"] - b.get("inference_count", 0)
        row["avg_batch_users"] = infers / execs if execs else None
        out[name] = row
    return out


# ------------------------------------------------------------------------------------------ load generators

def _client(url):
    from serving.client import PhoenixClient
    return PhoenixClient(url)


def closed_loop(url: str, model: str, pool: list[dict], concurrency: int, seconds: float) -> dict:
    """`concurrency` threads, each sending back-to-back for `seconds`; latencies of completed requests."""
    clients = [_client(url) for _ in range(concurrency)]

    def sender(k):
        requests = itertools.islice(itertools.cycle(pool), k, None, concurrency)   # thread k: k, k + c, ...
        return lambda: clients[k].infer(next(requests), model=model)
    try:
        return closed_loop_calls([sender(k) for k in range(concurrency)], seconds)
    finally:
        for c in clients:
            c.close()


def closed_loop_calls(calls: list, seconds: float) -> dict:
    """One thread per callable in `calls`, each calling its own back to back for `seconds` (the first error stops
    that thread); the latencies of the completed calls, the wall time and the first errors."""
    lat: list[list[float]] = [[] for _ in calls]
    errors: list[str] = []
    barrier = threading.Barrier(len(calls) + 1)
    stop_at = [0.0]

    def worker(k):
        barrier.wait()
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            try:
                calls[k]()
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
                return
            lat[k].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(len(calls))]
    for t in threads:
        t.start()
    start = time.perf_counter()
    stop_at[0] = start + seconds
    barrier.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"latencies_s": [x for l in lat for x in l], "wall_s": wall, "errors": errors[:3]}


def open_loop(url: str, model: str, pool: list[dict], rate: float, seconds: float, workers: int = 64,
              seed: int = 0) -> dict:
    """Poisson arrivals at `rate`/s for `seconds`; latency counts from the scheduled arrival."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=max(1, int(rate * seconds * 1.5) + 10)))
    arrivals = arrivals[arrivals < seconds]
    jobs: queue.Queue = queue.Queue()
    lat, errors = [], []
    lock = threading.Lock()
    clients = [_client(url) for _ in range(workers)]

    def worker(k):
        while True:
            job = jobs.get()
            if job is None:
                return
            i, due = job
            try:
                clients[k].infer(pool[i % len(pool)], model=model)
            except Exception as e:
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                lat.append(time.perf_counter() - due)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(workers)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    for i, a in enumerate(arrivals):
        due = start + a
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        jobs.put((i, due))
    for _ in threads:
        jobs.put(None)
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    for c in clients:
        c.close()
    return {"latencies_s": lat, "wall_s": wall, "errors": errors[:3], "offered": len(arrivals)}


# ------------------------------------------------------------------------------------------ the sweep

def _step_row(kind: str, model: str, value, res: dict, stats: dict, users: int, cands: int) -> dict:
    n = len(res["latencies_s"])
    row = {"kind": kind, "model": model, ("concurrency" if kind == "closed" else "rate_per_s"): value,
           "completed": n, "wall_s": res["wall_s"], "errors": res["errors"], "server_stats": stats}
    if n:
        row.update(latency_stats(res["latencies_s"]))
        row["requests_per_s"] = n / res["wall_s"]              # achieved, not 1/p50
        row["users_per_s"] = n * users / res["wall_s"]
        row["candidates_per_s"] = n * users * cands / res["wall_s"]
    if "offered" in res:
        row["offered"] = res["offered"]
    return row


def bench_preset(url: str, preset: str, sweep: ServerSweep, full: bool, on_step, log) -> list[dict]:
    from serving.client import PhoenixClient

    rows = []
    with PhoenixClient(url) as client:
        every_input = request_pool(client, 16, sweep.users_per_request, sweep.candidates, sweep.seed)
        ranker_inputs = {s["name"] for s in client.inputs}
        stats_client = client.triton
        for model in sweep.models:   # the ranker alone takes only its own inputs
            pool = every_input if model != "phoenix_ranker" else \
                [{n: a for n, a in r.items() if n in ranker_inputs} for r in every_input]
            for r in pool[:2]:  # a valid answer of the right shape, else stop here with the reason
                check_response(model, client.infer(r, model=model), sweep.users_per_request,
                               sweep.candidates)
            for r in pool[:sweep.warmup_requests]:
                client.infer(r, model=model)
            levels = sweep.concurrency if full else sweep.concurrency[:1]
            peak = 0.0
            for c in levels:
                on_step(f"{preset} {model} closed loop, concurrency {c}")
                before = model_stats(stats_client)
                res = closed_loop(url, model, pool, c, sweep.seconds)
                row = _step_row("closed", model, c, res, stats_diff(before, model_stats(stats_client)),
                                sweep.users_per_request, sweep.candidates)
                rows.append({"preset": preset, **row})
                peak = max(peak, row.get("requests_per_s", 0.0))
            if not full:
                continue
            rates = sweep.poisson_rates or tuple(round(f * peak, 1) for f in sweep.poisson_fractions)
            for rate in rates:
                if rate <= 0:
                    continue
                on_step(f"{preset} {model} open loop, Poisson {rate:.0f}/s")
                before = model_stats(stats_client)
                res = open_loop(url, model, pool, rate, sweep.poisson_seconds, seed=sweep.seed)
                row = _step_row("poisson", model, rate, res, stats_diff(before, model_stats(stats_client)),
                                sweep.users_per_request, sweep.candidates)
                rows.append({"preset": preset, **row})
    return rows


def plan_steps(sweep: ServerSweep) -> int:
    n = 0
    for p in sweep.presets:
        full = p in sweep.full_presets
        levels = len(sweep.concurrency) if full else 1
        rates = (len(sweep.poisson_rates) or len(sweep.poisson_fractions)) if full else 0
        n += 1 + len(sweep.models) * (levels + rates)
    return n


def run(sweep: ServerSweep, on_step=lambda text: None, log=print) -> dict:
    import tempfile

    from serving.server import TritonServer

    start = time.monotonic()
    results, presets = [], []
    if sweep.url:
        from serving.client import PhoenixClient
        with PhoenixClient(sweep.url) as c:
            preset = c.config.get("preset") or "unknown"
        on_step(f"server at {sweep.url} ({preset})")
        rows = bench_preset(sweep.url, preset, sweep, True, on_step, log)
        return {"mode": "server", "sweep": asdict(sweep), "presets": [{"preset": preset, "url": sweep.url,
                "memory": None, "memory_note": "server given by --url: its memory is not measured"}],
                "results": rows, "elapsed_s": time.monotonic() - start}
    cache = Path(sweep.cache_dir) if sweep.cache_dir else Path(tempfile.mkdtemp(prefix="phoenix-bench-"))
    for preset in sweep.presets:
        on_step(f"{preset}: build and start tritonserver")
        info, sampler = {"preset": preset}, None
        try:
            repo = build_repository(preset, cache, sweep.build_args, log)
            info["repository"] = str(repo)
            server = TritonServer(repo, startup_timeout=600)
            sampler = MemorySampler(lambda: server.process.pid if server.process else None).start()
            t0 = time.perf_counter()
            server.start()
        except Exception as e:
            info["status"] = f"failed: {type(e).__name__}: {e}"[:500]
            log(f"{preset}: {info['status']}")
            if sampler is not None:
                info["memory"] = sampler.stop()
            presets.append(info)
            continue
        info["startup_s"] = time.perf_counter() - t0
        try:
            results += bench_preset(server.grpc_url, preset, sweep, preset in sweep.full_presets, on_step, log)
            info["status"] = "ok"
        except Exception as e:
            info["status"] = f"failed: {type(e).__name__}: {e}"[:500]
            log(f"{preset}: {info['status']}")
        finally:
            info["memory"] = sampler.stop()
            server.stop()
        presets.append(info)
    return {"mode": "server", "sweep": asdict(sweep), "presets": presets, "results": results,
            "elapsed_s": time.monotonic() - start}
