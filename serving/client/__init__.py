"""PhoenixClient: raw ids and features in, named scores and a ranking out, from a Phoenix Triton server.

    with PhoenixClient("127.0.0.1:8001") as client:           # gRPC; protocol="http" for port 8000
        result = client.score(user_id=42,
                              history=[(post_id, author_id, ["favorite", "reply"], surface), ...],
                              candidates=[(post_id, author_id, surface), ...])
        result.ranking, result.final_score, result.scores["favorite_score"]

Everything the client needs comes from the server: the `client_config` parameter of
phoenix_postprocess (phoenix_runtime.manifest.client_config: the ranker's inputs, the actions, the limits, the
hash constants per entity), so a client needs only the URL.

Requests are built from the model's declared inputs. A history item is a tuple (post_id, author_id,
actions, product_surface) or a dict of raw keys (`post_id`, `author_id`, `actions`, `product_surface`,
May: `continuous_actions`, plus any feature added by configuration); a candidate is (post_id, author_id,
product_surface) or a dict (`impr_ts`, `post_creation_ts`, `video_duration_ms`, `in_network`, ...);
`user` holds user features (`ip_id`, ...). Raw ids are hashed with phoenix_runtime.hashing.hash_ids (the
server's constants); `hashed=True` takes hash values instead. Actions are names of the model's action
list (or their served score names, or column indices). The history is padded to S (the most recent S
items kept); candidates are padded to the server's fixed sizes, if it has any. Every input is checked
before sending with the server's own rules (phoenix_runtime.request.check_request): a bad one raises
PhoenixInputError naming it; an error the server returns raises PhoenixServerError with its message; a
server that cannot be reached raises PhoenixConnectionError.

The command line is `python -m serving.client --help` (serving/cli.py; serving/client/__main__.py runs it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from phoenix_runtime.batching import stack_rows
from phoenix_runtime.hashing import hash_ids, hash_params_from
from phoenix_runtime.manifest import ENSEMBLE, ENSEMBLE_EMBEDDINGS, PIPELINE, POSTPROCESS, RETRIEVAL
from phoenix_runtime.request import Limits, RequestError, check_request


class PhoenixInputError(ValueError):
    """A client-side input is wrong; the message names it and says what is expected."""


class PhoenixServerError(RuntimeError):
    """The server answered with an error; the message is the server's."""


class PhoenixConnectionError(ConnectionError):
    """The server cannot be reached (or answered with something that is not Triton)."""


@dataclass
class ScoreResult:
    """One user's answer. Arrays are per candidate, in the order the candidates were given."""
    scores: dict[str, np.ndarray]
    weighted_score: np.ndarray
    final_score: np.ndarray
    ranking: list[int]
    probs: np.ndarray | None = None
    candidates: list = field(default_factory=list)

    def rows(self, columns=("favorite_score", "reply_score", "retweet_score", "click_score")):
        """(rank, candidate index, candidate, final, weighted, {column: value}) best first."""
        cols = [c for c in columns if c in self.scores]
        for rank, c in enumerate(self.ranking):
            cand = self.candidates[c] if c < len(self.candidates) else None
            yield rank + 1, c, cand, float(self.final_score[c]), float(self.weighted_score[c]), \
                {k: float(self.scores[k][c]) for k in cols}


def _triton(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as t
    elif protocol == "http":
        import tritonclient.http as t
    else:
        raise PhoenixInputError(f"protocol: expected 'grpc' or 'http', got {protocol!r}")
    return t


def ids_array(values, what: str) -> np.ndarray:
    """Raw ids (non-negative integers up to 2^64 - 1) -> uint64."""
    out = []
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or int(v) < 0 or int(v) >= 1 << 64:
            raise PhoenixInputError(f"{what}: {v!r} is not an id (an integer in [0, 2^64))")
        out.append(int(v))
    return np.array(out, dtype=np.uint64)


_TRITON_DTYPES = {"int32": "INT32", "int64": "INT64", "uint64": "UINT64", "float32": "FP32", "bool": "BOOL"}


class PhoenixClient:
    def __init__(self, url: str = "127.0.0.1:8001", protocol: str = "grpc", timeout: float = 60.0,
                 config: dict | None = None, model: str = ENSEMBLE):
        self.url, self.protocol, self.timeout, self.model = url, protocol, timeout, model
        self._t = _triton(protocol)
        kwargs = {"network_timeout": timeout, "connection_timeout": timeout} if protocol == "http" else {}
        try:
            self.triton = self._t.InferenceServerClient(url, **kwargs)
        except Exception as e:  # a malformed URL and the like
            raise PhoenixConnectionError(f"cannot open a {protocol} connection to {url}: {e}") from None
        self.config = config or self._server_config()
        self.limits = Limits.from_dict(self.config["limits"])
        self.history_len = self.limits.history_len
        self.inputs = self.config["ranker_inputs"]
        self.actions = list(self.config["actions"])
        self.hashing = hash_params_from(self.config["hashing"])

    # -------------------------------------------------------------- config
    def _server_config(self) -> dict:
        try:
            cfg = self.triton.get_model_config(POSTPROCESS,
                                               **({"as_json": True} if self.protocol == "grpc" else {}))
        except self._t.InferenceServerException as e:
            if "unavailable" in str(e.status()).lower() or "failed to connect" in e.message().lower() or \
                    "connect" in e.message().lower():
                raise PhoenixConnectionError(f"cannot reach the server at {self.url} ({self.protocol}): "
                                             f"{e.message()}") from None
            raise PhoenixServerError(f"cannot read {POSTPROCESS}'s config from {self.url}: "
                                     f"{e.message()}") from None
        except Exception as e:  # refused connections surface as socket / gRPC errors
            raise PhoenixConnectionError(f"cannot reach the server at {self.url} ({self.protocol}): {e}") from None
        cfg = cfg.get("config", cfg)
        try:
            return json.loads(cfg["parameters"]["client_config"]["string_value"])
        except KeyError:
            raise PhoenixServerError(f"{POSTPROCESS} has no `client_config` parameter: the server runs a "
                                     "repository built by another version of export.build") from None

    def close(self):
        self.triton.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -------------------------------------------------------------- request building
    def _hash(self, value, spec: dict, what: str, hashed: bool) -> np.ndarray:
        width = spec["shape"][-1]
        if hashed:
            h = np.asarray(value, dtype=np.int64).reshape(-1)
            if h.shape != (width,):
                raise PhoenixInputError(f"{what}: expected {width} hash values, got {value!r}")
            return h
        return hash_ids(ids_array([value], what), self.hashing[spec["entity"]])[0]

    def _value(self, spec: dict, raw: dict, what: str, hashed: bool):
        """The array of one field for one user / history item / candidate, from its raw key."""
        key = spec["key"]
        check = spec.get("check")
        trailing = [d for d in spec["shape"][2 if spec["side"] != "user" else 1:]]
        if key not in raw or raw[key] is None:
            if spec.get("optional"):      # the zero value: no IP hash, no dwell, unknown timestamps
                return np.zeros(trailing, dtype=spec["dtype"])
            raise PhoenixInputError(f"{what}: missing {key!r} (the model's input {spec['name']})")
        value = raw[key]
        if check == "hash":
            return self._hash(value, spec, f"{what}.{key}", hashed)
        if check == "multi_hot":
            return self._actions(value, f"{what}.{key}")
        if check == "finite":
            v = np.zeros(trailing, np.float32)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for i, x in items:
                v[int(i)] = float(x)
            return v
        if spec["dtype"] == "uint64":                 # a raw id the server hashes (phoenix_pipeline)
            return ids_array([value], f"{what}.{key}").reshape(trailing)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise PhoenixInputError(f"{what}.{key}: expected an integer, got {value!r}")
        return np.asarray(value, dtype=spec["dtype"]).reshape(trailing)

    def _actions(self, value, what: str) -> np.ndarray:
        """Action names, served score names or column indices (a list, or {index: 0/1}) -> multi-hot [A]."""
        v = np.zeros(len(self.actions), np.float32)
        if isinstance(value, dict):
            items = list(value.items())
        else:
            items = [(a, 1.0) for a in ([value] if isinstance(value, (str, int)) else value)]
        names = {a: i for i, a in enumerate(self.actions)}
        fields = self.config["score_sources"]["fields"]
        names.update({n: src[1] for n, src in fields.items() if src and src[0] == "column"})
        names.update({n.removesuffix("_score"): i for n, i in list(names.items()) if n.endswith("_score")})
        for a, x in items:
            i = names.get(a) if isinstance(a, str) and not a.strip().isdigit() else int(a)
            if i is None or not 0 <= i < len(self.actions):
                raise PhoenixInputError(f"{what}: unknown action {a!r}; the model's actions are {self.actions} "
                                        f"(or column indices 0..{len(self.actions) - 1})")
            if float(x) not in (0.0, 1.0):
                raise PhoenixInputError(f"{what}: action {a!r} has value {x!r}; actions are 0 or 1")
            v[i] = float(x)
        return v

    def build_row(self, user_id=None, history=(), candidates=(), user: dict | None = None,
                  hashed: bool = False) -> dict[str, np.ndarray]:
        """One user's arrays (history padded to S, candidates unpadded), checked field by field."""
        S = self.history_len
        history, candidates = list(history)[-S:], list(candidates)
        has_candidates = any(spec["side"] == "candidate" for spec in self.inputs)
        if has_candidates and not candidates:
            raise PhoenixInputError("candidates: empty list; give at least one (post_id, author_id, surface)")
        try:
            self.limits.check_candidates(len(candidates), "candidates")
        except RequestError as e:
            raise PhoenixInputError(str(e)) from None
        u = dict(user or {})
        if user_id is not None:
            u.setdefault("user_hashes" if hashed else "user_id", user_id)
        if hashed and "user_hashes" in u:
            u["user_id"] = u.pop("user_hashes")
        hist = [_as_dict(h, ("post_id", "author_id", "actions", "product_surface"), f"history[{i}]")
                for i, h in enumerate(history)]
        cands = [_as_dict(c, ("post_id", "author_id", "product_surface"), f"candidates[{i}]")
                 for i, c in enumerate(candidates)]
        row = {}
        for spec in self.inputs:
            side = spec["side"]
            if side == "user":
                row[spec["name"]] = self._value(spec, u, "user", hashed)
                continue
            items, what = (hist, "history") if side == "history" else (cands, "candidates")
            values = [self._value(spec, it, f"{what}[{i}]", hashed) for i, it in enumerate(items)]
            shape = [S if side == "history" else len(items)] + [d for d in spec["shape"][2:]]
            arr = np.zeros(shape, dtype=spec["dtype"])
            if values:
                arr[:len(values)] = np.stack(values)
            row[spec["name"]] = arr
        if has_candidates and (row["candidate_post_hashes"][:, 0] == 0).any():
            i = int(np.flatnonzero(row["candidate_post_hashes"][:, 0] == 0)[0])
            raise PhoenixInputError(f"candidates[{i}].post_id: 0 is the padding id, not a post")
        row.update(self._postprocess_extras(cands))
        return row

    def _postprocess_extras(self, cands: list[dict]) -> dict[str, np.ndarray]:
        """home-mixer's optional per-candidate facts, sent when any candidate has them: author ids (diversity
        keys), video_duration_ms (a candidate without one: 0 = unknown, no vqv weight) and in_network (a
        candidate without one: unknown = unchanged, which is what True does)."""
        out = {}
        defaults = {"video_duration_ms": 0, "in_network": True}
        for spec in self.config.get("postprocess_inputs", []):
            key = spec["key"]
            given = [c.get(key) for c in cands]
            if all(v is None for v in given):
                continue
            if key == "author_id":
                if None in given:
                    raise PhoenixInputError(f"candidates[{given.index(None)}]: missing 'author_id'")
                out[spec["name"]] = ids_array(given, "candidates author_id").view(np.int64)
                continue
            values = [defaults[key] if v is None else v for v in given]
            if key == "video_duration_ms":
                d = np.asarray(values)
                if d.dtype.kind not in "iu" or (d < 0).any():
                    raise PhoenixInputError(f"candidates video_duration_ms: integers >= 0 (0 = unknown), got "
                                            f"{given!r:.80}")
                out[spec["name"]] = d.astype(np.int64)
            else:
                out[spec["name"]] = np.asarray([bool(v) for v in values])
        return out

    def _check(self, arrays: dict, model: str) -> None:
        specs = [s for s in self.inputs if s["name"] in arrays]
        try:
            check_request(specs, arrays, self.limits, model)
        except RequestError as e:
            raise PhoenixInputError(str(e)) from None

    # -------------------------------------------------------------- inference
    def score(self, user_id=None, history=(), candidates=(), user=None, hashed=False) -> ScoreResult:
        """Score one user's candidates: named scores, weighted and final score, ranking."""
        return self.score_many([dict(user_id=user_id, history=history, candidates=candidates, user=user,
                                     hashed=hashed)])[0]

    @property
    def candidate_inputs(self) -> list[str]:
        """Inputs with a candidate axis, padded to one C per request: the ranker's [B, C, ...] ones and the
        postprocess's own candidate facts."""
        return [s["name"] for s in self.inputs if s["shape"][1:2] == ["C"]] + \
            [s["name"] for s in self.config.get("postprocess_inputs", [])]

    def arrays(self, requests: list[dict]) -> dict[str, np.ndarray]:
        """The [B, ...] arrays of one Triton request for `requests` (score's keyword arguments each), as
        score_many sends them: C padded to the build's candidate sizes (padding is exact: hash 0)."""
        return self._stack([self.build_row(**r) for r in requests])

    def _stack(self, rows: list[dict]) -> dict[str, np.ndarray]:
        if len({tuple(sorted(r)) for r in rows}) > 1:
            raise PhoenixInputError("score_many: give the optional candidate facts for every user or none")
        c = self.limits.padded_candidates(max(len(r["candidate_post_hashes"]) for r in rows))
        return stack_rows(rows, self.candidate_inputs, c)

    def score_many(self, requests: list[dict]) -> list[ScoreResult]:
        """Score several users, up to max_batch_size per Triton request (each dict holds `score`'s keyword
        arguments); results in the order given."""
        rows = [self.build_row(**r) for r in requests]
        results, batch = [], self.limits.max_batch_size
        for s in range(0, len(rows), batch):
            arrays = self._stack(rows[s:s + batch])
            self._check(arrays, self.model)
            out = self.infer(arrays)
            results += [_result(out, b, len(r["candidates"]), list(r["candidates"]))
                        for b, r in enumerate(requests[s:s + batch])]
        return results

    def score_embeddings(self, arrays: dict[str, np.ndarray], model: str = ENSEMBLE_EMBEDDINGS,
                         candidates: list | None = None) -> list[ScoreResult]:
        """Score users from embeddings looked up by the caller (RecsysEmbeddings fields [B, ...] float32, plus
        the validity hashes and other fields of phoenix_ranker_embeddings), as numpy arrays."""
        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        out = self.infer(arrays, model)
        n = out["final_score"].shape[1]
        return [_result(out, b, n, candidates or list(range(n))) for b in range(out["final_score"].shape[0])]

    def retrieve(self, user_id=None, history=(), user=None, top_k: int | None = None, corpus_mask=None,
                 hashed=False) -> dict[str, np.ndarray]:
        """Top-k posts of the served corpus for one user: indices, post and author ids, scores."""
        spec_names = {s["name"] for s in self.config["retrieval_inputs"] or []}
        if not spec_names:
            raise PhoenixServerError("the server has no phoenix_retrieval model (built with --no-towers?)")
        saved, self.inputs, self.hashing = (self.inputs, self.hashing), self.config["retrieval_inputs"], \
            hash_params_from(self.config["retrieval_hashing"])
        try:
            row = self.build_row(user_id=user_id, history=history, user=user, hashed=hashed)
        finally:
            self.inputs, self.hashing = saved
        arrays = {k: v[None] for k, v in row.items() if k in spec_names}
        if top_k is not None:
            arrays["top_k"] = np.array([[top_k]], dtype=np.int32)
        if corpus_mask is not None:
            arrays["corpus_mask"] = np.asarray(corpus_mask, dtype=bool)[None]
        out = self.infer(arrays, RETRIEVAL)
        return {k: v[0] for k, v in out.items()}

    def pipeline(self, user_id, history=(), user=None, top_k: int | None = None, corpus_mask=None) -> dict:
        """The release's whole pipeline for one user in ONE request (phoenix_pipeline): the top K posts of the
        served corpus and their scores. Raw ids in (the server hashes them with each model's constants); out:
        top_k_post_ids, top_k_author_ids, top_k_scores (retrieval), probs [K, A], home-mixer's named scores,
        weighted_score, final_score and ranking, pipeline_score and pipeline_ranking (run_pipeline.py's)."""
        arrays = self.pipeline_request(user_id, history, user, top_k, corpus_mask)
        return {k: v[0] for k, v in self.infer(arrays, PIPELINE).items()}

    def pipeline_request(self, user_id, history=(), user=None, top_k: int | None = None,
                         corpus_mask=None) -> dict[str, np.ndarray]:
        """The arrays of `pipeline`'s request (batch of one user), as phoenix_pipeline receives them."""
        specs = self.config.get("pipeline_inputs")
        if not specs:
            raise PhoenixServerError(f"the server has no {PIPELINE} model (built with --no-towers, or an older build)")
        saved, self.inputs = self.inputs, [s for s in specs if "side" in s]
        try:
            row = self.build_row(user_id=user_id, history=history, user=user)
        finally:
            self.inputs = saved
        arrays = {k: v[None] for k, v in row.items() if k in {s["name"] for s in specs}}
        if top_k is not None:
            arrays["top_k"] = np.array([[top_k]], dtype=np.int32)
        if corpus_mask is not None:
            arrays["corpus_mask"] = np.asarray(corpus_mask, dtype=bool)[None]
        return arrays

    def infer(self, arrays: dict[str, np.ndarray], model: str | None = None) -> dict[str, np.ndarray]:
        """Send ready-made [B, ...] arrays as they are and return every output."""
        model = model or self.model
        try:
            res = self.triton.infer(model, self.make_inputs(arrays),
                                    **({"client_timeout": self.timeout} if self.protocol == "grpc" else {}))
        except self._t.InferenceServerException as e:
            if e.status() in ("StatusCode.UNAVAILABLE", "503") or "failed to connect" in (e.message() or ""):
                raise PhoenixConnectionError(f"{model}: cannot reach the server at {self.url}: {e.message()}") from None
            raise PhoenixServerError(f"{model}: {e.message()}") from None
        except (ConnectionError, OSError) as e:
            raise PhoenixConnectionError(f"{model}: cannot reach the server at {self.url}: {e}") from None
        response = res.get_response(**({"as_json": True} if self.protocol == "grpc" else {}))
        return {o["name"]: res.as_numpy(o["name"]) for o in response["outputs"]}

    def make_inputs(self, arrays: dict[str, np.ndarray]) -> list:
        inputs = []
        for name, a in arrays.items():
            a = np.ascontiguousarray(a)
            dtype = _TRITON_DTYPES.get(str(a.dtype))
            if dtype is None:
                raise PhoenixInputError(f"{name}: dtype {a.dtype} cannot be sent (use {sorted(_TRITON_DTYPES)})")
            t = self._t.InferInput(name, list(a.shape), dtype)
            t.set_data_from_numpy(a)
            inputs.append(t)
        return inputs


def _as_dict(item, keys: tuple, what: str) -> dict:
    if isinstance(item, dict):
        return item
    if not isinstance(item, (tuple, list)) or len(item) != len(keys):
        raise PhoenixInputError(f"{what}: expected ({', '.join(keys)}) or a dict of raw keys, got {item!r:.80}")
    return dict(zip(keys, item))


def _result(out: dict, b: int, n: int, candidates: list) -> ScoreResult:
    ranking = [int(i) for i in out["ranking"][b] if 0 <= i < n]
    skip = {"weighted_score", "final_score", "ranking", "probs"}
    return ScoreResult(scores={k: v[b, :n] for k, v in out.items() if k not in skip and v.ndim == 2},
                       weighted_score=out["weighted_score"][b, :n], final_score=out["final_score"][b, :n],
                       ranking=ranking, probs=out["probs"][b, :n] if "probs" in out else None, candidates=candidates)
