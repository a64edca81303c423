"""Ours against the upstream peer, in one run on one machine: the May pipeline at the release's sizes and mini 1x64.

    python -m benchmarks.peer --upstream-phoenix UPSTREAM_MAY_PHOENIX_DIR --upstream-python PEER_VENV/bin/python

One run, one machine (a ratio between two machines, or two days of a shared one, means nothing):
1. the artifacts folder in the release's layout and sizes, random values (benchmarks.release.synthesize: 3 x 1M x
   128 tables per model, 537K corpus; --vocab / --corpus make a small one for a check of the command itself);
2. `python -m export.build --artifacts DIR --precision fp32 --target cpu`: wall time and peak RSS;
3. that repository served by tritonserver (serving.server.TritonServer), its process tree's RSS sampled
   throughout:
   - the whole pipeline as one request (`serving.pipeline.run_pipeline`): p50 / p90 at concurrency 1, and
     Triton's own statistics of phoenix_pipeline (queue, compute) over those requests, so the served overhead
     is visible;
   - pipelines/s in a closed loop at each --concurrency (client threads, each with its own connection, each
     sending its next pipeline as soon as the previous answer arrives);
   - mini 1x64 (the May mini architecture, 1 user x 64 candidates): served `phoenix_ranker` and `phoenix` (named
     scores) p50 at concurrency 1;
4. the same repository's pipeline in this process (phoenix_runtime.pipeline.Pipeline.open): each stage of one
   pipeline from `Pipeline.timings` (check + hash, user tower, retrieval, candidate hashing, ranking, scoring),
   and the exact search alone: the bytes it reads per user (its int8 scan reads N x D bytes, a float32 scan
   N x D x 4, plus D x 4 per row it rescores exactly) over its time, against the machine's copy bandwidth
   (benchmarks.peak: bytes read + bytes written per second copying 256 MiB);
5. with --upstream-phoenix and --upstream-python: upstream's per-user cost of its run_pipeline.py path and its
   ranker forward, by `benchmarks/upstream_peer.py` run with that Python on the SAME artifacts folder (upstream's
   code stays in the folder given; none is in this repository);
6. the ratios against issue 21's goals, and for each goal missed, by how much.

Writes peer.json, peer.md and peer.png (the parts of one pipeline, ours and upstream's; pipelines/s against
concurrency; mini 1x64) into --out. Without --upstream-* it measures ours and says the peer was not measured.

The peer, set up outside the repository: a venv with `jax[cpu]==0.8.1 dm-haiku==0.0.17` (numpy 2 there is fine:
it is not the serving environment), and upstream's May `phoenix/` folder (`git archive e414c17 phoenix` of a
public x-algorithm mirror). `upstream_peer.py --dtype float32 --expect expected_pipeline_fp32.npz` on
tests/golden/may/may_artifacts_mini checks that the peer's path reproduces upstream's own float32 run.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import upstream_peer
from benchmarks.options import positive, positive_ints, seconds
from benchmarks.release import RELEASE_CORPUS, RELEASE_VOCAB, synthesize, timed_build

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PEER_SCRIPT = Path(upstream_peer.__file__)
DEFAULT_OUT = "benchmarks/results/peer"
DEFAULT_WORK = "/tmp/phoenix-peer"
TOP_K = upstream_peer.TOP_K
MINI_CANDIDATES = 64
MINI_MODELS = ("phoenix_ranker", "phoenix")
WARMUP = 3                     # untimed calls before each timed series
# issue 21's goals: ratios of upstream's p50 over ours, in one run on one machine; memory in GB (1e9 bytes)
GOALS = {"pipeline": 3.0, "pipeline_moonshot": 5.0, "phoenix": 2.0, "phoenix_ranker": 2.5}
MEMORY_GOAL_GB = 12.0
# Pipeline.timings' stages, and the upstream part that does the same work
STAGES = ("check_and_hash", "user_tower", "retrieval", "hash_candidates", "ranking", "scoring")
PARTS = {"user_tower": ("hash + user tower", ("check_and_hash", "user_tower")),
         "corpus_scan_top_k": (f"corpus scan + top {TOP_K}", ("retrieval",)),
         "hash_and_rank": (f"hash + rank {TOP_K} + score", ("hash_candidates", "ranking", "scoring"))}


# ------------------------------------------------------------------------------------------ options

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream-phoenix", default=None, metavar="DIR",
                    help="upstream's May phoenix/ folder (x-algorithm commit e414c17: run_pipeline.py, "
                         "recsys_model.py, ...); with --upstream-python, the peer is measured")
    ap.add_argument("--upstream-python", default=None, metavar="PY",
                    help="a Python that has jax and dm-haiku (e.g. a venv with jax[cpu]==0.8.1 and "
                         "dm-haiku==0.0.17); it runs benchmarks/upstream_peer.py")
    ap.add_argument("--upstream-dtype", choices=upstream_peer.DTYPES, default=upstream_peer.DTYPES[0],
                    help="upstream's forward precision: bfloat16 (its default: run_pipeline.py as shipped) or "
                         "float32 (ours serves float32). Default: bfloat16")
    ap.add_argument("--upstream-timeout", type=seconds, default=3600.0,
                    help="seconds the peer's subprocess may take, loading included (default: 3600)")
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"results folder: peer.json, peer.md, peer.png "
                                                       f"(default: {DEFAULT_OUT})")
    ap.add_argument("--work", default=DEFAULT_WORK,
                    help="where the synthetic artifacts and the built repository go (about 7 GB at the release's "
                         f"sizes; the artifacts are reused when their sizes match). Default: {DEFAULT_WORK}")
    ap.add_argument("--reuse-build", action="store_true",
                    help="reuse the repository an earlier run of this command built in --work from artifacts of "
                         "the same sizes (its build time and memory, kept beside it, are reported again); only "
                         "while the sources are unchanged. Default: build every run")
    ap.add_argument("--vocab", type=positive, default=RELEASE_VOCAB,
                    help=f"rows per hash table (default: the release's {RELEASE_VOCAB:,}); smaller only to check "
                         "the command")
    ap.add_argument("--corpus", type=positive, default=RELEASE_CORPUS,
                    help=f"corpus posts (default: the release's {RELEASE_CORPUS:,}); at least {TOP_K}")
    ap.add_argument("--runs", type=positive, default=30,
                    help="pipelines timed at concurrency 1, served, in process and by the peer (default: 30)")
    ap.add_argument("--concurrency", type=positive_ints, default=(1, 4, 8),
                    help="closed-loop client threads of the pipelines/s steps (default: 1,4,8)")
    ap.add_argument("--step-seconds", type=seconds, default=10.0,
                    help="duration of each closed-loop step and of each mini 1x64 model (default: 10)")
    ap.add_argument("--peak-seconds", type=seconds, default=2.0,
                    help="seconds per measurement of benchmarks.peak (copy bandwidth, fp32 matmul peak; default: 2)")
    ap.add_argument("--note", default=None, help="a sentence printed at the top of the report (e.g. machine load)")
    return ap


def check_upstream(ap: argparse.ArgumentParser, args) -> None:
    """Both --upstream-* or neither; the folder holds upstream's files; the Python imports jax and haiku."""
    given = [n for n in ("upstream_phoenix", "upstream_python") if getattr(args, n)]
    if len(given) == 1:
        other = "--upstream-python" if given[0] == "upstream_phoenix" else "--upstream-phoenix"
        ap.error(f"--{given[0].replace('_', '-')} needs {other} too (the peer runs upstream's folder with a "
                 "Python that has jax)")
    if not given:
        return
    folder = Path(args.upstream_phoenix)
    missing = [f for f in upstream_peer.UPSTREAM_FILES if not (folder / f).is_file()]
    if missing:
        ap.error(f"--upstream-phoenix {folder}: not upstream's May phoenix/ folder ({', '.join(missing)} missing)")
    try:
        p = subprocess.run([args.upstream_python, "-c", "import jax, haiku, numpy"], capture_output=True,
                           text=True, timeout=300)
        problem = p.stderr.strip().splitlines()[-1:] if p.returncode else None
    except (OSError, subprocess.SubprocessError) as e:
        problem = [f"{type(e).__name__}: {e}"]
    if problem:
        ap.error(f"--upstream-python {args.upstream_python}: cannot import jax, haiku and numpy "
                 f"({' '.join(problem)})")


def parse_args(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.corpus < TOP_K:
        ap.error(f"--corpus {args.corpus}: the pipeline retrieves {TOP_K} posts, the corpus needs at least as many")
    check_upstream(ap, args)
    return args


# ------------------------------------------------------------------------------------------ small helpers

def quantiles(samples_s) -> dict:
    """n, p50 / p90 / min / mean in ms of samples in seconds."""
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p90_ms": round(float(np.percentile(a, 90)), 3), "min_ms": round(float(a.min()), 3),
            "mean_ms": round(float(a.mean()), 3)}


def _time(fn, runs: int, warmup: int = WARMUP) -> list[float]:
    """Seconds of `runs` calls of fn after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


# ------------------------------------------------------------------------------------------ build

def build(artifacts: Path, repo: Path, reuse: bool) -> dict:
    """benchmarks.release.timed_build of the artifacts into `repo`, its figures kept beside it (build.json); with
    `reuse`, an earlier build of the same artifacts is taken as it is."""
    from phoenix_runtime.manifest import MANIFEST

    record, stamp = repo.parent / "build.json", (artifacts / ".complete").read_text().strip()
    if reuse and record.exists() and (repo / MANIFEST).exists():
        info = json.loads(record.read_text())
        if info.get("artifacts") == stamp:
            return {**info, "reused": True}
    record.unlink(missing_ok=True)
    info = {**timed_build(artifacts, repo), "artifacts": stamp}
    record.write_text(json.dumps(info) + "\n")
    return info


# ------------------------------------------------------------------------------------------ served

def _pipeline_call(client, seq):
    from serving.pipeline import run_pipeline

    def call():
        r = run_pipeline(client, seq, TOP_K)
        if len(r.ranked) != TOP_K:
            raise RuntimeError(f"phoenix_pipeline answered {len(r.ranked)} posts, not {TOP_K}")
    return call


def settled_stats(triton, before: dict, model: str, completed: int, timeout: float = 2.0) -> dict:
    """stats_diff since `before`, once Triton's counters hold the `completed` requests of `model` (it counts a
    request a moment after its client has the answer), or after `timeout` s."""
    from benchmarks.server import model_stats, stats_diff

    deadline = time.monotonic() + timeout
    while True:
        stats = stats_diff(before, model_stats(triton))
        if stats.get(model, {}).get("requests", 0) >= completed or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def stable_stats(triton, timeout: float = 2.0) -> dict:
    """Triton's statistics once two reads 0.1 s apart agree (the last warm-up request is counted a moment after
    its answer: taken earlier, it would land in the measured interval), or after `timeout` s."""
    from benchmarks.server import model_stats

    deadline, stats = time.monotonic() + timeout, model_stats(triton)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        again = model_stats(triton)
        if again == stats:
            break
        stats = again
    return stats


def measure_served(repo: Path, sequence: Path, args, step) -> dict:
    """The served repository: the pipeline at concurrency 1 and its Triton statistics, pipelines/s per
    concurrency, mini 1x64 phoenix_ranker and phoenix; the server tree's memory. Also the request's arrays (for
    the in-process pipeline) and the served answer's posts."""
    from benchmarks.measure import latency_stats
    from benchmarks.memory import MemorySampler, tree_memory
    from benchmarks.server import check_response, closed_loop, closed_loop_calls, request_pool
    from phoenix_runtime.manifest import PIPELINE
    from serving.client import PhoenixClient
    from serving.pipeline import read_sequence, run_pipeline
    from serving.server import TritonServer

    out: dict = {}
    server = TritonServer(repo, startup_timeout=900)
    sampler = MemorySampler(lambda: server.process.pid if server.process else None).start()
    t0 = time.perf_counter()
    try:
        server.start()
        out["startup_s"] = round(time.perf_counter() - t0, 1)
        out["memory_after_start"] = tree_memory(server.process.pid)
        url = server.grpc_url
        with PhoenixClient(url) as client:
            seq = read_sequence(sequence, client.actions, client.history_len)
            out["request"] = client.pipeline_request(seq.user_id, seq.history, top_k=TOP_K)
            answer = run_pipeline(client, seq, TOP_K)
            out["served_post_ids"] = answer.retrieved_post_ids
            step("served pipeline, concurrency 1")
            call = _pipeline_call(client, seq)
            for _ in range(WARMUP):
                call()
            before = stable_stats(client.triton)
            samples = _time(call, args.runs, warmup=0)
            stats = settled_stats(client.triton, before, PIPELINE, len(samples))
            out["pipeline"] = {**quantiles(samples), "triton": stats.get(PIPELINE)}

            out["throughput"] = []
            for c in args.concurrency:
                step(f"served pipeline, closed loop, concurrency {c}")
                clients = [PhoenixClient(url) for _ in range(c)]
                try:
                    before = stable_stats(client.triton)
                    res = closed_loop_calls([_pipeline_call(k, seq) for k in clients], args.step_seconds)
                    stats = settled_stats(client.triton, before, PIPELINE, len(res["latencies_s"]))
                finally:
                    for k in clients:
                        k.close()
                if res["errors"]:
                    raise RuntimeError(f"concurrency {c}: {res['errors'][0]}")
                n = len(res["latencies_s"])
                out["throughput"].append({"concurrency": c, "completed": n, "wall_s": round(res["wall_s"], 2),
                                          "pipelines_per_s": round(n / res["wall_s"], 2),
                                          **quantiles(res["latencies_s"]), "triton": stats.get(PIPELINE)})

            out["mini"] = {}
            pool = request_pool(client, 16, 1, MINI_CANDIDATES, seed=0)
            ranker_inputs = {s["name"] for s in client.inputs}
            for model in MINI_MODELS:
                step(f"served {model}, mini 1x{MINI_CANDIDATES}, concurrency 1")
                requests = pool if model != "phoenix_ranker" else \
                    [{n: a for n, a in r.items() if n in ranker_inputs} for r in pool]
                check_response(model, client.infer(requests[0], model=model), 1, MINI_CANDIDATES)
                for r in requests[:WARMUP]:
                    client.infer(r, model=model)
                before = stable_stats(client.triton)
                res = closed_loop(url, model, requests, 1, args.step_seconds)
                stats = settled_stats(client.triton, before, model, len(res["latencies_s"]))
                if res["errors"]:
                    raise RuntimeError(f"{model}: {res['errors'][0]}")
                lat = latency_stats(res["latencies_s"])
                out["mini"][model] = {"users": 1, "candidates": MINI_CANDIDATES, "n": lat["n"],
                                      "p50_ms": round(lat["p50_ms"], 3), "p90_ms": round(lat["p90_ms"], 3),
                                      "min_ms": round(lat["min_ms"], 3), "triton": stats}
        out["memory_after_runs"] = tree_memory(server.process.pid)
    finally:
        out["memory"] = sampler.stop()
        server.stop()
    return out


# ------------------------------------------------------------------------------------------ in process

def measure_in_process(repo: Path, request: dict, served_posts, runs: int) -> dict:
    """The same repository's pipeline in this process: p50 of each stage of Pipeline.timings and of the whole;
    the exact search alone (the int8 or float32 scan, and the scan + exact rescoring) and the bytes it reads."""
    from phoenix_runtime.backend import keep_request_buffers
    from phoenix_runtime.manifest import read_manifest
    from phoenix_runtime.pipeline import Pipeline
    from phoenix_runtime.topk import Int8Scan

    keep_request_buffers()            # malloc as in the served model processes, so the parts compare
    pipeline = Pipeline.open(repo, read_manifest(repo))
    result = pipeline.run([request])[0]
    if isinstance(result, Exception):
        raise RuntimeError(f"the in-process pipeline failed: {result}")
    same = bool(np.array_equal(result["top_k_post_ids"][0], served_posts))
    stages: dict[str, list[float]] = {s: [] for s in STAGES}

    def one():
        pipeline.run([request])
        for s in STAGES:
            stages[s].append(pipeline.timings.get(s, math.nan))
    whole = _time(one, runs)
    for s in STAGES:        # the warm-up runs were recorded too: keep the timed ones
        stages[s] = stages[s][-runs:]

    corpus = pipeline.corpus
    arrays, k, _ = pipeline.check(request)
    features = pipeline.features(arrays, pipeline.tower.inputs, pipeline.retrieval_hashing, {"B": 1})
    users = pipeline.tower.run([features])[0]["user_representation"]
    search = corpus.search
    rows, dim = search.corpus.shape
    scan_kind = type(search.scan).__name__
    bytes_per_element = 1 if isinstance(search.scan, Int8Scan) else 4
    scan_s = _time(lambda: search.scan(users), runs)
    search_s = _time(lambda: search(users, k), runs)
    rescored = int(search.last_candidates)
    scan_bytes = rows * dim * bytes_per_element
    search_bytes = scan_bytes + rescored * dim * 4
    return {"same_posts_as_served": same, "runs": runs, "whole": quantiles(whole),
            "stages": {s: quantiles(v) for s, v in stages.items()},
            "search": {"index": corpus.record.get("index"), "rows": int(rows), "dim": int(dim),
                       "top_k": int(k), "rescored_rows": rescored, "scan_bytes": int(scan_bytes),
                       "search_bytes": int(search_bytes), "float32_corpus_bytes": int(rows * dim * 4),
                       "scan": quantiles(scan_s), "search": quantiles(search_s), "scan_kind": scan_kind}}


def machine_peak(seconds: float) -> dict:
    """benchmarks.peak's copy bandwidth and float32 matmul peak (the precision we serve). Not its bfloat16 peak:
    on a CPU without bf16 instructions torch's bf16 matmul crawls (0.3 GFLOP/s on an AMD EPYC without AVX-512:
    minutes for one 2048^3 product)."""
    from benchmarks import peak

    return {"copy_gbs": round(peak.copy_gbs(seconds=seconds), 1),
            "matmul_gflops": {"fp32": round(peak.matmul_gflops("fp32", seconds=seconds), 1)},
            "cpu": peak.cpu_model(), "how": "benchmarks.peak: the best call of copying 256 MiB (bytes read + "
                                             "bytes written per second); of a 2048^3 fp32 matmul (2 n^3 FLOP)"}


def bandwidth(search: dict, peak: dict) -> dict:
    """GB/s the exact search reads at its p50, and its fraction of the measured copy bandwidth."""
    copy = peak.get("copy_gbs")
    out = {"copy_gbs": copy}
    for what, nbytes in (("scan", search["scan_bytes"]), ("search", search["search_bytes"])):
        gbs = nbytes / (search[what]["p50_ms"] / 1e3) / 1e9
        out[f"{what}_gbs"] = round(gbs, 2)
        out[f"{what}_fraction_of_copy"] = round(gbs / copy, 3) if copy else None
    out["float32_read_at_copy_ms"] = round(search["float32_corpus_bytes"] / (copy * 1e9) * 1e3, 2) if copy else None
    return out


# ------------------------------------------------------------------------------------------ the peer

def run_upstream(python: str, phoenix: str, artifacts: Path, runs: int, dtype: str, timeout: float) -> dict:
    """upstream_peer.py under `python` on the artifacts folder: its JSON, or {"status": "failed: ..."}."""
    cmd = [python, str(PEER_SCRIPT), "--phoenix", str(phoenix), "--artifacts", str(artifacts), "--runs", str(runs),
           "--dtype", dtype]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT)
    except subprocess.TimeoutExpired:
        return {"status": f"failed: no answer within {timeout:.0f} s (--upstream-timeout)", "command": cmd}
    lines = [line for line in p.stdout.strip().splitlines() if line.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = " | ".join((p.stderr or p.stdout).strip().splitlines()[-4:])
        return {"status": f"failed: exit {p.returncode}: {tail}"[:1500], "command": cmd}
    return {"status": "ok", **json.loads(lines[-1]), "command": cmd}


# ------------------------------------------------------------------------------------------ goals

def _ratio_goal(name: str, target: float, ours_ms: float | None, peer_ms: float | None, what: str) -> dict:
    row = {"goal": name, "target": f">= {target:g}x upstream", "what": what, "ours_ms": ours_ms, "upstream_ms": peer_ms}
    if ours_ms is None or peer_ms is None:
        return {**row, "ratio": None, "met": None, "short_by": "the peer was not measured" if peer_ms is None
                else "ours was not measured"}
    ratio = peer_ms / ours_ms
    row.update(ratio=round(ratio, 2), met=ratio >= target)
    if not row["met"]:
        need = peer_ms / target
        row["short_by"] = (f"{ratio:.2f}x of {target:g}x: ours must go from {ours_ms:.1f} to {need:.1f} ms "
                           f"(-{ours_ms - need:.1f} ms, -{100 * (1 - need / ours_ms):.0f}%)")
    return row


def goals(result: dict) -> list[dict]:
    """Issue 21's goals: each with its ratio, met or not, and for a missed one by how much."""
    served, peer = result.get("served") or {}, result.get("upstream") or {}
    ok = peer.get("status") == "ok"
    ours = (served.get("pipeline") or {}).get("p50_ms")
    up = peer["pipeline"]["p50_ms"] if ok else None
    rows = [_ratio_goal("release pipeline p50", GOALS["pipeline"], ours, up,
                        "served run_pipeline (one request) vs upstream's run_pipeline.py per user"),
            _ratio_goal("release pipeline p50, moonshot", GOALS["pipeline_moonshot"], ours, up, "the same")]
    forward = peer["forward"]["p50_ms"] if ok else None
    for model in ("phoenix", "phoenix_ranker"):
        mini = (served.get("mini") or {}).get(model) or {}
        rows.append(_ratio_goal(f"mini 1x{MINI_CANDIDATES} served {model}", GOALS[model], mini.get("p50_ms"),
                                forward, f"served {model} vs upstream's ranker forward (jit)"))
    build_gib = (result.get("build") or {}).get("peak_rss_gib")
    server_gib = (served.get("memory_after_runs") or {}).get("pss_gib")
    row = {"goal": "build + server memory", "target": f"< {MEMORY_GOAL_GB:g} GB",
           "what": "peak RSS of export.build + PSS of the served process tree after the runs (the memory-mapped "
                   "tables' shared pages counted once, as the kernel and a container's memory limit count them; "
                   "the tree's RSS counts them once per process that maps them)"}
    if build_gib is None or server_gib is None:
        row.update(met=None, short_by="not measured")
    else:
        gb = (build_gib + server_gib) * 2**30 / 1e9
        row.update(measured_gb=round(gb, 2), met=gb < MEMORY_GOAL_GB)
        if not row["met"]:
            row["short_by"] = f"{gb - MEMORY_GOAL_GB:.2f} GB over"
    return rows + [row]


# ------------------------------------------------------------------------------------------ report

def _f(x, digits=1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def small_run(result: dict) -> bool:
    return result["vocab"] != RELEASE_VOCAB or result["corpus"] != RELEASE_CORPUS


def render(result: dict) -> str:
    served, proc, peer = result.get("served") or {}, result.get("in_process") or {}, result.get("upstream") or {}
    ok = peer.get("status") == "ok"
    lines = ["# Ours against upstream, in one run on one machine (issue 21)", ""]
    if small_run(result):
        lines += [f"**A small check run of the command ({result['vocab']:,} rows per table, {result['corpus']:,} "
                  "posts), not the release's sizes: these numbers are not results.** The lead runs the full "
                  f"command below on a quiet machine.", ""]
    if result.get("note"):
        lines += [f"Note: {result['note']}", ""]
    env = result.get("environment") or {}
    lines += [f"Full run: `{result['full_command']}`", "", f"This run: `{result['command']}`", "",
              f"Machine: {env.get('cpu_model')}, {env.get('cpu_cores')} cores, load average "
              f"{env.get('load_average')}, {env.get('time_utc')}."]
    pk = result.get("peak") or {}
    if pk:
        lines += ["", f"Its peaks (`benchmarks.peak`): copy {_f(pk.get('copy_gbs'))} GB/s (bytes read + written), fp32 "
                      f"matmul {_f((pk.get('matmul_gflops') or {}).get('fp32'))} GFLOP/s."]
    lines += [""]
    if not ok:
        lines += [f"**The peer was not measured**: {peer.get('status', 'no --upstream-phoenix / --upstream-python')}."
                  " Ratios need it.", ""]
    else:
        lines += [f"Peer: {peer['peer']}, forward in {peer['dtype']} (ours: fp32); jax {peer['jax']}, dm-haiku "
                  f"{peer['haiku']}, numpy {peer['numpy']}, Python {peer['python']}; upstream sources sha256 "
                  f"`{peer['upstream_sources_sha256'][:16]}`.", ""]
    lines += ["## Goals", "", "| goal | target | ours | upstream | ratio | met | short by |",
              "|---|---|---|---|---|---|---|"]
    for g in result["goals"]:
        if "measured_gb" in g:
            ours, up, ratio = f"{g['measured_gb']} GB", "-", "-"
        else:
            ours, up, ratio = _f(g.get("ours_ms"), 2) + " ms", _f(g.get("upstream_ms"), 2) + " ms", \
                (f"{g['ratio']}x" if g.get("ratio") is not None else "-")
        met = {True: "yes", False: "**no**", None: "-"}[g.get("met")]
        lines.append(f"| {g['goal']} | {g['target']} | {ours} | {up} | {ratio} | {met} | {g.get('short_by', '')} |")
    lines += [""]

    pipe, stages = served.get("pipeline") or {}, proc.get("stages") or {}
    if pipe:
        lines += ["## The pipeline, part by part (p50, ms)", "",
                  f"Ours: one request to phoenix_pipeline (`run_pipeline`, concurrency 1, {pipe['n']} runs): p50 "
                  f"**{_f(pipe['p50_ms'], 2)}** / p90 {_f(pipe['p90_ms'], 2)} ms. The parts are the same repository's "
                  f"pipeline in this process (`Pipeline.timings`, {proc.get('runs')} runs; the same {TOP_K} posts as "
                  f"served: {proc.get('same_posts_as_served')}).", "",
                  "| part | ours: stages | ours | upstream |", "|---|---|---|---|"]
        for key, (label, ours_stages) in PARTS.items():
            ours = sum(stages[s]["p50_ms"] for s in ours_stages if s in stages)
            up = peer["parts"][key]["p50_ms"] if ok else None
            detail = " + ".join(f"{s} {_f(stages[s]['p50_ms'], 2)}" for s in ours_stages if s in stages)
            lines.append(f"| {label} | {detail} | {_f(ours, 2)} | {_f(up, 2)} |")
        split = served_split(result)
        lines.append(f"| in process, whole | | {_f((proc.get('whole') or {}).get('p50_ms'), 2)} | |")
        for label, value in split:
            lines.append(f"| {label} | | {_f(value, 2)} | |")
        lines.append(f"| **whole, at the client** | | **{_f(pipe['p50_ms'], 2)}** | "
                     f"**{_f(peer['pipeline']['p50_ms'], 2) if ok else '-'}** |")
        lines += ["", "Triton's statistics of phoenix_pipeline over the concurrency-1 runs (ms per request): " +
                  ", ".join(f"{k.removesuffix('_ms')} {_f(v, 2)}" for k, v in (pipe.get("triton") or {}).items()
                            if k.endswith("_ms")) + ".", ""]
    if served.get("throughput"):
        lines += ["## Pipelines per second (closed loop)", "",
                  "| client threads | pipelines/s | p50 ms | p90 ms | Triton queue ms | Triton compute ms |",
                  "|---|---|---|---|---|---|"]
        for r in served["throughput"]:
            t = r.get("triton") or {}
            lines.append(f"| {r['concurrency']} | {r['pipelines_per_s']} | {_f(r['p50_ms'], 1)} | "
                         f"{_f(r['p90_ms'], 1)} | {_f(t.get('queue_ms'), 2)} | {_f(t.get('compute_infer_ms'), 1)} |")
        lines += [""]
    search, bw = proc.get("search"), result.get("bandwidth")
    if search and bw:
        lines += ["## Retrieval against the memory bandwidth", "",
                  f"The exact search over {search['rows']:,} x {search['dim']} ({search['scan_kind']}, then the "
                  f"{search['rescored_rows']:,} rows it cannot rule out scored exactly in float64) reads "
                  f"{search['scan_bytes'] / 1e6:.1f} MB by its scan (the float32 corpus is "
                  f"{search['float32_corpus_bytes'] / 1e6:.1f} MB) and {search['search_bytes'] / 1e6:.1f} MB in all "
                  "per user. The machine's copy bandwidth (`python -m benchmarks.peak`: bytes read + bytes written "
                  f"per second copying 256 MiB): **{_f(bw['copy_gbs'])} GB/s**; reading the float32 corpus at that "
                  f"rate takes {_f(bw['float32_read_at_copy_ms'], 2)} ms.", "",
                  "| what | p50 ms | GB/s read | fraction of copy bandwidth |", "|---|---|---|---|",
                  f"| scan alone | {_f(search['scan']['p50_ms'], 2)} | {_f(bw['scan_gbs'], 2)} | "
                  f"{_f(bw['scan_fraction_of_copy'], 3)} |",
                  f"| scan + exact rescoring + top {search['top_k']} | {_f(search['search']['p50_ms'], 2)} | "
                  f"{_f(bw['search_gbs'], 2)} | {_f(bw['search_fraction_of_copy'], 3)} |", ""]
        if ok:
            lines += [f"Upstream's corpus scan + top {TOP_K} (numpy float32 product, argpartition): "
                      f"{_f(peer['parts']['corpus_scan_top_k']['p50_ms'], 2)} ms.", ""]
    if served.get("mini"):
        lines += [f"## mini 1x{MINI_CANDIDATES} (1 user, {MINI_CANDIDATES} candidates, concurrency 1)", "",
                  "| what | p50 ms | p90 ms | upstream forward / ours |", "|---|---|---|---|"]
        fwd = peer["forward"]["p50_ms"] if ok else None
        if ok:
            lines.append(f"| upstream ranker forward (jit, {peer['dtype']}, embeddings given) | "
                         f"{_f(fwd, 2)} | {_f(peer['forward']['p90_ms'], 2)} | 1.0 |")
        for model, r in served["mini"].items():
            lines.append(f"| served {model} | {_f(r['p50_ms'], 2)} | {_f(r['p90_ms'], 2)} | "
                         f"{_f(fwd / r['p50_ms'], 2) if fwd else '-'} |")
        lines += [""]
    b, mem = result.get("build") or {}, served.get("memory") or {}
    if b or mem:
        lines += ["## Memory", "", "| what | measured |", "|---|---|",
                  f"| build (`{b.get('command', '-')}`) | {b.get('wall_s', '-')} s, peak RSS "
                  f"{b.get('peak_rss_gib', '-')} GiB |",
                  f"| server start (every model loaded) | {served.get('startup_s', '-')} s |",
                  f"| served process tree, peak RSS over the run | "
                  f"{_f((mem.get('peak_rss_mib') or 0) / 1024, 2)} GiB |",
                  f"| after the runs: RSS / PSS | {(served.get('memory_after_runs') or {}).get('rss_gib', '-')} / "
                  f"{(served.get('memory_after_runs') or {}).get('pss_gib', '-')} GiB |", ""]
    if result.get("plot"):
        lines += [f"![ours and upstream]({result['plot']})", ""]
    return "\n".join(lines)


def served_split(result: dict) -> list[tuple[str, float | None]]:
    """Where the served time goes beyond the in-process pipeline: (label, ms) at concurrency 1, from means (Triton's
    statistics are means)."""
    pipe = (result.get("served") or {}).get("pipeline") or {}
    proc = ((result.get("in_process") or {}).get("whole") or {}).get("mean_ms")
    t = pipe.get("triton") or {}
    client, server, infer = pipe.get("mean_ms"), t.get("server_ms"), t.get("compute_infer_ms")
    if None in (client, server, infer, proc):
        return []
    return [("served: model.py beyond in process (Triton compute - in process, means)", infer - proc),
            ("served: Triton queue + tensors in/out (means)", server - infer),
            ("served: gRPC + client (client - Triton, means)", client - server)]


def plot(result: dict, path: Path) -> Path | None:
    """peer.png: the parts of one pipeline (ours, upstream), pipelines/s against concurrency, mini 1x64."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    served, proc, peer = result.get("served") or {}, result.get("in_process") or {}, result.get("upstream") or {}
    ok = peer.get("status") == "ok"
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    ax = axes[0]
    stages = proc.get("stages") or {}
    bars = {"ours": [(label, sum(stages[s]["p50_ms"] for s in ss if s in stages)) for label, ss in PARTS.values()]}
    overhead = sum(v for _, v in served_split(result))
    bars["ours"].append(("served overhead", max(0.0, overhead)))
    if ok:
        bars["upstream"] = [(PARTS[k][0], peer["parts"][k]["p50_ms"]) for k in PARTS]
    colors = dict(zip([label for label, _ in PARTS.values()] + ["served overhead"],
                      ("tab:blue", "tab:orange", "tab:green", "tab:gray")))
    whole = {"ours": (served.get("pipeline") or {}).get("p50_ms"),
             "upstream": peer["pipeline"]["p50_ms"] if ok else None}
    for x, (who, parts) in enumerate(bars.items()):
        bottom = 0.0
        for label, value in parts:
            ax.bar(x, value, bottom=bottom, color=colors[label], label=label if x == 0 else None)
            bottom += value
        if whole[who] is not None:   # the whole at the client (ours: served, one request)
            ax.plot([x - 0.45, x + 0.45], [whole[who]] * 2, color="black", lw=2,
                    label="whole, p50" if x == 0 else None)
            ax.annotate(f"{whole[who]:.1f} ms", (x, whole[who]), ha="center", fontsize=8, xytext=(0, 3),
                        textcoords="offset points")
    ax.set_xticks(range(len(bars)), list(bars))
    ax.set_ylabel("ms per user (p50 of each part)")
    ax.set_title(f"one pipeline, {result['corpus']:,} posts, top {TOP_K} (ours: the parts in process, then what "
                 "serving adds)", fontsize=8)
    ax.legend(fontsize=7)
    ax = axes[1]
    rows = served.get("throughput") or []
    ax.plot([r["concurrency"] for r in rows], [r["pipelines_per_s"] for r in rows], "o-", label="ours, served")
    if ok:
        ax.axhline(1e3 / peer["pipeline"]["p50_ms"], color="tab:red", ls="--", label="upstream, 1 / p50")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("client threads (closed loop)")
    ax.set_ylabel("pipelines / s")
    ax.set_title("throughput", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[2]
    mini = [(f"served\n{m}", r["p50_ms"]) for m, r in (served.get("mini") or {}).items()]
    if ok:
        mini.insert(0, ("upstream\nforward", peer["forward"]["p50_ms"]))
    ax.bar(range(len(mini)), [v for _, v in mini], color="tab:purple")
    for x, (_, v) in enumerate(mini):
        ax.annotate(f"{v:.2f} ms", (x, v), ha="center", fontsize=8, xytext=(0, 3), textcoords="offset points")
    ax.set_xticks(range(len(mini)), [label for label, _ in mini], fontsize=8)
    ax.set_ylabel("p50 ms")
    ax.set_title(f"mini 1x{MINI_CANDIDATES}, concurrency 1", fontsize=9)
    if small_run(result):
        fig.suptitle("small check run, not the release's sizes", color="tab:red")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ main

def full_command(args) -> str:
    """The command of the full run (the release's sizes), with this run's peer options."""
    up = ""
    if args.upstream_phoenix:
        up = f" --upstream-phoenix {args.upstream_phoenix} --upstream-python {args.upstream_python}"
        if args.upstream_dtype != upstream_peer.DTYPES[0]:
            up += f" --upstream-dtype {args.upstream_dtype}"
    return f"python -m benchmarks.peer{up}"


def steps(args) -> int:
    """Progress steps: artifacts, build, server start, pipeline at concurrency 1, each concurrency, each mini model,
    in process, peak, (the peer), report."""
    return 7 + len(args.concurrency) + len(MINI_MODELS) + (1 if args.upstream_phoenix else 0)


def main(argv=None) -> int:
    args = parse_args(argv)
    from benchmarks.env import environment
    from benchmarks.progress import console, progress

    argv = sys.argv[1:] if argv is None else list(argv)
    work, out = Path(args.work), Path(args.out)
    result = {"command": " ".join(["python -m benchmarks.peer", shlex.join(argv)]).strip(), "full_command": full_command(args),
              "vocab": args.vocab, "corpus": args.corpus, "runs": args.runs, "note": args.note}
    with progress() as bar:
        task = bar.add_task("peer", total=steps(args))

        def step(text):
            bar.update(task, advance=1, description=text)
        step(f"artifacts: {args.vocab:,} rows per table, {args.corpus:,} posts")
        artifacts = synthesize(work / "artifacts", args.vocab, args.corpus)
        step("export.build (fp32, cpu)")
        repo = work / "repo"
        result["build"] = build(artifacts, repo, args.reuse_build)
        bar.console.log(f"build: {result['build']['wall_s']} s, peak RSS {result['build']['peak_rss_gib']} GiB")
        step("tritonserver: start")
        served = measure_served(repo, artifacts / "example_sequence.json", args, step)
        request, served_posts = served.pop("request"), served.pop("served_post_ids")
        result["served"] = served
        bar.console.log(f"served pipeline p50 {served['pipeline']['p50_ms']:.1f} ms")
        step("the pipeline in this process")
        result["in_process"] = measure_in_process(repo, request, served_posts, args.runs)
        step("benchmarks.peak: copy bandwidth, fp32 matmul peak")
        result["peak"] = machine_peak(args.peak_seconds)
        result["bandwidth"] = bandwidth(result["in_process"]["search"], result["peak"])
        if args.upstream_phoenix:
            step(f"upstream's run_pipeline.py path and forward ({args.upstream_dtype}), {args.upstream_python}")
            result["upstream"] = run_upstream(args.upstream_python, args.upstream_phoenix, artifacts, args.runs,
                                              args.upstream_dtype, args.upstream_timeout)
            if result["upstream"]["status"] != "ok":
                bar.console.log(f"[red]peer: {result['upstream']['status']}[/red]")
        else:
            result["upstream"] = {"status": "not measured: no --upstream-phoenix / --upstream-python given"}
        step("report")
        result["environment"] = environment()
        result["environment"]["command"] = result["command"]
        result["goals"] = goals(result)
        out.mkdir(parents=True, exist_ok=True)
        png = plot(result, out / "peer.png")
        result["plot"] = png.name if png else None
        (out / "peer.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
        (out / "peer.md").write_text(render(result))
    print(render(result))
    console.print(f"wrote {out / 'peer.json'}, {out / 'peer.md'}" + (f", {png}" if png else ""))
    return 0 if result["upstream"]["status"] in ("ok",) or not args.upstream_phoenix else 1


if __name__ == "__main__":
    sys.exit(main())
