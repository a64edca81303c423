"""Triton Python backend: retrieval = user tower (a BLS call to `phoenix_user_tower`) + exact top-k.

The corpus index (`corpus.npy`, L2-normalised candidate-tower embeddings [N, D], and
`corpus_post_hashes.npy` [N, Hi] / `corpus_author_hashes.npy` [N, Ha], the hashes they came from) is
built at export time next to this file. Inputs: the user-tower inputs (user and history fields of
the RecsysBatch). Outputs per user: `top_k_indices` INT32 [K] (rows of the corpus),
`top_k_post_hashes` INT32 [K, Hi], `top_k_scores` FP32 [K] (dot products), `user_representation`
FP32 [D]. Config parameters: `top_k`, `user_tower_model`, `user_tower_output`, `project_root`.
An out-of-range input (the tower's `input_error`) answers that request with an error naming the field.
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
        from serving import scoring

        self.scoring = scoring
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        here = Path(args["model_repository"]) / args["model_version"]
        self.corpus = np.load(here / "corpus.npy").astype(np.float32)
        self.post_hashes = np.load(here / "corpus_post_hashes.npy").astype(np.int32)
        self.top_k = min(int(params.get("top_k", 10)), len(self.corpus))
        self.tower = params.get("user_tower_model", "phoenix_user_tower")
        self.tower_output = params.get("user_tower_output", "user_representation")
        self.inputs = [i["name"] for i in config["input"]]
        vocab = {k: int(params.get(k, 0)) for k in ("user_vocab", "post_vocab", "author_vocab")}
        self.ranges = scoring.valid_ranges(**vocab) if all(vocab.values()) else {}

    def execute(self, requests):
        return [self._one(r) for r in requests]

    def _one(self, request):
        inputs = [pb_utils.get_input_tensor_by_name(request, n) for n in self.inputs]
        tower = pb_utils.InferenceRequest(model_name=self.tower, inputs=inputs,
                                          requested_output_names=[self.tower_output, "input_error"]).exec()
        if tower.has_error():
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(tower.error().message()))
        errors = pb_utils.get_output_tensor_by_name(tower, "input_error").as_numpy().reshape(-1)
        if errors.any():
            msg = "; ".join(f"user {int(b)}: {self.scoring.describe_input_error(int(errors[b]), self.ranges)}"
                            for b in np.flatnonzero(errors))
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"invalid input: {msg}"))
        user = pb_utils.get_output_tensor_by_name(tower, self.tower_output).as_numpy().astype(np.float32)
        scores = user @ self.corpus.T                                   # [B, N]
        k = self.top_k
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
        idx = np.take_along_axis(part, order, 1).astype(np.int32)
        return pb_utils.InferenceResponse([
            pb_utils.Tensor("top_k_indices", idx),
            pb_utils.Tensor("top_k_post_hashes", np.ascontiguousarray(self.post_hashes[idx])),
            pb_utils.Tensor("top_k_scores", np.take_along_axis(scores, idx, 1).astype(np.float32)),
            pb_utils.Tensor("user_representation", np.ascontiguousarray(user)),
        ])
