"""ONNX graph -> TensorRT plan, written for the TensorRT 10.x and 11.x Python API.

Strongly typed networks only: the precision of every tensor comes from the ONNX graph (no FP16/INT8
builder flags; TensorRT 11 removed them). One optimization profile covers the dynamic dims "B"
(users, up to Triton's max_batch_size) and "C" (candidates, up to the served limit; its opt is the
first of the build's fixed candidate sizes). Next to each `model.plan` goes `model.plan.json` (TensorRT version,
GPU, profile, precision, the source graph's sha256).

The first half of this file is pure Python (profile parsing and validation, the shapes the
post-build check runs at, the metadata) and is tested without TensorRT. `tensorrt` is imported
only inside the functions that need it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from phoenix_runtime.engines import tensorrt_missing

DYNAMIC_DIMS = ("B", "C")


class ProfileError(ValueError):
    """A --trt-profile value that cannot describe an optimization profile."""


# ----------------------------------------------------------------------------------------------
# Profiles (pure Python)

def default_profile(limits) -> dict[str, tuple[int, int, int]]:
    """B=1:min(8, max):<max_batch_size>, C=1:<smallest candidate size>:<max_candidates> (phoenix_runtime.request.Limits)."""
    b = int(limits.max_batch_size)
    c_opt = limits.candidate_sizes[0] if limits.candidate_sizes else min(64, limits.max_candidates)
    return {"B": (1, min(8, b), b), "C": (1, c_opt, int(limits.max_candidates))}


def check_against_limits(profile: dict, limits) -> None:
    """The profile must cover every request the server accepts: B up to max_batch_size, C up to
    max_candidates (a plan refuses shapes outside its profile)."""
    for dim, limit, what in (("B", limits.max_batch_size, "--max-batch-size"),
                             ("C", limits.max_candidates, "--max-candidates")):
        if dim in profile and profile[dim][2] < limit:
            raise ProfileError(f"--trt-profile: {dim} max {profile[dim][2]} is below {what} {limit}; the plan would "
                               f"refuse requests the server accepts")


def validate_profile(profile: dict) -> dict[str, tuple[int, int, int]]:
    """Check names and values of {dim: (min, opt, max)}; return it with int tuples."""
    out = {}
    for dim, values in profile.items():
        if dim not in DYNAMIC_DIMS:
            raise ProfileError(f"--trt-profile: unknown dim {dim!r} (dynamic dims are {', '.join(DYNAMIC_DIMS)})")
        if len(values) != 3:
            raise ProfileError(f"--trt-profile: {dim} needs exactly three values MIN:OPT:MAX, got {values!r}")
        lo, opt, hi = (int(v) for v in values)
        if min(lo, opt, hi) < 1:
            raise ProfileError(f"--trt-profile: {dim}={lo}:{opt}:{hi} has a value below 1 (sizes must be positive)")
        if not lo <= opt <= hi:
            raise ProfileError(f"--trt-profile: {dim}={lo}:{opt}:{hi} must satisfy min <= opt <= max")
        out[dim] = (lo, opt, hi)
    return out


def parse_profile(text: str | None, defaults: dict) -> dict[str, tuple[int, int, int]]:
    """Parse "B=1:8:64,C=1:32:1000" over `defaults`; dims not named keep their default."""
    profile = dict(validate_profile(defaults))
    seen = set()
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        dim, eq, values = item.partition("=")
        dim = dim.strip()
        if not eq:
            raise ProfileError(f"--trt-profile: {item!r} is not DIM=MIN:OPT:MAX (e.g. B=1:8:64)")
        if dim in seen:
            raise ProfileError(f"--trt-profile: dim {dim!r} is given twice")
        seen.add(dim)
        parts = values.split(":")
        try:
            numbers = tuple(int(p) for p in parts)
        except ValueError:
            raise ProfileError(f"--trt-profile: {item!r} has a value that is not an integer") from None
        profile.update(validate_profile({dim: numbers}))
    return profile


def format_profile(profile: dict) -> str:
    return ",".join(f"{d}={lo}:{opt}:{hi}" for d, (lo, opt, hi) in profile.items())


def check_points(profile: dict) -> list[dict[str, int]]:
    """The dim values the post-build check runs at: the profile's min, opt and max corners."""
    return [{d: v[i] for d, v in profile.items()} for i in range(3)]


def resolve_shape(shape: list, dims: dict[str, int]) -> tuple[int, ...]:
    """["B", "C", 19] with {"B": 2, "C": 8} -> (2, 8, 19)."""
    out = []
    for d in shape:
        if isinstance(d, str):
            if d not in dims:
                raise ProfileError(f"shape {shape} uses dim {d!r}, which the profile does not set")
            out.append(int(dims[d]))
        else:
            out.append(int(d))
    return tuple(out)


def input_shapes(inputs: list[dict], profile: dict) -> dict[str, tuple[tuple, tuple, tuple]]:
    """{input name: (min shape, opt shape, max shape)} for TensorRT's optimization profile."""
    points = check_points(profile)
    return {i["name"]: tuple(resolve_shape(i["shape"], p) for p in points) for i in inputs}


def plan_metadata(*, trt_version: str, gpu_name: str, compute_capability: str, profile: dict,
                  precision: str, onnx_path: str, onnx_sha256: str, inputs: list, outputs: list,
                  version_compatible: bool, hardware_compatible: bool, workspace_bytes: int | None,
                  build_s: float | None = None) -> dict:
    """The JSON written next to a plan: enough to tell whether it can run on a given host."""
    return {
        "format": 1,
        "tensorrt_version": trt_version,
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
        "profiles": [{d: {"min": v[0], "opt": v[1], "max": v[2]} for d, v in profile.items()}],
        "precision": precision,
        "source_onnx": onnx_path,
        "source_onnx_sha256": onnx_sha256,
        "inputs": inputs,
        "outputs": outputs,
        "version_compatible": bool(version_compatible),
        "hardware_compatibility": "ampere_plus" if hardware_compatible else "none",
        "workspace_bytes": workspace_bytes,
        "build_s": build_s,
    }


def unavailable_reason() -> str | None:
    """None when TensorRT plans can be built and run here, else the one-sentence reason."""
    return tensorrt_missing()


# ----------------------------------------------------------------------------------------------
# Build (needs TensorRT and a GPU)

def _strongly_typed_flags(trt) -> int:
    # TensorRT 10: opt in with STRONGLY_TYPED. TensorRT 11: always strongly typed; the flag is kept but ignored.
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def build_plan(onnx_path: Path, plan_path: Path, *, inputs: list, outputs: list, profile: dict,
               precision: str, onnx_sha256: str, onnx_relpath: str | None = None,
               workspace_gb: float | None = None, timing_cache: Path | None = None,
               version_compatible: bool = False, hardware_compatible: bool = False) -> dict:
    """Compile `onnx_path` to `plan_path` (+ `<plan>.json`); return the metadata dict."""
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors or 'no error reported'}")

    network_inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    shapes = input_shapes(inputs, profile)
    missing = [n for n in network_inputs if n not in shapes]
    if missing:
        raise RuntimeError(f"{onnx_path} has inputs {missing} that the graph spec does not describe")

    config = builder.create_builder_config()
    workspace_bytes = None
    if workspace_gb is not None:
        workspace_bytes = int(workspace_gb * (1 << 30))
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if timing_cache is not None:
        cached = timing_cache.read_bytes() if timing_cache.exists() else b""
        config.set_timing_cache(config.create_timing_cache(cached), False)
    if version_compatible:
        # The lean runtime stays inside the plan, so a newer TensorRT can load it (host code allowed).
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS

    opt_profile = builder.create_optimization_profile()
    for name in network_inputs:
        lo, opt, hi = shapes[name]
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - start
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {onnx_path}; its log above says why")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(memoryview(serialized)))
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))

    major, minor = torch.cuda.get_device_capability()
    meta = plan_metadata(
        trt_version=trt.__version__, gpu_name=torch.cuda.get_device_name(),
        compute_capability=f"{major}.{minor}", profile=profile, precision=precision,
        onnx_path=onnx_relpath or str(onnx_path), onnx_sha256=onnx_sha256, inputs=inputs, outputs=outputs,
        version_compatible=version_compatible, hardware_compatible=hardware_compatible,
        workspace_bytes=workspace_bytes, build_s=round(build_s, 3))
    metadata_path(plan_path).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def metadata_path(plan_path: Path) -> Path:
    return plan_path.with_name(plan_path.name + ".json")
