"""ONNX graph -> TensorRT plan, written for the TensorRT 10.x and 11.x Python API.

Strongly typed networks only: the precision of every tensor comes from the ONNX graph (no FP16/INT8
builder flags; TensorRT 11 removed them). One optimization profile covers the dynamic dims "B"
(users) and "C" (candidates). Next to each `model.plan` goes `model.plan.json` (TensorRT version,
GPU, profile, precision, the source graph's sha256).

The first half of this file is pure Python (profile parsing and validation, the shapes the
post-build check runs at, the metadata) and is tested without TensorRT. `tensorrt` is imported
only inside the functions that need it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from export.runtime import Engine, EngineUnavailable, to_numpy

DYNAMIC_DIMS = ("B", "C")
DEFAULT_BATCH = (1, 8, 64)      # users per request: min, opt, max
MAX_CANDIDATES = 1000           # production serves about 1000 candidates per request

MISSING_TENSORRT = (
    "TensorRT engines need the `tensorrt` Python package, which is not installed here: build them on a "
    "GPU host inside NVIDIA's container (nvcr.io/nvidia/tensorrt:<release>-py3) or run "
    "`pip install tensorrt --extra-index-url https://pypi.nvidia.com` on a host that can reach NVIDIA's index."
)
NO_GPU = "TensorRT engines need a CUDA GPU, and torch sees none here (torch.cuda.is_available() is False)."


class ProfileError(ValueError):
    """A --trt-profile value that cannot describe an optimization profile."""


# ----------------------------------------------------------------------------------------------
# Profiles (pure Python)

def default_profile(opt_candidates: int, max_batch: int = DEFAULT_BATCH[2]) -> dict[str, tuple[int, int, int]]:
    """B=1:8:<max batch> (Triton's max_batch_size), C=1:<preset candidates>:max(1000, preset candidates)."""
    c, b = int(opt_candidates), int(max_batch)
    return {"B": (1, min(DEFAULT_BATCH[1], b), b), "C": (1, c, max(MAX_CANDIDATES, c))}


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
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return MISSING_TENSORRT
    import torch
    if not torch.cuda.is_available():
        return NO_GPU
    return None


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


# ----------------------------------------------------------------------------------------------
# Run (TensorRT 10 name-based API: set_input_shape / set_tensor_address / execute_async_v3)

def _torch_dtype(trt, dtype):
    import torch
    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
             "INT64": torch.int64, "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}
    for name, torch_dtype in table.items():
        if getattr(trt.DataType, name, None) == dtype:
            return torch_dtype
    raise TypeError(f"TensorRT tensor type {dtype} has no torch equivalent here")


class PlanRunner:
    """Deserializes a plan once and runs it on CUDA tensors; used by TensorRTEngine and the build check."""

    def __init__(self, plan_path: Path, allow_host_code: bool = False):
        import tensorrt as trt
        import torch

        self.trt, self.torch = trt, torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        if allow_host_code:  # version-compatible plans carry the lean runtime as host code
            runtime.engine_host_code_allowed = True
        self.engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {plan_path} (built by another TensorRT version "
                               f"or for another GPU? see {metadata_path(Path(plan_path)).name})")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}

    def __call__(self, feeds: dict) -> dict:
        torch = self.torch
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise KeyError(f"TensorRT engine: missing inputs {missing}")
        keep = []
        for name in self.input_names:
            value = feeds[name]
            t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
            t = t.to(device="cuda", dtype=self.dtypes[name]).contiguous()
            if not self.context.set_input_shape(name, tuple(t.shape)):
                raise ValueError(f"input {name!r} has shape {tuple(t.shape)}, outside the plan's optimization "
                                 f"profile (min, opt, max) {[tuple(d) for d in self.engine.get_tensor_profile_shape(name, 0)]}")
            self.context.set_tensor_address(name, t.data_ptr())
            keep.append(t)
        outs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed; see the TensorRT log")
        stream.synchronize()
        return outs


class TensorRTEngine(Engine):
    """A TensorRT plan behind the runtime interface (CUDA only): {name: array} -> {name: numpy array}."""

    kind = "tensorrt"

    def __init__(self, artifact: dict, root, device: str = "cuda"):
        if not str(device).startswith("cuda"):
            raise EngineUnavailable(f"TensorRT plans run on a CUDA GPU only, not on {device!r}")
        reason = unavailable_reason()
        if reason:
            raise EngineUnavailable(reason)
        super().__init__(artifact["inputs"], artifact["outputs"], "cuda", artifact.get("precision", "fp32"),
                         artifact["model"])
        self.runner = PlanRunner(Path(root) / artifact["path"], allow_host_code=artifact.get("version_compatible", False))

    def run(self, feed: dict) -> dict:
        return {n: to_numpy(t) for n, t in self.runner(feed).items()}
