"""Engine mode: every engine x preset x B x C x precision in one process, so ratios are fair.

Every engine runs the same serving graph, `export.graphs.ranker_graph` (hashes in: tables, input checks,
transformer, unembedding; outputs logits and input_error), built from `phoenix_torch` with a seeded init:

| engine | how it is made |
|---|---|
| torch | the graph's module, eager, `torch.inference_mode` (with phoenix_torch's host-side input checks) |
| torch_compile | `torch.compile(module, dynamic=True)` (one compile serves every B and C) |
| cuda_graph | the eager module captured once per input shape in a CUDA graph (`torch.cuda.graph`), replayed (CUDA only) |
| torch_compile_cuda_graph | the torch_compile module (same compilation) captured the same way (CUDA only) |
| onnxruntime, aoti, tensorrt | exported by `export`'s own functions into a cache folder, loaded with `phoenix_runtime.engines` |

An engine that cannot run here is recorded with its reason (`phoenix_runtime.engines.available_engines()`, or the
error it raised while building) and the sweep goes on. Torch engines are fed tensors already on the device;
runtime engines are fed numpy arrays on CPU (what a serving host hands them) and device tensors on CUDA;
their outputs come back as numpy arrays (the runtime interface), so their times include that copy.

Scenarios per point: `batch` (one call of B users x C candidates); for 1000 candidates of one user:
`c1000_one_pass` (one call, isolated attention), `c1000_one_pass_dense` (one call, dense attention; the
engines in `Sweep.dense_engines`), `c1000_chunked` (16 sequential calls of 64, what the upstream pipeline does) and
`c1000_chunked_batched` (the 16 chunks as one call of 16 x 64).
"""
from __future__ import annotations

import gc
import hashlib
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from fnmatch import fnmatch
from pathlib import Path

import torch

from benchmarks.flops import forward_flops, shape_dict
from benchmarks.measure import Budget, latency_stats, time_call
from benchmarks.peak import fraction_of_peak, measure as measure_peak
from benchmarks.profile import profile_call
from phoenix_torch import skip_input_checks
from phoenix_torch.parity import PRECISIONS

DIRECT_ENGINES = ("torch", "torch_compile", "cuda_graph", "torch_compile_cuda_graph")
RUNTIME_ENGINES = ("onnxruntime", "aoti", "tensorrt")
ENGINES = DIRECT_ENGINES + RUNTIME_ENGINES
CUDA_ONLY = ("cuda_graph", "torch_compile_cuda_graph", "tensorrt")
SCENARIOS = ("batch", "c1000_one_pass", "c1000_one_pass_dense", "c1000_chunked", "c1000_chunked_batched")
CHUNKS, CHUNK = 16, 64
BIG_C = 1000


@dataclass(frozen=True)
class Point:
    engine: str
    preset: str
    precision: str
    B: int
    C: int
    scenario: str = "batch"

    @property
    def attention(self) -> str:
        return "dense" if self.scenario == "c1000_one_pass_dense" else "isolated"

    def calls(self) -> list[tuple[int, int]]:
        """(B, C) of each engine call one measurement makes."""
        if self.scenario == "c1000_chunked":
            return [(1, CHUNK)] * CHUNKS
        if self.scenario == "c1000_chunked_batched":
            return [(CHUNKS, CHUNK)]
        return [(self.B, self.C)]

    def label(self) -> str:
        s = "" if self.scenario == "batch" else f" {self.scenario}"
        return f"{self.engine} {self.preset} {self.precision} B={self.B} C={self.C}{s}"


@dataclass
class Sweep:
    """What to measure: per preset the batch sizes (at C=`base_c`) and candidate counts (at B=1)."""
    device: str = "cpu"
    engines: tuple[str, ...] = ("torch", "torch_compile", "onnxruntime", "aoti", "tensorrt")
    presets: tuple[str, ...] = ("mini", "nano")
    precisions: dict[str, tuple[str, ...]] = field(default_factory=lambda: {"mini": ("fp32", "bf16"),
                                                                             "nano": ("fp32",)})
    batch_sizes: dict[str, tuple[int, ...]] = field(default_factory=lambda: {"mini": (1, 16, 64), "nano": (1,)})
    candidates: dict[str, tuple[int, ...]] = field(default_factory=lambda: {"mini": (16, 64, 256, 1000),
                                                                            "nano": (64,)})
    base_c: int = 64
    big_c_presets: tuple[str, ...] = ("mini",)   # presets with the 1000-candidate scenarios
    # fnmatch patterns of "engine/preset/precision" not to measure. CPU default: what costs minutes of
    # compilation on 2 cores or means nothing (ONNX Runtime's CPU provider has no bf16 MatMul: phoenix_runtime.engines
    # emulates it in fp32).
    exclude: tuple[str, ...] = ("onnxruntime/*/bf16", "torch_compile/*/bf16", "torch_compile/nano/*", "aoti/nano/*")
    dense_engines: tuple[str, ...] = ("torch",)  # engines that also run the dense-attention 1000-candidate pass
    vocab: int = 65536                           # rows per hash table (the FLOPs do not depend on it)
    seed: int = 0
    budget: Budget = field(default_factory=Budget)
    deadline_s: float | None = None              # stop measuring after this many seconds (rest: skipped)
    cache_dir: str | None = None                 # exported engines are kept here between runs
    threads: int | None = None                   # CPU threads of torch and ONNX Runtime (None: their default)
    peak_seconds: float = 2.0                    # per peak measurement (benchmarks.peak)
    profile: tuple | None = ("mini", "fp32", 1, 64)   # (preset, precision, B, C) of the profiled call, or None


def plan(sweep: Sweep) -> list[Point]:
    """Every point, grouped by (precision, preset) then engine, so each model is built once; precisions in
    the order given (the first precision of every preset is measured before any second one)."""
    points = []
    order = list(dict.fromkeys(p for preset in sweep.presets for p in sweep.precisions.get(preset, ("fp32",))))
    groups = [(preset, prec) for prec in order for preset in sweep.presets
              if prec in sweep.precisions.get(preset, ("fp32",))]
    for preset, precision in groups:
        bs = sweep.batch_sizes.get(preset, (1,))
        cs = sweep.candidates.get(preset, ())
        for engine in sweep.engines:
            if any(fnmatch(f"{engine}/{preset}/{precision}", pat) for pat in sweep.exclude):
                continue
            shapes = [(b, sweep.base_c) for b in bs] + [(1, c) for c in cs if (1, c) not in
                                                        [(b, sweep.base_c) for b in bs]]
            points += [Point(engine, preset, precision, b, c) for b, c in shapes]
            if preset in sweep.big_c_presets:
                points += [Point(engine, preset, precision, 1, BIG_C, s)
                           for s in ("c1000_one_pass", "c1000_chunked", "c1000_chunked_batched")]
        if preset in sweep.big_c_presets:  # dense attention is another model: last
            points += [Point(e, preset, precision, 1, BIG_C, "c1000_one_pass_dense") for e in sweep.engines
                       if e in sweep.dense_engines and not any(fnmatch(f"{e}/{preset}/{precision}", pat)
                                                          for pat in sweep.exclude)]
    return points


# ------------------------------------------------------------------------------------------ models

def build_graph(preset: str, precision: str, attention: str = "isolated", vocab: int = 65536,
                seed: int = 0):
    """The serving graph (export.graphs.ranker_graph, hashes in) of a preset with a seeded, non-zero init."""
    from export.graphs import ranker_graph
    from export.models import seeded_tables, torch_tables
    from phoenix_torch import PhoenixModel, get_preset, init_seeded

    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {sorted(PRECISIONS)}, got {precision!r}")
    cfg = get_preset(preset, fprop_dtype=PRECISIONS[precision], attention_impl=attention)
    model = init_seeded(PhoenixModel(cfg), seed).eval()
    return cfg, ranker_graph(model, torch_tables(seeded_tables(cfg, vocab, seed + 1)))


def availability(device: str) -> dict[str, str | None]:
    """{engine: None if it can run on `device`, else the reason}."""
    try:
        from phoenix_runtime.engines import available_engines
        runtime = dict(available_engines())
    except Exception as e:  # phoenix_runtime.engines missing or broken: the runtime engines cannot run
        runtime = {k: f"phoenix_runtime.engines unavailable: {type(e).__name__}: {e}" for k in RUNTIME_ENGINES}
    out = {"torch": None, "torch_compile": runtime.get("torch_compile")}
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        return {k: "CUDA is not available" for k in ENGINES}
    for k in ("cuda_graph", "torch_compile_cuda_graph"):
        out[k] = None if cuda else "CUDA only"
    for k in RUNTIME_ENGINES:
        out[k] = runtime.get(k, f"phoenix_runtime.engines does not know engine kind {k!r}")
    if not cuda and out["tensorrt"] is None:
        out["tensorrt"] = "GPU only"
    return out


def source_key(*parts) -> str:
    """A cache key of `parts` and every source file an exported graph or a built repository depends on."""
    h = hashlib.sha256(repr(parts).encode())
    root = Path(__file__).resolve().parents[1]
    for pattern in ("phoenix_runtime/*.py", "phoenix_torch/*.py", "export/*.py", "serving/*.py",
                    "triton_repo/*/*/model.py"):
        for f in sorted(root.glob(pattern)):   # a repository copies phoenix_runtime/ and triton_repo/ sources
            h.update(f.read_bytes())
    h.update(torch.__version__.encode())
    return h.hexdigest()[:16]


class Bound:
    """A zero-argument callable running one measurement's calls, plus its device sync."""

    def __init__(self, fn, sync):
        self.fn, self.sync = fn, sync


_COMPILED: dict[int, object] = {}   # id(graph module) -> its torch.compile wrapper (shared by two engines)


class DirectEngine:
    """torch, torch_compile, cuda_graph, torch_compile_cuda_graph on the graph's module."""

    def __init__(self, kind: str, graph, device: str):
        self.kind, self.graph, self.device = kind, graph, torch.device(device)
        self.module = graph.module.to(self.device).eval()
        if kind in ("torch_compile", "torch_compile_cuda_graph"):
            key = id(self.module)
            if key not in _COMPILED:  # a new model: forget the previous one's compilations and their count
                _COMPILED.clear()
                torch._dynamo.reset()
                _COMPILED[key] = torch.compile(self.module, dynamic=True)
            self.fn = _COMPILED[key]
        else:
            self.fn = self.module
        self.sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)

    def bind(self, feeds: list[dict]) -> Bound:
        args = [tuple(f[n].to(self.device) for n in self.graph.input_names) for f in feeds]
        if self.kind in ("cuda_graph", "torch_compile_cuda_graph"):
            graphs = [self._capture(a) for a in args]
            return Bound(lambda: [g.replay() for g in graphs], self.sync)

        def run():
            with torch.inference_mode():
                for a in args:
                    self.fn(*a)
        return Bound(run, self.sync)

    def _capture(self, args):
        with torch.inference_mode(), skip_input_checks():
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):  # compiles (torch_compile_cuda_graph) and warms up outside the capture
                    self.fn(*args)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                g.outputs = self.fn(*args)
        return g


class RuntimeEngine:
    """onnxruntime / aoti / tensorrt: exported by `export`, loaded with `phoenix_runtime.engines`."""

    def __init__(self, kind: str, graph, device: str, folder: Path, threads: int | None = None):
        from benchmarks.artifacts import export_for  # the one place that knows export's build functions
        from phoenix_runtime.engines import load_engine
        if kind == "onnxruntime":  # fail before a costly export when the provider is missing
            from phoenix_runtime.engines import ort_providers
            ort_providers(device)
        manifest_dir = export_for(kind, graph, folder, device)
        self.kind, self.graph, self.device = kind, graph, device
        kw = {"threads": threads} if kind == "onnxruntime" and threads else {}
        self.engine = load_engine(manifest_dir, model=graph.name, kind=kind, device=device, **kw)
        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def bind(self, feeds: list[dict]) -> Bound:
        if self.device.startswith("cuda"):  # tensors already on the GPU, like the torch engines
            arrays = [{n: f[n].to(self.device) for n in self.graph.input_names} for f in feeds]
        else:
            arrays = [{n: f[n].numpy() for n in self.graph.input_names} for f in feeds]

        def run():
            for a in arrays:
                self.engine(a)
        return Bound(run, self.sync)


def make_engine(kind: str, graph, device: str, folder: Path, threads: int | None = None):
    if kind in DIRECT_ENGINES:
        return DirectEngine(kind, graph, device)
    return RuntimeEngine(kind, graph, device, folder, threads)


# ------------------------------------------------------------------------------------------ sweep

def feeds_for(graph, point: Point, seed: int) -> list[dict]:
    """Valid random inputs (first hash non-zero) for each call of `point`; chunks share one user."""
    if point.scenario in ("c1000_chunked", "c1000_chunked_batched"):
        full = graph.random_inputs({"B": 1, "C": CHUNKS * CHUNK}, seed=seed)
        chunks = []
        for i in range(CHUNKS):
            # clone: a view (strides, storage offset) would make torch.compile recompile
            chunk = {n: (v[:, i * CHUNK:(i + 1) * CHUNK].clone() if n.startswith("candidate") else v)
                     for n, v in full.items()}
            if (i + 1) * CHUNK > BIG_C:  # candidates past the 1000th are padding (hash 0), as upstream pads
                keep = max(0, BIG_C - i * CHUNK)
                for n in chunk:
                    if n.startswith("candidate"):
                        chunk[n][:, keep:] = 0
            chunks.append(chunk)
        if point.scenario == "c1000_chunked":
            return chunks
        return [{n: torch.cat([c[n] for c in chunks]) for n in full}]
    return [graph.random_inputs({"B": point.B, "C": point.C}, seed=seed)]


def measure_point(engine, graph, cfg, point: Point, sweep: Sweep) -> dict:
    bound = engine.bind(feeds_for(graph, point, sweep.seed))
    t = time_call(bound.fn, bound.sync, sweep.budget)
    flops = sum(forward_flops(cfg, b, c, point.attention) for b, c in point.calls())
    users = 1 if point.scenario.startswith("c1000") else point.B
    cands = BIG_C if point.scenario.startswith("c1000") else point.B * point.C
    stats = latency_stats(t["samples_s"], users, cands, flops)
    del bound
    return {**asdict(point), "attention": point.attention, "status": "ok", **stats, "stable": t["stable"],
            "first_call_s": t["warmup_s"][0] if t["warmup_s"] else None,
            "warmup_ms": [w * 1e3 for w in t["warmup_s"]]}


def _skipped(point: Point, reason: str) -> dict:
    return {**asdict(point), "attention": point.attention, "status": "skipped", "reason": reason}


def run(sweep: Sweep, on_point=lambda point, i, n: None, log=print, checkpoint=None) -> dict:
    """Measure every point of `plan(sweep)`; returns {"sweep", "availability", "results", ...}.

    `checkpoint(partial_result)` is called after every point (so a killed run leaves its figures).
    """
    import tempfile

    torch.manual_seed(sweep.seed)
    if sweep.threads:
        torch.set_num_threads(sweep.threads)
    avail = availability(sweep.device)
    points = plan(sweep)
    log("measuring the machine's peak (matmuls, memory copy)")
    peak = measure_peak(sweep.device, seconds=sweep.peak_seconds)
    results, start = [], time.monotonic()
    cache = Path(sweep.cache_dir) if sweep.cache_dir else Path(tempfile.mkdtemp(prefix="phoenix-bench-"))
    graphs: dict[tuple, tuple] = {}
    engines: dict[tuple, object] = {}
    failed: dict[tuple, str] = {}
    models: dict[str, dict] = {}
    for i, point in enumerate(points):
        on_point(point, i, len(points))
        if sweep.deadline_s is not None and time.monotonic() - start > sweep.deadline_s:
            results.append(_skipped(point, f"deadline of {sweep.deadline_s:g} s reached"))
            continue
        if avail.get(point.engine):
            results.append(_skipped(point, avail[point.engine]))
            continue
        gkey = (point.preset, point.precision, point.attention)
        ekey = (point.engine, *gkey)
        if ekey in failed:
            results.append(_skipped(point, failed[ekey]))
            continue
        try:
            if gkey not in graphs:
                _drop_other_graphs(graphs, engines, gkey)
                graphs[gkey] = build_graph(*gkey, vocab=sweep.vocab, seed=sweep.seed)
            cfg, graph = graphs[gkey]
            if ekey not in engines:
                folder = cache / f"{point.engine}-{'-'.join(gkey)}-{source_key(gkey, sweep.vocab, sweep.seed)}"
                t0 = time.perf_counter()
                engines[ekey] = make_engine(point.engine, graph, sweep.device, folder, sweep.threads)
                log(f"{point.engine} {' '.join(gkey)}: ready in {time.perf_counter() - t0:.1f} s")
            row = measure_point(engines[ekey], graph, cfg, point, sweep)
            row["fraction_of_peak"] = fraction_of_peak(row.get("tflops"), point.precision, peak)
            results.append(row)
        except Exception as e:  # record why and go on: one broken engine must not stop the sweep
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            log(f"{point.label()}: failed: {reason}")
            log("".join(traceback.format_exception(e))[-2000:])
            if ekey not in engines:
                failed[ekey] = reason
            results.append({**_skipped(point, reason), "status": "failed"})
        finally:
            if sweep.device.startswith("cuda"):
                torch.cuda.empty_cache()
        if gkey in graphs:
            models[f"{point.preset}/{point.precision}"] = {"shape": shape_dict(graphs[gkey][0])}
        if checkpoint:
            checkpoint(_result(sweep, avail, results, models, start, peak, None, done=False))
    profile = None
    if sweep.profile and not sweep.device.startswith("cuda"):
        _drop_other_graphs(graphs, engines, ())
        preset, precision, b, c = sweep.profile
        log(f"profiling one {preset} {precision} call at B={b}, C={c} (ONNX Runtime and torch eager)")
        profile = profile_call(preset, precision, b, c, sweep.seed)
    return _result(sweep, avail, results, models, start, peak, profile, done=True)


def _result(sweep, avail, results, models, start, peak, profile, done: bool) -> dict:
    return {"mode": "engine", "device": sweep.device, "complete": done, "sweep": _sweep_dict(sweep),
            "availability": avail, "peak": peak, "profile": profile, "results": results, "models": models,
            "elapsed_s": time.monotonic() - start}


def _drop_other_graphs(graphs: dict, engines: dict, keep: tuple):
    """Free models and engines of other presets/precisions before building the next one (memory)."""
    for k in [k for k in graphs if k[:2] != keep[:2]]:
        del graphs[k]
    for k in [k for k in engines if k[1:3] != keep[:2]]:
        del engines[k]
    gc.collect()


def _sweep_dict(sweep: Sweep) -> dict:
    d = asdict(sweep)
    d["budget"] = asdict(sweep.budget)
    return d


def quick_sweep(device: str = "cpu") -> Sweep:
    """The CI smoke test: demo preset, tiny budgets; eager torch and ONNX Runtime (the compiling engines take
    minutes on a small CPU, so they are left to the full sweep), TensorRT to exercise the skip path. No operator
    profile (another ONNX export: tests/test_benchmarks.py checks the profilers on a small graph)."""
    return Sweep(device=device, engines=("torch", "onnxruntime", "tensorrt"), presets=("demo",),
                 precisions={"demo": ("fp32",)}, batch_sizes={"demo": (1, 4)}, candidates={"demo": (8, 32)},
                 base_c=8, big_c_presets=("demo",), vocab=1024, exclude=(), peak_seconds=0.2, profile=None,
                 budget=Budget(warmup=1, min_reps=5, max_reps=50, seconds=0.05, max_seconds=1.0))


def replace_sweep(sweep: Sweep, **kw) -> Sweep:
    return replace(sweep, **{k: v for k, v in kw.items() if v is not None})
