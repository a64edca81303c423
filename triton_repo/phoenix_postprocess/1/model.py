"""Triton Python backend: ranker output -> home-mixer's named scores, weighted score, final score, ranking.

Inputs per user: `logits` [C, A] (and `continuous_preds` [C, K] for May-style models), the ranker's
`input_error`, `candidate_post_hashes` (padding = hash 0) and, optional, `candidate_author_hashes`,
`candidate_author_ids`, `candidate_video_duration_ms` (0 = unknown) and `candidate_in_network`.
Outputs: the 19 PhoenixScores fields (NaN where the model has no column for one), every column no field
reads (under its own name), `weighted_score`, `final_score` (after author diversity and the out-of-network
factor), `ranking` (best first, -1 pads) and `probs` [C, A]: phoenix_runtime.scoring.Scorer with this model's
record in manifest.json. Every request is checked before any work (phoenix_runtime.request.check_request with
the manifest's limits); a request that fails, whose `input_error` is set, or whose values are wrong (NaN
logits, negative durations) gets INVALID_ARG naming the input or the limit; the others are answered normally.
"""
from pathlib import Path

import numpy as np

from phoenix_runtime import backend
from phoenix_runtime.manifest import POSTPROCESS, RANKER, read_manifest
from phoenix_runtime.request import Limits, check_request, describe_input_error
from phoenix_runtime.scoring import Scorer


class TritonPythonModel:
    def initialize(self, args):
        backend.keep_request_buffers()          # a request's arrays reuse heap pages (phoenix_runtime.backend)
        root = Path(args["model_repository"]).resolve().parent
        manifest = read_manifest(root)
        rec = manifest["served"][args["model_name"]]
        self.scorer = Scorer(rec)
        self.inputs = rec["inputs"]
        self.ranker_inputs = manifest["served"][RANKER]["inputs"]
        self.limits = Limits.from_dict(manifest["limits"])
        self.ranks = backend.output_ranks(args)

    def execute(self, requests):
        return [backend.response(POSTPROCESS, self.run(backend.request_arrays(r, self.inputs)), self.ranks, r)
                for r in requests]

    def run(self, arrays: dict):
        """The scores of one request, or the exception that answers it."""
        try:
            flags = arrays.get("input_error")
            if flags is not None and flags.ndim == 2 and flags.shape[1] == 1:   # [B] served as dims [1]
                arrays["input_error"] = flags[:, 0]
            check_request(self.inputs, arrays, self.limits, POSTPROCESS)
            errors = arrays["input_error"]
            if errors.any():
                bad = "; ".join(f"user {int(b)}: {describe_input_error(int(errors[b]), self.ranker_inputs)}"
                                for b in np.flatnonzero(errors))
                raise ValueError(f"invalid input: {bad}")
            return self.scorer(arrays, arrays)
        except Exception as e:  # noqa: BLE001 - answered as an error response, the other requests go on
            return e
