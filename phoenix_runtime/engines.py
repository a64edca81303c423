"""Load and call any built engine through one interface.

    engine = open_engine(artifact, root, device="cpu")           # an artifact record of the manifest
    out = engine({"user_hashes": ..., ...})                      # numpy (or torch) in -> {name: numpy array}
    engine = load_engine("repo", model="ranker_embeddings", kind="onnxruntime")   # the same, found by the manifest

Kinds: `onnxruntime` (an ONNX graph), `torch` and `torch_compile` (a `torch.export` program, eager or
compiled), `aoti` (an AOTInductor package) and `tensorrt` (a TensorRT plan). Each engine first checks its
feed against the artifact's input specs with `request.check_shapes`: a missing or unexpected name, a wrong
dtype, rank or fixed dim, or a symbolic dim ("B", "C") that disagrees between inputs raises RequestError
naming the input.

Devices: "cpu" or "cuda:N"; every GPU engine runs on GPU N (a Triton instance's device), TensorRT on a
CUDA stream of its own. Only numpy and the engine's own runtime (onnxruntime, torch, tensorrt) are
imported, each when first needed: part of phoenix_runtime, which the build copies whole into the
repository for the Python-backend engine host.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .manifest import find_artifact, read_manifest
from .request import RequestError, check_shapes

KINDS = ("onnxruntime", "torch", "torch_compile", "aoti", "tensorrt")
PACKAGE = {"onnxruntime": "onnxruntime", "torch": "torch", "torch_compile": "torch", "aoti": "torch",
           "tensorrt": "tensorrt"}       # the Python package an engine kind runs with
ARTIFACT_KIND = {"onnxruntime": "onnx", "torch": "torch_export", "torch_compile": "torch_export", "aoti": "aoti",
                 "tensorrt": "tensorrt"}


# ONNX Runtime's intra-op threads busy-wait for the next call by default. A served repository runs several
# engine processes (and tritonserver) on the same cores, where that spinning takes the CPU the other processes
# need: measured on a 2-core machine (benchmarks.peer), sleeping threads made the in-process pipeline 3-4x faster.
ORT_SPIN = False


class EngineUnavailable(RuntimeError):
    """The engine kind cannot run here (the message says why)."""


def device_index(device: str) -> int:
    """"cuda:2" -> 2, "cuda" -> 0."""
    return int(device.split(":")[1]) if ":" in device else 0


def as_tensor(torch, value):
    """A torch tensor of `value` where it already is (a CUDA tensor stays on its device: no host copy), else of
    its numpy array (no copy on the CPU)."""
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(to_numpy(value)))


def to_numpy(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):
        value = value.detach()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.cpu().numpy()
    return np.asarray(value)


class Engine:
    """Base class: feed validation; subclasses implement `run(feed) -> dict`."""

    kind = "base"

    def __init__(self, inputs: list[dict], outputs: list[dict], device: str = "cpu", precision: str = "fp32",
                 model: str = "ranker"):
        self.inputs, self.outputs = inputs, outputs
        self.device, self.precision, self.model = device, precision, model

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.outputs]

    def validate(self, feed: dict) -> dict:
        """Check names, dtypes, ranks and dims of `feed` (request.check_shapes); return it unchanged."""
        if not isinstance(feed, dict):
            raise RequestError(f"{self.model} ({self.kind}): the feed must be a dict of input name -> array")
        check_shapes(self.inputs, feed, f"{self.model} ({self.kind})", exact=True)
        return feed

    def __call__(self, feed: dict) -> dict[str, np.ndarray]:
        return self.run(self.validate(feed))

    def run(self, feed: dict) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(model={self.model!r}, device={self.device!r}, precision={self.precision!r})"


# ---------------------------------------------------------------------------------------------- ONNX Runtime

class OnnxRuntimeEngine(Engine):
    """An ONNX graph in ONNX Runtime (CPU, or CUDA on GPU N with onnxruntime-gpu). On CPU a bf16 build
    serves the graph the build wrote for it (bf16 emulated in float32: the CPU provider has no bf16 MatMul)."""

    kind = "onnxruntime"

    def __init__(self, path, inputs, outputs, device="cpu", precision="fp32", model="ranker", threads: int = 0):
        import onnxruntime as ort

        super().__init__(inputs, outputs, device, precision, model)
        self.session = ort.InferenceSession(str(path), sess_options=ort_options(threads),
                                            providers=ort_providers(device))

    def run(self, feed):
        arrays = {n: np.ascontiguousarray(to_numpy(feed[n])) for n in self.input_names}
        return dict(zip(self.output_names, self.session.run(self.output_names, arrays)))


def ort_options(threads: int = 0, spin: bool = ORT_SPIN):
    """ONNX Runtime session options of every session here: all graph optimisations, `threads` intra-op threads
    (0: one per core) and, unless `spin`, threads that sleep between calls instead of busy-waiting."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def ort_providers(device: str) -> list:
    """ONNX Runtime providers for "cpu" or "cuda:N" (the CUDA provider pinned to GPU N)."""
    import onnxruntime as ort

    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise EngineUnavailable(f"onnxruntime on {device} needs onnxruntime-gpu (CUDAExecutionProvider); this "
                                f"onnxruntime {ort.__version__} has only {ort.get_available_providers()}")
    return [("CUDAExecutionProvider", {"device_id": device_index(device)}), "CPUExecutionProvider"]


# ---------------------------------------------------------------------------------------------- torch

class TorchEngine(Engine):
    """A torch.export program (.pt2 written by torch.export.save), eager or under torch.compile."""

    kind = "torch"

    def __init__(self, path, inputs, outputs, device="cpu", precision="fp32", model="ranker", compile=False):
        import torch

        super().__init__(inputs, outputs, device, precision, model)
        self.torch = torch
        self.module = torch.export.load(str(path)).module().to(device)
        if compile:
            self.kind = "torch_compile"
            self.module = torch.compile(self.module, dynamic=True)

    def run(self, feed):
        torch = self.torch
        args = [as_tensor(torch, feed[n]).to(self.device) for n in self.input_names]
        with torch.inference_mode():
            outs = self.module(*args)
        return {n: to_numpy(o) for n, o in zip(self.output_names, outs)}


class AotiEngine(Engine):
    """An AOTInductor package (.pt2: compiled code + weights) for CPU or CUDA."""

    kind = "aoti"

    def __init__(self, path, inputs, outputs, device="cpu", precision="fp32", model="ranker", built_for="cpu",
                 torch_version="?"):
        import torch

        if device.split(":")[0] != built_for:
            raise EngineUnavailable(f"{path} was compiled for {built_for}, not {device}; rebuild with "
                                    f"`python -m export.build --engines aoti --aoti-device {device.split(':')[0]}`")
        super().__init__(inputs, outputs, device, precision, model)
        self.torch = torch
        self.dtypes = {i["name"]: getattr(torch, i["dtype"]) for i in inputs}
        try:
            if device.startswith("cuda"):
                with torch.cuda.device(device_index(device)):
                    self.compiled = torch._inductor.aoti_load_package(str(path), device_index=device_index(device))
            else:
                self.compiled = torch._inductor.aoti_load_package(str(path))
        except Exception as e:
            raise EngineUnavailable(f"could not load {path} (built by torch {torch_version}, this is torch "
                                    f"{torch.__version__}): {e}") from None

    def run(self, feed: dict) -> dict:
        torch = self.torch
        args = [as_tensor(torch, feed[n]).to(device=self.device, dtype=self.dtypes[n]).contiguous()
                for n in self.input_names]
        with torch.no_grad():
            outs = self.compiled(*args)
        return {n: to_numpy(o) for n, o in zip(self.output_names, outs)}


# ---------------------------------------------------------------------------------------------- TensorRT

class PlanRunner:
    """A deserialized TensorRT plan on GPU N, run on a CUDA stream of its own (TensorRT 10 name-based API:
    set_input_shape / set_tensor_address / execute_async_v3). Inputs and outputs are torch CUDA tensors."""

    def __init__(self, plan_path, device: str = "cuda:0", allow_host_code: bool = False):
        import tensorrt as trt
        import torch

        self.trt, self.torch = trt, torch
        self.device = torch.device("cuda", device_index(device))
        with torch.cuda.device(self.device):
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            if allow_host_code:  # version-compatible plans carry the lean runtime as host code
                runtime.engine_host_code_allowed = True
            self.engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
            if self.engine is None:
                raise RuntimeError(f"TensorRT could not deserialize {plan_path} (built by another TensorRT version "
                                   f"or for another GPU? see {Path(plan_path).name}.json)")
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(device=self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.dtypes = {n: _torch_dtype(trt, torch, self.engine.get_tensor_dtype(n)) for n in names}

    def __call__(self, feeds: dict) -> dict:
        torch = self.torch
        keep = []
        # CUDA inputs the caller made on its own stream are ready before TensorRT reads them, and memory the caller
        # freed is not reused on this stream while the caller's queued work may still touch it
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            for name in self.input_names:
                t = as_tensor(torch, feeds[name])
                t = t.to(device=self.device, dtype=self.dtypes[name], non_blocking=True).contiguous()
                if not self.context.set_input_shape(name, tuple(t.shape)):
                    raise RequestError(f"input {name!r} has shape {tuple(t.shape)}, outside the plan's optimization "
                                           f"profile (min, opt, max) "
                                           f"{[tuple(d) for d in self.engine.get_tensor_profile_shape(name, 0)]}")
                self.context.set_tensor_address(name, t.data_ptr())
                keep.append(t)
            outs = {}
            for name in self.output_names:
                outs[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name],
                                         device=self.device)
                self.context.set_tensor_address(name, outs[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed; see the TensorRT log")
            self.stream.synchronize()
        return outs


def _torch_dtype(trt, torch, dtype):
    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
             "INT64": torch.int64, "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}
    for name, torch_dtype in table.items():
        if getattr(trt.DataType, name, None) == dtype:
            return torch_dtype
    raise TypeError(f"TensorRT tensor type {dtype} has no torch equivalent here")


class TensorRTEngine(Engine):
    """A TensorRT plan behind the runtime interface (CUDA only)."""

    kind = "tensorrt"

    def __init__(self, path, inputs, outputs, device="cuda:0", precision="fp32", model="ranker",
                 version_compatible=False):
        if not str(device).startswith("cuda"):
            raise EngineUnavailable(f"TensorRT plans run on a CUDA GPU only, not on {device!r}")
        reason = tensorrt_missing()
        if reason:
            raise EngineUnavailable(reason)
        super().__init__(inputs, outputs, device, precision, model)
        self.runner = PlanRunner(path, device, allow_host_code=version_compatible)

    def run(self, feed: dict) -> dict:
        return {n: to_numpy(t) for n, t in self.runner(feed).items()}


def tensorrt_missing() -> str | None:
    """Why TensorRT plans cannot run here, or None."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return ("TensorRT engines need the `tensorrt` Python package, which is not installed here: use NVIDIA's "
                "container (nvcr.io/nvidia/tensorrt or tritonserver, see deploy/) or pip's `tensorrt` on a host "
                "that reaches pypi.nvidia.com")
    import torch
    if not torch.cuda.is_available():
        return "TensorRT engines need a CUDA GPU, and torch sees none here"
    return None


# ---------------------------------------------------------------------------------------------- dispatch

def open_engine(artifact: dict, root, device: str = "cpu", kind: str | None = None, **kw) -> Engine:
    """The engine of one manifest artifact (files under `root`); `kind` chooses torch vs torch_compile."""
    kind = kind or {v: k for k, v in ARTIFACT_KIND.items()}[artifact["kind"]]
    if ARTIFACT_KIND.get(kind) != artifact["kind"]:
        raise ValueError(f"engine kind {kind!r} cannot run a {artifact['kind']!r} artifact")
    path = Path(root) / artifact["path"]
    common = (artifact["inputs"], artifact["outputs"], device, artifact.get("precision", "fp32"), artifact["model"])
    if kind == "onnxruntime":
        return OnnxRuntimeEngine(path, *common, **kw)
    if kind in ("torch", "torch_compile"):
        return TorchEngine(path, *common, compile=kind == "torch_compile")
    if kind == "aoti":
        info = artifact.get("info", {})
        return AotiEngine(path, *common, built_for=artifact.get("device", "cpu"),
                          torch_version=info.get("torch_version", "?"))
    return TensorRTEngine(path, *common, version_compatible=artifact.get("info", {}).get("version_compatible", False))


def load_engine(manifest_dir, model: str = "ranker_embeddings", kind: str = "onnxruntime", device: str = "cpu",
                **kw) -> Engine:
    """The `kind` engine of graph `model` from the build at `manifest_dir` (the folder with manifest.json)."""
    if kind not in KINDS:
        raise ValueError(f"unknown engine kind {kind!r}; kinds are {list(KINDS)}")
    manifest = read_manifest(manifest_dir)
    return open_engine(find_artifact(manifest, model, ARTIFACT_KIND[kind], device), manifest_dir, device, kind, **kw)


def compiler_missing() -> str | None:
    """Why torch.compile / AOTInductor cannot compile here (Inductor writes C++ and builds it), or None."""
    if any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return None
    return "torch.compile and AOTInductor compile C++: install a C++ compiler (g++ or clang++) and put it on PATH"


def available_engines() -> dict[str, str | None]:
    """{kind: None if it can run here, else the reason it cannot}."""
    out: dict[str, str | None] = {}
    try:
        import onnxruntime  # noqa: F401
        out["onnxruntime"] = None
    except ImportError as e:
        out["onnxruntime"] = f"onnxruntime is not installed ({e})"
    try:
        import torch  # noqa: F401
        out["torch"] = None
        out["torch_compile"] = out["aoti"] = compiler_missing()
    except ImportError as e:
        out["torch"] = out["torch_compile"] = out["aoti"] = f"torch is not installed ({e})"
    out["tensorrt"] = tensorrt_missing()
    return out
