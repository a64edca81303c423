"""Triton Python backend: `phoenix` and `phoenix_embeddings` on the Python-host targets (cpu, gpu-python): the
ranker's engine and home-mixer's scoring in one process, so a client's named scores cost one hop.

The engine is the record of phoenix_ranker (or phoenix_ranker_embeddings) in manifest.json, opened as a
phoenix_runtime.host.EngineHost; the scoring is phoenix_postprocess's record, as phoenix_runtime.scoring.Scorer.
Inputs: the ranker's plus home-mixer's optional per-candidate facts (`candidate_author_ids`,
`candidate_video_duration_ms`, `candidate_in_network`), all checked together before any work; outputs:
phoenix_postprocess's. Requests of different C share one engine call; a bad request gets INVALID_ARG naming
the input or the limit, the others go on. (On the GPU platform targets these two models are ensembles of the
native engine and phoenix_postprocess instead.)
"""
from pathlib import Path

from phoenix_runtime import backend
from phoenix_runtime.host import EngineHost
from phoenix_runtime.manifest import POSTPROCESS, read_manifest
from phoenix_runtime.scoring import Scorer


class TritonPythonModel:
    def initialize(self, args):
        backend.keep_request_buffers()          # a request's arrays reuse heap pages (phoenix_runtime.backend)
        self.name = args["model_name"]
        root = Path(args["model_repository"]).resolve().parent
        manifest = read_manifest(root)
        self.scorer = Scorer(manifest["served"][POSTPROCESS])
        self.host = EngineHost.open(root, manifest, manifest["served"][self.name]["engine_model"],
                                    backend.instance_device(args), self.name, self.scorer.request_inputs)
        self.ranks = backend.output_ranks(args)

    def execute(self, requests):
        arrays = [backend.request_arrays(r, self.host.inputs) for r in requests]
        responses = []
        for a, result, r in zip(arrays, self.host.run(arrays), requests):
            if not isinstance(result, Exception):
                try:
                    result = self.scorer(result, a)
                except ValueError as e:      # values the scoring refuses (a negative duration): named
                    result = e
            responses.append(backend.response(self.name, result, self.ranks, r))
        return responses
