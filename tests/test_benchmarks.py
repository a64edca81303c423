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
        assert r["server_stats"]["phoenix_ranker"]["compute_infer_ms"] > 0
        if r["model"] == "phoenix":   # the ensemble's steps show up as their own models
            assert {"phoenix", "phoenix_ranker", "phoenix_postprocess"} <= set(r["server_stats"])

    md = (out / "report.md").read_text()
    for text in ("## Engine mode", "| engine | scenario |", "## Server mode", "Ensemble cost", "How FLOPs are counted"):
        assert text in md
    for name in report.PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
