"""Triton Python backend: the release's whole pipeline (upstream's run_pipeline.py) in one request.

Raw ids in (the user, the history's posts and authors, their actions), a ranked feed out: the top K posts of
the corpus (ids, authors, retrieval scores), their probabilities, home-mixer's named scores, weighted and
final score and ranking, and the pipeline's own score and order (phoenix_runtime.pipeline.Pipeline). On the
Python-host targets the user tower and the ranker run in this process (no extra hop); on the GPU platform
targets they are called through Triton. The requests of an execution share one tower call, one corpus scan
and one ranker call; a bad request gets INVALID_ARG naming the input.
"""
from pathlib import Path

from phoenix_runtime import backend
from phoenix_runtime.manifest import read_manifest
from phoenix_runtime.pipeline import Pipeline


class TritonPythonModel:
    def initialize(self, args):
        backend.keep_request_buffers()          # a request's arrays reuse heap pages (phoenix_runtime.backend)
        self.name = args["model_name"]
        root = Path(args["model_repository"]).resolve().parent
        self.pipeline = Pipeline.open(root, read_manifest(root), backend.instance_device(args),
                                      lambda name, rec: backend.BlsModel(name, rec["inputs"],
                                                                         [o["name"] for o in rec["outputs"]]))
        self.specs = self.pipeline.inputs + self.pipeline.request_inputs
        self.ranks = backend.output_ranks(args)

    def execute(self, requests):
        results = self.pipeline.run([backend.request_arrays(r, self.specs) for r in requests])
        return [backend.response(self.name, res, self.ranks, r) for res, r in zip(results, requests)]
