"""Triton Python backend: ranker output -> home-mixer's named scores, weighted score, final score, ranking.

Inputs per user: `logits` [C, A] (and `continuous_preds` [C, K] for May-style models), the ranker's
`input_error`, `candidate_post_hashes` (padding = hash 0) and, optional, `candidate_author_hashes`,
`candidate_author_ids`, `candidate_video_duration_ms` (0 = unknown) and `candidate_in_network`.
Outputs: the 19 PhoenixScores fields (NaN where the model has no column for one), every column no field
reads (under its own name), `weighted_score`, `final_score` (after author diversity and the out-of-network
factor), `ranking` (best first, -1 pads) and `probs` [C, A]. The math is phoenix_runtime.scoring; which
column feeds which field and the weights come from this model's record in manifest.json. Every request is
checked before any work with the ranker's rules and the manifest's limits (phoenix_runtime.request.check_request: B or C of 0,
inputs that disagree on C, more candidates, users or bytes than the limits, hashes outside their table); a
request that fails them, whose `input_error` is set, or whose values are wrong (NaN logits, negative
durations) gets INVALID_ARG naming the input or the limit; the other requests of the batch are answered
normally.
"""
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from phoenix_runtime import scoring
from phoenix_runtime.manifest import RANKER, read_manifest
from phoenix_runtime.request import Limits, RequestError, check_request, describe_input_error

OPTIONAL = ("candidate_author_hashes", "candidate_author_ids", "candidate_video_duration_ms", "candidate_in_network")


class TritonPythonModel:
    def initialize(self, args):
        root = Path(args["model_repository"]).resolve().parent
        manifest = read_manifest(root)
        rec = manifest["served"][args["model_name"]]
        self.sources = rec["sources"]
        self.params = scoring.ScoringParams.from_dict(rec["params"])
        self.ranker_inputs = manifest["served"][RANKER]["inputs"]
        self.outputs = [o["name"] for o in rec["outputs"]]
        self.inputs = rec["inputs"]
        self.limits = Limits.from_dict(manifest["limits"])

    def execute(self, requests):
        return [self._one(r) for r in requests]

    def _one(self, request):
        def get(name):
            t = pb_utils.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy()

        try:
            arrays = {s["name"]: get(s["name"]) for s in self.inputs}
            flags = arrays.get("input_error")
            if flags is not None and flags.ndim == 2 and flags.shape[1] == 1:   # [B] served as dims [1]
                arrays["input_error"] = flags[:, 0]
            specs = [s for s in self.inputs if arrays.get(s["name"]) is not None or not s.get("optional")]
            check_request(specs, {n: a for n, a in arrays.items() if a is not None}, self.limits,
                          "phoenix_postprocess")
            errors = arrays["input_error"]
            if errors.any():
                bad = "; ".join(f"user {int(b)}: {describe_input_error(int(errors[b]), self.ranker_inputs)}"
                                for b in np.flatnonzero(errors))
                raise ValueError(f"invalid input: {bad}")
            post = get("candidate_post_hashes")
            author_hashes = get("candidate_author_hashes")
            out = scoring.score(get("logits"), self.sources, post[..., 0] != 0, get("continuous_preds"),
                                author_keys=get("candidate_author_ids"),
                                author_hash_fallback=None if author_hashes is None else author_hashes[..., 0],
                                video_duration_ms=get("candidate_video_duration_ms"),
                                in_network=get("candidate_in_network"), params=self.params)
        except RequestError as e:  # names the model already
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG))
        except ValueError as e:  # bad input: 400, named; one bad request never fails the batch
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(
                f"phoenix_postprocess: {e}", pb_utils.TritonError.INVALID_ARG))
        except Exception as e:  # a bug, not the request's fault: 500 for this request only, named
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(
                f"phoenix_postprocess: {type(e).__name__}: {e}", pb_utils.TritonError.INTERNAL))
        return pb_utils.InferenceResponse([pb_utils.Tensor(n, np.ascontiguousarray(out[n])) for n in self.outputs])
