"""`python -m serving.client`: score, retrieve, run the release's pipeline, or score your own embeddings.

    python -m serving.client score --candidate 11:1:0 --candidate 12:2:3 --history 5:1:favorite,reply:2
    python -m serving.client pipeline --sequence example_sequence.json --top-k 200 --output-npz out.npz
    python -m serving.client embeddings --npz my_embeddings.npz

Input mistakes (a malformed --candidate, an unknown action, too many candidates) exit 2 with a message
saying what to fix; a server that cannot be reached exits 3; an error the server returns exits 4.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from serving.client import (PhoenixClient, PhoenixConnectionError, PhoenixInputError, PhoenixServerError,
                            ScoreResult)

EXIT_INPUT, EXIT_CONNECTION, EXIT_SERVER = 2, 3, 4


def _int(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise PhoenixInputError(f"{what}: {text.strip()!r} is not an integer") from None


def _extras(parts: list[str], what: str) -> dict:
    """KEY=VALUE parts (declared raw keys: product_surface, impr_ts, media_category, video_duration_ms,
    in_network, ...) -> {key: int or bool}."""
    out = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise PhoenixInputError(f"{what}: {part!r} should be KEY=VALUE (e.g. impr_ts=1750000000)")
        v = value.strip().lower()
        out[key.strip()] = v in ("true", "yes") if v in ("true", "false", "yes", "no") else _int(value, f"{what} {key}")
    return out


def _fields(item: str, flag: str, needed: int, form: str, example: str) -> tuple[list[str], str, dict]:
    """Split one POST:AUTHOR:... item on ':' (spaces trimmed); (parts, how errors name it, post/author ids)."""
    parts = [p.strip() for p in item.split(":")]
    what = f"{flag} {item!r}"
    if len(parts) < needed:
        raise PhoenixInputError(f"{what}: expected {form}, e.g. {example}")
    return parts, what, {"post_id": _int(parts[0], f"{what} post id"), "author_id": _int(parts[1], f"{what} author id")}


def parse_history(items: list[str]) -> list[dict]:
    """POST:AUTHOR:ACTIONS:SURFACE[:KEY=VALUE...] (ACTIONS comma-separated names or indices; spaces trimmed)."""
    out = []
    for s in items:
        parts, what, ids = _fields(s, "--history", 4, "POST:AUTHOR:ACTION[,ACTION...]:SURFACE", "5:1:favorite,reply:2")
        actions = [a.strip() for a in parts[2].split(",") if a.strip()]
        out.append({**ids, "actions": actions, "product_surface": _int(parts[3], f"{what} surface"),
                    **_extras(parts[4:], what)})
    return out


def parse_candidates(items: list[str]) -> list[dict]:
    """POST:AUTHOR:SURFACE[:KEY=VALUE...], e.g. 987:45:0:video_duration_ms=15000:in_network=false."""
    out = []
    for s in items:
        parts, what, ids = _fields(s, "--candidate", 3, "POST:AUTHOR:SURFACE[:KEY=VALUE...]", "987:45:0")
        out.append({**ids, "product_surface": _int(parts[2], f"{what} surface"), **_extras(parts[3:], what)})
    return out


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
    """Rich table of one user's candidates, best first."""
    from rich.console import Console
    from rich.table import Table

    cols = ("favorite_score", "reply_score", "retweet_score", "report_score")
    table = Table(title=title)
    for h in ("rank", "post_id", "author_id", "final", "weighted", *(c.removesuffix("_score") for c in cols)):
        table.add_column(h, justify="right", no_wrap=True)
    for rank, c, cand, final, weighted, named in result.rows(cols):
        cand = cand if isinstance(cand, dict) else {"post_id": cand, "author_id": ""}
        table.add_row(str(rank), str(cand.get("post_id")), str(cand.get("author_id")), f"{final:.4g}",
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
        p.add_argument("--seed", type=int, default=0, help="seed of the demo user used when no input is given")
    ps["score"].add_argument("--candidate", action="append", default=[], metavar="POST:AUTHOR:SURFACE[:KEY=VALUE]",
                             help="one candidate (repeatable), e.g. 987:45:0 or 987:45:0:video_duration_ms=15000:"
                                  "in_network=false (keys: the model's candidate inputs, video_duration_ms, in_network)")
    ps["retrieve"].add_argument("--top-k", type=int, default=None, help="posts to return (default: the server's)")
    pp = ps["pipeline"]
    pp.add_argument("--sequence", required=True, metavar="FILE.json",
                    help="a user's history in the release's format (example_sequence.json)")
    pp.add_argument("--top-k", type=int, default=200, help="posts retrieved and ranked (default: 200)")
    pp.add_argument("--display", type=int, default=30, help="rows of the printed table (default: 30)")
    pp.add_argument("--output-npz", default=None, metavar="FILE.npz",
                    help="write retrieved_post_ids, retrieval_scores, probs, weighted and ranked (the keys of "
                         "upstream's expected_pipeline.npz)")
    ps["embeddings"].add_argument("--npz", required=True, metavar="FILE.npz",
                                  help="arrays named after phoenix_ranker_embeddings' inputs, [B, ...] each")
    ps["embeddings"].add_argument("--model", default="phoenix_embeddings",
                                  help="served model (default: the ensemble with named scores)")
    return ap


def run(args) -> int:
    url = args.url or ("127.0.0.1:8001" if args.protocol == "grpc" else "127.0.0.1:8000")
    with PhoenixClient(url, protocol=args.protocol) as client:
        if args.command == "pipeline":
            from serving.pipeline import format_table, read_sequence, run_pipeline
            result = run_pipeline(client, read_sequence(args.sequence, client.actions, client.history_len), args.top_k)
            if args.output_npz:
                np.savez(args.output_npz, **result.npz())
            if args.json:
                print(json.dumps({k: v.tolist() for k, v in result.npz().items()}))
            else:
                print(format_table(result, client.actions, args.display))
            return 0
        if args.command == "embeddings":
            with np.load(args.npz, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            for b, r in enumerate(client.score_embeddings(arrays, model=args.model)):
                if args.json:
                    print(json.dumps(_result_json(r)))
                else:
                    print_table(r, title=f"Phoenix ranking, user {b} (your embeddings, {url})")
            return 0
        req = demo_request(client.actions, args.seed)
        if args.user_id is not None:
            req["user_id"] = args.user_id
        if args.history:
            req["history"] = parse_history(args.history)
        user = _extras(args.user, "--user")
        if args.command == "retrieve":
            out = client.retrieve(user_id=req["user_id"], history=req["history"], user=user, top_k=args.top_k)
            print(json.dumps({k: [x.decode() if isinstance(x, bytes) else x for x in v.tolist()]
                              for k, v in out.items() if k != "user_representation"}, indent=1))
            return 0
        if args.candidate:
            req["candidates"] = parse_candidates(args.candidate)
        result = client.score(**req, user=user)
        if args.json:
            print(json.dumps(_result_json(result), indent=1))
        else:
            print_table(result, title=f"Phoenix ranking for user {req['user_id']} ({url}, {args.protocol})")
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
