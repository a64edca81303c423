"""Markdown report and PNG plots from the engine / server JSON (re-render with `python -m benchmarks report DIR`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks import flops as flops_mod

# shared/ENVIRONMENT.md, "Measured peer: the upstream JAX/XLA ranker (jit, bf16 forward), p50 per forward";
# the CPU rows were measured in float32, the H100 rows in bfloat16. C = 64 candidates per user.
UPSTREAM = (
    {"preset": "mini", "device": "cpu", "precision": "fp32", "B": 1, "p50_ms": 7.4, "candidates_per_s": 8.7e3},
    {"preset": "mini", "device": "cpu", "precision": "fp32", "B": 16, "p50_ms": 81.0, "candidates_per_s": 12.6e3},
    {"preset": "mini", "device": "cuda", "precision": "bf16", "B": 1, "p50_ms": 0.71, "candidates_per_s": 90e3},
    {"preset": "mini", "device": "cuda", "precision": "bf16", "B": 512, "p50_ms": 6.3, "candidates_per_s": 5.2e6},
    {"preset": "nano", "device": "cuda", "precision": "bf16", "B": 32, "p50_ms": 11.0, "candidates_per_s": 187e3},
    {"preset": "prod", "device": "cuda", "precision": "bf16", "B": 1, "p50_ms": 5.8, "candidates_per_s": 11e3},
    {"preset": "prod", "device": "cuda", "precision": "bf16", "B": 32, "p50_ms": 116.0, "candidates_per_s": 17.7e3,
     "tflops": 251.0},
)
# issue 15's CPU targets
TARGET_SERVED_1X64_MS = 1.6          # mini 1 x 64 fp32, the engine the cpu target serves
TARGET_16X64_MS = 12.0               # mini 16 x 64, fastest engine, bf16 allowed
TARGET_ONE_PASS_RATIO = 5.0          # 1000 candidates, fp32: one pass >= 5x candidates/s of 16 chunks of 64
TARGET_ENSEMBLE_OVERHEAD_MS = 1.0    # served ensemble p50 at concurrency 1 <= engine p50 + 1.0 ms
SERVED_CPU_ENGINES = ("onnxruntime", "aoti")   # what the cpu target serves: ONNX Runtime by default, AOTInductor
                                               # when built (export.build times both and serves the faster)
REPRODUCE = {"cpu": "python -m benchmarks all --out benchmarks/results/cpu",
             "cuda": "bash benchmarks/gpu_run.sh   # on the lent GPU machine; writes into $OUT"}
PLOTS = ("engine_latency_vs_throughput.png", "engine_latency_vs_candidates.png", "server_latency_vs_throughput.png")


def _ok(engine: dict | None) -> list[dict]:
    return [r for r in (engine or {}).get("results", []) if r.get("status") == "ok"]


def _device_class(engine: dict) -> str:
    return "cuda" if str(engine.get("device", "cpu")).startswith("cuda") else "cpu"


def _ms(x) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def _rate(x) -> str:
    if x is None:
        return "-"
    for div, unit in ((1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def best(rows: list[dict], **match) -> dict | None:
    """Fastest (lowest p50) row matching every key=value."""
    cand = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    return min(cand, key=lambda r: r["p50_ms"]) if cand else None


# ------------------------------------------------------------------------------------------ findings

def _needs(gflop: float, goal_ms: float, precision: str, best_fraction: float | None, peak: dict | None) -> str:
    """Why a latency goal is missed, in the machine's terms: the FLOP rate the goal needs against the peak."""
    need = gflop / goal_ms  # GFLOP per ms = TFLOP/s
    top = (peak or {}).get("matmul_gflops", {}).get(precision)
    if not top:
        return f"the goal needs {1e3 * need:.0f} GFLOP/s"
    text = (f"the goal needs {1e3 * need:.0f} GFLOP/s, {100 * need * 1e3 / top:.0f}% of this machine's measured "
            f"{precision} matmul peak ({top:.0f} GFLOP/s)")
    if best_fraction:
        text += f"; the best engine reaches {100 * best_fraction:.0f}% at this shape"
    cpu_flags = ((peak or {}).get("cpu") or {}).get("flags", [])
    if "amx_bf16" not in cpu_flags:
        text += "; this CPU has no AMX (the issue's estimate assumed AMX bf16 throughput)"
    return text


def findings(engine: dict | None, server: dict | None) -> dict:
    """The numbers the report's answers and targets are made of (also stored in the JSON of a run)."""
    out: dict = {"targets": [], "upstream": [], "fastest": [], "latency_vs_c": [], "ensemble": [], "memory": []}
    rows = _ok(engine)
    dev = _device_class(engine) if engine else "cpu"
    # fastest engine at B=1 and at the largest B, per preset / precision
    for preset, prec in sorted({(r["preset"], r["precision"]) for r in rows}):
        sel = [r for r in rows if r["preset"] == preset and r["precision"] == prec and r["scenario"] == "batch"]
        base_c = (engine or {}).get("sweep", {}).get("base_c", 64)
        bs = sorted({r["B"] for r in sel if r["C"] == base_c})
        for B in ([bs[0], bs[-1]] if len(bs) > 1 else bs):
            b = best(sel, B=B, C=base_c)
            if b:
                others = sorted((r for r in sel if r["B"] == B and r["C"] == base_c), key=lambda r: r["p50_ms"])
                out["fastest"].append({"preset": preset, "precision": prec, "B": B, "C": base_c,
                                       "engine": b["engine"], "p50_ms": b["p50_ms"],
                                       "candidates_per_s": b["candidates_per_s"],
                                       "ranking": [(r["engine"], r["p50_ms"]) for r in others]})
        # latency vs C at B=1
        for eng in sorted({r["engine"] for r in sel}):
            pts = sorted((r["C"], r["p50_ms"]) for r in sel if r["engine"] == eng and r["B"] == 1)
            if len(pts) >= 2:
                cs, ms = np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)
                slope = float(np.polyfit(cs, ms, 1)[0]) if len(pts) >= 2 else None
                out["latency_vs_c"].append({"preset": preset, "precision": prec, "engine": eng,
                                            "points": pts, "us_per_candidate": slope * 1e3,
                                            "growth": ms[-1] / ms[0], "c_ratio": cs[-1] / cs[0]})
    # upstream comparison (same preset, batch, precision, device class, C=64)
    for u in UPSTREAM:
        if u["device"] != dev:
            continue
        b = best(rows, preset=u["preset"], B=u["B"], C=64, precision=u["precision"], scenario="batch")
        out["upstream"].append({**u, "ours_engine": b["engine"] if b else None,
                                "ours_p50_ms": b["p50_ms"] if b else None,
                                "ours_candidates_per_s": b["candidates_per_s"] if b else None,
                                "ours_tflops": b.get("tflops") if b else None,
                                "speedup": u["p50_ms"] / b["p50_ms"] if b else None})
    # targets
    peak = (engine or {}).get("peak")
    if dev == "cpu":
        served = [r for r in (best(rows, preset="mini", B=1, C=64, precision="fp32", scenario="batch", engine=e)
                              for e in SERVED_CPU_ENGINES) if r]
        if served:
            fastest = min(served, key=lambda r: r["p50_ms"])
            out["targets"].append({
                "target": "mini 1x64 fp32, the engine the cpu target serves (onnxruntime by default; aoti when "
                          "built with --engines aoti, which the build then serves if faster)",
                "goal": f"<= {TARGET_SERVED_1X64_MS} ms",
                "measured": ", ".join(f"{r['engine']} {_ms(r['p50_ms'])} ms" for r in served),
                "met": fastest["p50_ms"] <= TARGET_SERVED_1X64_MS,
                "left": f"{fastest['p50_ms'] - TARGET_SERVED_1X64_MS:.2f} ms; " + _needs(
                    fastest.get("gflop_per_call", 0), TARGET_SERVED_1X64_MS, "fp32",
                    fastest.get("fraction_of_peak"), peak)})
        b16 = [r for r in rows if r["preset"] == "mini" and r["B"] == 16 and r["C"] == 64 and r["scenario"] == "batch"]
        if b16:
            top = min(b16, key=lambda r: r["p50_ms"])
            out["targets"].append({
                "target": "mini 16x64, fastest engine (bf16 allowed)", "goal": f"<= {TARGET_16X64_MS:g} ms",
                "measured": f"{_ms(top['p50_ms'])} ms ({top['engine']}, {top['precision']})",
                "met": top["p50_ms"] <= TARGET_16X64_MS,
                "left": f"{top['p50_ms'] - TARGET_16X64_MS:.2f} ms; " + _needs(
                    top.get("gflop_per_call", 0), TARGET_16X64_MS, "bf16",
                    max((r.get("fraction_of_peak") or 0 for r in b16 if r["precision"] == "bf16"), default=None),
                    peak)})
    prof = (engine or {}).get("profile")
    with_peak = [r for r in rows if r.get("fraction_of_peak")]
    if peak and with_peak:
        top = max(with_peak, key=lambda r: r["fraction_of_peak"])
        served = best(with_peak, preset="mini", B=1, C=64, precision="fp32", scenario="batch", engine="onnxruntime")
        loss = ""
        if prof:
            ort = prof["engines"]["onnxruntime"]
            cats = {k: v for k, v in ort["categories"].items() if k != "matmul"}
            worst = max(cats, key=cats.get)
            loss = (f"; largest loss: {worst} ({100 * cats[worst]:.0f}% of ONNX Runtime's operator time at "
                    f"{prof['preset']} {prof['B']}x{prof['C']}, {ort['operators_per_call']} operators per call; "
                    f"matmuls {100 * ort['categories'].get('matmul', 0):.0f}%)")
        out["targets"].append({
            "target": "each point's fraction of the measured peak",
            "goal": "reported, with the largest loss named",
            "measured": f"best {100 * top['fraction_of_peak']:.0f}% ({top['engine']} {top['preset']} "
                        f"{top['precision']} {top['B']}x{top['C']} {top['scenario']})"
                        + (f"; served mini 1x64 (onnxruntime) {100 * served['fraction_of_peak']:.0f}%" if served else "")
                        + loss, "met": True})
    one_pass = {}
    for r in rows:
        if r["scenario"].startswith("c1000"):
            one_pass.setdefault((r["preset"], r["precision"], r["engine"]), {})[r["scenario"]] = r
    out["c1000"] = []
    for (preset, prec, eng), sc in sorted(one_pass.items()):
        if "c1000_one_pass" in sc and "c1000_chunked" in sc:
            ratio = sc["c1000_one_pass"]["candidates_per_s"] / sc["c1000_chunked"]["candidates_per_s"]
            flop_ratio = sc["c1000_chunked"].get("gflop_per_call", 0) / sc["c1000_one_pass"].get("gflop_per_call", 1)
            out["c1000"].append({"preset": preset, "precision": prec, "engine": eng, "ratio": ratio,
                                 "flop_ratio": flop_ratio, **{f"{k}_p50_ms": v["p50_ms"] for k, v in sc.items()}})
    for preset, prec in sorted({(r["preset"], r["precision"]) for r in out["c1000"]}):
        group = [r for r in out["c1000"] if r["preset"] == preset and r["precision"] == prec]
        if prec != "fp32":
            continue
        served = [r for r in group if r["engine"] in SERVED_CPU_ENGINES] or group
        worst = min(served, key=lambda r: r["ratio"])
        out["targets"].append({
            "target": f"1000 candidates of one user ({preset}, {prec}): one pass >= 5x the candidates/s of 16 "
                      "chunks of 64, on every engine served",
            "goal": f">= 5.0x (the chunks do {group[0]['flop_ratio']:.1f}x the FLOPs)",
            "measured": ", ".join(f"{r['engine']} {r['ratio']:.1f}x ({_ms(r['c1000_one_pass_p50_ms'])} vs "
                                  f"{_ms(r['c1000_chunked_p50_ms'])} ms)" for r in served),
            "met": worst["ratio"] >= TARGET_ONE_PASS_RATIO,
            "left": _one_pass_left(worst)})
    # server
    srows = [r for r in (server or {}).get("results", []) if r.get("completed")]
    for preset in sorted({r["preset"] for r in srows}):
        c1 = {r["model"]: r for r in srows if r["preset"] == preset and r["kind"] == "closed"
              and r["concurrency"] == 1}
        if "phoenix" in c1:
            ens = c1["phoenix"]
            eng_ref = best(rows, preset=preset, B=1, C=64, precision="fp32", scenario="batch", engine="onnxruntime") \
                or best(rows, preset=preset, B=1, C=64, precision="fp32", scenario="batch")
            ranker = c1.get("phoenix_ranker")
            row = {"preset": preset, "ensemble_p50_ms": ens["p50_ms"],
                   "ranker_p50_ms": ranker["p50_ms"] if ranker else None,
                   "ensemble_overhead_ms": ens["p50_ms"] - ranker["p50_ms"] if ranker else None,
                   "engine": eng_ref["engine"] if eng_ref else None,
                   "engine_p50_ms": eng_ref["p50_ms"] if eng_ref else None,
                   "server_split": ens.get("server_stats", {})}
            out["ensemble"].append(row)
            if eng_ref:
                extra = ens["p50_ms"] - eng_ref["p50_ms"]
                out["targets"].append({
                    "target": f"{preset}: served ensemble p50 at concurrency 1 minus the engine alone",
                    "goal": f"<= +{TARGET_ENSEMBLE_OVERHEAD_MS:g} ms ({eng_ref['engine']} alone "
                            f"{eng_ref['p50_ms']:.2f} ms)",
                    "measured": f"{ens['p50_ms']:.2f} ms ({extra:+.2f} ms)",
                    "met": extra <= TARGET_ENSEMBLE_OVERHEAD_MS,
                    "left": f"{extra - TARGET_ENSEMBLE_OVERHEAD_MS:.2f} ms; " + _overhead_split(ens, ranker, eng_ref)})
    for p in (server or {}).get("presets", []):
        mem = p.get("memory") or {}
        out["memory"].append({"preset": p["preset"], "status": p.get("status"), "startup_s": p.get("startup_s"),
                              **{k: mem.get(k) for k in ("peak_rss_mib", "sum_process_peak_rss_mib", "processes")}})
        if mem:
            out["targets"].append({"target": f"peak memory of the server process ({p['preset']}), reported",
                                   "goal": "reported",
                                   "measured": f"{mem.get('peak_rss_mib')} MiB (tritonserver + "
                                               f"{mem.get('processes', 1) - 1} child processes)", "met": True})
    return out


def _one_pass_left(worst: dict) -> str:
    """Why one pass is not 5x the chunks: the ratio is the FLOP ratio times the two FLOP rates' ratio."""
    text = f"{worst['engine']} needs {TARGET_ONE_PASS_RATIO / worst['ratio']:.1f}x more"
    if worst.get("flop_ratio"):
        text += (f"; the ratio is the FLOP ratio ({worst['flop_ratio']:.1f}x) times the one pass's FLOP rate over "
                 f"the chunks' ({worst['ratio'] / worst['flop_ratio']:.2f}x here): 5x needs the one pass at "
                 f"{TARGET_ONE_PASS_RATIO / worst['flop_ratio']:.1f}x the chunks' FLOP rate, and 64-candidate "
                 "chunks already fill the matmuls about as well as 1000 candidates do")
    return text


def _overhead_split(ens: dict, ranker: dict | None, eng: dict) -> str:
    """Where the served time above the engine alone goes, from Triton's own statistics."""
    stats = ens.get("server_stats", {})
    parts = []
    if ranker:
        parts.append(f"phoenix_ranker served alone is {ranker['p50_ms'] - eng['p50_ms']:+.2f} ms over the engine "
                     f"alone, phoenix (named scores) {ens['p50_ms'] - ranker['p50_ms']:+.2f} ms over that")
    for name in ("phoenix", "phoenix_ranker", "phoenix_postprocess"):   # phoenix's own split, or its ensemble steps
        st = stats.get(name)
        if st:
            parts.append(f"{name}: queue {st.get('queue_ms', 0):.2f} + tensors in/out "
                         f"{st.get('compute_input_ms', 0) + st.get('compute_output_ms', 0):.2f} + execute "
                         f"{st.get('compute_infer_ms', 0):.2f} ms")
    outside = ens["p50_ms"] - stats.get("phoenix", {}).get("server_ms", ens["p50_ms"])
    if outside > 0:  # p50 against the server's mean: only a positive remainder says something
        parts.append(f"outside the server (gRPC, client): {outside:.2f} ms")
    return "; ".join(parts) + ("; client, server and Python stubs share this machine's cores" if parts else "")


# ------------------------------------------------------------------------------------------ markdown

def render(engine: dict | None, server: dict | None, command: str | None = None,
           images: tuple[str, ...] = PLOTS) -> str:
    """The markdown report; `images` are the plot files that exist (links to others are left out)."""
    f = findings(engine, server)
    env = (engine or server or {}).get("environment", {})
    dev = _device_class(engine) if engine else "cpu"
    lines = [f"# Phoenix benchmarks ({dev})", "", "Reproduce with one command (from the repository root):", "",
             "```", REPRODUCE[dev], "```", ""]
    if command and command != REPRODUCE[dev]:
        lines += [f"This run: `{command}`", ""]
    gpu = env.get("gpu") or {}
    v = env.get("versions", {})
    lines += [f"Measured {env.get('time_utc', '?')} on {env.get('cpu_model', '?')} ({env.get('cpu_cores', '?')} cores, "
              f"torch threads {env.get('torch_threads', '?')}, load average at start "
              f"{' / '.join(f'{x:.2f}' for x in env.get('load_average') or [])})"
              + (f", GPU {gpu.get('name')} (driver {gpu.get('driver')}, CUDA {gpu.get('cuda_runtime')})" if gpu.get("name") else "")
              + ". Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".", ""]
    if env.get("note"):
        lines += [f"> {env['note']}", ""]
    lines += _answers(f, engine, server)
    if f["targets"]:
        lines += ["## Targets (issue 15) next to the measured values", ""]
        lines += _table(["target", "goal", "measured", "met", "what is left, and why"],
                        [[t["target"], t["goal"], t["measured"], {True: "yes", False: "**no**", None: "-"}[t["met"]],
                          "" if t["met"] else t.get("left", "")] for t in f["targets"]])
        lines.append("")
    if f["upstream"]:
        lines += ["## Against the upstream JAX/XLA peer (shared/ENVIRONMENT.md; same preset, batch, precision, C=64)", ""]
        lines += _table(["preset", "device", "precision", "B", "JAX p50 ms", "ours p50 ms (fastest engine)",
                         "speed-up", "JAX cand/s", "ours cand/s"],
                        [[u["preset"], u["device"], u["precision"], u["B"], _ms(u["p50_ms"]),
                          f"{_ms(u['ours_p50_ms'])} ({u['ours_engine']})" if u["ours_p50_ms"] else "not measured",
                          f"{u['speedup']:.2f}x" if u["speedup"] else "-", _rate(u["candidates_per_s"]),
                          _rate(u["ours_candidates_per_s"])] for u in f["upstream"]])
        lines.append("")
    if engine and engine.get("peak"):
        lines += _peak_section(engine)
    if engine:
        lines += _engine_section(engine, f, images)
    if server:
        lines += _server_section(server, f, images)
    if not images and (engine or server):
        lines += ["(Plots not drawn: matplotlib is not installed here; re-render with "
                  "`python -m benchmarks report <folder>` where it is.)", ""]
    lines += ["## How FLOPs are counted (`benchmarks/flops.py`)", "", "```", flops_mod.__doc__.strip(), "```", ""]
    return "\n".join(lines) + "\n"


def _answers(f: dict, engine, server) -> list[str]:
    out = ["## Answers", ""]
    for r in f["fastest"]:
        rank = ", ".join(f"{e} {_ms(ms)} ms" for e, ms in r["ranking"])
        out.append(f"- **Fastest at B={r['B']}** ({r['preset']}, {r['precision']}, C={r['C']}): **{r['engine']}** "
                   f"at {_ms(r['p50_ms'])} ms p50 ({_rate(r['candidates_per_s'])} candidates/s). All: {rank}.")
    seen = set()
    for r in f["latency_vs_c"]:
        if (r["preset"], r["precision"]) in seen:
            continue
        seen.add((r["preset"], r["precision"]))
        group = [x for x in f["latency_vs_c"] if x["preset"] == r["preset"] and x["precision"] == r["precision"]]
        desc = "; ".join(f"{x['engine']} x{x['growth']:.1f} ({x['us_per_candidate']:.1f} us per extra candidate)"
                         for x in group)
        out.append(f"- **Latency vs C** ({r['preset']}, {r['precision']}, B=1, C {r['points'][0][0]} -> "
                   f"{r['points'][-1][0]}, x{r['c_ratio']:.0f} candidates): {desc}.")
    for r in f.get("c1000", []):
        out.append(f"- **1000 candidates** ({r['preset']}, {r['precision']}, {r['engine']}): one pass "
                   f"{_ms(r.get('c1000_one_pass_p50_ms'))} ms vs 16 chunks of 64 {_ms(r.get('c1000_chunked_p50_ms'))} ms "
                   f"-> {r['ratio']:.1f}x the candidates/s (the chunks do {r['flop_ratio']:.1f}x the FLOPs: the "
                   f"user + history prefix is recomputed 16 times).")
    for e in f["ensemble"]:
        if e["ensemble_overhead_ms"] is not None:
            alone = f"; the engine alone ({e['engine']}) {_ms(e['engine_p50_ms'])} ms" if e["engine"] else ""
            out.append(f"- **Ensemble cost** ({e['preset']}, concurrency 1): phoenix p50 {_ms(e['ensemble_p50_ms'])} ms vs "
                       f"phoenix_ranker alone {_ms(e['ranker_p50_ms'])} ms: {e['ensemble_overhead_ms']:+.2f} ms{alone}.")
    for u in f["upstream"]:
        if u["speedup"]:
            word = "faster" if u["speedup"] >= 1 else "slower"
            out.append(f"- **Upstream peer** {u['preset']} {u['device']} B={u['B']}: ours {_ms(u['ours_p50_ms'])} ms "
                       f"({u['ours_engine']}) vs JAX {_ms(u['p50_ms'])} ms: {max(u['speedup'], 1 / u['speedup']):.2f}x {word}.")
    out.append("")
    return out


def _peak_section(engine: dict) -> list[str]:
    peak, prof = engine["peak"], engine.get("profile")
    mm = peak.get("matmul_gflops", {})
    cpu = peak.get("cpu") or {}
    out = ["## The machine's peak and where the time goes", "",
           f"Measured peak (`python -m benchmarks.peak`, {peak.get('threads')} threads): "
           + ", ".join(f"{p} matmul {g:.0f} GFLOP/s" for p, g in mm.items())
           + f", memory copy {peak.get('copy_gbs')} GB/s ({peak.get('how')}). CPU: {cpu.get('name', '?')}, "
           f"matrix-relevant flags: {', '.join(cpu.get('flags', [])) or 'none'}. Every engine row below gives its "
           "FLOP/s as a fraction of the matmul peak of its precision (`of peak`).", ""]
    if prof:
        engines = prof["engines"]
        cats = list(dict.fromkeys(c for e in engines.values() for c in e["categories"]))
        out += [f"One {prof['preset']} {prof['precision']} call at B={prof['B']}, C={prof['C']} "
                "(`python -m benchmarks.profile`): each category's share of the time inside operators, "
                "measured with each engine's own profiler; wall time without the profiler.", ""]
        out += _table(["category", *engines],
                      [[c, *(f"{100 * e['categories'].get(c, 0):.0f}%" for e in engines.values())] for c in cats]
                      + [["operators per call", *(e["operators_per_call"] for e in engines.values())],
                         ["wall ms (unprofiled)", *(_ms(e["wall_ms"]) for e in engines.values())]])
        out.append("")
    return out


def _engine_section(engine: dict, f: dict, images=PLOTS) -> list[str]:
    out = [f"## Engine mode ({engine.get('device')}, in one process)", ""]
    sw = engine.get("sweep", {})
    b = sw.get("budget", {})
    out += [f"Each point: {b.get('warmup')} warm-up calls, then calls until the median is stable (median of all vs "
            f"median of the newest half within {100 * b.get('rel_tol', 0):.0f}%, at least {b.get('min_reps')} calls) "
            f"or {b.get('seconds')} s; CPU threads: {sw.get('threads') or 'library default (one per core)'}; "
            f"tables vocabulary {sw.get('vocab')} rows (does not change the FLOPs). "
            "Inputs are valid random hashes. Torch engines get tensors already on the device; runtime engines get "
            "numpy arrays through `phoenix_runtime.engines`.", ""]
    avail = engine.get("availability", {})
    skipped = {}
    for r in engine.get("results", []):
        if r.get("status") != "ok":
            skipped.setdefault((r["engine"], r.get("reason", "?")), []).append(r)
    rows = _ok(engine)
    for preset, prec in sorted({(r["preset"], r["precision"]) for r in rows}):
        sel = [r for r in rows if r["preset"] == preset and r["precision"] == prec]
        shape = engine.get("models", {}).get(f"{preset}/{prec}", {}).get("shape", {})
        out += [f"### {preset}, {prec}" + (f" (D={shape.get('D')}, L={shape.get('L')}, S={shape.get('S')})" if shape else ""), ""]
        out += _table(["engine", "scenario", "B", "C", "p50 ms", "p90 ms", "p99 ms", "users/s", "candidates/s",
                       "GFLOP/call", "TFLOP/s", "of peak", "calls", "stable"],
                      [[r["engine"], r["scenario"], r["B"], r["C"], _ms(r["p50_ms"]), _ms(r["p90_ms"]), _ms(r["p99_ms"]),
                        _rate(r["requests_per_s"]), _rate(r["candidates_per_s"]), f"{r.get('gflop_per_call', 0):.3g}",
                        f"{r.get('tflops', 0):.3g}",
                        f"{100 * r['fraction_of_peak']:.0f}%" if r.get("fraction_of_peak") else "-",
                        r["n"], "yes" if r["stable"] else "no"]
                       for r in sorted(sel, key=lambda r: (r["scenario"] != "batch", r["scenario"], r["B"], r["C"],
                                                           r["p50_ms"]))])
        out.append("")
    if skipped:
        out += ["### Engines or points not measured", ""]
        out += _table(["engine", "points", "reason"], [[e, len(v), reason] for (e, reason), v in skipped.items()])
        out.append("")
    if sw.get("exclude"):
        out += ["Not planned in this sweep (`--exclude`): " + ", ".join(f"`{x}`" for x in sw["exclude"])
                + ". On a small CPU these cost minutes of compilation each, and ONNX Runtime's CPU provider has no "
                "bf16 MatMul (phoenix_runtime.engines emulates bf16 in fp32 there, so its timing says nothing about bf16). "
                f"Dense attention (1000 candidates) runs on: {', '.join(sw.get('dense_engines', []))}.", ""]
    if any(avail.values()):
        out += ["Availability here: " + ", ".join(f"{k}: {'yes' if not v else v}" for k, v in avail.items()), ""]
    out += [f"![{name[:-4]}]({name})\n" for name in PLOTS[:2] if name in images]
    return out


def _server_section(server: dict, f: dict, images=PLOTS) -> list[str]:
    sw = server.get("sweep", {})
    out = ["## Server mode (tritonserver, gRPC)", "",
           f"{sw.get('users_per_request')} user(s) x {sw.get('candidates')} candidates per request, valid hashes. "
           f"Closed loop: N client threads back to back for {sw.get('seconds')} s each; open loop: Poisson arrivals "
           f"for {sw.get('poisson_seconds')} s, latency from the scheduled arrival. The client runs on the same "
           "machine as the server (it competes for the same cores). Server split = Triton's statistics "
           "(ms per request, difference of the counters before and after each step).", ""]
    if f["memory"]:
        out += _table(["preset", "status", "start-up s", "peak RSS MiB (server + stubs, sampled)",
                       "sum of per-process peaks MiB (upper bound)", "processes"],
                      [[m["preset"], m["status"], f"{m['startup_s']:.1f}" if m.get("startup_s") else "-",
                        m["peak_rss_mib"], m["sum_process_peak_rss_mib"], m["processes"]] for m in f["memory"]])
        out.append("")
    rows = [r for r in server.get("results", []) if r.get("completed")]
    for preset in sorted({r["preset"] for r in rows}):
        out += [f"### {preset}", ""]
        table = []
        for r in rows:
            if r["preset"] != preset:
                continue
            st = r.get("server_stats", {})
            split = "; ".join(f"{m}: q {s['queue_ms']:.2f} / in {s['compute_input_ms']:.2f} / infer "
                              f"{s['compute_infer_ms']:.2f} / out {s['compute_output_ms']:.2f} (batch "
                              f"{(s.get('avg_batch_users') or 0):.1f})" for m, s in st.items())
            load = f"c={r['concurrency']}" if r["kind"] == "closed" else f"Poisson {r['rate_per_s']:.0f}/s"
            table.append([r["model"], load, _ms(r["p50_ms"]), _ms(r["p90_ms"]), _ms(r["p99_ms"]),
                          f"{r['requests_per_s']:.1f}", _rate(r["candidates_per_s"]), len(r.get("errors", [])), split])
        out += _table(["model", "load", "p50 ms", "p90 ms", "p99 ms", "requests/s", "candidates/s", "errors",
                       "server split per model (ms per request)"], table)
        out.append("")
    errs = [r for r in server.get("results", []) if r.get("errors")]
    if errs:
        out += ["Errors seen: " + "; ".join(f"{r['model']} {r['kind']}: {r['errors'][0]}" for r in errs[:5]), ""]
    out += [f"![{PLOTS[2][:-4]}]({PLOTS[2]})\n"] if PLOTS[2] in images else []
    return out


# ------------------------------------------------------------------------------------------ plots

def plots(engine: dict | None, server: dict | None, folder) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    written = []
    rows = _ok(engine)
    groups = sorted({(r["preset"], r["precision"]) for r in rows})
    if engine is not None:
        for name, xkey, title in ((PLOTS[0], "candidates_per_s", "p50 latency vs throughput (B sweep)"),
                                  (PLOTS[1], "C", "p50 latency vs candidates per user (B=1)")):
            n = max(1, len(groups))
            fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.2), squeeze=False)
            for ax, (preset, prec) in zip(axes[0], groups or [("", "")]):
                sel = [r for r in rows if r["preset"] == preset and r["precision"] == prec and r["scenario"] == "batch"]
                for eng in sorted({r["engine"] for r in sel}):
                    if xkey == "C":
                        pts = sorted((r["C"], r["p50_ms"], r["B"]) for r in sel if r["engine"] == eng and r["B"] == 1)
                    else:
                        base = (engine.get("sweep") or {}).get("base_c", 64)
                        pts = sorted(((r["candidates_per_s"], r["p50_ms"], r["B"]) for r in sel
                                      if r["engine"] == eng and r["C"] == base), key=lambda p: p[2])  # by B
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=eng)
                        if xkey != "C":
                            for x, y, b in pts:
                                ax.annotate(f"B={b}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_xlabel("candidates / s" if xkey != "C" else "candidates per user (C)")
                ax.set_ylabel("p50 latency (ms)")
                ax.set_title(f"{preset} {prec}: {title}", fontsize=9)
                ax.grid(True, which="both", alpha=0.3)
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(folder / name, dpi=110)
            plt.close(fig)
            written.append(folder / name)
    if server is not None:
        srows = [r for r in server.get("results", []) if r.get("completed") and r["kind"] == "closed"]
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for key in sorted({(r["preset"], r["model"]) for r in srows}):
            pts = sorted(((r["requests_per_s"], r["p50_ms"], r["p99_ms"], r["concurrency"]) for r in srows
                          if (r["preset"], r["model"]) == key), key=lambda p: p[3])  # by concurrency
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{key[0]} {key[1]} p50")
            ax.plot([p[0] for p in pts], [p[2] for p in pts], "x--", color=line.get_color(), alpha=0.6,
                    label=f"{key[0]} {key[1]} p99")
            for x, y, _, c in pts:
                ax.annotate(f"c={c}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("requests / s (closed loop)")
        ax.set_ylabel("latency (ms)")
        ax.set_yscale("log")
        ax.set_title("tritonserver end to end, gRPC", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / PLOTS[2], dpi=110)
        plt.close(fig)
        written.append(folder / PLOTS[2])
    return written


def load(folder) -> tuple[dict | None, dict | None]:
    folder = Path(folder)
    read = lambda n: json.loads((folder / n).read_text()) if (folder / n).exists() else None  # noqa: E731
    return read("engine.json"), read("server.json")


def write_report(folder, command: str | None = None) -> list[Path]:
    """Render report.md and the PNGs from the JSON files in `folder`; returns the paths written."""
    folder = Path(folder)
    engine, server = load(folder)
    if engine is None and server is None:
        raise FileNotFoundError(f"{folder} has neither engine.json nor server.json: run a benchmark first")
    command = command or (engine or server).get("report_command")
    try:
        written = plots(engine, server, folder)
    except ImportError:  # matplotlib missing (e.g. the lent GPU machine): the tables still get written
        written = []
    (folder / "report.md").write_text(render(engine, server, command, tuple(p.name for p in written)))
    return [folder / "report.md", *written]
