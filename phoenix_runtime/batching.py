"""Batch shaping shared by the client and the Python-backend engine host.

Candidate isolation makes hash-0 padding exact: a padded candidate changes no real candidate's score, so
requests with different candidate counts can share one [B, C_max] engine call, and a client can pad C to
a few fixed sizes. Inputs with a candidate dim are those whose spec shape is ["B", "C", ...].

Standard library and numpy only: part of phoenix_runtime, which the build copies whole into the repository.
"""
from __future__ import annotations

import numpy as np


def candidate_axis(spec: dict) -> bool:
    """True for a [B, C, ...] input or output spec."""
    return len(spec["shape"]) >= 2 and spec["shape"][1] == "C"


def pad_candidates(value: np.ndarray, num_candidates: int, axis: int = 1) -> np.ndarray:
    """Pad `value` with zeros (hash 0 = padding candidate) along `axis` up to `num_candidates`."""
    missing = num_candidates - value.shape[axis]
    if missing <= 0:
        return value
    pad = [(0, 0)] * value.ndim
    pad[axis] = (0, missing)
    return np.pad(value, pad)


def groups(requests: list[dict], specs: list[dict]) -> list[list[int]]:
    """Indices of requests that can share one engine call: equal shapes apart from B and C."""
    out: dict[tuple, list[int]] = {}
    for i, arrays in enumerate(requests):
        key = tuple(arrays[s["name"]].shape[2 if candidate_axis(s) else 1:] for s in specs)
        out.setdefault(key, []).append(i)
    return list(out.values())


def merge(requests: list[dict], specs: list[dict]) -> tuple[dict, list[tuple[int, int, int]]]:
    """One feed for several requests: candidate inputs padded to the largest C, everything concatenated
    along B. Returns (feed, [(start row, rows, C) per request])."""
    counts = [next((a[s["name"]].shape[1] for s in specs if candidate_axis(s)), 0) for a in requests]
    c_max = max(counts)
    feed = {s["name"]: np.concatenate([pad_candidates(a[s["name"]], c_max) if candidate_axis(s) else a[s["name"]]
                                       for a in requests]) for s in specs}
    parts, start = [], 0
    for a, c in zip(requests, counts):
        rows = len(a[specs[0]["name"]])
        parts.append((start, rows, c))
        start += rows
    return feed, parts


def split(outputs: dict, parts: list[tuple[int, int, int]], specs: list[dict]) -> list[dict]:
    """Each request's rows (and own candidate count) of the outputs of a merged call."""
    out = []
    for start, rows, c in parts:
        out.append({s["name"]: outputs[s["name"]][start:start + rows, :c] if candidate_axis(s)
                    else outputs[s["name"]][start:start + rows] for s in specs})
    return out


def stack_rows(rows: list[dict], candidate_names, num_candidates: int | None = None) -> dict[str, np.ndarray]:
    """Stack per-user arrays into [B, ...], padding candidate arrays (`candidate_names`, [C, ...] per user) to
    `num_candidates` or the batch's largest count."""
    names = set(candidate_names)
    c = num_candidates or max((len(r[n]) for r in rows for n in names if n in r), default=0)
    return {key: np.stack([pad_candidates(r[key], c, axis=0) if key in names else r[key] for r in rows])
            for key in rows[0]}
