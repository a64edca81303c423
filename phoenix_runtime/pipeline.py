"""The release's whole pipeline (upstream's run_pipeline.py) as one served request: raw ids in, a ranked feed out.

For each user: hash the user and history with the retrieval model's constants -> the user tower -> exact
top K over the corpus -> hash the user, history and the K retrieved posts with the ranker's constants -> rank
all K in one pass (candidate isolation; slot j gets the RoPE position of slot j mod candidate_seq_len, as in
upstream's chunks) -> home-mixer's named scores, weighted and final score, ranking -> the pipeline's own
score and order (`PIPELINE_WEIGHTS`).

Request inputs (`raw_inputs`): the user and history fields of the user tower and the ranker, each hashed
field as raw ids (`user_hashes` [B, H] -> `user_ids` [B, 1] uint64, `history_post_hashes` -> `history_post_ids`
[B, S], ...; id 0 = padding), the other fields as the models take them (`history_actions`, ...; the history's
product surfaces may be left out: 0, as upstream's pipeline), plus optional `top_k` [1] and `corpus_mask` [N].
Retrieved posts get product surface 0 and no timestamps, as upstream's pipeline; their author ids are
home-mixer's author-diversity keys.

Standard library and numpy only: part of phoenix_runtime, which the build copies whole into the repository.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .hashing import EntityHash, hash_ids
from .host import EngineHost
from .manifest import PIPELINE, POSTPROCESS, RANKER, USER_TOWER
from .request import Limits, RequestError, check_request, resolve_shape
from .retrieval import ServedCorpus
from .scoring import Scorer

# run_pipeline.py's score: p[1] * 1.0 + p[4] * 0.5 + p[6] * 0.3 + p[11] * 0.2 over the ActionName columns FAV,
# REPLY, RETWEET, RECAP_DWELLED: home-mixer's fields favorite, reply, retweet and dwell (the January model's
# favorite, reply, repost and dwell columns), summed in this order in float32.
PIPELINE_WEIGHTS = {"favorite_score": 1.0, "reply_score": 0.5, "retweet_score": 0.3, "dwell_score": 0.2}
PIPELINE_OUTPUTS = ("pipeline_score", "pipeline_ranking")
RETRIEVAL_OUTPUTS = ("top_k_indices", "top_k_post_ids", "top_k_author_ids", "top_k_scores", "top_k_topics")
OPTIONAL_FIELDS = ("history_product_surface",)   # upstream's pipeline sends none: surface 0


def raw_name(spec: dict) -> str:
    """The request input of a hashed field: `history_post_hashes` -> `history_post_ids`."""
    return spec["name"].removesuffix("_hashes") + "_ids" if spec.get("check") == "hash" else spec["name"]


def raw_inputs(*engine_inputs: list[dict]) -> list[dict]:
    """The pipeline's request inputs from the input specs of the hashes-in models it runs (tower, ranker): their
    user and history fields, once each, hashed fields as raw uint64 ids."""
    out: dict[str, dict] = {}
    for specs in engine_inputs:
        for s in specs:
            if s["side"] not in ("user", "history"):
                continue
            if s.get("check") == "hash":                            # a user's id: [B, 1]; a history's: [B, S]
                shape = ["B", 1] if s["side"] == "user" else s["shape"][:-1]
                spec = {"name": raw_name(s), "dtype": "uint64", "shape": shape, "side": s["side"], "key": s["key"],
                        "entity": s["entity"]}
            else:
                spec = dict(s)
            if s.get("optional") or s["name"] in OPTIONAL_FIELDS:
                spec["optional"] = True
            out.setdefault(spec["name"], spec)
    return list(out.values())


def pipeline_score(scores: dict[str, np.ndarray]) -> np.ndarray:
    """run_pipeline.py's weighted score from the named scores [B, K] (float32); ValueError when the model lacks
    one of its fields."""
    missing = [f for f in PIPELINE_WEIGHTS if np.isnan(scores[f]).all()]
    if missing:
        raise ValueError(f"the served model has no column for {missing}: the pipeline's score needs them")
    return sum(scores[f] * np.float32(w) for f, w in PIPELINE_WEIGHTS.items()).astype(np.float32)


def descending(values: np.ndarray) -> np.ndarray:
    """[B, K] int32: indices by value, best first, ties by index."""
    return np.argsort(-values, axis=1, kind="stable").astype(np.int32)


class Pipeline:
    """The pipeline over a tower and a ranker (anything with EngineHost's `run`), a ServedCorpus and a Scorer."""

    def __init__(self, record: dict, tower, corpus, ranker, scorer: Scorer, hashing: dict, retrieval_hashing: dict,
                 limits: Limits, name: str = PIPELINE):
        self.inputs, self.request_inputs = record["inputs"], record["request_inputs"]
        self.tower, self.corpus, self.ranker, self.scorer = tower, corpus, ranker, scorer
        self.hashing = {e: EntityHash(**h) for e, h in hashing.items()}
        self.retrieval_hashing = {e: EntityHash(**h) for e, h in retrieval_hashing.items()}
        self.limits, self.name = limits, name
        self.timings: dict[str, float] = {}     # seconds per stage of the last run (the benchmarks read them)

    @classmethod
    def open(cls, root, manifest: dict, device: str = "cpu", remote=None) -> "Pipeline":
        """The pipeline of the repository at `root`, its engines in this process; `remote(name, record)` makes
        the engine model of a platform backend (called through Triton) where an engine is not a Python host."""
        root, served = Path(root), manifest["served"]

        def engine(name):
            if served[name]["backend"] == "python":
                return EngineHost.open(root, manifest, name, device)
            if remote is None:
                raise ValueError(f"{name} is a {served[name]['backend']} model: it runs in Triton, not here")
            return remote(name, served[name])

        return cls(served[PIPELINE], engine(USER_TOWER), ServedCorpus.open(root, manifest), engine(RANKER),
                   Scorer(served[POSTPROCESS]), manifest["hashing"], manifest["retrieval_hashing"],
                   Limits.from_dict(manifest["limits"]))

    def check(self, arrays: dict) -> tuple[dict, int, np.ndarray | None]:
        """(the request's fields, K, corpus mask), checked; RequestError / ValueError naming the input."""
        check_request(self.inputs, arrays, self.limits, self.name)
        users = len(arrays[self.inputs[0]["name"]])
        try:
            k, mask = self.corpus.options(arrays.get("top_k"), arrays.get("corpus_mask"), users)
        except ValueError as e:
            raise RequestError(f"{self.name}: {e}") from None
        self.limits.check_candidates(k, self.name)
        return arrays, k, mask

    def features(self, arrays: dict, specs: list[dict], hashing: dict, dims: dict) -> dict:
        """A model's user and history inputs from the request: raw ids hashed with `hashing`, the rest as given
        (an absent optional field is left out; the model's host fills its zero value, or here, the surfaces)."""
        out = {}
        for s in specs:
            if s["side"] not in ("user", "history"):
                continue
            raw = arrays.get(raw_name(s))
            if raw is None:
                if s["name"] in OPTIONAL_FIELDS:
                    out[s["name"]] = np.zeros(resolve_shape(s["shape"], dims), dtype=s["dtype"])
                continue
            if s.get("check") == "hash":
                raw = hash_ids(raw, hashing[s["entity"]])
                raw = raw[:, 0] if s["side"] == "user" else raw              # [B, 1, H] -> [B, H]
            out[s["name"]] = raw
        return out

    def run(self, requests: list[dict]) -> list:
        """One result per request: its outputs, or the exception that answers it. The requests' users share one
        tower call, one corpus scan and one ranker call."""
        clock = [time.perf_counter()]

        def lap(stage):
            clock.append(time.perf_counter())
            self.timings[stage] = clock[-1] - clock[-2]

        results: list = [None] * len(requests)
        good = []
        for i, arrays in enumerate(requests):
            try:
                good.append((i, *self.check(arrays)))
            except (RequestError, ValueError) as e:
                results[i] = e
        if not good:
            return results
        dims = [{"B": len(a[self.inputs[0]["name"]])} for _, a, _, _ in good]
        tower_arrays = [self.features(a, self.tower.inputs, self.retrieval_hashing, d)
                        for (_, a, _, _), d in zip(good, dims)]
        lap("check_and_hash")
        towers = self.tower.run(tower_arrays)
        lap("user_tower")
        retrieved = self.retrieve(good, towers, results)
        lap("retrieval")
        ranked = []
        for (i, a, k, _), d, r in zip(good, dims, retrieved):
            if r is None:
                continue
            arrays = self.features(a, self.ranker.inputs, self.hashing, {**d, "C": k})
            arrays.update(self.candidates(r))
            ranked.append((i, r, arrays))
        lap("hash_candidates")
        outs = self.ranker.run([arrays for _, _, arrays in ranked])
        lap("ranking")
        for (i, r, arrays), out in zip(ranked, outs):
            results[i] = out if isinstance(out, Exception) else self.finish(r, arrays, out)
        lap("scoring")
        return results

    def retrieve(self, good: list, towers: list, results: list) -> list:
        """Each request's retrieval outputs (None where the tower failed: its error is the result). Requests
        without a corpus mask share one scan of the corpus (the top max-K, cut to each request's K)."""
        out = [None] * len(good)
        shared = [j for j, (_, _, _, mask) in enumerate(good) if mask is None and not isinstance(towers[j], Exception)]
        if shared:
            k_max = max(good[j][2] for j in shared)
            users = np.concatenate([towers[j]["user_representation"] for j in shared])
            both = self.corpus.retrieve(users, k_max)
            start = 0
            for j in shared:
                b, k = len(towers[j]["user_representation"]), good[j][2]
                out[j] = {n: v[start:start + b, :k] if n in RETRIEVAL_OUTPUTS else v[start:start + b]
                          for n, v in both.items()}
                start += b
        for j, (i, _, k, mask) in enumerate(good):
            if isinstance(towers[j], Exception):
                results[i] = towers[j]
            elif out[j] is None:
                out[j] = self.corpus.retrieve(towers[j]["user_representation"], k, mask)
        return out

    def candidates(self, retrieved: dict) -> dict:
        """The ranker's candidate fields for the retrieved posts: post and author hashes (ranker constants), the
        other required fields 0 (product surface 0, as upstream's pipeline); optional ones left out (no
        timestamps). Plus the posts' author ids, home-mixer's author-diversity keys."""
        ids = {"post_id": retrieved["top_k_post_ids"], "author_id": retrieved["top_k_author_ids"]}
        shape = ids["post_id"].shape
        out = {"candidate_author_ids": ids["author_id"].view(np.int64)}
        for s in self.ranker.inputs:
            if s["side"] != "candidate" or s["name"] in out:
                continue
            if s.get("check") == "hash" and s.get("key") in ids:
                out[s["name"]] = hash_ids(ids[s["key"]], self.hashing[s["entity"]])
            elif not s.get("optional"):
                out[s["name"]] = np.zeros(resolve_shape(s["shape"], {"B": shape[0], "C": shape[1]}), dtype=s["dtype"])
        return out

    def finish(self, retrieved: dict, arrays: dict, ranker_out: dict) -> dict:
        """The outputs of one request: retrieval's, home-mixer's scores, the pipeline's score and order."""
        try:
            scores = self.scorer(ranker_out, arrays)
            score = pipeline_score(scores)
        except ValueError as e:
            return e
        out = {n: v for n, v in retrieved.items() if n in RETRIEVAL_OUTPUTS}
        return {**out, **scores, "pipeline_score": score, "pipeline_ranking": descending(score)}
