"""Score client for the Phoenix Triton repository.

    client = PhoenixClient("127.0.0.1:8001")                  # gRPC; protocol="http" for port 8000
    result = client.score(user_id=42,
                          history=[(post_id, author_id, ["favorite", "reply"], surface), ...],
                          candidates=[(post_id, author_id, surface), ...])
    result.ranking, result.weighted_score, result.scores["favorite_score"]

Where the client gets S, the candidate limit, the vocab sizes and the hash parameters: from the
server itself, in the `client_config` parameter of `phoenix_postprocess`'s model config (written by
`export.repository` from the build manifest), so a client needs nothing but the URL. Pass
`manifest="triton_repo/manifest.json"` to read them from a build manifest instead.

Raw ids are hashed with `phoenix_torch.hash_ids` (the manifest's hash parameters); pass
`user_hashes=` / `hashed=True` to send hashes. The client pads the history to S (the most recent S
items are kept, oldest first) and the candidates to the batch's largest count, batches several users
into one request (`score_many`), and checks every input before sending: a bad one raises
`PhoenixInputError` naming it. Errors from the server (e.g. a hash outside its table) raise
`PhoenixServerError` carrying the server's message.

CLI: `python -m serving.client score --help`.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from phoenix_torch import ACTIONS, SCORE_NAMES
from serving.batching import stack_rows  # noqa: F401  (public: callers batch users with it)

NUM_SURFACES = 16


class PhoenixInputError(ValueError):
    """A client-side input is wrong; the message names it."""


class PhoenixServerError(RuntimeError):
    """The server answered with an error; the message is the server's."""


@dataclass
class ScoreResult:
    """One user's answer. Arrays are per candidate, in the order the candidates were given."""
    scores: dict[str, np.ndarray]
    weighted_score: np.ndarray
    final_score: np.ndarray
    ranking: list[int]
    candidates: list = field(default_factory=list)

    def rows(self, columns=("favorite_score", "reply_score", "repost_score", "click_score")):
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


class PhoenixClient:
    def __init__(self, url: str = "127.0.0.1:8001", protocol: str = "grpc", manifest: str | Path | None = None,
                 model: str = "phoenix", timeout: float = 60.0):
        self.protocol, self.model, self.timeout = protocol, model, timeout
        self._t = _triton(protocol)
        kwargs = {"network_timeout": timeout, "connection_timeout": timeout} if protocol == "http" else {}
        self._c = self._t.InferenceServerClient(url, **kwargs)
        self.max_batch_size = 64  # users per Triton request; the server's value replaces it
        self.config = read_manifest_config(manifest) if manifest else self._server_config()
        self.history_len = int(self.config["history_len"])
        self.max_candidates = int(self.config["max_candidates"])
        self.num_hashes = {k: int(self.config[f"num_{k}_hashes"]) for k in ("user", "item", "author")}
        self.tables = self.config["tables"]

    # -------------------------------------------------------------- config
    def _server_config(self) -> dict:
        try:
            cfg = self._c.get_model_config("phoenix_postprocess", **({"as_json": True} if self.protocol == "grpc" else {}))
        except self._t.InferenceServerException as e:
            raise PhoenixServerError(f"cannot read phoenix_postprocess's config from the server: {e.message()}") from None
        cfg = cfg.get("config", cfg)
        self.max_batch_size = int(cfg.get("max_batch_size", self.max_batch_size)) or self.max_batch_size
        try:
            return json.loads(cfg["parameters"]["client_config"]["string_value"])
        except KeyError:
            raise PhoenixServerError("phoenix_postprocess has no `client_config` parameter: rebuild the repository "
                                     "with this version of export.build, or pass manifest=") from None

    def close(self):
        self._c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -------------------------------------------------------------- hashing and checks
    def _hash(self, ids, entity: str, what: str) -> np.ndarray:
        ids = _int_array(ids, what)
        if (ids < 0).any():
            raise PhoenixInputError(f"{what}: ids must be >= 0 (0 = padding), got {int(ids.min())}")
        return hash_entity(ids, entity, self.config)

    def _vocab(self, entity):
        return int(self.tables[f"{entity}_vocab"])

    def _check_hashes(self, h, entity, what, n):
        h = _int_array(h, what)
        if h.shape[-1] != n:
            raise PhoenixInputError(f"{what}: expected {n} hashes per entry, got shape {list(h.shape)}")
        v = self._vocab(entity)
        if h.size and (h.min() < 0 or h.max() >= v):
            bad = int(h[(h < 0) | (h >= v)].flat[0])
            raise PhoenixInputError(f"{what}: hash {bad} outside [0, {v})")
        return h.astype(np.int32)

    def build_row(self, user_id=None, user_hashes=None, history=(), candidates=(), hashed=False) -> dict:
        """One user's arrays (history padded to S, candidates unpadded) after checking every input."""
        S, hn = self.history_len, self.num_hashes
        if (user_id is None) == (user_hashes is None):
            raise PhoenixInputError("user: give exactly one of user_id or user_hashes")
        if user_hashes is not None:
            user = self._check_hashes(np.asarray(user_hashes).reshape(-1), "user", "user_hashes", hn["user"])
        else:
            user = self._hash([user_id], "user", "user_id").reshape(-1)
        candidates = list(candidates)
        if not candidates:
            raise PhoenixInputError("candidates: empty list; give at least one (post_id, author_id, surface)")
        if len(candidates) > self.max_candidates:
            raise PhoenixInputError(f"candidates: {len(candidates)} given, the served model accepts at most "
                                    f"{self.max_candidates}")
        history = list(history)[-S:]
        row = {"user_hashes": user}
        for prefix, items, n_fields in (("history", history, 4), ("candidate", candidates, 3)):
            for i, item in enumerate(items):
                if len(item) != n_fields:
                    want = "(post_id, author_id, actions, surface)" if n_fields == 4 else "(post_id, author_id, surface)"
                    raise PhoenixInputError(f"{prefix}[{i}]: expected {want}, got {item!r}")
            posts = [it[0] for it in items]
            authors = [it[1] for it in items]
            surfaces = _int_array([it[-1] for it in items], f"{prefix}_product_surface").reshape(-1)
            if surfaces.size and (surfaces.min() < 0 or surfaces.max() >= NUM_SURFACES):
                i = int(np.flatnonzero((surfaces < 0) | (surfaces >= NUM_SURFACES))[0])
                raise PhoenixInputError(f"{prefix}[{i}].surface: {int(surfaces[i])} outside [0, {NUM_SURFACES})")
            if hashed:
                ph = self._check_hashes(np.asarray(posts).reshape(len(items), -1) if items else
                                        np.zeros((0, hn["item"])), "post", f"{prefix}_post_hashes", hn["item"])
                ah = self._check_hashes(np.asarray(authors).reshape(len(items), -1) if items else
                                        np.zeros((0, hn["author"])), "author", f"{prefix}_author_hashes", hn["author"])
            else:
                ph = self._hash(posts, "post", f"{prefix} post_id").reshape(len(items), hn["item"])
                ah = self._hash(authors, "author", f"{prefix} author_id").reshape(len(items), hn["author"])
            if prefix == "candidate" and len(items) and (ph[:, 0] == 0).any():
                i = int(np.flatnonzero(ph[:, 0] == 0)[0])
                raise PhoenixInputError(f"candidates[{i}].post_id: 0 is the padding id, not a post")
            row[f"{prefix}_post_hashes"], row[f"{prefix}_author_hashes"] = ph, ah
            row[f"{prefix}_product_surface"] = surfaces.astype(np.int32)
            if prefix == "history":
                row["history_actions"] = np.stack([_actions(it[2], f"history[{i}].actions")
                                                   for i, it in enumerate(items)]) if items else \
                    np.zeros((0, len(ACTIONS)), np.float32)
        return _pad_history(row, S)

    # -------------------------------------------------------------- inference
    def score(self, user_id=None, user_hashes=None, history=(), candidates=(), hashed=False) -> ScoreResult:
        """Score one user's candidates: named scores, weighted and final score, ranking."""
        return self.score_many([dict(user_id=user_id, user_hashes=user_hashes, history=history,
                                     candidates=candidates, hashed=hashed)])[0]

    def score_many(self, requests: list[dict]) -> list[ScoreResult]:
        """Score several users, up to max_batch_size per Triton request (each dict holds `score`'s
        keyword arguments); results in the order given."""
        rows = [self.build_row(**r) for r in requests]
        results = []
        for s in range(0, len(rows), self.max_batch_size):
            out = self.infer_arrays(stack_rows(rows[s:s + self.max_batch_size]))
            results += [_result(out, b, len(r["candidates"]), list(r["candidates"]))
                        for b, r in enumerate(requests[s:s + self.max_batch_size])]
        return results

    def infer_arrays(self, arrays: dict[str, np.ndarray], model: str | None = None) -> dict[str, np.ndarray]:
        """Send ready-made [B, ...] arrays as they are (no checks) and return every output."""
        model = model or self.model
        try:
            res = self._c.infer(model, self.make_inputs(arrays),
                                **({"client_timeout": self.timeout} if self.protocol == "grpc" else {}))
        except self._t.InferenceServerException as e:
            raise PhoenixServerError(f"{model}: {e.message()}") from None
        response = res.get_response(**({"as_json": True} if self.protocol == "grpc" else {}))
        return {o["name"]: res.as_numpy(o["name"]) for o in response["outputs"]}

    def make_inputs(self, arrays: dict[str, np.ndarray]) -> list:
        """tritonclient InferInputs for [B, ...] arrays (int32 / float32)."""
        inputs = []
        for name, a in arrays.items():
            a = np.ascontiguousarray(a)
            dtype = {np.dtype(np.int32): "INT32", np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64",
                     np.dtype(np.float64): "FP64"}.get(a.dtype)
            if dtype is None:
                raise PhoenixInputError(f"{name}: dtype {a.dtype} cannot be sent (use int32 or float32)")
            t = self._t.InferInput(name, list(a.shape), dtype)
            t.set_data_from_numpy(a)
            inputs.append(t)
        return inputs

    def retrieve(self, user_id=None, user_hashes=None, history=(), hashed=False) -> dict[str, np.ndarray]:
        """Top-k posts of the retrieval corpus for one user: indices, post hashes, scores."""
        row = self.build_row(user_id=user_id, user_hashes=user_hashes, history=history,
                             candidates=[(1, 1, 0)], hashed=hashed)
        arrays = {k: v[None] for k, v in row.items() if not k.startswith("candidate")}
        out = self.infer_arrays(arrays, model="phoenix_retrieval")
        return {k: v[0] for k, v in out.items()}


# ------------------------------------------------------------------ helpers

def hash_entity(ids, entity: str, config: dict) -> np.ndarray:
    """Raw ids [...] of an entity ("user", "post", "author") -> int32 hashes [..., H] (0 -> 0).

    phoenix_torch.hash_ids with the build's parameters (manifest `tables.hash_params`:
    {"params": [[scale, bias], ...], "modulus": M}; phoenix_torch's defaults when absent).
    """
    from phoenix_torch import hash_ids

    key = {"user": "user", "post": "item", "author": "author"}[entity]
    hp = config["tables"].get("hash_params") or {}
    kw = {}
    if hp.get("params"):
        kw["params"] = tuple(tuple(int(x) for x in p) for p in hp["params"])
    if hp.get("modulus"):
        kw["modulus"] = int(hp["modulus"])
    out = hash_ids(np.asarray(ids, dtype=np.int64), int(config[f"num_{key}_hashes"]),
                   int(config["tables"][f"{entity}_vocab"]), **kw)
    return np.asarray(out, dtype=np.int32)


def read_manifest_config(path) -> dict:
    from export.repository import client_config
    manifest = json.loads(Path(path).read_text())
    return client_config(manifest)


def _int_array(x, what) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind == "f" and a.size and np.all(np.mod(a, 1) == 0):
        a = a.astype(np.int64)
    if a.size and a.dtype.kind not in "iu":
        raise PhoenixInputError(f"{what}: expected integers, got {a.dtype} ({x!r:.60})")
    return a.astype(np.int64)


def _actions(a, what) -> np.ndarray:
    """Action names (['favorite', ...]) or a multi-hot vector of len(ACTIONS) -> float32 [A]."""
    a = list(a) if not isinstance(a, str) else [a]
    if a and all(isinstance(x, str) for x in a):
        unknown = [x for x in a if x not in ACTIONS]
        if unknown:
            raise PhoenixInputError(f"{what}: unknown action(s) {unknown}; known: {list(ACTIONS)}")
        return np.array([1.0 if n in a else 0.0 for n in ACTIONS], np.float32)
    v = np.asarray(a, dtype=np.float32).reshape(-1) if a else np.zeros(len(ACTIONS), np.float32)
    if v.shape != (len(ACTIONS),) or not np.isin(v, (0.0, 1.0)).all():
        raise PhoenixInputError(f"{what}: expected action names or a 0/1 vector of length {len(ACTIONS)}, got {a!r:.80}")
    return v


def _pad_history(row: dict, S: int) -> dict:
    for k in ("history_post_hashes", "history_author_hashes", "history_actions", "history_product_surface"):
        v = row[k]
        pad = np.zeros((S - len(v), *v.shape[1:]), v.dtype)
        row[k] = np.concatenate([v, pad]).astype(np.float32 if k == "history_actions" else np.int32)
    return row


def _result(out: dict, b: int, n: int, candidates: list) -> ScoreResult:
    ranking = [int(i) for i in out["ranking"][b] if 0 <= i < n]
    return ScoreResult(scores={k: out[k][b, :n] for k in SCORE_NAMES},
                       weighted_score=out["weighted_score"][b, :n], final_score=out["final_score"][b, :n],
                       ranking=ranking, candidates=candidates)


def print_table(result: ScoreResult, title: str = "Phoenix ranking", console=None):
    """Rich table of one user's candidates, best first."""
    from rich.console import Console
    from rich.table import Table

    cols = ("favorite_score", "reply_score", "repost_score", "report_score")
    table = Table(title=title)
    for h in ("rank", "post_id", "author_id", "final", "weighted", *(c.removesuffix("_score") for c in cols)):
        table.add_column(h, justify="right", no_wrap=True)
    for rank, c, cand, final, weighted, named in result.rows(cols):
        table.add_row(str(rank), str(cand[0]), str(cand[1]), f"{final:.4g}", f"{weighted:.4g}",
                      *(f"{named[k]:.3f}" for k in cols))
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
            console = Console(width=120)
    console.print(table)


# ------------------------------------------------------------------ CLI

def _parse_history(items):
    out = []
    for s in items:
        parts = s.split(":")
        if len(parts) != 4:
            raise PhoenixInputError(f"--history {s!r}: expected POST:AUTHOR:ACTION[,ACTION...]:SURFACE")
        actions = [a for a in parts[2].split(",") if a]
        out.append((int(parts[0]), int(parts[1]), actions, int(parts[3])))
    return out


def _parse_candidates(items):
    out = []
    for s in items:
        parts = s.split(":")
        if len(parts) != 3:
            raise PhoenixInputError(f"--candidate {s!r}: expected POST:AUTHOR:SURFACE")
        out.append(tuple(int(p) for p in parts))
    return out


def demo_request(seed: int = 0, num_history: int = 12, num_candidates: int = 8) -> dict:
    """A reproducible demo user: raw ids, a few actions per history item, candidates from 3 authors."""
    rng = np.random.default_rng(seed)
    history = [(int(rng.integers(1, 10**6)), int(rng.integers(1, 1000)),
                [ACTIONS[i] for i in rng.choice(len(ACTIONS), size=int(rng.integers(0, 3)), replace=False)],
                int(rng.integers(0, NUM_SURFACES))) for _ in range(num_history)]
    candidates = [(int(rng.integers(1, 10**6)), int(rng.choice([7, 8, 9])), int(rng.integers(0, NUM_SURFACES)))
                  for _ in range(num_candidates)]
    return {"user_id": int(rng.integers(1, 10**6)), "history": history, "candidates": candidates}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m serving.client",
                                 description="Send requests to a running Phoenix Triton server.")
    sub = ap.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("score", help="score candidates for one user and print a ranked table",
                        description="Score candidates for one user and print a ranked table. Without --candidate, "
                                    "scores a reproducible demo user (see --seed).")
    for p in (sc, sub.add_parser("retrieve", help="top-k posts of the retrieval corpus for one user")):
        p.add_argument("--url", default=None, help="server address host:port (default: 127.0.0.1:8001 for grpc, "
                                                   "127.0.0.1:8000 for http)")
        p.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="protocol (default: grpc)")
        p.add_argument("--manifest", default=None, help="read S, limits and hash parameters from this build "
                                                        "manifest instead of the server")
        p.add_argument("--user-id", type=int, default=None, help="raw user id (hashed by the client)")
        p.add_argument("--history", action="append", default=[], metavar="POST:AUTHOR:ACTIONS:SURFACE",
                       help="one history item (repeatable), oldest first; ACTIONS comma-separated names, e.g. "
                            "123:45:favorite,reply:2")
        p.add_argument("--seed", type=int, default=0, help="seed of the demo user used when no input is given")
    sc.add_argument("--candidate", action="append", default=[], metavar="POST:AUTHOR:SURFACE",
                    help="one candidate (repeatable), e.g. 987:45:0")
    sc.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    url = args.url or ("127.0.0.1:8001" if args.protocol == "grpc" else "127.0.0.1:8000")
    try:
        client = PhoenixClient(url, protocol=args.protocol, manifest=args.manifest)
        req = demo_request(args.seed)
        if args.user_id is not None:
            req["user_id"] = args.user_id
        if args.history:
            req["history"] = _parse_history(args.history)
        if args.command == "retrieve":
            out = client.retrieve(**{k: req[k] for k in ("user_id", "history")})
            print(json.dumps({k: v.tolist() for k, v in out.items() if k != "user_representation"}, indent=1))
            return 0
        if args.candidate:
            req["candidates"] = _parse_candidates(args.candidate)
        result = client.score(**req)
    except (PhoenixInputError, PhoenixServerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # connection refused and the like: one line, not a traceback
        print(f"error: cannot reach the server at {url} ({args.protocol}): {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"ranking": result.ranking, "final_score": result.final_score.tolist(),
                          "weighted_score": result.weighted_score.tolist(),
                          "scores": {k: v.tolist() for k, v in result.scores.items()}}, indent=1))
    else:
        print_table(result, title=f"Phoenix ranking for user {req['user_id']} ({url}, {args.protocol})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
