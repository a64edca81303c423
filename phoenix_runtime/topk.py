"""Exact top-k retrieval: the K corpus rows with the highest dot product with a user, best first.

    indices, scores = exact_top_k(users [B, D], corpus [N, D], k, mask=None)       # the definition
    search = PrunedSearch(corpus, Int8Scan.open(path, meta) or None)                 # the same answer, fast
    indices, scores = search(users, k, mask)

The definition (`exact_top_k`): a row's score is its dot product accumulated in float64 and rounded to
float32; rows outside `mask` ([N] or [B, N] bool, False = never retrieve) score MASKED_SCORE, as upstream's
retrieval does; ties go to the lower row index. The torch model (phoenix_torch.retrieval) uses it.

The served search (`PrunedSearch`) returns exactly the same rows and scores, without reading the float32
corpus once per user: a cheap approximate scan scores every row with an error bound that holds for every row,
which proves most rows out of the top K; only the few rows it cannot rule out are scored exactly. Why it is
exact: if at least K rows have approx - bound >= t, every row with approx + bound < t has a true score below
theirs, so it is not in the top K (with ties, not before them either: the bound has a float32 ulp of slack).
The approximate scans:
- `Int8Scan` (default): the corpus quantised to int8 with one scale (|x - s q| <= s / 2 per element), the user
  to 7 bits split into its positive and negative parts (so no int8 x uint8 product pair can saturate a 16-bit
  sum on any CPU kernel), multiplied exactly in integers by ONNX Runtime's MatMulInteger (the build writes the
  graph, `corpus_scan.onnx`): a quarter of the float32 corpus' bytes per user. Bound per user:
  s / 2 * |u|_1 + s_u / 2 * max_i |s q_i|_1.
- `Float32Scan` (no onnxruntime): numpy's float32 product, bound gamma_D * |u|_2 * max_i |x_i|_2 for its
  float32 rounding.

Standard library and numpy only (onnxruntime imported by Int8Scan when it opens): part of phoenix_runtime,
which the build copies whole into the repository.
"""
from __future__ import annotations

import math

import numpy as np

MASKED_SCORE = -1e12   # upstream's score of a corpus row outside `corpus_mask`
CHUNK = 65536          # rows per float64 block of the exact scores
ULP_SLACK = 1e-6       # relative slack of the bounds: float32 rounding of the exact scores (ties), float64 sums
USER_LEVELS = 127      # the user's positive and negative parts, quantised to [0, 127] each
CORPUS_LEVELS = 127    # the corpus, quantised to [-127, 127]
SAMPLE = 8192          # rows the threshold of a search is estimated from


def check_top_k(k: int, corpus_rows: int, maximum: int | None = None) -> int:
    """k itself when it is in [1, min(maximum, corpus_rows)]; else ValueError naming the bound."""
    high = corpus_rows if maximum is None else min(maximum, corpus_rows)
    if not 1 <= k <= high:
        bounds = "the corpus size" if maximum is None else "the corpus size and the built maximum"
        raise ValueError(f"top_k {k} outside [1, {high}] ({bounds})")
    return k


def check_mask(mask, users: int, rows: int) -> np.ndarray | None:
    """A corpus mask as bool [users, rows] (given as [rows] or [users, rows]), or ValueError naming it."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.shape[-1:] != (rows,) or mask.ndim > 2 or \
            (mask.ndim == 2 and mask.shape[0] != users):
        raise ValueError(f"corpus_mask: expected bool [{rows}] (per user or for all), got {mask.dtype} "
                         f"{list(mask.shape)}")
    return np.broadcast_to(mask, (users, rows))


def exact_scores(users: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """users [B, D] . rows [M, D] -> [B, M]: each dot product accumulated in float64, rounded to float32 (the
    same value whichever rows are scored together)."""
    users = np.asarray(users, dtype=np.float64)
    out = np.empty((users.shape[0], rows.shape[0]), dtype=np.float32)
    for start in range(0, rows.shape[0], CHUNK):
        block = np.asarray(rows[start:start + CHUNK], dtype=np.float64)
        out[:, start:start + CHUNK] = users @ block.T
    return out


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
    """(indices [B, k] int64, scores [B, k] float32) of users [B, D] . corpus [N, D], best first."""
    users = np.asarray(users, dtype=np.float32)
    if corpus.ndim != 2 or corpus.shape[1] != users.shape[-1]:
        raise ValueError(f"corpus: expected [N, {users.shape[-1]}], got {list(corpus.shape)}")
    check_top_k(k, corpus.shape[0])
    mask = check_mask(mask, users.shape[0], corpus.shape[0])
    scores = exact_scores(users, corpus)
    if mask is not None:
        scores = np.where(mask, scores, np.float32(MASKED_SCORE))
    idx, top = best_k(scores, k)
    return idx.astype(np.int64), top.astype(np.float32)


# ------------------------------------------------------------------------------------------ the pruned search

def quantize_corpus(corpus: np.ndarray) -> tuple[np.ndarray, dict]:
    """(q [N, D] int8, meta) with |corpus - scale * q| <= scale / 2 everywhere, one scale for the whole corpus;
    meta holds what the bound needs: scale, max_l1 (the largest |scale * q_i|_1), max_norm (largest |x_i|_2)."""
    n = corpus.shape[0]
    peak = max((float(np.abs(corpus[s:s + CHUNK]).max()) for s in range(0, n, CHUNK)), default=0.0)
    scale = (peak or 1.0) / CORPUS_LEVELS
    q = np.empty(corpus.shape, dtype=np.int8)
    max_l1 = max_norm = 0.0
    for s in range(0, n, CHUNK):
        block = np.asarray(corpus[s:s + CHUNK], dtype=np.float32)
        q[s:s + CHUNK] = np.clip(np.rint(block / scale), -CORPUS_LEVELS, CORPUS_LEVELS)
        max_l1 = max(max_l1, float(np.abs(q[s:s + CHUNK]).astype(np.int32).sum(1).max()) * scale)
        max_norm = max(max_norm, float(np.sqrt((block.astype(np.float64) ** 2).sum(1)).max()))
    return q, {"scale": scale, "max_l1": max_l1, "max_norm": max_norm}


def quantize_users(users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a [2B, D] uint8: each user's positive part, then its negative part, in [0, 127]; scale [B]) with
    |u - scale * (a_pos - a_neg)| <= scale / 2."""
    peak = np.abs(users).max(1)
    scale = np.where(peak > 0, peak, 1.0) / USER_LEVELS
    q = np.rint(users / scale[:, None]).astype(np.int16)
    return np.concatenate([np.maximum(q, 0), np.maximum(-q, 0)]).astype(np.uint8), scale


class Int8Scan:
    """Approximate integer scores of every row: users (7-bit parts) x corpus (int8) in ONNX Runtime."""

    def __init__(self, session, meta: dict):
        self.session, self.meta = session, meta

    @classmethod
    def open(cls, path, meta: dict, threads: int = 0) -> "Int8Scan":
        import onnxruntime as ort

        from .engines import ort_options
        session = ort.InferenceSession(str(path), sess_options=ort_options(threads),
                                       providers=["CPUExecutionProvider"])
        return cls(session, meta)

    def __call__(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(approx [B, N] int32, unit [B], bound [B]): true score in unit * (approx -+ bound)."""
        b = users.shape[0]
        a, s_u = quantize_users(users)
        y = self.session.run(None, {"users": a})[0]
        approx = y[:b] - y[b:]
        unit = s_u * self.meta["scale"]
        error = (self.meta["scale"] / 2 * np.abs(users).sum(1) + s_u / 2 * self.meta["max_l1"]
                 + ULP_SLACK * np.sqrt((users.astype(np.float64) ** 2).sum(1)) * self.meta["max_norm"])
        return approx, unit, error / unit


class Float32Scan:
    """Approximate scores of every row: numpy's float32 product (where ONNX Runtime is not installed)."""

    def __init__(self, corpus: np.ndarray, max_norm: float):
        self.corpus, self.max_norm = corpus, max_norm

    def __call__(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = self.corpus.shape[1]
        gamma = d * 2.0 ** -24 / (1 - d * 2.0 ** -24)                 # float32 dot-product rounding, D terms
        norms = np.sqrt((users.astype(np.float64) ** 2).sum(1))
        error = (gamma + ULP_SLACK) * norms * self.max_norm
        return users @ self.corpus.T, np.ones(len(users)), error


class PrunedSearch:
    """exact_top_k's answer from an approximate scan with a bound and exact scores for the rows it cannot rule
    out. `corpus` [N, D] float32 (memory-mapped: only the rescored rows are read); `scan`: an Int8Scan, or None
    for the float32 one."""

    def __init__(self, corpus: np.ndarray, scan=None, max_norm: float | None = None):
        self.corpus = corpus
        if scan is None:
            if max_norm is None:
                max_norm = max((float(np.sqrt((np.asarray(corpus[s:s + CHUNK], np.float64) ** 2).sum(1)).max())
                                for s in range(0, len(corpus), CHUNK)), default=0.0)
            scan = Float32Scan(corpus, max_norm)
        self.scan = scan
        self.last_candidates = 0        # rows scored exactly by the last search (all users), for the benchmarks

    def __call__(self, users: np.ndarray, k: int, mask=None) -> tuple[np.ndarray, np.ndarray]:
        users = np.ascontiguousarray(users, dtype=np.float32)
        n = self.corpus.shape[0]
        check_top_k(k, n)
        mask = check_mask(mask, users.shape[0], n)
        if mask is not None and (mask.sum(1) < k).any():     # masked rows would be needed: the definition itself
            return exact_top_k(users, self.corpus, k, mask)
        approx, _, bound = self.scan(users)
        idx = np.empty((len(users), k), dtype=np.int64)
        top = np.empty((len(users), k), dtype=np.float32)
        self.last_candidates = 0
        for b in range(len(users)):
            rows = self.candidates(approx[b], float(bound[b]), k, None if mask is None else mask[b])
            self.last_candidates += len(rows)
            scores = exact_scores(users[b:b + 1], self.corpus[rows])
            best, top[b] = best_k(scores, k)
            idx[b] = rows[best[0]]
        return idx, top

    @staticmethod
    def candidates(approx: np.ndarray, bound: float, k: int, mask: np.ndarray | None) -> np.ndarray:
        """Ascending indices of the rows whose true score may reach the top k: given a threshold t such that at
        least k rows have approx >= t + bound (their true scores are at least t), every row with approx < t -
        bound is out. t is estimated from a sample of the rows; if too few rows clear it, from all of them."""
        floor = np.iinfo(approx.dtype).min if approx.dtype.kind == "i" else -np.inf
        if mask is not None:
            approx = np.where(mask, approx, floor)
        n = approx.shape[0]
        step = max(1, n // SAMPLE)
        sample = approx[::step]
        rank = min(len(sample), math.ceil(1.5 * k * len(sample) / n) + 2)   # about 1.5 k rows clear it
        sure = np.partition(sample, len(sample) - rank)[len(sample) - rank]
        if sure <= floor or np.count_nonzero(approx >= sure) < k:         # an unlucky sample: the exact k-th
            sure = np.partition(approx, n - k)[n - k]
        threshold = float(sure) - 2 * bound
        if approx.dtype.kind == "i":
            threshold = math.floor(threshold)
        rows = np.flatnonzero(approx >= threshold)
        if mask is not None:
            rows = rows[mask[rows]]
        return rows
