"""Triton Python backend: the engine host of phoenix_ranker, phoenix_ranker_embeddings, phoenix_user_tower and
phoenix_candidate_tower (cpu and gpu-python targets).

At start-up the model reads its record in the repository's manifest.json (`served.<model name>`): the graph
and engine kind to run, its input specs and limits and, for hashes-in models, the hash tables to gather
rows from (memory-mapped .npy files). For each execution:
1. every request is checked before any work (phoenix_runtime.request.check_request: missing inputs, dtypes,
   shapes, B or C of 0, ragged candidate inputs, the candidate / batch / byte limits, values outside their
   range); a bad request gets INVALID_ARG (HTTP 400) naming the input or the limit, the others go on;
2. requests that differ only in B and C share one engine call (phoenix_runtime.batching: candidates padded
   with hash 0, exact thanks to candidate isolation; the config allows ragged batches);
3. hashed inputs become their rows of the tables (hash 0 = the zero padding row);
4. the engine runs, and each request gets its own rows and candidate count back.
Absent optional inputs (the May IP hashes, dwell, timestamps) are their zero value.
Imports: numpy, triton_python_backend_utils, phoenix_runtime (the build copies it beside this file) and,
through phoenix_runtime.engines, the engine's own runtime (onnxruntime, torch or tensorrt).
"""
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from phoenix_runtime import batching, engines
from phoenix_runtime.manifest import find_artifact, read_manifest
from phoenix_runtime.request import Limits, RequestError, check_request, describe_input_error, resolve_shape


def _error(message, internal=False):
    """INVALID_ARG (HTTP 400: the request is wrong) or INTERNAL (500: the engine failed)."""
    code = pb_utils.TritonError.INTERNAL if internal else pb_utils.TritonError.INVALID_ARG
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


class TritonPythonModel:
    def initialize(self, args):
        self.name = args["model_name"]
        root = Path(args["model_repository"]).resolve().parent
        manifest = read_manifest(root)
        rec = manifest["served"][self.name]
        self.inputs, self.outputs = rec["inputs"], rec["outputs"]
        self.limits = Limits.from_dict(manifest["limits"])
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        kind = rec["engine"]
        artifact = find_artifact(manifest, rec["graph"], engines.ARTIFACT_KIND[kind], device)
        self.engine = engines.open_engine(artifact, root, device, kind)
        tables = manifest["tables"].get(rec.get("tables"), {})
        self.tables = {e: np.load(root / t["path"], mmap_mode="r") for e, t in tables.items()}
        self.lookups = rec.get("lookups", {})
        config = json.loads(args["model_config"])
        self.dims = {o["name"]: len(o["dims"]) for o in config["output"]}

    def execute(self, requests):
        responses = [None] * len(requests)
        good = []
        for i, request in enumerate(requests):
            try:
                arrays = self._arrays(request)
                check_request(self.inputs, arrays, self.limits, self.name)
                good.append((i, arrays))
            except RequestError as e:
                responses[i] = _error(str(e))
            except Exception as e:  # a bug, not the request's fault: 500 for this request only, named
                responses[i] = _error(f"{self.name}: reading the request failed: {type(e).__name__}: {e}",
                                      internal=True)
        for group in batching.groups([a for _, a in good], self.inputs):
            members = [good[j] for j in group]
            try:
                feed, parts = batching.merge([a for _, a in members], self.inputs)
                out = self.engine(self._engine_feed(feed))
                for (i, _), part in zip(members, batching.split(out, parts, self.outputs)):
                    responses[i] = self._response(part)
            except Exception as e:  # an engine failure answers each request of that call
                for i, _ in members:
                    responses[i] = _error(f"{self.name}: {type(e).__name__}: {e}", internal=True)
        return responses

    def _arrays(self, request) -> dict:
        arrays = {}
        for spec in self.inputs:
            t = pb_utils.get_input_tensor_by_name(request, spec["name"])
            if t is not None:
                arrays[spec["name"]] = t.as_numpy()
            elif spec.get("optional"):  # absent = its zero value, shaped like the request
                arrays[spec["name"]] = None
        for spec in self.inputs:
            if arrays.get(spec["name"], 0) is None:
                arrays[spec["name"]] = self._zeros(spec, arrays)
        return arrays

    def _zeros(self, spec: dict, arrays: dict) -> np.ndarray:
        dims = {}
        for s in self.inputs:
            a = arrays.get(s["name"])
            if a is not None:
                for n, d in zip(a.shape, s["shape"]):
                    if isinstance(d, str):
                        dims.setdefault(d, n)
        shape = resolve_shape(spec["shape"], {"B": dims.get("B", 1), "C": dims.get("C", 1)})
        return np.zeros(shape, dtype=spec["dtype"])

    def _engine_feed(self, feed: dict) -> dict:
        """Hash inputs -> their rows of the tables; the engine's own inputs only."""
        for emb, (hashes, entity) in self.lookups.items():
            feed[emb] = np.take(self.tables[entity], feed[hashes], axis=0)
        return {n: feed[n] for n in self.engine.input_names}

    def _response(self, part: dict):
        errors = part.get("input_error")
        if errors is not None and errors.any():  # the graph's own range check (never reached after check_request)
            return _error(f"{self.name}: {describe_input_error(int(errors.max()), self.engine.inputs)}")
        tensors = []
        for name, value in part.items():
            value = np.ascontiguousarray(value)
            if value.ndim == self.dims[name]:   # a [B] output served as dims [1] -> [B, 1]
                value = value.reshape(*value.shape, 1)
            tensors.append(pb_utils.Tensor(name, value))
        return pb_utils.InferenceResponse(output_tensors=tensors)
