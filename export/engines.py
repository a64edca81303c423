"""Compiled engines for the build: AOTInductor packages and TensorRT plans.

`build_engines(kinds, graphs, onnx_artifacts, stage_dir, args)` compiles the served graphs (ranker and
both towers) and returns their manifest artifacts, each checked for parity before it is returned:
- `aoti`: `<phoenix_model>/1/model_<device>.pt2` from the torch module, checked against torch;
- `tensorrt`: `<phoenix_model>/1/model.plan` (+ `model.plan.json`) from the ONNX graph, checked
  against ONNX Runtime at the optimization profile's min, opt and max shapes.
Engines live inside the model folders: Triton loads every top-level folder of the output as a model.

"auto" builds every engine that can be built here and says in one line why TensorRT was skipped;
naming an engine that cannot be built stops with `EngineUnavailable` (one sentence: what is missing,
how to get it).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console

from export import aoti, tensorrt
from export.graphs import GraphSpec
from export.manifest import add_file_info, sha256_file
from export.repository import ENGINE_MODELS, VERSION
from export.runtime import TOLERANCE, EngineUnavailable, OnnxRuntimeEngine, ParityError, max_abs_err

KINDS = ("aoti", "tensorrt")
FOLDERS = {model: folder for folder, model in ENGINE_MODELS.items()}   # "ranker" -> "phoenix_ranker"
DEFAULT_TIMING_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "phoenix" / "tensorrt.cache"
console = Console(stderr=True)


def add_arguments(parser: argparse.ArgumentParser):
    g = parser.add_argument_group("compiled engines (AOTInductor, TensorRT)")
    g.add_argument("--trt-profile", default=None, metavar="B=MIN:OPT:MAX,C=MIN:OPT:MAX",
                   help="TensorRT optimization profile of the dynamic dims B (users) and C (candidates); dims not "
                        "named keep their default B=1:8:<--max-batch-size>, C=1:<preset candidates>:max(1000, preset "
                        "candidates)")
    g.add_argument("--trt-workspace-gb", type=float, default=None,
                   help="TensorRT workspace memory pool limit in GiB (default: TensorRT's, the GPU's memory)")
    g.add_argument("--trt-timing-cache", default=str(DEFAULT_TIMING_CACHE), metavar="PATH",
                   help="TensorRT timing cache, read before and written after each build so rebuilds are fast "
                        f"(default: {DEFAULT_TIMING_CACHE}; kept outside the model repository)")
    g.add_argument("--trt-version-compatible", action="store_true",
                   help="build version-compatible plans (loadable by newer TensorRT; the plan carries its lean "
                        "runtime, so loaders must allow host code)")
    g.add_argument("--trt-hardware-compatible", action="store_true",
                   help="build plans that run on every Ampere-or-newer GPU (slower than plans for one GPU)")
    g.add_argument("--aoti-device", choices=("cpu", "cuda", "auto"), default="auto",
                   help="device the AOTInductor packages are compiled for (auto: cuda if available, else cpu)")


def unavailable_reason(kind: str) -> str | None:
    if kind == "aoti":
        return aoti.compiler_missing()
    if kind == "tensorrt":
        return tensorrt.unavailable_reason()
    raise ValueError(f"unknown compiled engine {kind!r} (known: {', '.join(KINDS)})")


def resolve_kinds(requested) -> list[str]:
    """The compiled engines to build for --engines `requested` (other kinds are not this module's)."""
    requested = list(requested)
    kinds = []
    for kind in KINDS:
        reason = unavailable_reason(kind)
        if "auto" in requested and kind not in requested:
            if reason:
                console.print(f"[yellow]--engines auto: skipping {kind}: {reason}[/]", soft_wrap=True)
            else:
                kinds.append(kind)
        elif kind in requested:
            if reason:
                raise EngineUnavailable(f"--engines {kind}: {reason}")
            kinds.append(kind)
    return kinds


def served_graphs(graphs: dict[str, GraphSpec]) -> dict[str, GraphSpec]:
    return {name: spec for name, spec in graphs.items() if name in FOLDERS}


def engine_path(stage_dir: Path, model: str, filename: str) -> Path:
    return Path(stage_dir) / FOLDERS[model] / VERSION / filename


def build_engines(kinds, graphs: dict[str, GraphSpec], onnx_artifacts: list[dict], stage_dir, args) -> list[dict]:
    """Build the requested compiled engines into `stage_dir`; return their manifest artifacts."""
    stage_dir = Path(stage_dir)
    artifacts = []
    for kind in resolve_kinds(kinds):
        if kind == "aoti":
            artifacts += build_aoti_engines(graphs, stage_dir, getattr(args, "aoti_device", "auto"))
        else:
            artifacts += build_tensorrt_engines(graphs, onnx_artifacts, stage_dir, args)
    return artifacts


def build_aoti_engines(graphs: dict[str, GraphSpec], stage_dir: Path, device: str = "auto") -> list[dict]:
    device = aoti.resolve_device(device)
    out = []
    for name, spec in served_graphs(graphs).items():
        with console.status(f"AOTInductor: compiling {name} for {device} (minutes on a small CPU)"):
            art = aoti.build_aoti(spec, engine_path(stage_dir, name, f"model_{device}.pt2"), device, root=stage_dir)
        out.append(add_file_info(stage_dir, art))
        console.print(f"[green]✓[/] aoti {name} ({device}): export {art['export_s']} s, compile "
                      f"{art['compile_s']} s, parity max abs err {art['parity_max_abs_err']:.2e}", soft_wrap=True)
    return out


# ---------------------------------------------------------------------------------------------- TensorRT

def default_profile(args) -> dict:
    """B=1:8:<--max-batch-size, 64>, C=1:<preset candidates>:max(1000, preset candidates)."""
    from phoenix_torch import get_preset
    candidates = get_preset(getattr(args, "preset", None) or "demo").candidate_seq_len
    return tensorrt.default_profile(candidates, getattr(args, "max_batch_size", None) or tensorrt.DEFAULT_BATCH[2])


def graph_profile(spec: GraphSpec, profile: dict) -> dict:
    """The profile restricted to the dynamic dims the graph's inputs use (towers have no C)."""
    used = {d for t in spec.inputs for d in t.shape if isinstance(d, str)}
    return {d: v for d, v in profile.items() if d in used}


def onnxruntime_reference(onnx_art: dict, stage_dir: Path):
    """The runtime's ONNX Runtime engine for the graph (CUDA provider where onnxruntime-gpu is installed)."""
    import onnxruntime as ort
    device = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    return OnnxRuntimeEngine.from_artifact(onnx_art, stage_dir, device)


def check_plan(spec: GraphSpec, runner, reference, profile: dict, precision: str) -> float:
    """Run the plan and the reference on random valid inputs at the profile's min/opt/max; max abs err."""
    worst = 0.0
    for i, dims in enumerate(tensorrt.check_points(profile)):
        feed = {n: t.numpy() for n, t in spec.random_inputs(dims, seed=200 + i).items()}
        got = {n: t.float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy()
               for n, t in runner(feed).items()}
        err = max_abs_err(got, reference(feed), spec.output_names)
        if not err <= TOLERANCE[precision]:
            raise ParityError(f"{spec.name} TensorRT plan differs from ONNX Runtime at {dims}: "
                                   f"max abs err {err:.3g} > {TOLERANCE[precision]}")
        worst = max(worst, err)
    return worst


def build_tensorrt_engines(graphs: dict[str, GraphSpec], onnx_artifacts: list[dict], stage_dir: Path,
                           args) -> list[dict]:
    profile = tensorrt.parse_profile(getattr(args, "trt_profile", None), default_profile(args))
    cache = getattr(args, "trt_timing_cache", None)
    out = []
    for onnx_art in onnx_artifacts:
        name = onnx_art["model"]
        if name not in FOLDERS or name not in graphs:
            continue
        spec, onnx_path = graphs[name], stage_dir / onnx_art["path"]
        plan = engine_path(stage_dir, name, "model.plan")
        p = graph_profile(spec, profile)
        precision = onnx_art.get("precision", spec.precision)
        with console.status(f"TensorRT: building {name} ({tensorrt.format_profile(p)})"):
            meta = tensorrt.build_plan(
                onnx_path, plan, inputs=onnx_art["inputs"], outputs=onnx_art["outputs"], profile=p,
                precision=precision, onnx_sha256=onnx_art.get("sha256") or sha256_file(onnx_path),
                onnx_relpath=onnx_art["path"], workspace_gb=getattr(args, "trt_workspace_gb", None),
                timing_cache=Path(cache) if cache else None,
                version_compatible=getattr(args, "trt_version_compatible", False),
                hardware_compatible=getattr(args, "trt_hardware_compatible", False))
        with console.status(f"TensorRT: checking {name} against ONNX Runtime at min/opt/max"):
            runner = tensorrt.PlanRunner(plan, allow_host_code=meta["version_compatible"])
            err = check_plan(spec, runner, onnxruntime_reference(onnx_art, stage_dir), p, precision)
        art = {"name": f"{name}_tensorrt", "model": name, "kind": "tensorrt", "device": "cuda",
               "path": str(plan.relative_to(stage_dir)), "metadata": str(tensorrt.metadata_path(plan).relative_to(stage_dir)),
               "precision": precision, "inputs": onnx_art["inputs"], "outputs": onnx_art["outputs"],
               "parity_max_abs_err": err, "parity_reference": "onnxruntime",
               "tensorrt_version": meta["tensorrt_version"], "gpu_name": meta["gpu_name"],
               "compute_capability": meta["compute_capability"], "profile": meta["profiles"][0],
               "version_compatible": meta["version_compatible"], "build_s": meta["build_s"]}
        out.append(add_file_info(stage_dir, art))
        console.print(f"[green]✓[/] tensorrt {name}: build {meta['build_s']} s, parity max abs err {err:.2e} "
                      f"({tensorrt.format_profile(p)})", soft_wrap=True)
    return out
