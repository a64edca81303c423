"""Exact top-k retrieval: the K corpus rows with the highest dot product with a user, best first.

    indices, scores = exact_top_k(users [B, D], corpus [N, D], k, mask=None)

Rows outside `mask` ([N] or [B, N] bool, False = never retrieve) score MASKED_SCORE, as upstream's
retrieval does. Ties go to the lower row index. The torch model (phoenix_torch.retrieval) and the served
retrieval model both call this function.

Standard library and numpy only: part of phoenix_runtime, which the build copies whole into the repository.
"""
from __future__ import annotations

import numpy as np

MASKED_SCORE = -1e12   # upstream's score of a corpus row outside `corpus_mask`


def check_top_k(k: int, corpus_rows: int, maximum: int | None = None) -> int:
    """k itself when it is in [1, min(maximum, corpus_rows)]; else ValueError naming the bound."""
    high = corpus_rows if maximum is None else min(maximum, corpus_rows)
    if not 1 <= k <= high:
        raise ValueError(f"top_k {k} outside [1, {high}] (the corpus size{'' if maximum is None else ' and the built maximum'})")
    return k


def best_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices [B, k], scores [B, k]) of the k highest scores per row of `scores` [B, N], best first; ties go
    to the lower index."""
    b, n = scores.shape
    if k < n:
        kth = np.partition(scores, n - k, axis=1)[:, n - k, None]     # the k-th highest score of each row
        above, tied = scores > kth, scores == kth
        need = k - above.sum(1, keepdims=True)                        # how many of the tied rows make the cut
        if (tied.sum(1, keepdims=True) > need).any():                 # the lowest-index tied rows go first
            tied &= np.cumsum(tied, axis=1) <= need
        part = np.nonzero(above | tied)[1].reshape(b, k)              # row-major: ascending index per row
    else:
        part = np.broadcast_to(np.arange(n), (b, n))
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    idx = np.take_along_axis(part, order, 1)
    return idx, np.take_along_axis(scores, idx, 1)


def exact_top_k(users: np.ndarray, corpus: np.ndarray, k: int, mask: np.ndarray | None = None):
    """(indices [B, k] int64, scores [B, k] float32) of users [B, D] @ corpus [N, D].T, best first."""
    users = np.asarray(users, dtype=np.float32)
    if corpus.ndim != 2 or corpus.shape[1] != users.shape[-1]:
        raise ValueError(f"corpus: expected [N, {users.shape[-1]}], got {list(corpus.shape)}")
    check_top_k(k, corpus.shape[0])
    scores = users @ np.asarray(corpus, dtype=np.float32).T
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape[-1] != corpus.shape[0] or mask.ndim > 2:
            raise ValueError(f"corpus_mask: expected bool [{corpus.shape[0]}] (per user or for all), got "
                             f"{mask.dtype} {list(mask.shape)}")
        scores = np.where(mask, scores, np.float32(MASKED_SCORE))
    idx, top = best_k(scores, k)
    return idx.astype(np.int64), top.astype(np.float32)
