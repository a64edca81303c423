"""The upstream peer, timed: what upstream's May run_pipeline.py costs per user, and its ranker forward.

    PEER_PY benchmarks/upstream_peer.py --phoenix UPSTREAM_MAY_PHOENIX_DIR --artifacts ARTIFACTS_DIR [--runs 30]

Runs under a Python that has jax and dm-haiku (not the project's environment: `python -m benchmarks.peer` starts
it as a subprocess) and imports upstream's own modules from --phoenix (upstream's May `phoenix/` folder: its
hashing, table layout and model configs from run_pipeline.py, its models from recsys_model.py and
recsys_retrieval_model.py, its loaders from runners.py). No upstream code lives in this repository.

After loading the artifacts folder once, as run_pipeline.py does, each timed user walks run_pipeline.py's path:
the history into arrays, hashing with the retrieval constants, the embedding lookups in the unified table, the
user tower; the corpus product and the top K (argpartition, then a sort of the K); hashing with the ranker's
constants and ranking in chunks of candidate_seq_len (padded, as upstream); the weighted score and its order.
Each of upstream's two model applications is wrapped in jax.jit (as shipped they run op by op, far slower: the
jitted peer is the fair one), with the sigmoid inside the jitted ranker call. Timed parts per user: the user
tower (hashing and lookups included), the corpus scan + top K, the hashing + ranking in chunks (with the weighted
sort). Then the ranker forward alone (jit, 1 user x candidate_seq_len candidates, embeddings already looked up),
the peer of a served ranker call.

Prints one JSON object on the last line of stdout (milliseconds). Only the standard library and numpy are
imported before the options are read, so --help and option errors work under any Python.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

UPSTREAM_FILES = ("run_pipeline.py", "recsys_model.py", "recsys_retrieval_model.py", "runners.py", "grok.py")
DTYPES = ("bfloat16", "float32")   # upstream's default first
TOP_K = 200          # run_pipeline.py's --top_k_retrieval default
WARMUP = 3           # untimed users first (jit compilation, caches)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="upstream_peer.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phoenix", required=True,
                    help="upstream's May phoenix/ folder (run_pipeline.py, recsys_model.py, ... in it)")
    ap.add_argument("--artifacts", required=True,
                    help="an artifacts folder in the release's layout (retrieval/, ranker/, sports_corpus.npz, "
                         "example_sequence.json)")
    ap.add_argument("--runs", type=int, default=30, help="users timed after the warm-up (default: 30)")
    ap.add_argument("--top-k", type=int, default=TOP_K, help=f"posts retrieved and ranked (default: {TOP_K})")
    ap.add_argument("--forward-runs", type=int, default=200,
                    help="timed calls of the ranker forward alone (default: 200)")
    ap.add_argument("--dtype", choices=DTYPES, default=DTYPES[0],
                    help="the models' forward precision: bfloat16 (upstream's default, run_pipeline.py as shipped) "
                         "or float32 (default: bfloat16)")
    ap.add_argument("--expect", default=None, metavar="NPZ",
                    help="with --dtype float32: upstream's expected_pipeline_fp32.npz of this artifacts folder; "
                         "check that this path retrieves the same posts and gives the same probabilities (within "
                         "1e-4) before timing (a jitted bfloat16 forward rounds differently from the eager one)")
    args = ap.parse_args(argv)
    missing = [f for f in UPSTREAM_FILES if not (Path(args.phoenix) / f).is_file()]
    if missing:
        ap.error(f"--phoenix {args.phoenix}: not upstream's phoenix/ folder ({', '.join(missing)} missing)")
    art = Path(args.artifacts)
    needed = ("retrieval/config.json", "ranker/config.json", "sports_corpus.npz", "example_sequence.json")
    absent = [f for f in needed if not (art / f).is_file()]
    if absent:
        ap.error(f"--artifacts {art}: not an artifacts folder ({', '.join(absent)} missing)")
    if args.expect and not Path(args.expect).is_file():
        ap.error(f"--expect {args.expect}: no such file")
    if args.expect and args.dtype != "float32":
        ap.error("--expect needs --dtype float32 (a jitted bfloat16 forward differs from upstream's eager one "
                 "in its rounding)")
    for name in ("runs", "top_k", "forward_runs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def sources_sha256(folder: Path) -> str:
    """One digest of upstream's Python files: which upstream was measured."""
    h = hashlib.sha256()
    for name in UPSTREAM_FILES:
        h.update((folder / name).read_bytes())
    return h.hexdigest()


def quantiles(samples_s) -> dict:
    a = np.asarray(samples_s) * 1e3
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p90_ms": round(float(np.percentile(a, 90)), 3), "min_ms": round(float(a.min()), 3)}


def main(argv=None) -> int:
    args = parse_args(argv)
    phoenix, art = Path(args.phoenix).resolve(), Path(args.artifacts)
    sys.path.insert(0, str(phoenix))
    import haiku as hk
    import jax
    import jax.numpy as jnp
    import run_pipeline as up                        # upstream: hashing, unified table, model configs
    from recsys_model import PhoenixModelConfig, RecsysBatch, RecsysEmbeddings
    from recsys_retrieval_model import PhoenixRetrievalModelConfig
    from runners import load_embedding_table, load_model_params

    t_load = time.perf_counter()
    configs = {m: json.loads((art / m / "config.json").read_text()) for m in ("retrieval", "ranker")}
    params = {m: load_model_params(str(art / m / "model_params.npz")) for m in configs}
    tables = {m: up.build_unified_emb_table(load_embedding_table(str(art / m / "embedding_tables.npz")), configs[m])
              for m in configs}
    corpus = np.load(art / "sports_corpus.npz", allow_pickle=True)
    post_ids, author_ids, reps = corpus["post_ids"], corpus["author_ids"], corpus["candidate_representations"]
    sequence = json.loads((art / "example_sequence.json").read_text())
    hashers = {m: up.build_hash_functions(configs[m]) for m in configs}
    tower_cfg = up.build_model_config(configs["retrieval"], PhoenixRetrievalModelConfig)
    ranker_cfg = up.build_model_config(configs["ranker"], PhoenixModelConfig)
    tower_cfg.fprop_dtype = ranker_cfg.fprop_dtype = getattr(jnp, args.dtype)
    load_s = time.perf_counter() - t_load

    cfg = configs["retrieval"]
    S, C, A, D = cfg["history_seq_len"], cfg["candidate_seq_len"], cfg["num_actions"], cfg["emb_size"]
    k = min(args.top_k, len(post_ids))

    def tower(batch, emb):
        return tower_cfg.make().build_user_representation(batch, emb)[0]

    def ranker(batch, emb):
        return jax.nn.sigmoid(ranker_cfg.make()(batch, emb).logits)

    # RecsysEmbeddings is a plain dataclass, not a pytree: the jitted functions take its five arrays
    tower_jit = jax.jit(lambda p, b, e: hk.without_apply_rng(hk.transform(tower)).apply(p, b, RecsysEmbeddings(*e)))
    ranker_jit = jax.jit(lambda p, b, e: hk.without_apply_rng(hk.transform(ranker)).apply(p, b, RecsysEmbeddings(*e)))
    zeros = lambda *shape: jnp.zeros(shape, dtype=jnp.int32)   # noqa: E731

    def history_arrays():
        posts, authors = np.zeros(S, np.uint64), np.zeros(S, np.uint64)
        actions = np.zeros((S, A), np.float32)
        for i, item in enumerate(sequence["history"][:S]):
            posts[i], authors[i] = item["post_id"], item["author_id"]
            for index, value in item.get("actions", {}).items():
                if int(index) < A:
                    actions[i, int(index)] = float(value)
        return posts, authors, actions[None]

    def embedded(model, user_h, post_h, author_h, cand_post_h, cand_author_h):
        t = tables[model]
        cand = (jnp.zeros((1, C, 2, D)), jnp.zeros((1, C, 2, D))) if cand_post_h is None else \
            (jnp.asarray(t[cand_post_h]), jnp.asarray(t[cand_author_h]))
        return (jnp.asarray(t[user_h]), jnp.asarray(t[post_h]), cand[0], jnp.asarray(t[author_h]), cand[1])

    def one_user(outputs: list | None = None) -> tuple[float, float, float, float]:
        t0 = time.perf_counter()
        posts, authors, actions = history_arrays()
        hu, hi, ha = hashers["retrieval"]
        user_h = hu(np.array([sequence["user_id"]], np.uint64))
        post_h, author_h = hi(posts).reshape(1, S, -1), ha(authors).reshape(1, S, -1)
        batch = RecsysBatch(jnp.asarray(user_h), jnp.asarray(post_h), jnp.asarray(author_h), jnp.asarray(actions),
                            zeros(1, S), zeros(1, C, 2), zeros(1, C, 2), zeros(1, C))
        user = np.asarray(tower_jit(params["retrieval"], batch, embedded("retrieval", user_h, post_h, author_h,
                                                                          None, None)))
        t1 = time.perf_counter()
        scores = reps @ user[0]
        top = np.argpartition(scores, -k)[-k:]
        top = top[np.argsort(-scores[top])]
        got_posts, got_authors = post_ids[top], author_ids[top]
        t2 = time.perf_counter()
        hu, hi, ha = hashers["ranker"]
        user_h = hu(np.array([sequence["user_id"]], np.uint64))
        post_h, author_h = hi(posts).reshape(1, S, -1), ha(authors).reshape(1, S, -1)
        probs = []
        for start in range(0, k, C):
            n = min(C, k - start)
            cp = hi(got_posts[start:start + n]).reshape(1, n, -1)
            ca = ha(got_authors[start:start + n]).reshape(1, n, -1)
            if n < C:
                cp, ca = (np.pad(x, ((0, 0), (0, C - n), (0, 0))) for x in (cp, ca))
            batch = RecsysBatch(jnp.asarray(user_h), jnp.asarray(post_h), jnp.asarray(author_h), jnp.asarray(actions),
                                zeros(1, S), jnp.asarray(cp), jnp.asarray(ca), zeros(1, C))
            out = ranker_jit(params["ranker"], batch, embedded("ranker", user_h, post_h, author_h, cp, ca))
            probs.append(np.asarray(out)[0, :n])
        p = np.concatenate(probs)
        weighted = p[:, up.IDX_FAV] * 1.0 + p[:, up.IDX_REPLY] * 0.5 + p[:, up.IDX_RT] * 0.3 + p[:, up.IDX_DWELL] * 0.2
        np.argsort(-weighted)
        t3 = time.perf_counter()
        if outputs is not None:
            outputs += [got_posts, p]
        return t3 - t0, t1 - t0, t2 - t1, t3 - t2

    check = None
    if args.expect:
        expected, got = np.load(args.expect), []
        one_user(got)
        same_posts = np.array_equal(got[0], expected["retrieved_post_ids"][:k])
        error = float(np.abs(got[1] - expected["probs"][:k]).max()) if same_posts else None
        if not same_posts or error > 1e-4:
            print(json.dumps({"error": f"the peer's path does not reproduce {args.expect}: same posts {same_posts}, "
                                       f"largest probability difference {error}"}), flush=True)
            return 1
        check = {"file": args.expect, "same_posts": True, "max_prob_diff": error}
    for _ in range(WARMUP):
        one_user()
    runs = np.array([one_user() for _ in range(args.runs)])

    # the ranker forward alone: 1 user x C candidates (the history and the top C posts), embeddings looked up
    posts, authors, actions = history_arrays()
    hu, hi, ha = hashers["ranker"]
    user_h = hu(np.array([sequence["user_id"]], np.uint64))
    post_h, author_h = hi(posts).reshape(1, S, -1), ha(authors).reshape(1, S, -1)
    n = min(C, len(post_ids))
    cp = np.pad(hi(post_ids[:n]).reshape(1, n, -1), ((0, 0), (0, C - n), (0, 0)))
    ca = np.pad(ha(author_ids[:n]).reshape(1, n, -1), ((0, 0), (0, C - n), (0, 0)))
    batch = RecsysBatch(jnp.asarray(user_h), jnp.asarray(post_h), jnp.asarray(author_h), jnp.asarray(actions),
                        zeros(1, S), jnp.asarray(cp), jnp.asarray(ca), zeros(1, C))
    emb = embedded("ranker", user_h, post_h, author_h, cp, ca)
    for _ in range(WARMUP):
        ranker_jit(params["ranker"], batch, emb).block_until_ready()
    forward = []
    for _ in range(args.forward_runs):
        t = time.perf_counter()
        ranker_jit(params["ranker"], batch, emb).block_until_ready()
        forward.append(time.perf_counter() - t)

    result = {
        "peer": "upstream's May run_pipeline.py path, jax.jit on its two model applications",
        "upstream_sources_sha256": sources_sha256(phoenix), "upstream_folder": str(phoenix),
        "python": platform.python_version(), "jax": jax.__version__, "haiku": hk.__version__,
        "numpy": np.__version__, "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
        "load_s": round(load_s, 2), "check": check, "corpus": int(len(post_ids)), "top_k": k, "chunk": C,
        "dtype": args.dtype,
        "runs": args.runs, "pipeline": quantiles(runs[:, 0]),
        "parts": {"user_tower": quantiles(runs[:, 1]), "corpus_scan_top_k": quantiles(runs[:, 2]),
                  "hash_and_rank": quantiles(runs[:, 3])},
        "forward": {"users": 1, "candidates": C, **quantiles(forward)},
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
