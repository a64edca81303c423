"""Triton Python-backend glue shared by the model.py files: request tensors -> numpy arrays, results -> responses.

`triton_python_backend_utils` exists only inside Triton's Python-backend process: it is imported where it is
used. Standard library and numpy otherwise: part of phoenix_runtime, which the build copies whole into the
repository.
"""
from __future__ import annotations

import json

import numpy as np

from .request import RequestError


def pb():
    import triton_python_backend_utils as pb_utils
    return pb_utils


# glibc malloc in a model process: the server runs with tunables that unmap every freed buffer from 64 KiB on
# (serving.supervisor.MALLOC_TUNABLES: a refused large body must not stay in tritonserver's heap), which the model
# processes inherit. There every request would then map fresh pages for its arrays and fault each one in: about
# 2,500 page faults and +15 ms per release-size pipeline, measured (README, Benchmarks). A model process keeps
# buffers up to MMAP_THRESHOLD in its heap and returns free heap memory above TRIM_THRESHOLD.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3             # glibc's mallopt parameters
MMAP_THRESHOLD, TRIM_THRESHOLD, TOP_PAD = 32 << 20, 64 << 20, 16 << 20


def keep_request_buffers() -> bool:
    """Set this process's malloc to reuse the buffers a request allocates (see above); False where the C library
    has no mallopt (not glibc): nothing changes then."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1 for param, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))


def instance_device(args: dict) -> str:
    """"cuda:N" for a GPU instance (Triton's device id), else "cpu"."""
    return f"cuda:{args['model_instance_device_id']}" if args.get("model_instance_kind") == "GPU" else "cpu"


def output_ranks(args: dict) -> dict[str, int]:
    """{output name: number of dims in the model config} (the batch dim not counted)."""
    return {o["name"]: len(o["dims"]) for o in json.loads(args["model_config"])["output"]}


def request_arrays(request, specs: list[dict]) -> dict:
    """The request's tensors named in `specs`, as numpy arrays (absent ones left out)."""
    pb_utils = pb()
    out = {}
    for spec in specs:
        t = pb_utils.get_input_tensor_by_name(request, spec["name"])
        if t is not None:
            out[spec["name"]] = t.as_numpy()
    return out


def error(message: str, internal: bool = False):
    """INVALID_ARG (HTTP 400: the request is wrong) or INTERNAL (500: not the request's fault)."""
    pb_utils = pb()
    code = pb_utils.TritonError.INTERNAL if internal else pb_utils.TritonError.INVALID_ARG
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


def response(model: str, result, ranks: dict[str, int], request):
    """A response from a result: its outputs (only those the request asks for; a [B] output served as dims [1]
    gets its trailing 1), or the error: INVALID_ARG for a RequestError or ValueError (the input is wrong; a
    RequestError names the model already), INTERNAL for anything else."""
    pb_utils = pb()
    if isinstance(result, RequestError):
        return error(str(result))
    if isinstance(result, ValueError):
        return error(f"{model}: {result}")
    if isinstance(result, Exception):
        return error(f"{model}: {type(result).__name__}: {result}", internal=True)
    tensors = []
    for name in request.requested_output_names() or list(result):
        value = np.ascontiguousarray(result[name])
        if value.ndim == ranks[name]:
            value = value.reshape(*value.shape, 1)
        tensors.append(pb_utils.Tensor(name, value))
    return pb_utils.InferenceResponse(output_tensors=tensors)


class BlsModel:
    """Another served model called through Triton (business logic scripting), with EngineHost's `run`: one result
    per request, its outputs or the error it got. The requests go out together (async) so the called model's
    dynamic batcher can batch them."""

    def __init__(self, name: str, inputs: list[dict], outputs: list[str]):
        self.name, self.inputs, self.outputs = name, inputs, outputs
        pb_utils = pb()
        # outputs in CPU memory, even from a model on a GPU (as_numpy reads host memory only)
        self.kwargs = {}
        if hasattr(pb_utils, "PreferredMemory"):
            self.kwargs["preferred_memory"] = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)

    def run(self, requests: list[dict]) -> list:
        import asyncio

        pb_utils = pb()
        calls = [pb_utils.InferenceRequest(model_name=self.name, requested_output_names=self.outputs,
                                           inputs=[pb_utils.Tensor(s["name"], np.ascontiguousarray(a[s["name"]]))
                                                   for s in self.inputs if s["name"] in a], **self.kwargs)
                 for a in requests]

        async def all_of():
            return await asyncio.gather(*(c.async_exec() for c in calls))

        results = []
        for r in asyncio.run(all_of()):
            if r.has_error():
                results.append(RuntimeError(f"{self.name}: {r.error().message()}"))
            else:
                results.append({n: pb_utils.get_output_tensor_by_name(r, n).as_numpy() for n in self.outputs})
        return results
