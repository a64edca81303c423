"""Compiled engines of the served graphs: torch.export programs, AOTInductor packages, TensorRT plans.

`build_engines(kinds, graphs, onnx_artifacts, stage, options, limits)` builds the requested kinds into
each graph's model folder and returns their artifacts, each checked for parity before it is returned:
- `torch`: `<model>/1/<graph>.pt2`, a torch.export program (the torch and torch_compile engines);
- `aoti`: `<model>/1/<graph>_<device>.pt2`, checked against torch;
- `tensorrt`: `<model>/1/<graph>.sm<cc>.plan` (+ `.json` metadata) from the ONNX graph, checked against
  ONNX Runtime at the optimization profile's min, opt and max shapes (one plan per GPU compute capability;
  the Triton config maps each capability to its plan).
"auto" builds every engine that can be built here and says in one line why the others were skipped;
naming an engine that cannot be built stops with `EngineUnavailable` (one sentence: what is missing).
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from export import aoti, tensorrt
from export.graphs import GraphSpec
from phoenix_runtime.engines import (ARTIFACT_KIND, EngineUnavailable, OnnxRuntimeEngine, PlanRunner, compiler_missing,
                                     open_engine, ort_providers)
from phoenix_runtime.manifest import Artifact, ManifestError, find_artifact, sha256_file
from phoenix_runtime.request import Limits
from phoenix_torch.parity import check_parity

KINDS = ("torch", "aoti", "tensorrt")
DEFAULT_TIMING_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "phoenix" / "tensorrt.cache"
console = Console(stderr=True)


@dataclass(frozen=True)
class TensorRTOptions:
    profile: str | None = None            # "B=MIN:OPT:MAX,C=MIN:OPT:MAX" over the defaults from the limits
    workspace_gb: float | None = None
    timing_cache: str | None = str(DEFAULT_TIMING_CACHE)
    version_compatible: bool = False
    hardware_compatible: bool = False


@dataclass(frozen=True)
class EngineOptions:
    kinds: tuple = ()                     # of KINDS, or ("auto",)
    aoti_device: str = "auto"
    tensorrt: TensorRTOptions = TensorRTOptions()


def unavailable_reason(kind: str) -> str | None:
    if kind in ("torch", "aoti"):
        return compiler_missing() if kind == "aoti" else None
    if kind == "tensorrt":
        return tensorrt.unavailable_reason()
    raise ValueError(f"unknown compiled engine {kind!r} (known: {', '.join(KINDS)})")


def resolve_kinds(requested) -> list[str]:
    """The compiled engines to build for `requested` (a named engine that cannot be built here is an error;
    "auto" skips those with a one-line notice)."""
    requested = list(requested)
    kinds = []
    for kind in KINDS:
        reason = unavailable_reason(kind)
        if kind in requested:
            if reason:
                raise EngineUnavailable(f"--engines {kind}: {reason}")
            kinds.append(kind)
        elif "auto" in requested:
            if reason:
                console.print(f"[yellow]--engines auto: skipping {kind}: {reason}[/]", soft_wrap=True)
            else:
                kinds.append(kind)
    return kinds


def build_engines(kinds, graphs: dict[str, GraphSpec], folders: dict[str, str], onnx_artifacts: dict[str, Artifact],
                  stage: Path, options: EngineOptions, limits: Limits) -> list[Artifact]:
    """Build the requested engines of every graph (`folders`: graph -> its model folder under `stage`)."""
    out = []
    for kind in resolve_kinds(kinds):
        for name, spec in graphs.items():
            folder = Path(stage) / folders[name]
            if kind == "torch":
                with console.status(f"torch.export: {name}"):
                    art = aoti.build_torch_program(spec, folder / f"{name}.pt2", root=stage)
            elif kind == "aoti":
                device = aoti.resolve_device(options.aoti_device)
                with console.status(f"AOTInductor: compiling {name} for {device} (minutes on a small CPU)"):
                    art = aoti.build_aoti(spec, folder / f"{name}_{device}.pt2", device, root=stage)
            else:
                art = build_tensorrt_plan(spec, onnx_artifacts[name], folder, stage, options.tensorrt, limits)
            out.append(art.with_file_info(stage))
            console.print(f"[green]✓[/] {kind} {name}: parity max abs err {art.info['parity_max_abs_err']:.2e}",
                          soft_wrap=True)
    return out


def graph_profile(spec: GraphSpec, profile: dict) -> dict:
    """The profile restricted to the dynamic dims the graph's inputs use (towers have no C)."""
    return {d: v for d, v in profile.items() if d in spec.dynamic}


def build_tensorrt_plan(spec: GraphSpec, onnx_art: Artifact, folder: Path, stage: Path, options: TensorRTOptions,
                        limits: Limits) -> Artifact:
    import torch

    profile = tensorrt.parse_profile(options.profile, tensorrt.default_profile(limits))
    tensorrt.check_against_limits(profile, limits)
    p = graph_profile(spec, profile)
    major, minor = torch.cuda.get_device_capability()
    plan = folder / f"{spec.name}.sm{major}{minor}.plan"
    with console.status(f"TensorRT: building {spec.name} ({tensorrt.format_profile(p)})"):
        meta = tensorrt.build_plan(
            stage / onnx_art.path, plan, inputs=onnx_art.inputs, outputs=onnx_art.outputs, profile=p,
            precision=spec.precision, onnx_sha256=onnx_art.sha256 or sha256_file(stage / onnx_art.path),
            onnx_relpath=onnx_art.path, workspace_gb=options.workspace_gb,
            timing_cache=Path(options.timing_cache) if options.timing_cache else None,
            version_compatible=options.version_compatible, hardware_compatible=options.hardware_compatible)
    runner = PlanRunner(plan, "cuda:0", allow_host_code=meta["version_compatible"])
    reference = OnnxRuntimeEngine(stage / onnx_art.path, onnx_art.inputs, onnx_art.outputs,
                                  "cuda:0" if _ort_cuda() else "cpu", spec.precision, spec.name)
    err = 0.0
    for i, dims in enumerate(tensorrt.check_points(p)):
        feed = {n: t.numpy() for n, t in spec.random_inputs(dims, seed=200 + i).items()}
        err = max(err, check_parity(runner(feed), reference(feed), spec.output_names, spec.precision,
                                    f"{spec.name} TensorRT plan vs ONNX Runtime at {dims}"))
    return Artifact(name=f"{spec.name}_tensorrt_sm{major}{minor}", model=spec.name, kind="tensorrt",
                    path=str(plan.relative_to(stage)), precision=spec.precision, inputs=onnx_art.inputs,
                    outputs=onnx_art.outputs, device="cuda", files=[tensorrt.metadata_path(plan).name],
                    info={"parity_max_abs_err": err, "parity_reference": "onnxruntime",
                          "tensorrt_version": meta["tensorrt_version"], "gpu_name": meta["gpu_name"],
                          "compute_capability": meta["compute_capability"], "profile": meta["profiles"][0],
                          "version_compatible": meta["version_compatible"], "build_s": meta["build_s"]})


def _ort_cuda() -> bool:
    try:
        ort_providers("cuda:0")
        return True
    except EngineUnavailable:
        return False


# ---------------------------------------------------------------------------------------------- choosing

CPU_ENGINES = ("onnxruntime", "aoti", "torch")   # what the cpu target's host may serve (torch_compile: compiles
                                                 # at every model load, minutes; not chosen by itself)
CHOICE_DIMS = {"B": 1, "C": 64}                  # the shape the choice is timed at: one user, 64 candidates


def time_engine(engine, spec: GraphSpec, dims: dict = CHOICE_DIMS, seconds: float = 1.0) -> float:
    """Median milliseconds of one call of `engine` on random valid inputs of `spec` at `dims` (after 3 warm-up
    calls; at least 10 calls, else as many as fit in `seconds`)."""
    feed = {n: v.numpy() for n, v in spec.random_inputs(dims, seed=0).items()}
    for _ in range(3):
        engine(feed)
    samples, end = [], time.perf_counter() + seconds
    while len(samples) < 10 or time.perf_counter() < end:
        t = time.perf_counter()
        engine(feed)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e3


def fastest_cpu_engine(spec: GraphSpec, artifacts: list[Artifact], stage: Path) -> tuple[str, dict[str, float]]:
    """The engine kind the cpu target serves `spec` with: of the CPU engines built for it, the fastest at
    CHOICE_DIMS, measured here. Returns (kind, {kind: p50 ms}); only ONNX built: onnxruntime, not timed."""
    manifest = {"artifacts": [a.to_dict() for a in artifacts]}
    candidates = {}
    for kind in CPU_ENGINES:
        try:
            candidates[kind] = find_artifact(manifest, spec.name, ARTIFACT_KIND[kind], "cpu")
        except ManifestError:   # not built for this graph, or not for the CPU
            continue
    if len(candidates) <= 1:
        return next(iter(candidates), "onnxruntime"), {}
    timings = {}
    for kind, artifact in candidates.items():
        with console.status(f"timing the {kind} engine of {spec.name} at B={CHOICE_DIMS['B']}, C={CHOICE_DIMS['C']}"):
            timings[kind] = round(time_engine(open_engine(artifact, stage, "cpu", kind), spec), 3)
    best = min(timings, key=timings.get)
    console.print(f"[green]✓[/] the cpu target serves {best}: p50 at B=1, C=64 "
                  + ", ".join(f"{k} {v:.2f} ms" for k, v in sorted(timings.items(), key=lambda kv: kv[1])),
                  soft_wrap=True)
    return best, timings
