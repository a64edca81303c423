"""`python -m serving.client`: score, retrieve, run the release's pipeline, or score your own embeddings.

    python -m serving.client score                     # the demo user: random ids, not a real user
    python -m serving.client score --user-id 42 --history 5:1:favorite,reply:2 --candidate 11:1:0 --candidate 12:2:3
    python -m serving.client pipeline --sequence example_sequence.json --top-k 200 --output-npz out.npz
    python -m serving.client embeddings --npz feed.npz

Input is strict: every KEY=VALUE key, action name and .npz array name must be one the served model reads
(its input specs and metadata, read from the server), and a sequence file holds only the release's keys;
a typo is refused, naming the key, where it was, its closest allowed key and all of them. Action names
may be either release's name of the same action (`favorite` / `server_tweet_fav`). Without any user
input, `score` and `retrieve` use a demo user and say so; with some input, --user-id is required (and
`score` needs at least one --candidate), so a demo user is never mixed into a real request.

Input mistakes (a malformed --candidate, an unknown key or action, a missing input, too many candidates)
exit 2 with a message saying what to fix; a server that cannot be reached exits 3; an error the server
returns exits 4.
"""
from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

from export.keys import check_keys
from phoenix_runtime.manifest import ENSEMBLE_EMBEDDINGS, RANKER_EMBEDDINGS
from serving.client import PhoenixClient, PhoenixConnectionError, PhoenixInputError, PhoenixServerError, ScoreResult

EXIT_INPUT, EXIT_CONNECTION, EXIT_SERVER = 2, 3, 4
DEMO_INPUTS = "--user-id, --history, --user or --candidate"


def _int(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise PhoenixInputError(f"{what}: {text.strip()!r} is not an integer") from None


def _typed(text: str, spec: dict, what: str):
    """A KEY=VALUE value as the input it fills takes it: a bool, numbers (comma-separated, one per column of a
    continuous input) or an integer (ids, categories, timestamps)."""
    v = text.strip()
    if spec["dtype"] == "bool":
        if v.lower() in ("true", "yes", "1", "false", "no", "0"):
            return v.lower() in ("true", "yes", "1")
        raise PhoenixInputError(f"{what}: {v!r} is not true or false")
    if spec["dtype"] == "float32":
        try:
            return [float(x) for x in v.split(",")]
        except ValueError:
            raise PhoenixInputError(f"{what}: {v!r} is not a comma-separated list of numbers") from None
    return _int(v, what)


def _extras(parts: list[str], client: PhoenixClient, side: str, what: str, given: dict) -> dict:
    """KEY=VALUE parts -> {key: value}: keys of the served model's `side` (client.keys), values typed by the
    input each fills; a key already given (by position, or twice) is an error, as is an unknown one."""
    out = {}
    for part in parts:
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not key:
            raise PhoenixInputError(f"{what}: {part!r} should be KEY=VALUE (e.g. impr_ts=1750000000)")
        if key in out:
            raise PhoenixInputError(f"{what}: {key!r} is given twice")
        if key in given:
            raise PhoenixInputError(f"{what}: {key!r} is given {given[key]}, not as KEY=VALUE")
        check_keys([key], client.keys(side), what, PhoenixInputError)
        out[key] = _typed(value, client.key_spec(side, key), f"{what} {key}")
    return out


def _fields(item: str, flag: str, needed: int, form: str, example: str) -> tuple[list[str], str, dict]:
    """Split one POST:AUTHOR:... item on ':' (spaces trimmed); (parts, how errors name it, post/author ids)."""
    parts = [p.strip() for p in item.split(":")]
    what = f"{flag} {item!r}"
    if len(parts) < needed:
        raise PhoenixInputError(f"{what}: expected {form}, e.g. {example}")
    return parts, what, {"post_id": _int(parts[0], f"{what} post id"), "author_id": _int(parts[1], f"{what} author id")}


def parse_history(items: list[str], client: PhoenixClient) -> list[dict]:
    """POST:AUTHOR:ACTIONS:SURFACE[:KEY=VALUE...] (ACTIONS comma-separated names or indices; spaces trimmed)."""
    out = []
    for s in items:
        parts, what, ids = _fields(s, "--history", 4, "POST:AUTHOR:ACTION[,ACTION...]:SURFACE", "5:1:favorite,reply:2")
        actions = [client.action_column(a.strip(), f"{what} actions") for a in parts[2].split(",") if a.strip()]
        item = {**ids, "actions": actions, "product_surface": _int(parts[3], f"{what} surface")}
        out.append({**item, **_extras(parts[4:], client, "history", what, {k: "by position" for k in item})})
    return out


def parse_candidates(items: list[str], client: PhoenixClient) -> list[dict]:
    """POST:AUTHOR:SURFACE[:KEY=VALUE...], e.g. 987:45:0:video_duration_ms=15000:in_network=false."""
    out = []
    for s in items:
        parts, what, ids = _fields(s, "--candidate", 3, "POST:AUTHOR:SURFACE[:KEY=VALUE...]", "987:45:0")
        item = {**ids, "product_surface": _int(parts[2], f"{what} surface")}
        out.append({**item, **_extras(parts[3:], client, "candidate", what, {k: "by position" for k in item})})
    return out


def parse_user(items: list[str], client: PhoenixClient) -> dict:
    """--user KEY=VALUE parts: the served model's user features other than user_id (that is --user-id)."""
    return _extras(items, client, "user", "--user", {"user_id": "with --user-id"})


def demo_request(actions, seed: int = 0, num_history: int = 12, num_candidates: int = 8) -> dict:
    """A reproducible demo user: raw ids, a few actions per history item, candidates from 3 authors."""
    rng = np.random.default_rng(seed)
    history = [{"post_id": int(rng.integers(1, 10**6)), "author_id": int(rng.integers(1, 1000)),
                "actions": [actions[i] for i in rng.choice(len(actions), size=int(rng.integers(0, 3)), replace=False)],
                "product_surface": int(rng.integers(0, 16))} for _ in range(num_history)]
    candidates = [{"post_id": int(rng.integers(1, 10**6)), "author_id": int(rng.choice([7, 8, 9])),
                   "product_surface": int(rng.integers(0, 16))} for _ in range(num_candidates)]
    return {"user_id": int(rng.integers(1, 10**6)), "history": history, "candidates": candidates}


def print_table(result: ScoreResult, title: str = "Phoenix ranking", console=None):
    """Rich table of one user's candidates, best first: their ids as given (post and author ids, or, for
    embeddings, the candidate's index in the request and its author id when the request had one)."""
    from rich.console import Console
    from rich.table import Table

    def ids(cand):
        if isinstance(cand, dict):
            return cand
        if isinstance(cand, (tuple, list)):
            return dict(zip(("post_id", "author_id", "product_surface"), cand))
        return {"candidate": cand}

    cols = ("favorite_score", "reply_score", "retweet_score", "report_score")
    rows = list(result.rows(cols))
    id_cols = [k for k in ("candidate", "post_id", "author_id") if any(ids(r[2]).get(k) is not None for r in rows)]
    table = Table(title=title)
    for h in ("rank", *id_cols, "final", "weighted", *(c.removesuffix("_score") for c in cols)):
        table.add_column(h, justify="right", no_wrap=True)
    for rank, c, cand, final, weighted, named in rows:
        table.add_row(str(rank), *(str(ids(cand).get(k, "")) for k in id_cols), f"{final:.4g}",
                      f"{weighted:.4g}", *(f"{named[k]:.3f}" if k in named else "-" for k in cols))
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    console.print(table)


def _result_json(r: ScoreResult) -> dict:
    return {"ranking": r.ranking, "final_score": r.final_score.tolist(), "weighted_score": r.weighted_score.tolist(),
            "scores": {k: [None if np.isnan(x) else float(x) for x in v] for k, v in r.scores.items()}}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m serving.client", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    cmds = {
        "score": "score candidates for one user and print a ranked table (a demo user when no input is given)",
        "retrieve": "top-k posts of the served corpus for one user",
        "pipeline": "the release's run_pipeline.py: retrieval over the corpus, then one ranking pass, its table",
        "embeddings": "score embeddings you looked up yourself (an .npz of RecsysEmbeddings fields + validity hashes)",
    }
    ps = {name: sub.add_parser(name, help=text, description=text) for name, text in cmds.items()}
    for p in ps.values():
        p.add_argument("--url", default=None, help="server address host:port (default 127.0.0.1:8001 for grpc, "
                                                   "127.0.0.1:8000 for http)")
        p.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="protocol (default: grpc)")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    for name in ("score", "retrieve"):
        p = ps[name]
        p.add_argument("--user-id", type=int, default=None, help="raw user id (hashed by the client)")
        p.add_argument("--user", action="append", default=[], metavar="KEY=VALUE",
                       help="a user feature by its raw key, e.g. ip_id=1234 (repeatable)")
        p.add_argument("--history", action="append", default=[], metavar="POST:AUTHOR:ACTIONS:SURFACE[:KEY=VALUE]",
                       help="one history item (repeatable), oldest first; ACTIONS comma-separated action names or "
                            "indices, e.g. 123:45:favorite,reply:2")
        p.add_argument("--seed", type=int, default=None,
                       help=f"seed of the demo user, used only without {DEMO_INPUTS} (default: 0)")
    ps["score"].add_argument("--candidate", action="append", default=[], metavar="POST:AUTHOR:SURFACE[:KEY=VALUE]",
                             help="one candidate (repeatable), e.g. 987:45:0 or 987:45:0:video_duration_ms=15000:"
                                  "in_network=false (keys: the served model's candidate inputs, such as impr_ts, and "
                                  "the postprocess's video_duration_ms and in_network; a typo is refused)")
    ps["retrieve"].add_argument("--top-k", type=int, default=None, help="posts to return (default: the server's)")
    pp = ps["pipeline"]
    pp.add_argument("--sequence", required=True, metavar="FILE.json",
                    help="a user's history in the release's format (example_sequence.json: user_id, history of "
                         "post_id, author_id, actions by ActionName index)")
    pp.add_argument("--top-k", type=int, default=200, help="posts retrieved and ranked (default: 200)")
    pp.add_argument("--display", type=int, default=30, help="rows of the printed table (default: 30)")
    pp.add_argument("--output-npz", default=None, metavar="FILE.npz",
                    help="write the result with the keys of upstream's expected_pipeline.npz (the retrieved post "
                         "and author ids, retrieval scores, probs, weighted, ranked); prints the path and the keys")
    ps["embeddings"].add_argument("--npz", required=True, metavar="FILE.npz",
                                  help="arrays named after the served model's inputs, [B, ...] each (README: 'Bring "
                                       "your own embeddings'); an unknown or missing array is refused, named")
    ps["embeddings"].add_argument("--model", default=ENSEMBLE_EMBEDDINGS,
                                  help=f"served model (default: {ENSEMBLE_EMBEDDINGS}, the ensemble with "
                                       f"named scores; {RANKER_EMBEDDINGS} gives logits)")
    return ap


def _user_request(args, client: PhoenixClient) -> tuple[dict, bool]:
    """score / retrieve: (the request's keyword arguments, whether it is the demo user). The demo user only
    when no user input is given at all, never mixed into a real request."""
    candidates = getattr(args, "candidate", [])
    if args.user_id is None and not (args.history or args.user or candidates):
        req = demo_request(client.actions, 0 if args.seed is None else args.seed)
        print(f"note: no {DEMO_INPUTS}: using the demo user (seed {args.seed or 0}, random ids: user "
              f"{req['user_id']}, {len(req['history'])} history items, {len(req['candidates'])} candidates)",
              file=sys.stderr)
        return {k: v for k, v in req.items() if k != "candidates" or args.command == "score"}, True
    if args.seed is not None:
        raise PhoenixInputError(f"--seed picks the demo user, used only without {DEMO_INPUTS}")
    if args.user_id is None:
        raise PhoenixInputError("--user-id: required with --history, --user or --candidate (the user they belong "
                                "to); without any of them the command uses a demo user")
    if args.command == "score" and not candidates:
        raise PhoenixInputError(f"--candidate: give at least one POST:AUTHOR:SURFACE, the posts to rank for user "
                                f"{args.user_id}")
    req = {"user_id": args.user_id, "history": parse_history(args.history, client),
           "user": parse_user(args.user, client)}
    if args.command == "score":
        req["candidates"] = parse_candidates(candidates, client)
    return req, False


def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, AttributeError, zipfile.BadZipFile) as e:   # a .npy has no .files
        raise PhoenixInputError(f"--npz {path}: cannot read an .npz file of arrays ({e})") from None


def _write_npz(path: str, arrays: dict[str, np.ndarray]) -> str:
    try:
        with open(path, "wb") as f:             # the name as given (np.savez would append .npz to another)
            np.savez(f, **arrays)
    except OSError as e:
        raise PhoenixInputError(f"--output-npz {path}: cannot write it ({e})") from None
    return f"wrote {path}: " + ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in arrays.items())


def run(args) -> int:
    url = args.url or ("127.0.0.1:8001" if args.protocol == "grpc" else "127.0.0.1:8000")
    with PhoenixClient(url, protocol=args.protocol) as client:
        if args.command == "pipeline":
            from serving.pipeline import format_table, read_sequence, run_pipeline
            result = run_pipeline(client, read_sequence(args.sequence, client.actions, client.history_len), args.top_k)
            if args.json:
                print(json.dumps({k: v.tolist() for k, v in result.npz().items()}))
            else:
                print(format_table(result, client.actions, args.display))
            if args.output_npz:
                print(_write_npz(args.output_npz, result.npz()), file=sys.stderr if args.json else sys.stdout)
            return 0
        if args.command == "embeddings":
            arrays = _read_npz(args.npz)
            try:
                client.check_inputs(arrays, args.model)
            except PhoenixInputError as e:
                raise PhoenixInputError(f"--npz {args.npz}: {e}") from None
            authors = arrays.get("candidate_author_ids")
            for b, r in enumerate(client.score_embeddings(arrays, model=args.model)):
                r.candidates = [{"candidate": i, "author_id": None if authors is None else int(authors[b, i])}
                                for i in range(len(r.final_score))]
                if args.json:
                    print(json.dumps(_result_json(r)))
                else:
                    print_table(r, title=f"Phoenix ranking of user {b} in {Path(args.npz).name} (your embeddings)")
            return 0
        if args.command == "retrieve":
            with client.retrieval_view():
                req, _ = _user_request(args, client)
            out = client.retrieve(**req, top_k=args.top_k)
            print(json.dumps({k: [x.decode() if isinstance(x, bytes) else x for x in v.tolist()]
                              for k, v in out.items() if k != "user_representation"}, indent=1))
            return 0
        req, demo = _user_request(args, client)
        result = client.score(**req)
        if args.json:
            print(json.dumps(_result_json(result), indent=1))
        else:
            who = f"the demo user {req['user_id']} (random ids)" if demo else f"user {req['user_id']}"
            print_table(result, title=f"Phoenix ranking for {who}, {len(req['history'])} history items")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except PhoenixInputError as e:
        print(f"input error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except PhoenixConnectionError as e:
        print(f"connection error: {e}", file=sys.stderr)
        return EXIT_CONNECTION
    except PhoenixServerError as e:
        print(f"server error: {e}", file=sys.stderr)
        return EXIT_SERVER


if __name__ == "__main__":
    sys.exit(main())
