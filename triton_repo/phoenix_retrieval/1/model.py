"""Triton Python backend: retrieval = the user tower (a BLS call to phoenix_user_tower) + top-k over the corpus.

The corpus lives beside this file: `corpus.npy` (L2-normalised candidate representations [N, D]),
`corpus_post_ids.npy` / `corpus_author_ids.npy` (uint64) and, optional, `corpus_topics.npy` and a FAISS
index `corpus.faiss`; swapping those files changes the corpus without a rebuild (export.corpus). Inputs:
the user tower's inputs, plus optional `corpus_mask` [N] (False = never retrieve that row) and `top_k` [1]
(at most the built maximum). Outputs per user: `top_k_indices` (corpus rows), `top_k_post_ids`,
`top_k_author_ids`, `top_k_scores` (dot products, best first), `user_representation` [D] and, when the
corpus has topics, `top_k_topics`. Exact search (phoenix_runtime.topk) unless the build chose the FAISS index.
Every request is checked before any work (phoenix_runtime.request.check_request with the manifest's limits,
then corpus_mask and top_k: one top_k per request, in [1, the built maximum]); bad input gets INVALID_ARG
naming it, one bad request never fails the others of its batch.
"""
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from phoenix_runtime.manifest import USER_TOWER, read_manifest
from phoenix_runtime.request import Limits, RequestError, check_request
from phoenix_runtime.topk import check_top_k, exact_top_k


def _bad(message):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


class TritonPythonModel:
    def initialize(self, args):
        here = Path(args["model_repository"]).resolve() / args["model_version"]
        manifest = read_manifest(here.parent.parent)
        rec = manifest["served"][args["model_name"]]
        self.inputs, self.max_k = rec["inputs"], int(rec["top_k"])
        self.limits = Limits.from_dict(manifest["limits"])
        self.corpus = np.load(here / "corpus.npy", mmap_mode="r")
        self.post_ids = np.load(here / "corpus_post_ids.npy")
        self.author_ids = np.load(here / "corpus_author_ids.npy")
        topics = here / "corpus_topics.npy"
        self.topics = np.load(topics) if topics.exists() else None
        self.index = None
        if rec["index"] == "faiss":
            import faiss
            self.index = faiss.read_index(str(here / "corpus.faiss"))
        # BLS results in CPU memory, even from a user tower on a GPU (as_numpy reads host memory only)
        self.preferred = None
        if hasattr(pb_utils, "PreferredMemory"):
            self.preferred = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)

    def execute(self, requests):
        out = []
        for r in requests:
            try:
                out.append(self._one(r))
            except Exception as e:  # a bug, not the request's fault: 500 for this request only, named
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"phoenix_retrieval: {type(e).__name__}: {e}", pb_utils.TritonError.INTERNAL)))
        return out

    def _one(self, request):
        arrays = {s["name"]: pb_utils.get_input_tensor_by_name(request, s["name"]) for s in self.inputs}
        try:
            check_request(self.inputs, {n: t.as_numpy() for n, t in arrays.items()}, self.limits,
                          "phoenix_retrieval")
            mask, k = self._options(request, len(arrays[self.inputs[0]["name"]].as_numpy()))
        except RequestError as e:  # names the model already
            return _bad(str(e))
        except ValueError as e:
            return _bad(f"phoenix_retrieval: {e}")
        kwargs = {"preferred_memory": self.preferred} if self.preferred is not None else {}
        tower = pb_utils.InferenceRequest(model_name=USER_TOWER, inputs=list(arrays.values()),
                                          requested_output_names=["user_representation"], **kwargs).exec()
        if tower.has_error():
            return pb_utils.InferenceResponse(error=tower.error())
        user = pb_utils.get_output_tensor_by_name(tower, "user_representation").as_numpy().astype(np.float32)
        idx, scores = self._top_k(user, mask, k)
        out = [pb_utils.Tensor("top_k_indices", idx.astype(np.int64)),
               pb_utils.Tensor("top_k_post_ids", np.ascontiguousarray(self.post_ids[idx])),
               pb_utils.Tensor("top_k_author_ids", np.ascontiguousarray(self.author_ids[idx])),
               pb_utils.Tensor("top_k_scores", scores.astype(np.float32)),
               pb_utils.Tensor("user_representation", np.ascontiguousarray(user))]
        if self.topics is not None:
            out.append(pb_utils.Tensor("top_k_topics", np.array([[str(t).encode() for t in row]
                                                                for row in self.topics[idx]], dtype=np.object_)))
        return pb_utils.InferenceResponse(out)

    def _options(self, request, users: int):
        n = len(self.corpus)
        t = pb_utils.get_input_tensor_by_name(request, "corpus_mask")
        mask = None if t is None else t.as_numpy()
        if mask is not None and (mask.shape != (users, n) or mask.dtype != np.bool_):
            raise ValueError(f"corpus_mask must be bool [{n}] per user (the corpus rows), got "
                             f"{mask.dtype} {list(mask.shape[1:])}")
        t = pb_utils.get_input_tensor_by_name(request, "top_k")
        ks = None if t is None else t.as_numpy().reshape(-1)
        if ks is not None and ks.size and (ks != ks[0]).any():
            raise ValueError(f"top_k differs between the users of one request "
                             f"({sorted(set(int(v) for v in ks))}); send one value per request")
        k = self.max_k if ks is None or not ks.size else int(ks[0])   # int(): exact for any integer dtype
        check_top_k(k, n, self.max_k)
        return mask, k

    def _top_k(self, user: np.ndarray, mask, k: int):
        if self.index is not None and mask is None:
            scores, idx = self.index.search(user, k)
            return idx, scores
        return exact_top_k(user, self.corpus, k, mask)
