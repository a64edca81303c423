"""Batch shaping shared by the client and the Python-backend engine host.

Candidate isolation makes hash-0 padding exact: a padded candidate changes no real candidate's score,
so requests with different candidate counts can share one [B, C_max] engine call.
"""
from __future__ import annotations

import numpy as np

# RecsysBatch fields with a candidate dim at axis 1 (in the ranker's [B, C, ...] layout)
CANDIDATE_FIELDS = ("candidate_post_hashes", "candidate_author_hashes", "candidate_product_surface")


def has_candidate_dim(name: str, value: np.ndarray) -> bool:
    """True for the ranker's [B, C, ...] candidate inputs (the candidate tower's [rows, H] inputs have no C)."""
    return name in CANDIDATE_FIELDS and value.ndim == (2 if name == "candidate_product_surface" else 3)


def pad_candidates(value: np.ndarray, num_candidates: int, axis: int = 1) -> np.ndarray:
    """Pad `value` with zeros (hash 0 = padding candidate) along `axis` up to `num_candidates`."""
    missing = num_candidates - value.shape[axis]
    if missing <= 0:
        return value
    pad = [(0, 0)] * value.ndim
    pad[axis] = (0, missing)
    return np.pad(value, pad)


def stack_rows(rows: list[dict]) -> dict[str, np.ndarray]:
    """Stack per-user arrays into [B, ...], padding candidates to the batch's largest count."""
    c_max = max(len(r["candidate_post_hashes"]) for r in rows)
    return {k: np.stack([pad_candidates(r[k], c_max, axis=0) if k in CANDIDATE_FIELDS else r[k] for r in rows])
            for k in rows[0]}
