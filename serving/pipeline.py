"""Upstream's run_pipeline.py behind Triton, in ONE request: retrieval over the served corpus, then one ranking pass.

    result = run_pipeline(client, read_sequence("example_sequence.json", client.actions, client.history_len))

The user and history (the release's sequence file: raw ids, actions by ActionName index) go to phoenix_pipeline,
which hashes them with each model's constants, retrieves the top K posts of the corpus, hashes those with the
ranker's constants and ranks all K in one pass (no chunks: candidate isolation, and slot j gets the RoPE
position upstream's chunk of candidate_seq_len gives it, so the scores equal upstream's chunked run), with
product surfaces 0, no timestamps and no dwell, as upstream (phoenix_runtime.pipeline). The pipeline's own
weighted score `p[fav] + 0.5 p[reply] + 0.3 p[retweet] + 0.2 p[dwell]` orders the result (home-mixer's
weighted score comes back too).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.keys import check_keys
from serving.client import PhoenixClient, PhoenixInputError

TABLE_COLUMNS = (("Fav", "server_tweet_fav"), ("Reply", "server_tweet_reply"), ("RT", "server_tweet_retweet"),
                 ("Dwell", "client_tweet_recap_dwelled"), ("VQV", "client_tweet_video_quality_view"))


@dataclass
class Sequence:
    user_id: int
    history: list[dict]       # {"post_id", "author_id", "actions": {index: value}, "product_surface": 0}


@dataclass
class PipelineResult:
    user_id: int
    retrieved_post_ids: np.ndarray      # [K] uint64, retrieval order (best first)
    retrieved_author_ids: np.ndarray
    retrieval_scores: np.ndarray        # [K]
    probs: np.ndarray                   # [K, A], row i = retrieved post i
    weighted: np.ndarray                # [K], the pipeline's formula
    ranked: np.ndarray                  # [K] indices into the retrieved list, best first
    topics: list[str]
    corpus_size: int = 0

    def npz(self) -> dict[str, np.ndarray]:
        """The keys of upstream's expected_pipeline*.npz, with the same meaning."""
        return {"retrieved_post_ids": self.retrieved_post_ids, "retrieved_author_ids": self.retrieved_author_ids,
                "retrieval_scores": self.retrieval_scores, "probs": self.probs, "weighted": self.weighted,
                "ranked": self.ranked}


# The release's sequence file (example_sequence.json, what run_pipeline.py reads): every key it may hold.
SEQUENCE_KEYS = ("user_id", "history")
HISTORY_ITEM_KEYS = ("post_id", "author_id", "actions")      # actions: {"<ActionName index>": 0 or 1}


def read_sequence(path, actions, history_len: int) -> Sequence:
    """A sequence file in the release's format; every problem is named (file, item, key): an unknown key (a
    typo such as `histroy` or `action`) is refused with its closest allowed key, never ignored."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PhoenixInputError(f"{path}: cannot read a JSON sequence file ({e})") from None
    if not isinstance(data, dict):
        raise PhoenixInputError(f"{path}: expected a JSON object {{\"user_id\": ..., \"history\": [...]}}, got a "
                                f"{type(data).__name__}")
    check_keys(data, SEQUENCE_KEYS, str(path), PhoenixInputError)
    missing = [k for k in SEQUENCE_KEYS if k not in data]
    if missing or not isinstance(data["history"], list):
        raise PhoenixInputError(f"{path}: " + (f"missing {missing}" if missing else "history is not a list")
                                + "; expected {\"user_id\": ..., \"history\": [...]}")
    if len(data["history"]) > history_len:
        raise PhoenixInputError(f"{path}: {len(data['history'])} history items; the served model reads at most "
                                f"S = {history_len}")
    history = []
    for i, item in enumerate(data["history"]):
        what = f"{path}: history[{i}]"
        if not isinstance(item, dict):
            raise PhoenixInputError(f"{what}: expected an object with {list(HISTORY_ITEM_KEYS)}, got {item!r:.80}")
        check_keys(item, HISTORY_ITEM_KEYS, what, PhoenixInputError)
        if "post_id" not in item or "author_id" not in item:
            raise PhoenixInputError(f"{what}: needs post_id and author_id")
        for key in ("post_id", "author_id"):
            if isinstance(item[key], bool) or not isinstance(item[key], int) or not 0 <= item[key] < 1 << 64:
                raise PhoenixInputError(f"{what}.{key}: {item[key]!r} is not an id (an integer in [0, 2^64))")
        raw = item.get("actions", {})
        if not isinstance(raw, dict):
            raise PhoenixInputError(f"{what}.actions: expected {{\"<ActionName index>\": 1.0, ...}}, got {raw!r:.80}")
        acts = {}
        for key, value in raw.items():
            if not str(key).isdigit() or int(key) >= len(actions):
                raise PhoenixInputError(f"{what}.actions: unknown action index {key!r}; the model's actions are the "
                                        f"ActionName indices 0..{len(actions) - 1}")
            acts[int(key)] = value
        history.append({"post_id": item["post_id"], "author_id": item["author_id"], "actions": acts,
                        "product_surface": 0})
    uid = data["user_id"]
    if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid < 1 << 64:
        raise PhoenixInputError(f"{path}: user_id {uid!r} is not an id")
    return Sequence(uid, history)


def run_pipeline(client: PhoenixClient, seq: Sequence, top_k: int = 200) -> PipelineResult:
    out = client.pipeline(user_id=seq.user_id, history=seq.history, top_k=top_k)
    posts = out["top_k_post_ids"]
    return PipelineResult(seq.user_id, posts, out["top_k_author_ids"], out["top_k_scores"], out["probs"],
                          out["pipeline_score"], out["pipeline_ranking"].astype(np.int64),
                          [t.decode() if isinstance(t, bytes) else str(t)
                           for t in out.get("top_k_topics", [""] * len(posts))])


def format_table(r: PipelineResult, actions, display: int = 30, corpus_size: int | None = None) -> str:
    """The table run_pipeline.py prints."""
    cols = {a: i for i, a in enumerate(actions)}
    lines = ["=" * 120, f"PIPELINE RESULTS — User {r.user_id}",
             f"Retrieved top {len(r.ranked)}{f' of {corpus_size} posts' if corpus_size else ''} → Ranked by "
             f"engagement model", "=" * 120,
             f"{'Rank':<5} {'Score':<8} {'Ret':<7} " + " ".join(f"{h:<7}" for h, _ in TABLE_COLUMNS)
             + f" {'Topics':<30} Post URL", "-" * 120]
    for rank, i in enumerate(r.ranked[:display]):
        probs = " ".join(f"{float(r.probs[i, cols[a]]):<7.4f}" if a in cols else f"{'-':<7}" for _, a in TABLE_COLUMNS)
        lines.append(f"{rank + 1:<5} {float(r.weighted[i]):<8.4f} {float(r.retrieval_scores[i]):<7.4f} {probs} "
                     f"{(r.topics[i] if i < len(r.topics) else '')[:28]:<30} "
                     f"https://x.com/a/status/{int(r.retrieved_post_ids[i])}")
    lines += ["", f"Weighted score range: [{float(r.weighted[r.ranked[-1]]):.4f}, {float(r.weighted[r.ranked[0]]):.4f}]",
              "=" * 120]
    return "\n".join(lines)
