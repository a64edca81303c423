"""Retrieval beyond one machine's memory: compressed FAISS indexes over a synthetic corpus of 10M posts.

    python -m benchmarks.ann --posts 10000000 --out benchmarks/results/ann

The corpus is made the way the May release's candidate tower makes one (`enable_linear_proj=False`: the
L2-normalised mean of a post's 2 item-hash vectors and its author's 2 author-hash vectors) from tables of the
release's size (1,000,000 rows x 128 per entity), so it has the structure real corpora have:
- item rows are independent random vectors: with 10M posts and 2 hashes each, about 20 posts share a row,
  as in the release's tables;
- posts cluster by author: posts per author are log-normal (median 16, mean about 50, a long tail of
  prolific authors), so two posts of one author have cosine about 0.5;
- authors cluster by community: each author-table row lies around one of `--topics` (1000) topic centres,
  topics Zipf-popular (trained author embeddings cluster by community; `--topics 0`: independent rows,
  the plainest reading of "random tables", kept as the hard case).
Users (the queries) look like users: each follows 1-5 authors (popular authors more often) and engaged with
20 posts, 80% from those authors and 20% anywhere; the query is the normalised mean of those posts'
representations plus noise of norm 0.3 (the user tower is not a mean), normalised.

It measures, per index (the project's `ivfpq` at a few code sizes, and FAISS's IVF-SQ8 and OPQ+IVF-PQ
through `index_factory` for comparison): bytes per post (the index file / N and the memory of the loaded
index, measured in a fresh process), build time (train, add), recall@200 against exact search over every
user, and latency per user (one user per call, p50/p99, the search phoenix_retrieval runs:
phoenix_runtime/ann.py), for each nprobe and with / without exact rescoring of R x K candidates (R = 4, 8)
from the memory-mapped corpus (warm, and cold: the corpus file's pages dropped from the page cache first).
Everything streams in chunks from a .npy on disk (`--work`): 10M x 128 float32 is 5.1 GB, the command
stays far below that in anonymous memory. Results: ann.json, ann.md and ann.png in --out.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from export import corpus as corpus_index
from phoenix_runtime import ann

console = Console()
D = 128
TABLE_ROWS = 1_000_000          # the release's rows per hash table
HASHES = 2                       # num_item_hashes = num_author_hashes = 2 in the release
K = 200
CHUNK = 1 << 18
POSTS_PER_AUTHOR = (16, 1.5)     # log-normal: median, sigma
HISTORY, FOLLOW_SHARE, QUERY_NOISE = 20, 0.8, 0.3
DEFAULT_INDEXES = ("ivfpq", "ivfpq:m=16", "ivfpq:m=64", "factory:IVF{nlist},SQ8", "factory:OPQ32,IVF{nlist},PQ32")


def progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console)


# ---------------------------------------------------------------------------------------------- the corpus

def author_sizes(n: int, rng) -> np.ndarray:
    """Posts per author (log-normal, at least 1) summing to n."""
    median, sigma = POSTS_PER_AUTHOR
    sizes = []
    while sum(len(s) for s in sizes) == 0 or sum(s.sum() for s in sizes) < n:
        sizes.append(np.maximum(1, rng.lognormal(np.log(median), sigma, max(16, n // 40))).astype(np.int64))
    sizes = np.concatenate(sizes)
    cut = int(np.searchsorted(np.cumsum(sizes), n)) + 1
    sizes = sizes[:cut]
    sizes[-1] -= sizes.sum() - n
    return sizes[sizes > 0]


def tables(rng, topics: int, rows: int = TABLE_ROWS):
    """The item and author hash tables [rows, D]; author rows around `topics` Zipf-popular centres (0: none)."""
    item = rng.standard_normal((rows, D), dtype=np.float32)
    author = rng.standard_normal((rows, D), dtype=np.float32)
    if topics:
        centres = rng.standard_normal((topics, D), dtype=np.float32)
        popularity = 1.0 / np.arange(1, topics + 1) ** 0.8
        which = rng.choice(topics, rows, p=popularity / popularity.sum())
        for s in range(0, rows, CHUNK):
            author[s:s + CHUNK] = (author[s:s + CHUNK] + centres[which[s:s + CHUNK]]) / np.sqrt(2, dtype=np.float32)
    return item, author


def synthesize(path: Path, n: int, topics: int, seed: int = 0, rows: int = TABLE_ROWS, bar=None) -> dict:
    """Write the corpus [n, D] float32 to `path` (.npy, in chunks) and return its author of each post."""
    rng = np.random.default_rng(seed)
    item, author = tables(rng, topics, rows)
    sizes = author_sizes(n, rng)
    author_of = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))      # posts of an author spread out
    author_rows = rng.integers(1, rows, (len(sizes), HASHES))
    out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float32, shape=(n, D))
    task = bar.add_task(f"corpus: {n:,} posts by {len(sizes):,} authors", total=n) if bar else None
    for s in range(0, n, CHUNK):
        e = min(n, s + CHUNK)
        items = rng.integers(1, rows, (e - s, HASHES))
        v = item[items].sum(1) + author[author_rows[author_of[s:e]]].sum(1)      # mean pooling, then L2 norm
        out[s:e] = v / np.linalg.norm(v, axis=1, keepdims=True)
        if bar:
            bar.update(task, completed=e)
    out.flush()
    del out
    path.with_suffix(".tmp.npy").rename(path)
    return {"author_of": author_of, "authors": len(sizes)}


def user_queries(corpus: np.ndarray, author_of: np.ndarray, users: int, seed: int = 1) -> np.ndarray:
    """[users, D]: each follows 1-5 authors and engaged with HISTORY posts, FOLLOW_SHARE of them by those authors;
    the normalised mean of their representations plus noise of norm QUERY_NOISE, normalised."""
    rng = np.random.default_rng(seed)
    order = np.argsort(author_of, kind="stable")
    counts = np.bincount(author_of)
    starts = np.concatenate([[0], np.cumsum(counts)])
    popularity = counts / counts.sum()
    out = np.empty((users, D), np.float32)
    for u in range(users):
        follows = rng.choice(len(counts), rng.integers(1, 6), p=popularity)
        posts = []
        for _ in range(HISTORY):
            if rng.random() < FOLLOW_SHARE:
                a = follows[rng.integers(len(follows))]
                posts.append(order[rng.integers(starts[a], starts[a + 1])])
            else:
                posts.append(rng.integers(len(author_of)))
        v = np.asarray(corpus[np.sort(posts)], dtype=np.float32).mean(0)
        v = v / np.linalg.norm(v) + rng.standard_normal(D).astype(np.float32) * QUERY_NOISE / np.sqrt(D)
        out[u] = v / np.linalg.norm(v)
    return out


def exact_top_k(corpus: np.ndarray, queries: np.ndarray, k: int = K, bar=None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, rows) of every query, streaming the corpus in chunks (FAISS's blocked matmul)."""
    import faiss

    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    n = len(corpus)
    task = bar.add_task("exact top-200 of every user (ground truth)", total=n) if bar else None
    for s in range(0, n, CHUNK):
        chunk = np.ascontiguousarray(corpus[s:s + CHUNK])
        scores, idx = faiss.knn(queries, chunk, k, metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, idx + s)
        if bar:
            bar.update(task, completed=min(n, s + CHUNK))
    heap.finalize()
    return heap.D, heap.I


# ---------------------------------------------------------------------------------------------- indexes

def build_index(spec: str, corpus: np.ndarray, bar=None) -> tuple[object, dict]:
    """`ivfpq[:key=value,...]` (the project's builder, export.corpus) or `factory:STRING` (FAISS's
    index_factory, `{nlist}` = the project's nlist for N); returns the index and its description."""
    import faiss

    n = len(corpus)
    kind, _, rest = spec.partition(":")
    base = corpus_index.ivfpq_params(n, D)
    task = bar.add_task(f"{spec}: train", total=None) if bar else None

    def told(stage, done, total):
        if bar:
            bar.update(task, description=f"{spec}: {stage}", completed=done, total=total)
    times = {}
    t0 = time.perf_counter()
    if kind == "ivfpq":
        options = corpus_index.parse_index_params("ivfpq", [x for x in rest.split(",") if x])
        params = corpus_index.ivfpq_params(n, D, options)

        def timed(stage, done, total):
            if stage == "add" and done == 0:
                times["train_s"] = time.perf_counter() - t0
            told(stage, done, total)
        index = corpus_index.build_ivfpq(corpus, params, progress=timed)
        desc = {"kind": "ivfpq", "params": params}
    elif kind == "factory":
        key = rest.format(nlist=base["nlist"])
        index = faiss.index_factory(D, key, faiss.METRIC_INNER_PRODUCT)
        size = min(n, max(corpus_index.TRAIN_PER_LIST * base["nlist"], corpus_index.PQ_TRAIN))
        sample = np.sort(np.random.default_rng(0).choice(n, size, replace=False))
        ivf = faiss.extract_index_ivf(index)
        if hasattr(ivf, "do_polysemous_training"):
            ivf.do_polysemous_training = False
        told("train", 0, size)
        index.train(np.ascontiguousarray(corpus[sample]))
        times["train_s"] = time.perf_counter() - t0
        for s in range(0, n, CHUNK):
            told("add", s, n)
            index.add(np.ascontiguousarray(corpus[s:s + CHUNK]))
        ivf.nprobe = base["nprobe"]
        desc = {"kind": "ivfpq", "factory": key, "params": {"nlist": base["nlist"], "nprobe": base["nprobe"]}}
    else:
        raise SystemExit(f"--indexes: {spec!r} is neither ivfpq[:key=value,...] nor factory:STRING")
    told("done", n, n)
    desc.update(train_s=round(times["train_s"], 1), add_s=round(time.perf_counter() - t0 - times["train_s"], 1))
    return index, desc


def loaded_memory_mib(path: Path) -> float:
    """Resident memory a fresh process gains by faiss.read_index(path), in MiB."""
    code = ("import faiss, sys\n"
            "def rss():\n"
            "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS:'))\n"
            "before = rss(); index = faiss.read_index(sys.argv[1]); print((rss() - before) / 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return round(float(out.stdout.strip().splitlines()[-1]), 1)


def drop_cached(path: Path):
    """Drop `path`'s pages from the page cache (this file only), so the next reads come from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / truth.shape[1] for f, t in zip(found, truth)]))


def sweep(index, desc: dict, corpus_path: Path, queries: np.ndarray, truth: np.ndarray, nprobes, rescores,
          latency_users: int, cold_users: int, bar=None) -> list[dict]:
    """Recall (every user, batched) and one-user latency (p50/p99) of phoenix_runtime.ann's search, per
    nprobe x rescore; with rescoring also cold (corpus pages dropped first)."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    rows, out = ann.MappedRows(corpus_path), []
    grid = [(p, r) for p in nprobes if p <= ivf.nlist for r in rescores]
    task = bar.add_task(f"{desc.get('factory', desc['kind'])}: search", total=len(grid)) if bar else None
    for nprobe, rescore in grid:
        ivf.nprobe = nprobe
        search = ann.IndexSearch(index, "ivfpq", rows if rescore else None, rescore)
        t = time.perf_counter()
        found = np.concatenate([search.search(queries[s:s + 64], K)[0] for s in range(0, len(queries), 64)])
        batched_ms = (time.perf_counter() - t) / len(queries) * 1e3
        row = {"nprobe": nprobe, "rescore": rescore, "recall": round(recall(found, truth), 4),
               "batched_ms_per_user": round(batched_ms, 2)}
        modes = [("", False), ("cold_", True)] if rescore else [("", False)]
        for prefix, cold in modes:
            if cold:                 # mapped pages stay cached: unmap, drop the file's pages, map it again
                search = rows = None
                gc.collect()
                drop_cached(corpus_path)
                rows = ann.MappedRows(corpus_path)
                search = ann.IndexSearch(index, "ivfpq", rows, rescore)
            times, cpu = [], []
            for u in range(cold_users if cold else latency_users):
                t, c = time.perf_counter(), time.process_time()
                search.search(queries[u:u + 1], K)
                times.append((time.perf_counter() - t) * 1e3)
                cpu.append((time.process_time() - c) * 1e3)
            row[f"{prefix}p50_ms"] = round(float(np.percentile(times, 50)), 2)
            row[f"{prefix}p99_ms"] = round(float(np.percentile(times, 99)), 2)
            if not cold:             # CPU time of the process: what a search costs, less the waits of a shared machine
                row["cpu_p50_ms"] = round(float(np.percentile(cpu, 50)), 2)
        out.append(row)
        if bar:
            bar.advance(task)
    ivf.nprobe = desc["params"]["nprobe"]
    return out


def exact_latency(corpus_path: Path, queries: np.ndarray, users: int) -> dict:
    """What exact search costs per user at this N (the corpus read from the page cache, as a served
    corpus.npy is memory-mapped): numpy's float32 product with every row + argpartition (the served exact search,
    phoenix_runtime.topk.PrunedSearch, scans an int8 copy instead: a quarter of these bytes)."""
    corpus = np.load(corpus_path, mmap_mode="r")
    times = []
    for u in range(users):
        t = time.perf_counter()
        scores = np.asarray(corpus) @ queries[u]
        top = np.argpartition(-scores, K)[:K]
        np.argsort(-scores[top], kind="stable")
        times.append((time.perf_counter() - t) * 1e3)
    return {"p50_ms": round(float(np.percentile(times, 50)), 1), "users": users,
            "bytes_per_post": D * 4}


# ---------------------------------------------------------------------------------------------- report

def report(result: dict) -> str:
    c = result["corpus"]
    lines = [
        "# A corpus larger than one machine: compressed FAISS indexes", "",
        f"Command: `{result['command']}`. Machine: {result['machine']} (load average at start "
        f"{result['load_average']}: other jobs share these cores, so latencies are indicative). FAISS "
        f"{result['faiss']}, {result['threads']} threads.", "",
        f"Corpus: {c['posts']:,} posts x {D} float32 ({c['posts'] * D * 4 / 1e9:.1f} GB), {c['authors']:,} authors, "
        f"{c['topics']} topics (benchmarks/ann.py says how it is made); {c['users']:,} users; recall@{K} against "
        f"exact search over all users; latency: one user per call, {result['latency_users']} users, the search "
        f"phoenix_retrieval runs (phoenix_runtime/ann.py). Exact search as a float32 product: {result['exact']['p50_ms']} "
        f"ms per user (p50, corpus in the page cache), {D * 4} bytes per post in memory.", "",
        "| index | bytes/post (file) | loaded MiB | train s | add s | nprobe | rescore | recall@200 | p50 ms | p99 ms "
        "| CPU p50 ms | batched ms/user | cold p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for ix in result["indexes"]:
        name = ix.get("factory") or "ivfpq " + ",".join(f"{k}={v}" for k, v in ix["params"].items()
                                                         if k in ("nlist", "m", "nbits"))
        for i, r in enumerate(ix["sweep"]):
            head = (f"| {name} | {ix['bytes_per_post']} | {ix['loaded_mib']} | {ix['train_s']} | {ix['add_s']} "
                    if i == 0 else "| | | | | ")
            cold = f"{r['cold_p50_ms']} / {r['cold_p99_ms']}" if "cold_p50_ms" in r else ""
            lines.append(f"{head}| {r['nprobe']} | {r['rescore']} | {r['recall']} | {r['p50_ms']} | {r['p99_ms']} | "
                         f"{r.get('cpu_p50_ms', '')} | {r['batched_ms_per_user']} | {cold} |")
    lines += ["", "bytes/post (file): the index file / N (codes, ids, centroids and tables). Loaded MiB: what a "
              "fresh process gains by loading it. rescore R: R x 200 candidates from the index, their exact "
              "scores from corpus.npy memory-mapped (not resident: only those rows are read); cold: the corpus "
              "file's pages dropped from the page cache before the run, so every row is a disk read "
              f"({result['cold_users']} users).", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5))
    for ix in result["indexes"]:
        name = ix.get("factory") or "ivfpq m=" + str(ix["params"]["m"])
        color = None
        for rescore in sorted({r["rescore"] for r in ix["sweep"]}):
            pts = [r for r in ix["sweep"] if r["rescore"] == rescore]
            style = {0: "-o", 4: "--s", 8: ":^"}.get(rescore, "-.x")
            if pts:
                line, = a.plot([r["p50_ms"] for r in pts], [r["recall"] for r in pts], style, color=color,
                               label=f"{name}{f' + rescore x{rescore}' if rescore else ''} ({ix['bytes_per_post']} B/post)")
                color = line.get_color()
                for r in pts:
                    a.annotate(str(r["nprobe"]), (r["p50_ms"], r["recall"]), fontsize=7, color=line.get_color())
                best = max(r["recall"] for r in pts)
                b.scatter(ix["bytes_per_post"], best, color=line.get_color(), marker="o" if not rescore else "s")
                b.annotate(f"{name}{f' +R{rescore}' if rescore else ''}", (ix["bytes_per_post"], best), fontsize=7)
    a.set_xscale("log")
    a.set_xlabel("latency per user, p50 (ms, log; labels: nprobe)")
    a.set_ylabel(f"recall@{K} vs exact")
    a.legend(fontsize=7)
    a.grid(alpha=0.3)
    b.axvline(D * 4, color="grey", ls=":")
    b.annotate("exact: float32", (D * 4, 0.5), fontsize=8, rotation=90)
    b.set_xscale("log")
    b.set_xlabel("bytes per post in memory (index file / N; log)")
    b.set_ylabel(f"best recall@{K} of the sweep")
    b.grid(alpha=0.3)
    c = result["corpus"]
    fig.suptitle(f"{c['posts']:,} posts, {c['topics']} topics: recall@{K} vs latency and bytes per post")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ann", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--posts", type=int, default=10_000_000, help="corpus size N (default 10M)")
    ap.add_argument("--topics", type=int, default=1000,
                    help="topic centres of the author table (0: independent rows, the hard case); default 1000")
    ap.add_argument("--users", type=int, default=1000, help="users (queries) for recall (default 1000)")
    ap.add_argument("--latency-users", type=int, default=200, help="users timed one per call (default 200)")
    ap.add_argument("--indexes", default=";".join(DEFAULT_INDEXES),
                    help="';'-separated index specs: ivfpq[:key=value,...] (export.corpus's builder) or "
                         "factory:STRING (FAISS index_factory; {nlist} = the derived nlist)")
    ap.add_argument("--cold-users", type=int, default=50,
                    help="users timed one per call with the corpus file out of the page cache (rescoring; default 50)")
    ap.add_argument("--nprobe", default="16,32,64,128,256", help="nprobe values to sweep (comma list)")
    ap.add_argument("--rescore", default="0,4,8", help="rescore factors to sweep (comma list; 0 = none)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="FAISS (OpenMP) threads (default: all cores)")
    ap.add_argument("--work", default="/tmp/phoenix-ann", help="corpus and index files (about 8 GB at 10M); a rerun "
                                                              "reuses the corpus and the indexes and only searches")
    ap.add_argument("--out", default="benchmarks/results/ann", help="results folder (ann.json, ann.md, ann.png)")
    ap.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    args = ap.parse_args(argv)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    specs = [s.strip() for s in args.indexes.split(";") if s.strip()]
    nprobes = [int(x) for x in args.nprobe.split(",") if x.strip()]
    rescores = [int(x) for x in args.rescore.split(",") if x.strip()]
    load = os.getloadavg()
    stem = work / f"corpus_{args.posts}_t{args.topics}_s{args.seed}"
    corpus_path, authors_path = stem.with_suffix(".npy"), stem.with_suffix(".authors.npy")
    with progress() as bar:
        if not (corpus_path.exists() and authors_path.exists()):
            made = synthesize(corpus_path, args.posts, args.topics, args.seed, bar=bar)
            np.save(authors_path, made["author_of"])
        author_of = np.load(authors_path)
        corpus = np.load(corpus_path, mmap_mode="r")     # file-backed: unmapped (del) after each use
        queries = user_queries(corpus, author_of, args.users)
        truth_scores, truth = exact_top_k(corpus, queries, bar=bar)
        del corpus
    exact = exact_latency(corpus_path, queries, min(10, args.users))
    console.print(f"exact: top-1 / top-200 score {truth_scores[:, 0].mean():.3f} / {truth_scores[:, -1].mean():.3f} "
                  f"(mean over users); {exact['p50_ms']} ms per user")
    indexes = []
    for spec in specs:
        path = work / f"{stem.name}.{re.sub(r'[^A-Za-z0-9=]+', '_', spec)}.faiss"    # kept: a rerun only searches
        with progress() as bar:
            if path.exists() and path.with_suffix(".json").exists():
                index, desc = faiss.read_index(str(path)), json.loads(path.with_suffix(".json").read_text())
            else:
                corpus = np.load(corpus_path, mmap_mode="r")
                index, desc = build_index(spec, corpus, bar)
                del corpus
                gc.collect()
                faiss.write_index(index, str(path))
                desc.update(spec=spec, file_bytes=path.stat().st_size,
                            bytes_per_post=round(path.stat().st_size / args.posts, 1), loaded_mib=loaded_memory_mib(path))
                path.with_suffix(".json").write_text(json.dumps(desc))
            desc["sweep"] = sweep(index, desc, corpus_path, queries, truth, nprobes, rescores, args.latency_users,
                                  args.cold_users, bar)
        del index
        indexes.append(desc)
        for r in desc["sweep"]:
            console.print(f"{spec}: {desc['bytes_per_post']} B/post, nprobe {r['nprobe']} rescore {r['rescore']}: "
                          f"recall {r['recall']}, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms")
    from benchmarks.env import environment
    env = environment()
    result = {"command": "python -m benchmarks.ann " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": f"{env['cpu_model']}, {env['cpu_cores']} cores", "load_average": [round(x, 1) for x in load],
              "faiss": faiss.__version__, "threads": args.threads, "latency_users": args.latency_users,
              "cold_users": args.cold_users,
              "corpus": {"posts": args.posts, "authors": int(author_of.max()) + 1, "topics": args.topics,
                         "users": args.users, "seed": args.seed, "table_rows": TABLE_ROWS,
                         "posts_per_author": {"median": POSTS_PER_AUTHOR[0], "sigma": POSTS_PER_AUTHOR[1]},
                         "query": {"history": HISTORY, "follow_share": FOLLOW_SHARE, "noise": QUERY_NOISE},
                         "top1_score": round(float(truth_scores[:, 0].mean()), 3),
                         "top200_score": round(float(truth_scores[:, -1].mean()), 3)},
              "exact": exact, "indexes": indexes, "environment": env}
    out.mkdir(parents=True, exist_ok=True)
    (out / "ann.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "ann.md").write_text(report(result))
    plot(result, out / "ann.png")
    console.print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
