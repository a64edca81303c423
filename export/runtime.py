"""Load and call any built engine through one interface (docs/design.md, "Runtime interface").

    engine = load_engine("triton_repo", model="ranker", kind="onnxruntime", device="cpu")
    out = engine({"user_hashes": ..., ...})        # numpy or torch in -> {name: numpy array}

Kinds: `torch` (eager), `torch_compile`, `onnxruntime`, `aoti` (export.aoti.AotiEngine) and `tensorrt`
(export.tensorrt.TensorRTEngine); the last two are imported only when asked for. Every engine checks its
feed against the manifest's input specs first: a missing or unexpected name, a wrong dtype, rank or
fixed dim, or a symbolic dim ("B", "C") that disagrees between inputs raises `EngineInputError`
naming the input.

ONNX Runtime's CPU provider has no bfloat16 MatMul, so on CPU a bf16 graph runs through
`emulate_bf16`: every bf16 tensor is computed in float32 and rounded to bf16 (Cast to bf16 and back)
where the graph produced it, the same values a bf16-storage / fp32-accumulate device computes.
"""
from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import numpy as np

from export.manifest import find_artifact, read_manifest

KINDS = ("torch", "torch_compile", "onnxruntime", "aoti", "tensorrt")
ARTIFACT_KIND = {"torch": "torch", "torch_compile": "torch", "onnxruntime": "onnx", "aoti": "aoti",
                 "tensorrt": "tensorrt"}
MODELS = ("ranker", "ranker_embeddings", "user_tower", "candidate_tower")


TOLERANCE = {"fp32": 1e-4, "bf16": 1e-1}    # max abs error of float outputs between two engines


class ParityError(RuntimeError):
    """Two engines (or an engine and torch) disagree beyond the precision's tolerance."""


def max_abs_err(got: dict, want: dict, names) -> float:
    """Largest |got - want| over the float outputs `names`; integer outputs must match exactly (else inf)."""
    worst = 0.0
    for n in names:
        g, w = to_numpy(got[n]), to_numpy(want[n])
        if g.shape != w.shape:
            return float("inf")
        if np.issubdtype(w.dtype, np.floating):
            if g.size:
                worst = max(worst, float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64)))))
        elif not np.array_equal(g, w):
            return float("inf")
    return worst


class EngineInputError(ValueError):
    """A feed that does not match the engine's inputs (the message names the input)."""


class EngineUnavailable(RuntimeError):
    """The engine kind cannot run here (the message says why)."""


def _dtype_name(value) -> str:
    """numpy-style dtype name of a numpy array or torch tensor ("int32", "float32", ...)."""
    return str(value.dtype).removeprefix("torch.")


class Engine:
    """Base class: validation and numpy conversion; subclasses implement `run(feed) -> dict`."""

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
        """Check names, dtypes, ranks and dims of `feed`; return it unchanged."""
        if not isinstance(feed, dict):
            raise EngineInputError(f"{self.kind} engine: the feed must be a dict of input name -> array, "
                                   f"got {type(feed).__name__}")
        missing = [n for n in self.input_names if n not in feed]
        extra = [n for n in feed if n not in self.input_names]
        if missing:
            raise EngineInputError(f"{self.model} ({self.kind}): missing input(s) {missing}; "
                                   f"expected {self.input_names}")
        if extra:
            raise EngineInputError(f"{self.model} ({self.kind}): unexpected input(s) {extra}; "
                                   f"expected {self.input_names}")
        sizes: dict[str, tuple[int, str]] = {}
        for spec in self.inputs:
            name, value = spec["name"], feed[spec["name"]]
            if not hasattr(value, "shape") or not hasattr(value, "dtype"):
                raise EngineInputError(f"input {name!r} must be a numpy array or torch tensor, "
                                       f"got {type(value).__name__}")
            got = _dtype_name(value)
            if got != spec["dtype"]:
                raise EngineInputError(f"input {name!r} has dtype {got}, expected {spec['dtype']}")
            shape, want = tuple(value.shape), spec["shape"]
            if len(shape) != len(want):
                raise EngineInputError(f"input {name!r} has rank {len(shape)} (shape {list(shape)}), expected "
                                       f"rank {len(want)} {want}")
            for axis, (n, w) in enumerate(zip(shape, want)):
                if isinstance(w, str):
                    if n < 1:
                        raise EngineInputError(f"input {name!r} axis {axis} ({w}) is {n}; it must be at least 1")
                    if w in sizes and sizes[w][0] != n:
                        raise EngineInputError(f"input {name!r} axis {axis} ({w}) is {n} but input "
                                               f"{sizes[w][1]!r} has {w}={sizes[w][0]}")
                    sizes.setdefault(w, (n, name))
                elif n != w:
                    raise EngineInputError(f"input {name!r} has shape {list(shape)}, expected {want} "
                                           f"(axis {axis} must be {w})")
        return feed

    def __call__(self, feed: dict) -> dict[str, np.ndarray]:
        return self.run(self.validate(feed))

    def run(self, feed: dict) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(model={self.model!r}, kind={self.kind!r}, device={self.device!r}, " \
               f"precision={self.precision!r})"


def to_numpy(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):
        value = value.detach()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.cpu().numpy()
    return np.asarray(value)


# ---------------------------------------------------------------------------------------------- torch

class TorchEngine(Engine):
    """The GraphSpec module run by PyTorch eager (or torch.compile with `compile=True`)."""

    kind = "torch"

    def __init__(self, module, inputs, outputs, device="cpu", precision="fp32", model="ranker", compile=False):
        import torch

        super().__init__(inputs, outputs, device, precision, model)
        self.torch = torch
        self.module = module.to(device).eval()
        if compile:
            self.kind = "torch_compile"
            self.module = torch.compile(self.module, dynamic=True)

    @classmethod
    def from_spec(cls, spec, device="cpu", compile=False):
        return cls(spec.module, [t.to_dict() for t in spec.inputs], [t.to_dict() for t in spec.outputs],
                   device, spec.precision, spec.name, compile)

    def run(self, feed):
        torch = self.torch
        args = [torch.as_tensor(feed[n]).to(self.device) for n in self.input_names]
        with torch.inference_mode():
            outs = self.module(*args)
        return {n: to_numpy(o) for n, o in zip(self.output_names, outs)}


def load_torch_module(manifest: dict, root: Path, artifact: dict):
    """Rebuild the graph module of `artifact["model"]` from the manifest's configs and load its state dict."""
    import torch

    from export.graphs import graphs_from_manifest

    specs = graphs_from_manifest(manifest, models=(artifact["model"],))
    module = specs[artifact["model"]].module
    state = torch.load(root / artifact["path"], map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    return module


# ---------------------------------------------------------------------------------------------- ONNX Runtime

def ort_providers(device: str) -> list[str]:
    import onnxruntime as ort

    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise EngineUnavailable(
                f"onnxruntime on {device} needs onnxruntime-gpu (CUDAExecutionProvider); this onnxruntime "
                f"{ort.__version__} has only {ort.get_available_providers()}")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def emulate_bf16(model):
    """A copy of an ONNX model where bf16 tensors are computed in float32 and rounded to bf16 where produced."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    bf16, f32 = TensorProto.BFLOAT16, TensorProto.FLOAT

    def as_f32(t):
        return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)

    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    for i, t in enumerate(g.initializer):
        if t.data_type == bf16:
            g.initializer[i].CopyFrom(as_f32(t))
    nodes = []
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == bf16:
                a.t.CopyFrom(as_f32(a.t))
            if n.op_type == "Cast" and a.name == "to" and a.i == bf16:
                a.i = f32
        rounded = [(i, o) for i, o in enumerate(n.output) if types.get(o) == bf16]
        for i, o in rounded:
            n.output[i] = f"{o}__f32"
        nodes.append(n)
        for _, o in rounded:
            nodes.append(helper.make_node("Cast", [f"{o}__f32"], [f"{o}__bf16"], to=bf16))
            nodes.append(helper.make_node("Cast", [f"{o}__bf16"], [o], to=f32))
    del g.node[:]
    g.node.extend(nodes)
    for v in [*g.input, *g.output]:
        if v.type.tensor_type.elem_type == bf16:
            v.type.tensor_type.elem_type = f32
    del g.value_info[:]
    return model


class OnnxRuntimeEngine(Engine):
    kind = "onnxruntime"

    def __init__(self, path, inputs, outputs, device="cpu", precision="fp32", model="ranker", threads: int = 0):
        import onnx
        import onnxruntime as ort

        super().__init__(inputs, outputs, device, precision, model)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        providers = ort_providers(device)
        source = str(path)
        if precision == "bf16" and not device.startswith("cuda"):
            proto = onnx.load(str(path))  # external data loaded too
            source = emulate_bf16(proto).SerializeToString()
        self.session = ort.InferenceSession(source, sess_options=opts, providers=providers)
        self.session_inputs = [i.name for i in self.session.get_inputs()]

    @classmethod
    def from_artifact(cls, artifact: dict, root, device="cpu", **kw):
        return cls(Path(root) / artifact["path"], artifact["inputs"], artifact["outputs"], device,
                   artifact.get("precision", "fp32"), artifact["model"], **kw)

    def run(self, feed):
        arrays = {n: np.ascontiguousarray(to_numpy(feed[n])) for n in self.session_inputs}
        outs = self.session.run(self.output_names, arrays)
        return dict(zip(self.output_names, outs))


# ---------------------------------------------------------------------------------------------- dispatch

def _optional(module: str, cls: str, why: str):
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise EngineUnavailable(f"{why}: {module}.{cls} could not be imported ({e})") from None
    except AttributeError:
        raise EngineUnavailable(f"{why}: {module} has no {cls} (the engines part of the build is not "
                                f"installed in this checkout)") from None


def _reason(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        return f"{module} cannot be imported ({e})"
    fn = getattr(mod, "unavailable_reason", None)
    return fn() if fn else None


def available_engines() -> dict[str, str | None]:
    """{kind: None if it can run here, else the reason it cannot}."""
    out: dict[str, str | None] = {"torch": None}
    out["torch_compile"] = None if (shutil.which("cc") or shutil.which("gcc") or shutil.which("g++")) else \
        "torch.compile on CPU needs a C/C++ compiler (cc, gcc or g++) on PATH"
    try:
        import onnxruntime  # noqa: F401
        out["onnxruntime"] = None
    except ImportError as e:
        out["onnxruntime"] = f"onnxruntime is not installed ({e})"
    out["aoti"] = _reason("export.aoti")
    out["tensorrt"] = _reason("export.tensorrt")
    return out


def load_engine(manifest_dir, model: str = "ranker", kind: str = "onnxruntime", device: str = "cpu", **kw) -> Engine:
    """The `kind` engine of `model` from the build at `manifest_dir` (the folder with manifest.json)."""
    if kind not in KINDS:
        raise ValueError(f"unknown engine kind {kind!r}; kinds are {list(KINDS)}")
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; models are {list(MODELS)}")
    if kind == "tensorrt" and _reason("export.tensorrt"):
        raise EngineUnavailable(_reason("export.tensorrt"))
    root = Path(manifest_dir)
    manifest = read_manifest(root)
    artifact = find_artifact(manifest, model, ARTIFACT_KIND[kind], device)
    if kind == "onnxruntime":
        return OnnxRuntimeEngine.from_artifact(artifact, root, device, **kw)
    if kind in ("torch", "torch_compile"):
        io = find_artifact(manifest, model, "onnx") if not artifact.get("inputs") else artifact
        module = load_torch_module(manifest, root, artifact)
        return TorchEngine(module, io["inputs"], io["outputs"], device, artifact.get("precision", "fp32"), model,
                           compile=kind == "torch_compile")
    if kind == "aoti":
        cls = _optional("export.aoti", "AotiEngine", "the aoti engine is unavailable")
    else:
        cls = _optional("export.tensorrt", "TensorRTEngine", "the tensorrt engine is unavailable")
    return cls(artifact, root, device)
