"""Triton Python backend: ranker logits -> named engagement scores, weighted score and ranking.

Inputs (per user): logits [C, A] FP32, input_error [1] INT32, candidate_post_hashes [C, Hi] INT32,
candidate_author_hashes [C, Ha] INT32. Outputs: one FP32 [C] per action (`favorite_score`, ...,
`dwell_time`), `weighted_score`, `final_score` (after author diversity) and `ranking` INT32 [C]
(best first, -1 pads). The math is `serving.scoring`; weights come from the config parameters
(`weight.<action>`). A request whose `input_error` is non-zero gets an error naming the field; the
other requests of the same batch are answered normally.
"""
import json
import os
import sys

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
        self.params = scoring.params_from_strings(params)
        vocab = {k: int(params.get(k, 0)) for k in ("user_vocab", "post_vocab", "author_vocab")}
        self.ranges = scoring.valid_ranges(**vocab) if all(vocab.values()) else {}
        self.outputs = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}

    def execute(self, requests):
        return [self._one(r) for r in requests]

    def _one(self, request):
        def get(name):
            return pb_utils.get_input_tensor_by_name(request, name).as_numpy()

        try:
            errors = get("input_error").reshape(-1)
            bad = np.flatnonzero(errors)
            if bad.size:
                msg = "; ".join(f"user {int(b)}: {self.scoring.describe_input_error(int(errors[b]), self.ranges)}"
                                for b in bad)
                return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"invalid input: {msg}"))
            out = self.scoring.score_logits(get("logits"), get("candidate_post_hashes"),
                                            get("candidate_author_hashes"), self.params)
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(out[name], dtype=dtype))
                       for name, dtype in self.outputs.items()]
            return pb_utils.InferenceResponse(output_tensors=tensors)
        except Exception as e:  # one bad request must not fail the batch
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"phoenix_postprocess: {e}"))
