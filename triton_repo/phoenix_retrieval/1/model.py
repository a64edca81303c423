"""Triton Python backend: retrieval = the user tower (phoenix_user_tower, called through Triton) + top-k over the
corpus.

The corpus and its search are phoenix_runtime.retrieval.ServedCorpus (the files beside this model.py; exact by
default, or the FAISS index the build chose; swapping the files with export.corpus changes the corpus without a
rebuild). Inputs: the user tower's inputs, plus optional `corpus_mask` [N] (False = never retrieve that row) and
`top_k` [1] (one value per request, at most the built maximum). Outputs per user: `top_k_indices` (corpus rows),
`top_k_post_ids`, `top_k_author_ids`, `top_k_scores` (dot products, best first), `user_representation` [D] and,
when the corpus has topics, `top_k_topics`. Every request is checked before any work (the user tower's inputs
with phoenix_runtime.request.check_request and the manifest's limits, then corpus_mask and top_k); bad input gets
INVALID_ARG naming it. The tower calls of an execution's requests go out together (async), so the tower's
dynamic batcher can batch them.
"""
from pathlib import Path

from phoenix_runtime import backend
from phoenix_runtime.manifest import RETRIEVAL, USER_TOWER, read_manifest
from phoenix_runtime.request import Limits, check_request
from phoenix_runtime.retrieval import ServedCorpus


class TritonPythonModel:
    def initialize(self, args):
        backend.keep_request_buffers()          # a request's arrays reuse heap pages (phoenix_runtime.backend)
        root = Path(args["model_repository"]).resolve().parent
        manifest = read_manifest(root)
        rec = manifest["served"][RETRIEVAL]
        self.inputs, self.request_inputs = rec["inputs"], rec["request_inputs"]
        self.limits = Limits.from_dict(manifest["limits"])
        self.corpus = ServedCorpus.open(root, manifest)
        self.tower = backend.BlsModel(USER_TOWER, self.inputs, ["user_representation"])
        self.ranks = backend.output_ranks(args)

    def execute(self, requests):
        checked = [self.check(r) for r in requests]
        good = [c for c in checked if not isinstance(c, Exception)]
        towers = iter(self.tower.run([arrays for arrays, _, _ in good]))
        return [backend.response(RETRIEVAL, c if isinstance(c, Exception) else self.retrieve(next(towers), *c[1:]),
                                 self.ranks, r) for c, r in zip(checked, requests)]

    def check(self, request):
        """(arrays, K, corpus mask) of a request, or the exception that answers it (naming the input)."""
        try:
            arrays = backend.request_arrays(request, self.inputs + self.request_inputs)
            check_request(self.inputs, arrays, self.limits, RETRIEVAL)
            users = len(arrays[self.inputs[0]["name"]])
            return (arrays, *self.corpus.options(arrays.get("top_k"), arrays.get("corpus_mask"), users))
        except Exception as e:  # noqa: BLE001 - answered as an error response
            return e

    def retrieve(self, tower, k, mask):
        if isinstance(tower, Exception):
            return tower
        try:
            return self.corpus.retrieve(tower["user_representation"], k, mask)
        except Exception as e:  # noqa: BLE001 - INTERNAL for this request only
            return RuntimeError(f"{type(e).__name__}: {e}")
