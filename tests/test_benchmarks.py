"""benchmarks: FLOP formula, timing statistics, CLI, and a real quick run (structure only, never timings)."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import flops, measure, report
from benchmarks.__main__ import build_parser, main
from benchmarks.memory import MemorySampler
from benchmarks.server import stats_diff
from phoenix_torch import get_preset

ROOT = Path(__file__).resolve().parents[1]
PROD = flops.Shape(D=2560, L=8, Hq=20, Hkv=4, K=128, f=get_preset("prod").transformer.ffn_size, S=1022)
MINI = flops.Shape(D=128, L=4, Hq=4, Hkv=4, K=32, f=176, S=127)


# ------------------------------------------------------------------------------------------ FLOPs

def test_flops_match_the_upstream_prod_figure():
    # ENVIRONMENT.md: prod, H100, B=32, 116 ms, 251 TFLOP/s (dense attention, like upstream)
    implied = 251e12 * 0.116
    counted = flops.forward_flops(PROD, B=32, C=64, attention="dense")
    assert abs(counted - implied) / implied < 0.01


def test_flops_parts_and_scaling():
    parts = flops.flops_breakdown(MINI, C=64, attention="isolated", B=1)
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    assert flops.forward_flops(MINI, B=8, C=64) == 8 * flops.forward_flops(MINI, B=1, C=64)
    assert flops.forward_flops(MINI, 1, 64, "isolated") < flops.forward_flops(MINI, 1, 64, "dense")
    # isolated attention is linear in C: every extra candidate costs the same
    f = [flops.forward_flops(MINI, 1, c, "isolated") for c in (100, 200, 300)]
    assert f[2] - f[1] == f[1] - f[0]
    # dense attention is not
    d = [flops.forward_flops(MINI, 1, c, "dense") for c in (100, 200, 300)]
    assert d[2] - d[1] > d[1] - d[0]
    assert flops.attention_pairs(2, 3, "dense") == 36
    assert flops.attention_pairs(2, 3, "isolated") == 9 + 9 + 3


def test_flops_reads_a_phoenix_config_and_names_bad_input():
    from phoenix_torch import get_preset

    cfg = get_preset("prod")
    assert flops.Shape.of(cfg) == PROD
    with pytest.raises(ValueError, match="attention"):
        flops.forward_flops(cfg, 1, 64, "sparse")
    with pytest.raises(ValueError, match="C=0"):
        flops.forward_flops(cfg, 1, 0)


# ------------------------------------------------------------------------------------------ timing

def test_latency_stats_on_known_samples():
    s = measure.latency_stats([i / 1000 for i in range(1, 101)], items_per_call=2, candidates_per_call=128,
                              flops_per_call=1e9)
    assert s["n"] == 100 and s["p50_ms"] == pytest.approx(50.5) and s["p90_ms"] == pytest.approx(90.1)
    assert s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= 100
    assert s["requests_per_s"] == pytest.approx(2 / 0.0505)
    assert s["candidates_per_s"] == pytest.approx(128 / 0.0505)
    assert s["tflops"] == pytest.approx(1e9 / 0.0505 / 1e12)
    with pytest.raises(ValueError):
        measure.latency_stats([])


def test_time_call_respects_min_reps_and_budget():
    calls = []
    out = measure.time_call(lambda: calls.append(1), budget=measure.Budget(warmup=2, min_reps=10, seconds=0.05))
    assert len(out["warmup_s"]) == 2 and len(out["samples_s"]) >= 10 and len(calls) == 2 + len(out["samples_s"])
    # a noisy function that never stabilises stops at the time budget
    t0 = time.perf_counter()
    noisy = iter(range(10**9))
    out = measure.time_call(lambda: time.sleep(0.001 * (next(noisy) % 7)),
                            budget=measure.Budget(warmup=0, min_reps=5, seconds=0.2, rel_tol=0.0))
    assert time.perf_counter() - t0 < 2.0 and len(out["samples_s"]) >= 5


# ------------------------------------------------------------------------------------------ engine plan and inputs

def test_plan_orders_groups_and_applies_exclusions():
    from benchmarks import engine

    sw = engine.Sweep(engines=("torch", "torch_compile", "onnxruntime"), presets=("mini", "nano"),
                      precisions={"mini": ("bf16", "fp32"), "nano": ("fp32",)},
                      batch_sizes={"mini": (1, 16), "nano": (1,)}, candidates={"mini": (64, 256), "nano": ()},
                      big_c_presets=("mini",), exclude=("torch_compile/*/bf16", "onnxruntime/nano/*"),
                      dense_engines=("torch",))
    pts = engine.plan(sw)
    groups = list(dict.fromkeys((p.precision, p.preset) for p in pts))
    assert groups == [("bf16", "mini"), ("fp32", "mini"), ("fp32", "nano")]      # precision-major
    assert not [p for p in pts if p.engine == "torch_compile" and p.precision == "bf16"]
    assert not [p for p in pts if p.engine == "onnxruntime" and p.preset == "nano"]
    dense = [p for p in pts if p.scenario == "c1000_one_pass_dense"]
    assert {p.engine for p in dense} == {"torch"} and all(p.attention == "dense" for p in dense)
    mini_torch = [(p.B, p.C, p.scenario) for p in pts if p.engine == "torch" and p.preset == "mini"
                  and p.precision == "fp32"]
    assert mini_torch[:3] == [(1, 64, "batch"), (16, 64, "batch"), (1, 256, "batch")]   # (1, 64) once
    assert len(set(pts)) == len(pts)


def test_chunked_inputs_hold_exactly_1000_valid_candidates_of_one_user():
    from benchmarks import engine

    _, graph = engine.build_graph("demo", "fp32", vocab=512)
    one = engine.feeds_for(graph, engine.Point("torch", "demo", "fp32", 1, 1000, "c1000_one_pass"), seed=0)
    chunks = engine.feeds_for(graph, engine.Point("torch", "demo", "fp32", 1, 1000, "c1000_chunked"), seed=0)
    (batched,) = engine.feeds_for(graph, engine.Point("torch", "demo", "fp32", 1, 1000, "c1000_chunked_batched"), 0)
    assert len(one) == 1 and one[0]["candidate_post_hashes"].shape[:2] == (1, 1000)
    assert len(chunks) == 16 and all(c["candidate_post_hashes"].shape[:2] == (1, 64) for c in chunks)
    assert sum(int((c["candidate_post_hashes"][..., 0] != 0).sum()) for c in chunks) == 1000
    assert all(c["candidate_post_hashes"].is_contiguous() for c in chunks)
    for c in chunks[1:]:   # every chunk is the same user with the same history
        assert all(c[n].equal(chunks[0][n]) for n in c if not n.startswith("candidate"))
    assert batched["candidate_post_hashes"].shape[:2] == (16, 64) and batched["user_hashes"].shape[0] == 16
    # the valid hashes are inside the tables (the input_error of the graph stays 0)
    _, err = graph.module(*(batched[n] for n in graph.input_names))
    assert int(err.abs().sum()) == 0


# ------------------------------------------------------------------------------------------ server helpers

def test_memory_sampler_covers_child_processes():
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(64 << 20); time.sleep(3)"])
    try:
        time.sleep(1.0)
        import os
        sampler = MemorySampler(os.getpid()).start()
        time.sleep(0.3)
        mem = sampler.stop()
    finally:
        child.kill()
        child.wait()
    assert mem["processes"] >= 2                      # this process and the child
    assert mem["sum_process_peak_rss_mib"] >= 64     # the child's 64 MiB buffer is counted


def test_stats_diff_per_request_split():
    def snap(n, ns):
        return {"phoenix_ranker": {"success": (n, ns * 4), "fail": (0, 0), "queue": (n, ns), "compute_input": (n, ns),
                                   "compute_infer": (n, ns), "compute_output": (n, ns),
                                   "inference_count": n, "execution_count": n // 2}}
    d = stats_diff(snap(10, 10_000_000), snap(30, 50_000_000))
    r = d["phoenix_ranker"]
    assert r["requests"] == 20 and r["queue_ms"] == pytest.approx(2.0) and r["server_ms"] == pytest.approx(8.0)
    assert r["avg_batch_users"] == pytest.approx(2.0)
    assert stats_diff(snap(10, 1), snap(10, 1)) == {}   # no traffic, no row


# ------------------------------------------------------------------------------------------ CLI

def test_every_option_has_help():
    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "mode").choices
    for name, sub in subs.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    out = subprocess.run([sys.executable, "-m", "benchmarks", "engine", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "--quick" in out and "--device" in out and "--deadline" in out


@pytest.mark.parametrize("argv, word", [(["engine", "--engines", "tensorflow"], "tensorflow"),
                                        (["engine", "--batch-sizes", "mini=0"], "mini=0"),
                                        (["server", "--concurrency", "1,x"], "1,x")])
def test_bad_options_are_named(argv, word, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert word in capsys.readouterr().err


def test_report_without_results_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "engine.json" in captured.out + captured.err


# ------------------------------------------------------------------------------------------ findings

def _row(engine, B, C, p50, scenario="batch", preset="mini", precision="fp32"):
    return {"engine": engine, "preset": preset, "precision": precision, "B": B, "C": C, "scenario": scenario,
            "status": "ok", "p50_ms": p50, "p90_ms": p50, "p99_ms": p50, "n": 10, "stable": True,
            "requests_per_s": 1e3 / p50, "candidates_per_s": (1000 if scenario != "batch" else B * C) * 1e3 / p50}


def test_findings_compare_with_upstream_and_targets():
    eng = {"device": "cpu", "sweep": {"base_c": 64}, "results": [
        _row("torch", 1, 64, 3.0), _row("onnxruntime", 1, 64, 2.0), _row("torch", 16, 64, 20.0),
        _row("onnxruntime", 16, 64, 30.0), _row("torch", 1, 256, 6.0), _row("onnxruntime", 1, 256, 4.0),
        _row("onnxruntime", 1, 1000, 10.0, "c1000_one_pass"), _row("onnxruntime", 1, 1000, 60.0, "c1000_chunked"),
        {"engine": "tensorrt", "preset": "mini", "precision": "fp32", "B": 1, "C": 64, "scenario": "batch",
         "status": "skipped", "reason": "GPU only"}]}
    srv = {"presets": [{"preset": "mini", "status": "ok", "startup_s": 3.0,
                        "memory": {"peak_rss_mib": 900.0, "sum_process_peak_rss_mib": 950.0, "processes": 4}}],
           "results": [{"preset": "mini", "kind": "closed", "model": m, "concurrency": 1, "completed": 100,
                        "p50_ms": p, "p90_ms": p, "p99_ms": p, "requests_per_s": 1e3 / p,
                        "candidates_per_s": 64e3 / p, "server_stats": {}, "errors": []}
                       for m, p in (("phoenix", 4.0), ("phoenix_ranker", 3.0))]}
    f = report.findings(eng, srv)
    fast = {r["B"]: r["engine"] for r in f["fastest"]}
    assert fast == {1: "onnxruntime", 16: "torch"}
    up = {u["B"]: u for u in f["upstream"]}
    assert up[1]["speedup"] == pytest.approx(7.4 / 2.0) and up[16]["speedup"] == pytest.approx(81 / 20)
    def met(prefix):
        return next(t["met"] for t in f["targets"] if t["target"].startswith(prefix))

    assert met("mini 1x64 fp32, the engine the cpu target serves") is False    # onnxruntime 2.0 ms > 1.6 ms
    assert met("mini 16x64, fastest engine") is False                          # torch 20 ms > 12 ms
    assert met("1000 candidates of one user (mini, fp32)") is True             # 60 / 10 = 6x >= 5x
    assert met("mini: served ensemble") is False                                # 4.0 - 2.0 > 1.0 ms
    assert f["ensemble"][0]["ensemble_overhead_ms"] == pytest.approx(1.0)
    left = {t["target"][:20]: t.get("left") for t in f["targets"] if t["met"] is False}
    assert left["mini 1x64 fp32, the "].startswith("0.40 ms")                  # what is left, for each missed goal
    assert left["mini: served ensembl"].startswith("1.00 ms; phoenix_ranker served alone is +1.00 ms")
    md = report.render(eng, srv, "python -m benchmarks all --quick")
    assert report.REPRODUCE["cpu"] in md.splitlines()[:6]               # the one command, at the top
    assert "This run: `python -m benchmarks all --quick`" in md
    for text in ("## Answers", "## Targets", "upstream JAX", "GPU only", "Fastest at B=1", "Ensemble cost", "900.0",
                 "what is left, and why"):
        assert text in md


def test_the_profilers_split_a_call_into_operator_categories(tmp_path):
    """benchmarks.profile on a small graph, in both engines: matmuls and the elementwise rest, shares summing to 1,
    the operator count per call, the unprofiled wall time."""
    import numpy as np
    import onnx
    import torch
    from onnx import TensorProto, helper

    from benchmarks.profile import profile_onnxruntime, profile_torch

    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 64])],
        [onnx.numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "small.onnx"))
    x = np.ones((8, 64), np.float32)
    ort = profile_onnxruntime(tmp_path / "small.onnx", {"x": x}, runs=5)
    module = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU())
    eager = profile_torch(module, (torch.ones(8, 64),), runs=5)
    for prof in (ort, eager):
        assert prof["wall_ms"] > 0 and prof["operators_per_call"] >= 2
        assert "matmul" in prof["categories"] and sum(prof["categories"].values()) == pytest.approx(1, abs=0.01)
        assert prof["top_ops"]


# ------------------------------------------------------------------------------------------ a real quick run

def test_quick_run_of_both_modes_writes_json_report_and_plots(tmp_path):
    """`all --quick`: the engine sweep, a real tritonserver on a demo build, one report.

    Exported engines and the built repository come from the default cache (keyed by a hash of the
    phoenix_torch and export sources and torch's version), so only the first run pays for the export."""
    out = tmp_path / "res"
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "benchmarks", "all", "--quick", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    print(f"quick run of both modes: {time.perf_counter() - t0:.1f} s")

    data = json.loads((out / "engine.json").read_text())
    for key in ("cpu_model", "cpu_cores", "versions", "gpu"):
        assert key in data["environment"]
    assert data["complete"] and data["availability"]["torch"] is None
    rows = data["results"]
    assert {r["engine"] for r in rows} == set(data["sweep"]["engines"])
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["engine"] for r in ok} == {"torch", "onnxruntime"}
    for r in ok:
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        calls_c = 1000 if r["scenario"].startswith("c1000") else r["B"] * r["C"]
        assert r["candidates_per_s"] == pytest.approx(calls_c / (r["p50_ms"] / 1e3))
        assert r["tflops"] > 0 and r["n"] >= 1
    assert all(r["reason"] for r in rows if r["status"] != "ok")   # tensorrt: skipped with its reason
    scen = {r["scenario"] for r in ok if r["engine"] == "torch"}
    assert scen == {"batch", "c1000_one_pass", "c1000_one_pass_dense", "c1000_chunked", "c1000_chunked_batched"}
    assert data["findings"]["fastest"] and data["findings"]["c1000"]

    srv = json.loads((out / "server.json").read_text())
    (preset,) = srv["presets"]
    assert preset["status"] == "ok" and preset["memory"]["peak_rss_mib"] > 0 and preset["memory"]["processes"] >= 2
    done = {(r["model"], r["kind"], r.get("concurrency")) for r in srv["results"] if r["completed"]}
    assert done >= {("phoenix", "closed", 1), ("phoenix", "closed", 2), ("phoenix_ranker", "closed", 1),
                    ("phoenix", "poisson", None), ("phoenix_ranker", "poisson", None)}
    for r in srv["results"]:
        assert not r["errors"] and r["p50_ms"] <= r["p99_ms"]
        # the model called, with Triton's own split (phoenix on the cpu target: the engine and the scoring in one)
        assert r["server_stats"][r["model"]]["compute_infer_ms"] > 0

    md = (out / "report.md").read_text()
    for text in ("## Engine mode", "| engine | scenario |", "## Server mode", "Ensemble cost", "How FLOPs are counted"):
        assert text in md
    for name in report.PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------ peer (issue 21)

MAY_ARTIFACTS = ROOT / "tests" / "golden" / "may" / "may_artifacts_mini"


def _q(ms):
    return {"n": 5, "p50_ms": ms, "p90_ms": ms, "min_ms": ms, "mean_ms": ms}


def _peer_result(upstream: bool = True) -> dict:
    """A tiny fake result of benchmarks.peer: the served pipeline at 40 ms, upstream's at 100 ms."""
    from benchmarks import peer

    triton = {"requests": 5, "server_ms": 35.0, "queue_ms": 0.1, "compute_input_ms": 0.1, "compute_infer_ms": 34.0,
              "compute_output_ms": 0.8}
    stages = dict(zip(peer.STAGES, (1.0, 5.0, 10.0, 1.0, 12.0, 1.0)))
    result = {
        "command": "python -m benchmarks.peer --vocab 20000 --corpus 50000",
        "full_command": "python -m benchmarks.peer",
        "vocab": 20000, "corpus": 50000, "runs": 5, "note": None,
        "environment": {"cpu_model": "a CPU", "cpu_cores": 2, "load_average": (0.1, 0.1, 0.1), "time_utc": "now"},
        "build": {"wall_s": 50.0, "peak_rss_gib": 3.5, "command": "python -m export.build --artifacts A"},
        "served": {"startup_s": 4.0, "pipeline": {**_q(40.0), "triton": triton},
                   "throughput": [{"concurrency": c, "pipelines_per_s": r, **_q(1e3 * c / r), "triton": triton}
                                  for c, r in ((1, 25.0), (4, 40.0))],
                   "mini": {"phoenix_ranker": _q(3.0), "phoenix": _q(5.0)},
                   "memory": {"peak_rss_mib": 2048.0}, "memory_after_runs": {"rss_gib": 2.0, "pss_gib": 1.9}},
        "in_process": {"same_posts_as_served": True, "runs": 5, "whole": _q(30.0),
                       "stages": {s: _q(v) for s, v in stages.items()},
                       "search": {"index": "exact", "rows": 50000, "dim": 128, "top_k": 200, "rescored_rows": 1000,
                                  "scan_bytes": 6_400_000, "search_bytes": 6_912_000,
                                  "float32_corpus_bytes": 25_600_000, "scan": _q(2.0), "search": _q(4.0),
                                  "scan_kind": "Int8Scan"}},
        "peak": {"copy_gbs": 32.0, "matmul_gflops": {"fp32": 250.0}},
        "upstream": {"status": "ok", "peer": "upstream's path", "dtype": "bfloat16", "jax": "0.8.1", "haiku": "0.0.17",
                     "numpy": "2", "python": "3.11", "upstream_sources_sha256": "ab" * 32, "pipeline": _q(100.0),
                     "parts": {"user_tower": _q(14.0), "corpus_scan_top_k": _q(18.0), "hash_and_rank": _q(68.0)},
                     "forward": {"users": 1, "candidates": 64, **_q(9.0)}}
        if upstream else {"status": "not measured: no --upstream-phoenix / --upstream-python given"}}
    result["bandwidth"] = peer.bandwidth(result["in_process"]["search"], result["peak"])
    result["goals"] = peer.goals(result)
    return result


def test_peer_goals_ratios_and_what_is_left():
    from benchmarks import peer

    result = _peer_result()
    g = {row["goal"]: row for row in result["goals"]}
    pipe = g["release pipeline p50"]
    assert pipe["ratio"] == 2.5 and pipe["met"] is False                      # 100 / 40 < 3
    assert pipe["short_by"] == "2.50x of 3x: ours must go from 40.0 to 33.3 ms (-6.7 ms, -17%)"
    assert g["release pipeline p50, moonshot"]["short_by"].startswith("2.50x of 5x: ours must go from 40.0 to 20.0")
    assert g["mini 1x64 served phoenix"]["ratio"] == 1.8 and g["mini 1x64 served phoenix"]["met"] is False
    assert g["mini 1x64 served phoenix_ranker"]["ratio"] == 3.0 and g["mini 1x64 served phoenix_ranker"]["met"]
    assert "short_by" not in g["mini 1x64 served phoenix_ranker"]
    mem = g["build + server memory"]              # 3.5 GiB + the tree's PSS 1.9 GiB (not its RSS: shared pages once)
    assert mem["measured_gb"] == pytest.approx((3.5 + 1.9) * 2**30 / 1e9, abs=0.01) and mem["met"]
    bw = result["bandwidth"]                                                   # 6.4 MB in 2 ms, 6.912 MB in 4 ms
    assert bw["scan_gbs"] == 3.2 and bw["scan_fraction_of_copy"] == 0.1 and bw["search_gbs"] == 1.73
    assert [v for _, v in peer.served_split(result)] == pytest.approx([4.0, 1.0, 5.0])


def test_peer_report_and_plot(tmp_path):
    from benchmarks import peer

    result = _peer_result()
    md = peer.render(result)
    for text in ("A small check run", "Full run: `python -m benchmarks.peer`", "## Goals",
                 "| release pipeline p50 | >= 3x upstream | 40.00 ms | 100.00 ms | 2.5x | **no** |",
                 "## Pipelines per second", "| 4 | 40.0 |", "**32.0 GB/s**", "fp32 matmul 250.0 GFLOP/s",
                 "| scan alone | 2.00 | 3.20 | 0.100 |",
                 "| hash + user tower | check_and_hash 1.00 + user_tower 5.00 | 6.00 | 14.00 |",
                 "| served phoenix_ranker | 3.00 | 3.00 | 3.00 |", "## Memory"):
        assert text in md, text
    png = peer.plot(result, tmp_path / "peer.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    alone = _peer_result(upstream=False)                  # ours only: the peer is named as not measured
    assert all(g["met"] is None for g in alone["goals"][:4])
    assert alone["goals"][0]["short_by"] == "the peer was not measured"
    md = peer.render(alone)
    assert "**The peer was not measured**" in md and "| upstream ranker forward" not in md
    assert peer.plot(alone, tmp_path / "alone.png").exists()


def _upstream_folder(tmp_path) -> Path:
    from benchmarks import upstream_peer

    folder = tmp_path / "phoenix"
    folder.mkdir()
    for name in upstream_peer.UPSTREAM_FILES:
        (folder / name).write_text("")
    return folder


@pytest.mark.parametrize("argv, words", [
    (["--upstream-phoenix", "/somewhere"], ["--upstream-phoenix needs --upstream-python"]),
    (["--upstream-python", sys.executable], ["--upstream-python needs --upstream-phoenix"]),
    (["--upstream-phoenix", str(ROOT), "--upstream-python", sys.executable], ["--upstream-phoenix", "run_pipeline.py"]),
    (["--corpus", "100"], ["--corpus 100", "200"]),
    (["--concurrency", "1,x"], ["--concurrency", "'1,x'"]),
    (["--runs", "0"], ["--runs", "'0'"]),
    (["--step-seconds", "-1"], ["--step-seconds", "'-1'"]),
    (["--upstream-dtype", "fp16"], ["--upstream-dtype", "fp16"]),
])
def test_peer_option_errors_are_named(argv, words, capsys):
    from benchmarks import peer

    with pytest.raises(SystemExit) as e:
        peer.parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err


def test_peer_checks_the_upstream_python_before_measuring(tmp_path, capsys):
    from benchmarks import peer

    folder = _upstream_folder(tmp_path)
    for python, why in ((sys.executable, "cannot import jax"), (str(tmp_path / "no-python"), "FileNotFoundError")):
        with pytest.raises(SystemExit) as e:        # this project's Python has no jax: refused up front, exit 2
            peer.parse_args(["--upstream-phoenix", str(folder), "--upstream-python", python])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"--upstream-python {python}" in err and why in err


def test_peer_options_have_help_and_the_upstream_script_runs_without_jax(tmp_path, capsys):
    from benchmarks import peer, upstream_peer

    for action in peer.build_parser()._actions:
        assert action.help, f"{action.option_strings} has no help"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "upstream_peer.py"), "--help"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "--phoenix" in p.stdout and "--dtype" in p.stdout
    folder = _upstream_folder(tmp_path)
    for argv, word in ((["--phoenix", str(tmp_path), "--artifacts", str(MAY_ARTIFACTS)], "run_pipeline.py"),
                       (["--phoenix", str(folder), "--artifacts", str(tmp_path)], "retrieval/config.json"),
                       (["--phoenix", str(folder), "--artifacts", str(MAY_ARTIFACTS), "--runs", "0"], "--runs"),
                       (["--phoenix", str(folder), "--artifacts", str(MAY_ARTIFACTS), "--expect",
                         str(MAY_ARTIFACTS / "expected_pipeline_fp32.npz")], "--expect needs --dtype float32")):
        with pytest.raises(SystemExit) as e:
            upstream_peer.parse_args(argv)
        assert e.value.code == 2 and word in capsys.readouterr().err


def test_peer_measures_ours_served_and_in_process(may_repo, tmp_path):
    """The served and in-process measurements of benchmarks.peer on the small May repository (a real tritonserver):
    every figure present and plausible, the in-process pipeline retrieving the posts the server retrieved."""
    import argparse

    from benchmarks import peer

    args = argparse.Namespace(runs=2, concurrency=(1, 2), step_seconds=0.5)
    steps = []
    served = peer.measure_served(may_repo, MAY_ARTIFACTS / "example_sequence.json", args, steps.append)
    request, posts = served.pop("request"), served.pop("served_post_ids")
    assert len(steps) == 1 + len(args.concurrency) + len(peer.MINI_MODELS)
    assert len(posts) == peer.TOP_K and request["history_post_ids"].dtype.name == "uint64"
    pipe = served["pipeline"]
    assert pipe["n"] == 2 and 0 < pipe["p50_ms"] <= pipe["p90_ms"]
    assert pipe["triton"]["requests"] == 2 and 0 < pipe["triton"]["compute_infer_ms"] <= pipe["triton"]["server_ms"]
    assert [r["concurrency"] for r in served["throughput"]] == [1, 2]
    for r in served["throughput"]:
        assert r["completed"] >= 1 and r["pipelines_per_s"] == pytest.approx(r["completed"] / r["wall_s"], rel=0.01)
        assert r["triton"]["requests"] == r["completed"]
    assert set(served["mini"]) == set(peer.MINI_MODELS)
    assert all(m["p50_ms"] > 0 and m["candidates"] == peer.MINI_CANDIDATES for m in served["mini"].values())
    assert served["memory"]["peak_rss_mib"] > 0 and served["memory"]["processes"] >= 2

    proc = peer.measure_in_process(may_repo, request, posts, runs=2)
    assert proc["same_posts_as_served"] is True
    assert set(proc["stages"]) == set(peer.STAGES) and all(s["p50_ms"] > 0 for s in proc["stages"].values())
    s = proc["search"]
    assert (s["rows"], s["dim"], s["scan_kind"], s["top_k"]) == (4000, 128, "Int8Scan", peer.TOP_K)
    assert s["scan_bytes"] == 4000 * 128 and peer.TOP_K <= s["rescored_rows"] <= 4000
    assert s["search_bytes"] == s["scan_bytes"] + s["rescored_rows"] * 128 * 4
