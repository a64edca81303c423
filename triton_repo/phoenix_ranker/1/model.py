"""Triton Python backend: host any Phoenix engine through `export.runtime.load_engine`.

Serves the ranker for the `cpu` and `gpu-python` targets, and (copied by the repository writer) the
user and candidate towers. Config parameters: `engine_model` (ranker | user_tower |
candidate_tower), `engine_kind` (onnxruntime | torch | torch_compile | aoti | tensorrt),
`manifest_dir` (relative to the model repository root, default "."), `project_root`.
The dynamic batcher hands several requests to one `execute`: they are concatenated into one engine
call and the outputs are split back. Requests with different candidate counts share the call too: the
candidate fields are padded with hash 0 up to the largest C, which changes no real candidate's score
(candidate isolation), and each request gets its own C back. An engine failure answers each request of
that call with the error.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


def add_import_paths(model_config: dict):
    """Let the stub import our packages: PYTHONPATH entries (set by serving.server) + project_root."""
    params = model_config.get("parameters", {})
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    root = params.get("project_root", {}).get("string_value")
    for p in extra + ([root] if root else []):
        if p not in sys.path and os.path.isdir(p):
            sys.path.append(p)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        add_import_paths(config)
        from export.runtime import load_engine
        from serving import batching

        self.batching = batching

        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        repo_root = Path(args["model_repository"]).resolve().parent
        manifest_dir = (repo_root / params.get("manifest_dir", ".")).resolve()
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        self.engine = load_engine(manifest_dir, model=params.get("engine_model", "ranker"),
                                  kind=params.get("engine_kind", "onnxruntime"), device=device)
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = {o["name"]: (pb_utils.triton_string_to_numpy(o["data_type"]), len(o["dims"]))
                        for o in config["output"]}

    def execute(self, requests):
        arrays = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        responses = [None] * len(requests)
        for group in self._groups(arrays):
            try:
                counts = [self._num_candidates(arrays[i]) for i in group]
                c_max = max(counts) if counts[0] is not None else None
                feed = {n: np.concatenate([self._padded(n, arrays[i][n], c_max) for i in group]) for n in self.inputs}
                out = self.engine(feed)
                start = 0
                for i, c in zip(group, counts):
                    b = len(arrays[i][self.inputs[0]])
                    responses[i] = pb_utils.InferenceResponse(
                        [self._tensor(name, _own_part(np.asarray(out[name]), start, b, c, c_max))
                         for name in self.outputs])
                    start += b
            except Exception as e:
                for i in group:
                    responses[i] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"{type(e).__name__}: {e}"))
        return responses

    def _num_candidates(self, request: dict):
        cs = [v.shape[1] for n, v in request.items() if self.batching.has_candidate_dim(n, v)]
        return cs[0] if cs else None

    def _padded(self, name, value, c_max):
        if c_max is None or not self.batching.has_candidate_dim(name, value):
            return value
        return self.batching.pad_candidates(value, c_max)

    def _groups(self, arrays):
        """Indices of requests that can share one engine call: same shapes apart from the batch dim and
        the candidate count (candidates are padded)."""
        groups = {}
        for i, a in enumerate(arrays):
            key = tuple(v.shape[2:] if self.batching.has_candidate_dim(n, v) else v.shape[1:] for n, v in a.items())
            groups.setdefault(key, []).append(i)
        return list(groups.values())

    def _tensor(self, name, value):
        dtype, ndims = self.outputs[name]
        value = np.ascontiguousarray(value, dtype=dtype)
        if value.ndim == ndims:  # e.g. input_error [B] served as dims [1] -> [B, 1]
            value = value.reshape(*value.shape, 1)
        return pb_utils.Tensor(name, value)


def _own_part(out: np.ndarray, start: int, b: int, c, c_max):
    """This request's rows of a shared engine output, and its own candidate count."""
    part = out[start:start + b]
    if c is not None and c != c_max and part.ndim >= 2 and part.shape[1] == c_max:
        part = part[:, :c]
    return part
