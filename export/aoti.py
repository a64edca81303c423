"""GraphSpec -> AOTInductor package (`.pt2`: a compiled shared library plus weights), for CPU or CUDA.

`build_aoti(spec, path, device)` runs `torch.export` with dynamic B and C (the spec's example inputs
have B, C >= 2 so nothing is specialised to 1), compiles with
`torch._inductor.aoti_compile_and_package`, loads the package back and checks it against the torch
module at several B and C; a mismatch above the precision's tolerance raises `ParityError`.
A package is tied to the torch version that built it (recorded in the artifact).
"""
from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from export.graphs import GraphSpec
from export.runtime import TOLERANCE, Engine, EngineUnavailable, ParityError, max_abs_err, to_numpy

PARITY_DIMS = ({"B": 1, "C": 1}, {"B": 2, "C": 3}, {"B": 4, "C": 9})


def compiler_missing() -> str | None:
    """Why packages cannot be compiled here (Inductor writes C++ and builds it), or None."""
    if any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return None
    return "AOTInductor compiles C++: install a C++ compiler (g++ or clang++) and put it on PATH"


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--aoti-device must be cpu, cuda or auto, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--aoti-device cuda: torch sees no CUDA GPU here (torch.cuda.is_available() is False)")
    return device


def export_program(spec: GraphSpec, device: str) -> tuple[torch.export.ExportedProgram, torch.nn.Module]:
    """torch.export of the spec's module on `device` (a copy when not on the CPU: specs share modules)."""
    module = spec.module if device == "cpu" else copy.deepcopy(spec.module).to(device)
    args = tuple(spec.example_inputs[n].to(device) for n in spec.input_names)
    with torch.no_grad():
        program = torch.export.export(module.eval(), args, dynamic_shapes=spec.torch_dynamic_shapes(), strict=False)
    return program, module


def build_aoti(spec: GraphSpec, path, device: str = "cpu", precision: str | None = None, root=None,
               parity_dims=PARITY_DIMS) -> dict:
    """Compile `spec` to the `.pt2` at `path`; return its artifact dict (path relative to `root`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    precision = precision or spec.precision
    start = time.perf_counter()
    program, module = export_program(spec, device)
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    compile_s = time.perf_counter() - start
    del program

    compiled = torch._inductor.aoti_load_package(str(path))
    err = 0.0
    for i, dims in enumerate(parity_dims):
        feed = {k: v.to(device) for k, v in spec.random_inputs(dims, seed=100 + i).items()}
        with torch.no_grad():
            want = dict(zip(spec.output_names, module(*(feed[n] for n in spec.input_names))))
            got = dict(zip(spec.output_names, compiled(*(feed[n] for n in spec.input_names))))
        point_err = max_abs_err(got, want, spec.output_names)
        if not point_err <= TOLERANCE[precision]:
            raise ParityError(f"{spec.name} AOTInductor ({device}, {precision}) differs from torch at {dims}: "
                              f"max abs err {point_err:.3g} > {TOLERANCE[precision]}")
        err = max(err, point_err)
    return {
        "name": f"{spec.name}_aoti_{device}", "model": spec.name, "kind": "aoti", "device": device,
        "path": str(path.relative_to(root)) if root else str(path), "precision": precision,
        "inputs": [t.to_dict() for t in spec.inputs], "outputs": [t.to_dict() for t in spec.outputs],
        "parity_max_abs_err": err, "parity_dims": list(parity_dims), "torch_version": torch.__version__,
        "export_s": round(export_s, 2), "compile_s": round(compile_s, 2),
    }


class AotiEngine(Engine):
    """A loaded `.pt2` behind the runtime interface: {name: array or tensor} -> {name: numpy array}."""

    kind = "aoti"

    def __init__(self, artifact: dict, root, device: str = "cpu"):
        device = "cuda" if str(device).startswith("cuda") else str(device)
        built_for = artifact.get("device", "cpu")
        if device != built_for:
            raise EngineUnavailable(f"{artifact['path']} was compiled for {built_for}, not {device}; rebuild with "
                                    f"`python -m export.build --engines aoti --aoti-device {device}`")
        super().__init__(artifact["inputs"], artifact["outputs"], device, artifact.get("precision", "fp32"),
                         artifact["model"])
        self.input_dtypes = {i["name"]: getattr(torch, i["dtype"]) for i in self.inputs}
        try:
            self.compiled = torch._inductor.aoti_load_package(str(Path(root) / artifact["path"]))
        except Exception as e:
            raise EngineUnavailable(f"could not load {artifact['path']} (built by torch "
                                    f"{artifact.get('torch_version', '?')}, this is torch {torch.__version__}): "
                                    f"{e}") from None

    def run(self, feed: dict) -> dict:
        args = []
        for n in self.input_names:
            v = feed[n]
            t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
            args.append(t.to(device=self.device, dtype=self.input_dtypes[n]).contiguous())
        with torch.no_grad():
            outs = self.compiled(*args)
        return {n: to_numpy(o) for n, o in zip(self.output_names, outs)}
