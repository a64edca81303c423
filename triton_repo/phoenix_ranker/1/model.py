"""Triton Python backend: host any Phoenix engine through `export.runtime.load_engine`.

Serves the ranker for the `cpu` and `gpu-python` targets, and (copied by the repository writer) the
user and candidate towers. Config parameters: `engine_model` (ranker | user_tower |
candidate_tower), `engine_kind` (onnxruntime | torch | torch_compile | aoti | tensorrt),
`manifest_dir` (relative to the model repository root, default "."), `project_root`.
The dynamic batcher hands several requests to one `execute`: requests whose non-batch shapes agree
are concatenated into one engine call and the outputs are split back; an engine failure answers
each request of that call with the error.
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
        for group in _groups(arrays):
            try:
                feed = {n: np.concatenate([arrays[i][n] for i in group]) for n in self.inputs}
                out = self.engine(feed)
                start = 0
                for i in group:
                    b = len(arrays[i][self.inputs[0]])
                    responses[i] = pb_utils.InferenceResponse(
                        [self._tensor(name, np.asarray(out[name])[start:start + b]) for name in self.outputs])
                    start += b
            except Exception as e:
                for i in group:
                    responses[i] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"{type(e).__name__}: {e}"))
        return responses

    def _tensor(self, name, value):
        dtype, ndims = self.outputs[name]
        value = np.ascontiguousarray(value, dtype=dtype)
        if value.ndim == ndims:  # e.g. input_error [B] served as dims [1] -> [B, 1]
            value = value.reshape(*value.shape, 1)
        return pb_utils.Tensor(name, value)


def _groups(arrays):
    """Indices of requests grouped by identical non-batch shapes (each group is one engine call)."""
    groups = {}
    for i, a in enumerate(arrays):
        groups.setdefault(tuple(v.shape[1:] for v in a.values()), []).append(i)
    return list(groups.values())
