"""Where the time of one ranker call goes: matmuls, attention, norms, gathers, data movement, other elementwise,
and the engine's own overhead between operators.

Two engines are profiled on the same graph and inputs: ONNX Runtime (its profiler: per-node kernel times
inside each run) and torch eager (torch.profiler: self CPU time per aten op). An engine's "overhead" is
the run's wall time minus the time inside its operators: scheduling, dispatch, allocation, Python.
Profiling slows every operator a little, so the shares matter more than the absolute times.

    python -m benchmarks.profile [--preset mini] [--precision fp32] [--batch 1] [--candidates 64]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

import torch

CATEGORIES = {   # operator name (ONNX op type or aten op, lower case) -> category
    "matmul": ("matmul", "fusedmatmul", "gemm", "mm", "bmm", "addmm", "linear", "baddbmm"),
    "attention (softmax, cap, mask)": ("softmax", "_softmax", "tanh", "where", "masked_fill", "masked_fill_"),
    "norms": ("pow", "reducemean", "mean", "rsqrt", "sqrt", "reciprocal", "simplifiedlayernormalization",
              "skipsimplifiedlayernormalization"),
    "gathers (embeddings)": ("gather", "gatherelements", "index", "embedding", "index_select"),
    "data movement": ("concat", "cat", "transpose", "reshape", "slice", "split", "expand", "copy_", "_to_copy",
                      "contiguous", "clone", "permute", "view", "unsqueeze", "squeeze", "cast", "identity",
                      "as_strided", "split_with_sizes", "flatten"),
}


def category(op: str) -> str:
    op = op.lower()
    for name, ops in CATEGORIES.items():
        if op in ops:
            return name
    return "other elementwise"


def _wall_ms(fn, runs: int = 50) -> float:
    """Median milliseconds of fn() without the profiler (after 5 warm-up calls)."""
    for _ in range(5):
        fn()
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return sorted(samples)[len(samples) // 2] * 1e3


def _summary(per_op: dict[str, float], wall_ms: float) -> dict:
    """{category: share of the time inside operators}, the top operators' shares, the unprofiled wall time."""
    by_cat = collections.Counter()
    for op, ms in per_op.items():
        by_cat[category(op)] += ms
    inside = sum(by_cat.values()) or 1.0
    return {"wall_ms": round(wall_ms, 3),
            "categories": {k: round(v / inside, 3) for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
            "top_ops": {op: round(ms / inside, 3) for op, ms in collections.Counter(per_op).most_common(8)}}


def profile_onnxruntime(onnx_path: Path, feed: dict, runs: int = 30) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"phoenix-ort-profile-{os.getpid()}")
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    unprofiled = ort.InferenceSession(str(onnx_path), plain, providers=["CPUExecutionProvider"])
    wall_ms = _wall_ms(lambda: unprofiled.run(None, feed))
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, feed)
    trace = session.end_profiling()
    events = json.loads(Path(trace).read_text())
    os.remove(trace)
    per_op, kernels = collections.Counter(), 0
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 1e3
            kernels += 1
    return _summary(per_op, wall_ms) | {"operators_per_call": kernels // runs}


def profile_torch(module, args: tuple, runs: int = 30) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        wall_ms = _wall_ms(lambda: module(*args))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                module(*args)
    per_op, calls = collections.Counter(), 0
    for e in prof.key_averages():
        if e.key.startswith("aten::"):
            per_op[e.key.removeprefix("aten::")] += e.self_cpu_time_total / 1e3
            calls += e.count
    return _summary(per_op, wall_ms) | {"operators_per_call": calls // runs}


def profile_call(preset: str = "mini", precision: str = "fp32", batch: int = 1, candidates: int = 64,
                 seed: int = 0) -> dict:
    """Both engines' breakdown of one call of the served ranker graph (embeddings in, as the cpu target's
    host runs it) at B=batch, C=candidates."""
    from export.graphs import ranker_graph
    from export.models import ModelSource, load_models
    from export.onnx_export import export_onnx, write_cpu_bf16

    models = load_models(ModelSource(preset=preset, precision=precision, vocab=1000, seed=seed, towers=False))
    spec = ranker_graph(models.ranker)
    inputs = spec.random_inputs({"B": batch, "C": candidates}, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        art = export_onnx(spec, Path(tmp) / "ranker.onnx", root=tmp)
        if precision == "bf16":
            art = write_cpu_bf16(art, tmp)
        ort = profile_onnxruntime(Path(tmp) / art.path, {n: v.numpy() for n, v in inputs.items()})
    eager = profile_torch(spec.module.eval(), tuple(inputs[n] for n in spec.input_names))
    return {"preset": preset, "precision": precision, "B": batch, "C": candidates,
            "engines": {"onnxruntime": ort, "torch": eager}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.profile",
                                 description="Break one ranker call down by operator category (matmul, attention, "
                                             "norms, gathers, data movement, other, overhead) for ONNX Runtime "
                                             "and torch eager; print JSON.")
    ap.add_argument("--preset", default="mini", help="model preset (default: mini)")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="forward precision (default: fp32)")
    ap.add_argument("--batch", type=int, default=1, help="users per call, B (default: 1)")
    ap.add_argument("--candidates", type=int, default=64, help="candidates per user, C (default: 64)")
    args = ap.parse_args(argv)
    print(json.dumps(profile_call(args.preset, args.precision, args.batch, args.candidates), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
