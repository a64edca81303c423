"""The May release at its real sizes: build time and peak memory, served memory, pipeline latency.

    python -m benchmarks.release --out benchmarks/results/release

The release's `oss-phoenix-artifacts` is 3 GB of tables and cannot be downloaded here, so this writes an
artifacts folder of the same layout and sizes with random values (`synthesize`): the mini model's
configs and parameters (tests/golden/may/may_artifacts_mini, the released architecture), hash tables of
1,000,000 rows x 128 per entity for both models (3 x 2 x 512 MB float32) and a corpus of 537,000 posts.
Then it measures, on this machine:
- `python -m export.build --artifacts DIR --precision fp32 --target cpu`: wall time and peak RSS
  (/usr/bin/time), and the repository's size on disk;
- the served repository (tritonserver + its Python-backend processes): RSS and PSS (proportional set
  size: shared pages such as the memory-mapped tables counted once) after start-up and after the
  pipeline runs;
- the whole pipeline (`serving.pipeline.run_pipeline`: retrieval over 537K posts, then one ranking pass
  over the top 200) at concurrency 1: p50 / p90 over `--runs` runs, and its two calls apart.
Results: `release.json` and `release.md` in --out.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.memory import tree_memory

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MINI = PROJECT_ROOT / "tests" / "golden" / "may" / "may_artifacts_mini"
RELEASE_VOCAB = 1_000_000
RELEASE_CORPUS = 537_000
TOPICS = ("nfl", "nba", "mlb", "nhl", "soccer")


def synthesize(folder: Path, vocab: int = RELEASE_VOCAB, corpus: int = RELEASE_CORPUS, seed: int = 0) -> Path:
    """An artifacts folder in the release's layout and sizes, random tables and corpus (reused if complete and of
    the same sizes and seed; made again otherwise)."""
    done, stamp = folder / ".complete", json.dumps({"vocab": vocab, "corpus": corpus, "seed": seed})
    if done.exists() and done.read_text().strip() == stamp:
        return folder
    done.unlink(missing_ok=True)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for kind in ("ranker", "retrieval"):
        (folder / kind).mkdir(exist_ok=True)
        cfg = json.loads((MINI / kind / "config.json").read_text())
        cfg.update({f"{e}_vocab_size": vocab for e in ("user", "item", "author")})
        (folder / kind / "config.json").write_text(json.dumps(cfg, indent=2))
        shutil.copy2(MINI / kind / "model_params.npz", folder / kind / "model_params.npz")
        tables = {f"{e}_embeddings": rng.standard_normal((vocab, cfg["emb_size"]), dtype=np.float32) * 0.05
                  for e in ("user", "item", "author")}
        np.savez(folder / kind / "embedding_tables.npz", **tables)
        del tables
    reps = rng.standard_normal((corpus, 128), dtype=np.float32)
    reps /= np.linalg.norm(reps, axis=1, keepdims=True)
    np.savez(folder / "sports_corpus.npz", post_ids=rng.integers(1, 2**63, corpus, dtype=np.uint64),
             author_ids=rng.integers(1, 2**40, corpus, dtype=np.uint64), candidate_representations=reps,
             topics=np.array(TOPICS)[rng.integers(0, len(TOPICS), corpus)])
    seq = json.loads((MINI / "example_sequence.json").read_text())
    seq["history"] = [{"post_id": int(rng.integers(1, 2**63)), "author_id": int(rng.integers(1, 2**40)),
                       "actions": {"1": 1.0, "11": 1.0}} for _ in range(100)]
    (folder / "example_sequence.json").write_text(json.dumps(seq))
    done.write_text(stamp + "\n")
    return folder


def timed_build(artifacts: Path, output: Path) -> dict:
    """export.build under /usr/bin/time -v: wall seconds and the peak RSS of the build process."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "export.build", "--artifacts", str(artifacts),
           "--precision", "fp32", "--target", "cpu", "--output", str(output)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"export.build failed: {p.stderr[-2000:]}")
    peak_kib = next(int(line.split(":")[1]) for line in p.stderr.splitlines() if "Maximum resident set size" in line)
    size = sum(f.stat().st_size for f in output.rglob("*") if f.is_file())
    return {"wall_s": round(wall, 1), "peak_rss_gib": round(peak_kib / 2**20, 2),
            "repository_gib": round(size / 2**30, 2), "command": " ".join(["python", *cmd[3:]])}


def measure_serving(repo: Path, sequence: Path, runs: int) -> dict:
    from serving.client import PhoenixClient
    from serving.pipeline import read_sequence, run_pipeline
    from serving.server import TritonServer

    t0 = time.perf_counter()
    with TritonServer(repo, startup_timeout=900) as server, PhoenixClient(server.grpc_url) as client:
        startup = time.perf_counter() - t0
        after_start = tree_memory(server.process.pid)
        seq = read_sequence(sequence, client.actions, client.history_len)
        run_pipeline(client, seq)                                      # warm
        whole, retrieval, ranking = [], [], []
        for _ in range(runs):
            t = time.perf_counter()
            ret = client.retrieve(user_id=seq.user_id, history=seq.history, top_k=200)
            t_ret = time.perf_counter()
            client.score(user_id=seq.user_id, history=seq.history,
                         candidates=[{"post_id": int(p), "author_id": int(a), "product_surface": 0}
                                     for p, a in zip(ret["top_k_post_ids"], ret["top_k_author_ids"])])
            t_end = time.perf_counter()
            whole.append(t_end - t)
            retrieval.append(t_ret - t)
            ranking.append(t_end - t_ret)
        after_runs = tree_memory(server.process.pid)

    def pct(xs, q):
        return round(float(np.percentile(xs, q)) * 1e3, 1)
    return {"startup_s": round(startup, 1), "memory_after_start": after_start, "memory_after_runs": after_runs,
            "runs": runs, "pipeline_p50_ms": pct(whole, 50), "pipeline_p90_ms": pct(whole, 90),
            "retrieval_p50_ms": pct(retrieval, 50), "ranking_200_p50_ms": pct(ranking, 50)}


def report(result: dict) -> str:
    b, s = result["build"], result["serving"]
    return "\n".join([
        "# The May release at its real sizes (synthetic values)", "",
        f"Command: `{result['command']}`. Machine: {result['machine']}.", "",
        f"Artifacts: hash tables of {result['vocab']:,} rows x 128 per entity for both models "
        f"({result['artifacts_gib']} GiB on disk), a corpus of {result['corpus']:,} posts.", "",
        "| what | measured |", "|---|---|",
        f"| build (`{b['command']}`) | {b['wall_s']} s, peak RSS {b['peak_rss_gib']} GiB |",
        f"| repository on disk | {b['repository_gib']} GiB |",
        f"| server start (every model loaded and warm) | {s['startup_s']} s |",
        f"| served memory after start: RSS / PSS | {s['memory_after_start']['rss_gib']} / "
        f"{s['memory_after_start']['pss_gib']} GiB |",
        f"| served memory after {s['runs']} pipelines: RSS / PSS | {s['memory_after_runs']['rss_gib']} / "
        f"{s['memory_after_runs']['pss_gib']} GiB |",
        f"| whole pipeline (retrieval over the corpus + ranking 200 in one pass), p50 / p90 | "
        f"{s['pipeline_p50_ms']} / {s['pipeline_p90_ms']} ms |",
        f"| retrieval alone, p50 | {s['retrieval_p50_ms']} ms |",
        f"| ranking 200 candidates, p50 | {s['ranking_200_p50_ms']} ms |", "",
        "The build and the server together stay under 12 GB resident when build peak + served RSS is below it: "
        f"{round(b['peak_rss_gib'] + s['memory_after_runs']['rss_gib'], 2)} GiB here (RSS counts the "
        "memory-mapped table pages each process touched; PSS counts shared pages once).", ""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.release", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/release", help="results folder (release.json, release.md)")
    ap.add_argument("--work", default="/tmp/phoenix-release", help="where the synthetic artifacts and the repository go "
                    "(about 7 GB; the artifacts are reused between runs)")
    ap.add_argument("--runs", type=int, default=30, help="pipelines measured after one warm-up (default: 30)")
    ap.add_argument("--vocab", type=int, default=RELEASE_VOCAB, help="rows per hash table (default: the release's 1M)")
    ap.add_argument("--corpus", type=int, default=RELEASE_CORPUS, help="corpus posts (default: the release's 537K)")
    args = ap.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    from benchmarks.env import environment

    t0 = time.perf_counter()
    artifacts = synthesize(work / "artifacts", args.vocab, args.corpus)
    print(f"artifacts ready in {time.perf_counter() - t0:.0f} s", flush=True)
    repo = work / "repo"
    build = timed_build(artifacts, repo)
    print(f"build: {build}", flush=True)
    serving = measure_serving(repo, artifacts / "example_sequence.json", args.runs)
    print(f"serving: {serving}", flush=True)
    env = environment()
    result = {"command": "python -m benchmarks.release " + " ".join(argv or sys.argv[1:]), "vocab": args.vocab,
              "corpus": args.corpus, "machine": f"{env['cpu_model']}, {env['cpu_cores']} cores",
              "artifacts_gib": round(sum(f.stat().st_size for f in artifacts.rglob("*") if f.is_file()) / 2**30, 2),
              "build": build, "serving": serving, "environment": env}
    out.mkdir(parents=True, exist_ok=True)
    (out / "release.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / "release.md").write_text(report(result))
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
