"""GraphSpec -> torch engines: a `torch.export` program (`.pt2`, for the torch and torch_compile engines) and
an AOTInductor package (`.pt2`: a compiled shared library plus weights) for CPU or CUDA.

Both are exported with dynamic B and C (the spec's example inputs have B, C >= 2 so nothing is specialised
to 1), loaded back and checked against the torch module at several sizes (phoenix_torch.parity). Neither
needs this project at serve time: the host loads them with torch alone. Both are tied to the torch version
that built them (recorded in the artifact).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from export.graphs import GraphSpec
from phoenix_runtime.manifest import Artifact
from phoenix_torch.parity import check_parity

PARITY_DIMS = ({"B": 1, "C": 1}, {"B": 2, "C": 3}, {"B": 4, "C": 9})


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--aoti-device must be cpu, cuda or auto, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--aoti-device cuda: torch sees no CUDA GPU here (torch.cuda.is_available() is False)")
    return device


def export_program(spec: GraphSpec, device: str = "cpu"):
    """(torch.export of the spec's module on `device`, that module); a copy when not on the CPU (specs share
    modules)."""
    module = spec.module if device == "cpu" else copy.deepcopy(spec.module).to(device)
    args = tuple(spec.example_inputs[n].to(device) for n in spec.input_names)
    with torch.no_grad():
        program = torch.export.export(module.eval(), args, dynamic_shapes=spec.torch_dynamic_shapes(), strict=False)
    return program, module


def _check(spec: GraphSpec, run, module, device: str, what: str, parity_dims) -> float:
    err = 0.0
    for i, dims in enumerate(parity_dims):
        feed = {k: v.to(device) for k, v in spec.random_inputs(dims, seed=100 + i).items()}
        args = [feed[n] for n in spec.input_names]
        with torch.no_grad():
            want = dict(zip(spec.output_names, module(*args)))
            got = dict(zip(spec.output_names, run(*args)))
        err = max(err, check_parity(got, want, spec.output_names, spec.precision, f"{spec.name} {what} at {dims}"))
    return err


def _artifact(spec: GraphSpec, kind: str, path: Path, root, device: str | None, **info) -> Artifact:
    return Artifact(name=f"{spec.name}_{kind}" + (f"_{device}" if device else ""), model=spec.name, kind=kind,
                    path=str(path.relative_to(root)) if root else str(path), precision=spec.precision,
                    inputs=[t.to_dict() for t in spec.inputs], outputs=[t.to_dict() for t in spec.outputs],
                    device=device, info={"torch_version": torch.__version__, **info})


def build_torch_program(spec: GraphSpec, path, root=None, parity_dims=PARITY_DIMS) -> Artifact:
    """`torch.export.save` of the spec's module at `path`, loaded back and checked against the module."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    program, module = export_program(spec, "cpu")
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()
    err = _check(spec, loaded, module, "cpu", "torch.export program", parity_dims)
    return _artifact(spec, "torch_export", path, root, None, parity_max_abs_err=err,
                     export_s=round(time.perf_counter() - start, 2))


def build_aoti(spec: GraphSpec, path, device: str = "cpu", root=None, parity_dims=PARITY_DIMS) -> Artifact:
    """Compile `spec` to the AOTInductor package at `path` for `device`, checked against the torch module."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    start = time.perf_counter()
    program, module = export_program(spec, device)
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    compile_s = time.perf_counter() - start
    del program
    compiled = torch._inductor.aoti_load_package(str(path))
    err = _check(spec, compiled, module, device, f"AOTInductor ({device})", parity_dims)
    return _artifact(spec, "aoti", path, root, device, parity_max_abs_err=err, export_s=round(export_s, 2),
                     compile_s=round(compile_s, 2))
