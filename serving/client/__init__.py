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
`user` holds user features (`ip_id`, ...). Keys are strict: the keys allowed are the served model's raw
keys of that side (`client.keys("history")`, from its input specs, plus the postprocess's optional
candidate facts); any other key (a typo such as `action`) raises PhoenixInputError naming it and its
closest allowed key. Raw ids are hashed with phoenix_runtime.hashing.hash_ids (the server's constants);
`hashed=True` takes hash values instead. Actions are names of the model's action list, the other
release's name of the same action (January `favorite` or May `server_tweet_fav`,
phoenix_runtime.scoring.PHOENIX_SCORES), its served score name (`favorite_score`, `favorite`) or a column
index. The history is padded to S (the most recent S items kept); candidates are padded to the server's
fixed sizes, if it has any. Every request is checked before sending: its values with the server's own
rules (phoenix_runtime.request.check_request), and its input names and dtypes against the served model's
metadata (an unknown or missing input is named); a bad one raises PhoenixInputError naming it; an error
the server returns raises PhoenixServerError with its message; a server that cannot be reached raises
PhoenixConnectionError.

The command line is `python -m serving.client --help` (serving/cli.py; serving/client/__main__.py runs it).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field

import numpy as np

from export.keys import check_keys, closest, unknown_key
from phoenix_runtime.batching import stack_rows
from phoenix_runtime.hashing import hash_ids, hash_params_from
from phoenix_runtime.manifest import ENSEMBLE, ENSEMBLE_EMBEDDINGS, PIPELINE, POSTPROCESS, RETRIEVAL, SERVED_MODELS
from phoenix_runtime.request import Limits, RequestError, check_request
from phoenix_runtime.scoring import PHOENIX_SCORES


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
    values = list(values)
    if values and all(type(v) is int for v in values) and min(values) >= 0 and max(values) < 1 << 64:
        return np.array(values, dtype=np.uint64)            # the common case, in one step
    out = []
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or int(v) < 0 or int(v) >= 1 << 64:
            raise PhoenixInputError(f"{what}: {v!r} is not an id (an integer in [0, 2^64))")
        out.append(int(v))
    return np.array(out, dtype=np.uint64)


def raw_id_column(spec: dict, items: list[dict]) -> np.ndarray | None:
    """The raw ids of field `spec` (a uint64 input the server hashes) of every item at once, when each item has a
    valid one (the common case); None otherwise: the field goes item by item, which names the bad item."""
    if spec["dtype"] != "uint64" or spec.get("check") == "hash" or not items:
        return None
    try:
        return ids_array([it.get(spec["key"]) for it in items], spec["key"])
    except PhoenixInputError:
        return None


_TRITON_DTYPES = {"int32": "INT32", "int64": "INT64", "uint64": "UINT64", "float32": "FP32", "bool": "BOOL"}


def action_columns(actions, fields: dict) -> dict[str, int]:
    """Every name an action may be given by -> its column: the model's own action names; then, for each
    PhoenixScores field the model serves from a column (`fields`: the served score sources), the field
    (`favorite_score`), its stem (`favorite`), its January name and its ActionName
    (phoenix_runtime.scoring.PHOENIX_SCORES), so either release's name works wherever it names exactly one
    column of this model."""
    columns = {a: i for i, a in enumerate(actions)}
    aliases: dict[str, set[int]] = {}
    for name, source in fields.items():
        if source and source[0] == "column":
            for alias in (name, name.removesuffix("_score"), *PHOENIX_SCORES.get(name, ())):
                if alias and alias not in columns:
                    aliases.setdefault(alias, set()).add(source[1])
    return {**columns, **{a: cols.pop() for a, cols in aliases.items() if len(cols) == 1}}


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
        self._served: dict[str, dict] = {}       # model -> its inputs as Triton serves them (served_inputs)
        self._configs: dict[str, dict] = {}      # model -> its Triton config
        self.config = config or self._server_config()
        self.limits = Limits.from_dict(self.config["limits"])
        self.history_len = self.limits.history_len
        self.inputs = self.config["ranker_inputs"]
        self.actions = list(self.config["actions"])
        self.hashing = hash_params_from(self.config["hashing"])
        self.action_columns = action_columns(self.actions, self.config["score_sources"]["fields"])

    # -------------------------------------------------------------- config
    def _rpc(self, call, *args, what: str):
        """One request to Triton that is not an inference; its failures as this module's errors."""
        try:
            return call(*args, **({"as_json": True} if self.protocol == "grpc" else {}))
        except self._t.InferenceServerException as e:
            message = e.message() or ""
            if "unavailable" in str(e.status()).lower() or "connect" in message.lower():
                raise PhoenixConnectionError(f"cannot reach the server at {self.url} ({self.protocol}): "
                                             f"{message}") from None
            raise PhoenixServerError(f"cannot read {what} from {self.url}: {message}") from None
        except Exception as e:  # refused connections surface as socket / gRPC errors
            raise PhoenixConnectionError(f"cannot reach the server at {self.url} ({self.protocol}): {e}") from None

    def model_config(self, model: str) -> dict:
        """A served model's Triton config (as JSON)."""
        if model not in self._configs:
            cfg = self._rpc(self.triton.get_model_config, model, what=f"{model}'s config")
            self._configs[model] = cfg.get("config", cfg)
        return self._configs[model]

    def _server_config(self) -> dict:
        cfg = self.model_config(POSTPROCESS)
        try:
            return json.loads(cfg["parameters"]["client_config"]["string_value"])
        except KeyError:
            raise PhoenixServerError(f"{POSTPROCESS} has no `client_config` parameter: the server runs a "
                                     "repository built by another version of export.build") from None

    def served_inputs(self, model: str) -> dict[str, dict]:
        """{input: {"datatype": "INT64", "shape": [...], "required": bool}} of a served model, read from Triton:
        names, datatypes and shapes from its metadata (get_model_metadata), whether it may be absent from its
        config. Every input of an ensemble is optional (so that its step model, not a deadlock, names a missing
        one): an ensemble input is required when a step model requires the input it feeds."""
        if model in self._served:
            return self._served[model]
        try:
            meta = self._rpc(self.triton.get_model_metadata, model, what=f"{model}'s metadata")
        except PhoenixServerError as e:
            # the repository index is an operator's API (closed to clients): name the models a build serves
            if model not in SERVED_MODELS:
                raise PhoenixInputError(unknown_key(model, SERVED_MODELS, "a Phoenix repository",
                                                    what="model")) from None
            raise e from None
        cfg = self.model_config(model)
        optional = {i["name"]: bool(i.get("optional")) for i in cfg.get("input", [])}
        if cfg.get("platform") == "ensemble":
            required = set()
            for step in cfg.get("ensemble_scheduling", {}).get("step", []):
                step_optional = {i["name"]: bool(i.get("optional")) for i in self.model_config(step["model_name"])
                                 .get("input", [])}
                required |= {value for key, value in step.get("input_map", {}).items()
                             if value in optional and not step_optional.get(key, False)}
        else:
            required = {name for name, opt in optional.items() if not opt}
        self._served[model] = {i["name"]: {"datatype": i["datatype"], "shape": [int(d) for d in i["shape"]],
                                           "required": i["name"] in required} for i in meta["inputs"]}
        return self._served[model]

    def check_inputs(self, arrays: dict, model: str) -> None:
        """PhoenixInputError unless `arrays` are exactly inputs the served `model` takes, every input it requires
        is there, and each has the datatype it serves (values and shapes are the server's to check)."""
        served = self.served_inputs(model)
        check_keys(arrays, served, f"{model} request", PhoenixInputError, what="input")
        missing = [n for n, s in served.items() if s["required"] and n not in arrays]
        if missing:
            optional = [n for n, s in served.items() if not s["required"]]
            raise PhoenixInputError(f"{model} request: missing required input(s) {missing} (its optional inputs: "
                                    f"{optional or 'none'})")
        for name, a in arrays.items():
            dtype = _TRITON_DTYPES.get(str(np.asarray(a).dtype))
            if dtype != served[name]["datatype"]:
                raise PhoenixInputError(f"{model} request: input {name!r} has dtype {np.asarray(a).dtype}; the "
                                        f"served model takes {served[name]['datatype']}")

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
            return self.actions_vector(value, f"{what}.{key}")
        if check == "finite":
            v = np.zeros(trailing, np.float32)
            try:
                for i, x in (value.items() if isinstance(value, dict) else enumerate(value)):
                    v[int(i)] = float(x)
            except (TypeError, ValueError, IndexError):
                raise PhoenixInputError(f"{what}.{key}: expected at most {trailing[-1]} numbers (a list, or "
                                        f"{{column: value}} with columns 0..{trailing[-1] - 1}), got {value!r:.80}"
                                        ) from None
            return v
        if spec["dtype"] == "uint64":                 # a raw id the server hashes (phoenix_pipeline)
            return ids_array([value], f"{what}.{key}").reshape(trailing)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise PhoenixInputError(f"{what}.{key}: expected an integer, got {value!r}")
        return np.asarray(value, dtype=spec["dtype"]).reshape(trailing)

    def action_column(self, name, what: str) -> int:
        """The column of one action: a name of the model's action list, the other release's name of the same
        action, its served score name (or that name without `_score`), or a column index."""
        A = len(self.actions)
        if isinstance(name, (int, np.integer)) and not isinstance(name, (bool, np.bool_)) or \
                isinstance(name, str) and name.strip().isdigit():
            i = int(name)
            if not 0 <= i < A:
                raise PhoenixInputError(f"{what}: action index {i} is outside the model's columns 0..{A - 1}")
            return i
        if isinstance(name, str) and name.strip() in self.action_columns:
            return self.action_columns[name.strip()]
        release = str(self.config.get("release") or "unknown").capitalize()
        names = "ActionName names" if release == "May" else "action names"
        hint = closest(name, self.action_columns) if isinstance(name, str) else None
        field = next((f for f, alias in PHOENIX_SCORES.items() if name in (f, f.removesuffix("_score"),
                                                                                    *alias)), None)
        why = (f"; it is the action of {field}, for which the served model has no column." if field else
               f"; did you mean {hint!r}?" if hint else ".")
        raise PhoenixInputError(f"{what}: unknown action {name!r}{why} The served model uses the {release} "
                                f"release's {names}: {self.actions}; also accepted: the other release's name of the "
                                f"same action, its score name (e.g. 'favorite_score' or 'favorite'), or a column "
                                f"index 0..{A - 1}")

    def actions_vector(self, value, what: str) -> np.ndarray:
        """Actions (a list of names or column indices, or {name or index: 0/1}) -> multi-hot [A]."""
        v = np.zeros(len(self.actions), np.float32)
        if isinstance(value, dict):
            items = list(value.items())
        else:
            items = [(a, 1.0) for a in ([value] if isinstance(value, (str, int)) else value)]
        for a, x in items:
            i = self.action_column(a, what)
            if float(x) not in (0.0, 1.0):
                raise PhoenixInputError(f"{what}: action {a!r} has value {x!r}; actions are 0 or 1")
            v[i] = float(x)
        return v

    def keys(self, side: str) -> list[str]:
        """The raw keys a user ("user"), a history item ("history") or a candidate ("candidate") may have: the
        served model's inputs of that side (each spec's raw `key`) and, for candidates, the postprocess's
        optional facts (author_id, video_duration_ms, in_network)."""
        specs = [s for s in self.inputs if s["side"] == side]
        if side == "candidate":
            specs += self.config.get("postprocess_inputs", [])
        return list(dict.fromkeys(s["key"] for s in specs))

    def key_spec(self, side: str, key: str) -> dict:
        """The input spec a raw key of `side` fills (the ranker's, else the postprocess's)."""
        specs = [s for s in self.inputs if s["side"] == side]
        if side == "candidate":
            specs += self.config.get("postprocess_inputs", [])
        found = next((s for s in specs if s["key"] == key), None)
        if found is None:
            raise PhoenixInputError(unknown_key(key, self.keys(side), side))
        return found

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
        if hashed and "user_hashes" in u:
            u["user_id"] = u.pop("user_hashes")
        check_keys(u, self.keys("user"), "user", PhoenixInputError)
        if user_id is not None:
            if "user_id" in u:
                raise PhoenixInputError(f"user: user_id given twice ({user_id!r} and user={{'user_id': "
                                        f"{u['user_id']!r}}})")
            u["user_id"] = user_id
        hist = [_as_dict(h, ("post_id", "author_id", "actions", "product_surface"), f"history[{i}]")
                for i, h in enumerate(history)]
        cands = [_as_dict(c, ("post_id", "author_id", "product_surface"), f"candidates[{i}]")
                 for i, c in enumerate(candidates)]
        for items, side, what in ((hist, "history", "history"), (cands, "candidate", "candidates")):
            for i, item in enumerate(items):
                check_keys(item, self.keys(side), f"{what}[{i}]", PhoenixInputError)
        row = {}
        for spec in self.inputs:
            side = spec["side"]
            if side == "user":
                row[spec["name"]] = self._value(spec, u, "user", hashed)
                continue
            items, what = (hist, "history") if side == "history" else (cands, "candidates")
            shape = [S if side == "history" else len(items)] + [d for d in spec["shape"][2:]]
            arr = np.zeros(shape, dtype=spec["dtype"])
            ids = raw_id_column(spec, items)
            if ids is not None:
                arr[:len(ids)] = ids.reshape(len(ids), *shape[1:])
            elif items:
                arr[:len(items)] = np.stack([self._value(spec, it, f"{what}[{i}]", hashed) for i, it in enumerate(items)])
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
                bad = next((v for v in values if not isinstance(v, (bool, np.bool_))), None)
                if bad is not None:
                    raise PhoenixInputError(f"candidates {key}: True or False, got {bad!r:.80}")
                out[spec["name"]] = np.asarray(values, dtype=bool)
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
        with self.retrieval_view():
            row = self.build_row(user_id=user_id, history=history, user=user, hashed=hashed)
        arrays = {k: v[None] for k, v in row.items() if k in spec_names}
        if top_k is not None:
            arrays["top_k"] = np.array([[top_k]], dtype=np.int32)
        if corpus_mask is not None:
            arrays["corpus_mask"] = np.asarray(corpus_mask, dtype=bool)[None]
        out = self.infer(arrays, RETRIEVAL)
        return {k: v[0] for k, v in out.items()}

    @contextlib.contextmanager
    def retrieval_view(self):
        """Within it, build_row, keys and key_spec read phoenix_retrieval's inputs and hash constants."""
        if not self.config.get("retrieval_inputs"):
            raise PhoenixServerError("the server has no phoenix_retrieval model (built with --no-towers?)")
        saved, self.inputs, self.hashing = (self.inputs, self.hashing), self.config["retrieval_inputs"], \
            hash_params_from(self.config["retrieval_hashing"])
        try:
            yield self
        finally:
            self.inputs, self.hashing = saved

    def pipeline(self, user_id, history=(), user=None, top_k: int | None = None, corpus_mask=None) -> dict:
        """The release's whole pipeline for one user in ONE request (phoenix_pipeline): the top K posts of the
        served corpus and their scores. Raw ids in (the server hashes them with each model's constants); out:
        top_k_post_ids, top_k_author_ids, top_k_scores (retrieval), probs [K, A], home-mixer's named scores,
        weighted_score, final_score and ranking, pipeline_score and pipeline_ranking (run_pipeline.py's)."""
        return {k: v[0] for k, v in self.infer(self.pipeline_request(user_id, history, user, top_k, corpus_mask),
                                                 PIPELINE).items()}

    def pipeline_request(self, user_id, history=(), user=None, top_k: int | None = None,
                         corpus_mask=None) -> dict[str, np.ndarray]:
        """The arrays of `pipeline`'s request (batch of one user), as phoenix_pipeline receives them."""
        with self.pipeline_view():
            row = self.build_row(user_id=user_id, history=history, user=user)
        arrays = {k: v[None] for k, v in row.items() if k in {s["name"] for s in self.config["pipeline_inputs"]}}
        if top_k is not None:
            arrays["top_k"] = np.array([[top_k]], dtype=np.int32)
        if corpus_mask is not None:
            arrays["corpus_mask"] = np.asarray(corpus_mask, dtype=bool)[None]
        return arrays

    @contextlib.contextmanager
    def pipeline_view(self):
        """Within it, build_row, keys and key_spec read phoenix_pipeline's inputs (raw ids, hashed by the server)."""
        if not self.config.get("pipeline_inputs"):
            raise PhoenixServerError(f"the server has no {PIPELINE} model (built with --no-towers, or by an older "
                                     f"export.build)")
        saved, self.inputs = self.inputs, [s for s in self.config["pipeline_inputs"] if "side" in s]
        try:
            yield self
        finally:
            self.inputs = saved

    def infer(self, arrays: dict[str, np.ndarray], model: str | None = None) -> dict[str, np.ndarray]:
        """Send ready-made [B, ...] arrays and return every output. The input names and dtypes are checked
        against the served model first (check_inputs: an unknown, misspelled or missing input is named)."""
        model = model or self.model
        self.check_inputs(arrays, model)
        try:
            res = self.triton.infer(model, self.make_inputs(arrays),
                                    **({"client_timeout": self.timeout} if self.protocol == "grpc" else {}))
        except self._t.InferenceServerException as e:
            if e.status() in ("StatusCode.UNAVAILABLE", "503") or "failed to connect" in (e.message() or ""):
                raise PhoenixConnectionError(f"{model}: cannot reach the server at {self.url}: {e.message()}") from None
            raise PhoenixServerError(f"{model}: {e.message()}") from None
        except (ConnectionError, OSError) as e:
            raise PhoenixConnectionError(f"{model}: cannot reach the server at {self.url}: {e}") from None
        response = res.get_response()         # gRPC: the protobuf (no JSON conversion); HTTP: a dict
        names = [o.name for o in response.outputs] if self.protocol == "grpc" else \
            [o["name"] for o in response["outputs"]]
        return {name: res.as_numpy(name) for name in names}

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
