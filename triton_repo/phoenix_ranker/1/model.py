"""Triton Python backend: the engine host of phoenix_ranker, phoenix_ranker_embeddings, phoenix_user_tower and
phoenix_candidate_tower (cpu and gpu-python targets).

At start-up the model opens its record of the repository's manifest.json (`served.<model name>`) as a
phoenix_runtime.host.EngineHost: the engine to run, its input specs and limits and, for hashes-in models, the
hash tables to gather rows from. Each execution hands every request's arrays to the host, which checks them
(a bad request gets INVALID_ARG naming the input or the limit, the others go on), batches requests of
different C into one engine call and gathers the table rows; an engine failure answers the requests of that
call with INTERNAL.
"""
from pathlib import Path

from phoenix_runtime import backend
from phoenix_runtime.host import EngineHost
from phoenix_runtime.manifest import read_manifest


class TritonPythonModel:
    def initialize(self, args):
        backend.keep_request_buffers()          # a request's arrays reuse heap pages (phoenix_runtime.backend)
        self.name = args["model_name"]
        root = Path(args["model_repository"]).resolve().parent
        self.host = EngineHost.open(root, read_manifest(root), self.name, backend.instance_device(args))
        self.ranks = backend.output_ranks(args)

    def execute(self, requests):
        results = self.host.run([backend.request_arrays(r, self.host.inputs) for r in requests])
        return [backend.response(self.name, res, self.ranks, r) for res, r in zip(results, requests)]
