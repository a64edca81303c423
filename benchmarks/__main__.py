"""`python -m benchmarks {engine,server,all,report}`: run the benchmarks, write JSON + report.md + PNGs."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks import engine as engine_mod
from benchmarks import report as report_mod
from benchmarks import server as server_mod
from benchmarks.env import environment
from benchmarks.measure import Budget
from benchmarks.options import positive, positive_floats, positive_ints
from benchmarks.progress import console
from benchmarks.progress import progress as _progress
from phoenix_torch import PRESETS

DEFAULT_CACHE = Path.home() / ".cache" / "phoenix_benchmarks"   # exported engines and built repositories

FULL_CPU_COMMAND = report_mod.REPRODUCE["cpu"]


def _names(allowed):
    def parse(text: str) -> tuple[str, ...]:
        vals = tuple(x.strip() for x in text.split(",") if x.strip())
        bad = [v for v in vals if allowed and v not in allowed]
        if bad or not vals:
            raise argparse.ArgumentTypeError(f"unknown {bad or text!r}; choose from {', '.join(allowed)}")
        return vals
    return parse


def _preset_ints(item: str) -> tuple[str, tuple[int, ...]]:
    """"mini=1,16,64" -> ("mini", (1, 16, 64)); "1,16" -> ("*", (1, 16)) (every preset)."""
    preset, _, vals = item.rpartition("=")
    try:
        return preset or "*", positive_ints(vals)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{item!r}: {e}") from None


def _per_preset(items: list | None) -> dict | None:
    return dict(items) if items else None


def _expand(spec: dict | None, presets, default: dict) -> dict:
    if spec is None:
        return default
    return {p: spec.get(p, spec.get("*", default.get(p, ()))) for p in presets}


def add_engine_args(ap: argparse.ArgumentParser):
    g = ap.add_argument_group("engine mode")
    g.add_argument("--device", default="cpu",
                   help="device of the engines: cpu, cuda or cuda:N (default: cpu)")
    g.add_argument("--engines", type=_names(engine_mod.ENGINES), default=None,
                   help=f"comma-separated engines (default: {','.join(engine_mod.Sweep().engines)} on cpu; "
                        "torch,torch_compile,cuda_graph,torch_compile_cuda_graph,aoti,onnxruntime,tensorrt on cuda). "
                        f"Known: {', '.join(engine_mod.ENGINES)}. Unavailable ones are recorded with the reason")
    g.add_argument("--presets", type=_names(PRESETS), default=None,
                   help="comma-separated presets of phoenix_torch.PRESETS (default: mini,nano)")
    g.add_argument("--precisions", type=_names(tuple(engine_mod.PRECISIONS)), default=None,
                   help="comma-separated forward precisions: fp32, bf16 (default: fp32,bf16 for mini, fp32 for others "
                        "on cpu)")
    g.add_argument("--batch-sizes", nargs="+", type=_preset_ints, default=None, metavar="[PRESET=]B,B,...",
                   help="users per call, measured at C=--base-c; per preset (mini=1,16,64 nano=1,8) or for all "
                        "(1,16). Default: mini 1,16,64; nano 1")
    g.add_argument("--candidates", nargs="+", type=_preset_ints, default=None, metavar="[PRESET=]C,C,...",
                   help="candidates per user measured at B=1 (the latency vs C curve); per preset or for all. "
                        "Default: mini 16,64,256,1000; nano 64")
    g.add_argument("--base-c", type=positive, default=None, help="candidates per user of the batch sweep (default: 64)")
    g.add_argument("--big-c-presets", type=_names(PRESETS), default=None,
                   help="presets that get the 1000-candidates scenarios (one pass isolated / dense vs 16 chunks of "
                        "64, sequential and batched); default: mini")
    g.add_argument("--exclude", nargs="*", default=None, metavar="ENGINE/PRESET/PRECISION",
                   help="combinations not to measure, as shell patterns, e.g. 'aoti/*/fp32' 'torch_compile*/nano/*'; "
                        "no pattern = measure everything. Default on cpu: " + " ".join(engine_mod.Sweep().exclude)
                        + " (minutes of compilation on a small CPU; ONNX Runtime's bf16 is emulated in fp32 on CPU); "
                        "none on cuda")
    g.add_argument("--dense-engines", type=_names(engine_mod.DIRECT_ENGINES), default=None,
                   help="engines that also run the 1000-candidate pass with dense attention (another model, so "
                        "another compilation for compiled engines); default: torch on cpu, torch,cuda_graph on cuda")
    g.add_argument("--vocab", type=positive, default=None,
                   help="rows per hash table of the benchmark models (default: 65536; the FLOPs do not depend on it)")
    g.add_argument("--threads", type=positive, default=None,
                   help="CPU threads of torch (torch.set_num_threads; AOTInductor shares them) and of ONNX Runtime "
                        "(intra-op). Default: their own default, one per core. On a machine shared with other jobs "
                        "1 is far steadier: spinning thread pools lose whole time slices")
    g.add_argument("--warmup", type=int, default=None, help="untimed calls before timing each point (default: 3)")
    g.add_argument("--min-reps", type=positive, default=None, help="fewest timed calls per point (default: 10)")
    g.add_argument("--seconds", type=float, default=None,
                   help="time budget per point once --min-reps calls are done, if the median is not yet stable "
                        "(default: 2)")
    g.add_argument("--rel-tol", type=float, default=None,
                   help="the median is stable when the median of the newest half of the calls is within this "
                        "fraction of the median of all (default: 0.02)")
    g.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                   help="stop measuring after this many seconds; the remaining points are recorded as skipped "
                        "(default: none)")


def add_server_args(ap: argparse.ArgumentParser):
    g = ap.add_argument_group("server mode")
    g.add_argument("--url", default=None,
                   help="benchmark a running tritonserver at this gRPC host:port instead of building and starting "
                        "one per preset (its memory is then not measured)")
    g.add_argument("--server-presets", type=_names(PRESETS), default=None,
                   help="presets served one after the other, each from a fresh `python -m export.build` repository "
                        "(default: mini,nano)")
    g.add_argument("--full-presets", type=_names(PRESETS), default=None,
                   help="presets that get the whole concurrency sweep and the Poisson runs; the others are measured "
                        "at concurrency 1 only (default: mini)")
    g.add_argument("--concurrency", type=positive_ints, default=None,
                   help="closed-loop concurrency levels (default: 1,2,4,8,16,32,64)")
    g.add_argument("--models", type=_names(server_mod.MODELS), default=None,
                   help="served models to load: phoenix (ensemble), phoenix_ranker (default: both)")
    g.add_argument("--users", type=positive, default=None, help="users per request (default: 1)")
    g.add_argument("--server-candidates", type=positive, default=None,
                   help="candidates per user per request (default: 64, at most the served limit)")
    g.add_argument("--step-seconds", type=float, default=None,
                   help="duration of each closed-loop step (default: 3)")
    g.add_argument("--poisson-rates", type=positive_floats, default=None,
                   help="open-loop arrival rates in requests/s (default: 0.5 and 0.9 of the closed-loop peak)")
    g.add_argument("--poisson-seconds", type=float, default=None, help="duration of each open-loop run (default: 5)")
    g.add_argument("--build-arg", action="append", default=None, metavar="ARG",
                   help="extra argument for `python -m export.build` (repeatable; default: --target cpu), e.g. "
                        "--build-arg=--target --build-arg=gpu-python")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Latency and throughput of every Phoenix engine (engine mode) and of the model served by "
                    "tritonserver (server mode). Writes engine.json / server.json (every figure + the environment), "
                    f"report.md and PNG plots into --out. The committed CPU results come from `{FULL_CPU_COMMAND}`.")
    sub = ap.add_subparsers(dest="mode", required=True)
    modes = {"engine": "every engine x preset x B x C x precision in one process",
             "server": "closed-loop concurrency sweep and open-loop Poisson load against tritonserver over gRPC",
             "all": "engine mode, then server mode, one report"}
    for name, text in modes.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--out", default=None,
                       help="output folder (default: benchmarks/results/<cpu|cuda>, or a temporary folder with --quick)")
        p.add_argument("--quick", action="store_true",
                       help="reduced sweep (demo preset, short budgets) that finishes in about a minute (a first run; "
                            "the exports are cached): a smoke test of the harness, not a measurement")
        p.add_argument("--cache-dir", default=None,
                       help="exported engines and built repositories are kept here between runs "
                            f"(default: {DEFAULT_CACHE})")
        p.add_argument("--seed", type=int, default=0, help="seed of the model weights and the inputs (default: 0)")
        p.add_argument("--note", default=None, help="a sentence printed at the top of the report (e.g. machine load)")
        if name in ("engine", "all"):
            add_engine_args(p)
        if name in ("server", "all"):
            add_server_args(p)
    rp = sub.add_parser("report", help="re-render report.md and the PNGs from the JSON in a results folder",
                        description="Re-render report.md and the PNGs from engine.json / server.json in FOLDER.")
    rp.add_argument("folder", help="results folder (e.g. benchmarks/results/cpu)")
    return ap


def engine_sweep(args) -> engine_mod.Sweep:
    cuda = args.device.startswith("cuda")
    if args.quick:
        sw = engine_mod.quick_sweep(args.device)
    else:
        sw = engine_mod.Sweep(device=args.device)
        if cuda:
            sw.engines = ("torch", "torch_compile", "cuda_graph", "torch_compile_cuda_graph", "aoti",
                          "onnxruntime", "tensorrt")
            sw.exclude, sw.dense_engines = (), ("torch", "cuda_graph")
    presets = args.presets or sw.presets
    b = Budget(**{**sw.budget.__dict__, **{k: v for k, v in (("warmup", args.warmup), ("min_reps", args.min_reps),
                                                             ("seconds", args.seconds), ("rel_tol", args.rel_tol))
                                           if v is not None}})
    return engine_mod.replace_sweep(
        sw, engines=args.engines, presets=presets,
        precisions={p: args.precisions for p in presets} if args.precisions else
        {p: sw.precisions.get(p, ("fp32",)) for p in presets},
        batch_sizes=_expand(_per_preset(args.batch_sizes), presets, sw.batch_sizes),
        candidates=_expand(_per_preset(args.candidates), presets, sw.candidates),
        base_c=args.base_c, big_c_presets=args.big_c_presets, vocab=args.vocab,
        exclude=tuple(args.exclude) if args.exclude is not None else None, dense_engines=args.dense_engines,
        threads=args.threads, seed=args.seed, budget=b,
        deadline_s=args.deadline, cache_dir=args.cache_dir)


def server_sweep(args) -> server_mod.ServerSweep:
    if args.quick:
        sw = server_mod.ServerSweep(presets=("demo",), full_presets=("demo",), concurrency=(1, 2), candidates=8,
                                    seconds=0.5, poisson_fractions=(0.5,), poisson_seconds=1.0, warmup_requests=2,
                                    build_args=("--target", "cpu", "--no-towers", "--engines", "none"))
    else:
        sw = server_mod.ServerSweep()
    return engine_mod.replace_sweep(
        sw, url=args.url, presets=args.server_presets, full_presets=args.full_presets, concurrency=args.concurrency,
        models=args.models, users_per_request=args.users, candidates=args.server_candidates,
        seconds=args.step_seconds, poisson_rates=args.poisson_rates, poisson_seconds=args.poisson_seconds,
        build_args=tuple(args.build_arg) if args.build_arg else None, cache_dir=args.cache_dir, seed=args.seed)


def run_engine(args, out: Path, command: str) -> Path:
    sweep = engine_sweep(args)
    sweep.cache_dir = sweep.cache_dir or str(DEFAULT_CACHE)
    env = environment()
    with _progress() as progress:
        task = progress.add_task("engine mode", total=len(engine_mod.plan(sweep)))

        def on_point(point, i, n):
            progress.update(task, completed=i, description=point.label())
        result = engine_mod.run(sweep, on_point, log=progress.console.log,
                                checkpoint=lambda partial: _write(out, "engine.json", partial, env, args, command,
                                                                  quiet=True))
        progress.update(task, completed=len(result["results"]), description="engine mode done")
    return _write(out, "engine.json", result, env, args, command)


def run_server(args, out: Path, command: str) -> Path:
    sweep = server_sweep(args)
    sweep.cache_dir = sweep.cache_dir or str(DEFAULT_CACHE)
    env = environment()
    with _progress() as progress:
        task = progress.add_task("server mode", total=server_mod.plan_steps(sweep))

        def on_step(text):
            progress.update(task, advance=1, description=text)
        result = server_mod.run(sweep, on_step, log=progress.console.log)
    return _write(out, "server.json", result, env, args, command)


def _write(out: Path, name: str, result: dict, env: dict, args, command: str, quiet: bool = False) -> Path:
    if args.note:
        env["note"] = args.note
    result = {"environment": env, "report_command": command, **result}
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    tmp.replace(path)
    if not quiet:
        console.log(f"wrote {path}")
    return path


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.mode == "report":
        try:
            paths = report_mod.write_report(args.folder)
        except FileNotFoundError as e:
            console.print(f"error: {e}")
            return 2
        console.print("wrote " + ", ".join(str(p) for p in paths))
        return 0
    argv = sys.argv[1:] if argv is None else list(argv)
    command = "python -m benchmarks " + " ".join(argv)
    if args.out:
        out = Path(args.out)
    elif args.quick:
        import tempfile
        out = Path(tempfile.mkdtemp(prefix="phoenix-bench-quick-"))
    else:
        out = Path("benchmarks/results") / ("cuda" if str(getattr(args, "device", "cpu")).startswith("cuda") else "cpu")
    t0 = time.monotonic()
    if args.mode == "all":  # one report for both: drop a stale half from an earlier run
        for stale in ("engine.json", "server.json"):
            (out / stale).unlink(missing_ok=True)
    if args.mode in ("engine", "all"):
        run_engine(args, out, command)
    if args.mode in ("server", "all"):
        run_server(args, out, command)
    paths = report_mod.write_report(out, command)
    engine, server = report_mod.load(out)
    for name, data in (("engine.json", engine), ("server.json", server)):
        if data is not None:  # the findings behind the report's answers, next to the raw figures
            data["findings"] = report_mod.findings(engine, server)
            (out / name).write_text(json.dumps(data, indent=1, default=str) + "\n")
    console.print(f"done in {time.monotonic() - t0:.0f} s: " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
