"""Home-mixer math on ranker logits, in plain numpy: the ONE place it lives.

logits [B, C, A] -> per-action probabilities (independent sigmoids) named as served
(`favorite_score`, ..., `dwell_time`), the weighted score with home-mixer's offset, author
diversity, the out-of-network factor and the ranking. The Triton postprocess model, the client and
the tests all import this module.

Weighted score (xai-org/x-algorithm home-mixer `RankingScorer`):
    combined = sum_i w_i * p_i                          (vqv weight only for eligible candidates)
    positive_sum = sum of the weights of the positive actions (dwell_time, a continuous head, excluded)
    negative_sum = -(sum of the weights of the negative actions)   (a positive number)
    total_sum = positive_sum + negative_sum
    offset(combined) = max(combined, 0)                                   if total_sum == 0
                       (combined + negative_sum) / total_sum * OFFSET     if combined < 0
                       combined + OFFSET                                  otherwise
Final score: weighted score * author diversity multiplier ((1 - floor) * decay**k + floor for the
k-th post of the same author in weighted-score order, k from 0) * oon_factor for out-of-network
candidates. Ranking: valid candidates by final score, best first, ties by index; -1 pads the tail.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from phoenix_torch import ACTIONS, SCORE_NAMES, RecsysBatch

# Published defaults (August release), in upstream action order (index = logit column).
_DEFAULT_WEIGHT_VALUES = (0.5, 5.0, 1.0, 0.05, 0.4, 0.0, 0.05, 2.0, 5.0, 20.0, 0.0, 5.0, 0.05, 4.0,
                          -43.2, -31.2, -58.8, -234.0, 0.004)
DEFAULT_WEIGHTS: dict[str, float] = dict(zip(ACTIONS, _DEFAULT_WEIGHT_VALUES))
NEGATIVE_ACTIONS = tuple(ACTIONS[14:18])      # not_interested, block_author, mute_author, report
CONTINUOUS_ACTIONS = (ACTIONS[18],)           # dwell_time: a value, not a positive action
VQV_ACTION = ACTIONS[6]
NEGATIVE_SCORES_OFFSET = 0.001

# Input fields in RecsysBatch order: bit i of the ranker's `input_error` refers to field i.
INPUT_FIELDS = tuple(RecsysBatch._fields)
OUTPUT_NAMES = (*SCORE_NAMES, "weighted_score", "final_score", "ranking")


@dataclass(frozen=True)
class ScoringParams:
    weights: dict = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    negative_scores_offset: float = NEGATIVE_SCORES_OFFSET
    author_diversity_decay: float = 0.5
    author_diversity_floor: float = 0.25
    oon_factor: float = 0.75

    def __post_init__(self):
        unknown = sorted(set(self.weights) - set(ACTIONS))
        if unknown:
            raise ValueError(f"unknown action weight(s) {unknown}; actions are {list(ACTIONS)}")
        missing = [a for a in ACTIONS if a not in self.weights]
        if missing:
            raise ValueError(f"missing weight(s) for {missing}")


def params_from_strings(overrides: dict[str, str]) -> ScoringParams:
    """ScoringParams from string key/values, as Triton config parameters carry them.

    Keys: `weight.<action>` (e.g. `weight.favorite`), `negative_scores_offset`,
    `author_diversity_decay`, `author_diversity_floor`, `oon_factor`. Other keys are ignored.
    """
    weights = dict(DEFAULT_WEIGHTS)
    scalars = {}
    for key, value in overrides.items():
        if key.startswith("weight."):
            action = key[len("weight."):]
            if action not in weights:
                raise ValueError(f"parameter {key!r}: unknown action {action!r}; actions are {list(ACTIONS)}")
            weights[action] = _to_float(key, value)
        elif key in ("negative_scores_offset", "author_diversity_decay", "author_diversity_floor", "oon_factor"):
            scalars[key] = _to_float(key, value)
    return replace(ScoringParams(weights=weights), **scalars)


def _to_float(key, value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"parameter {key!r} must be a number, got {value!r}") from None


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Independent sigmoid per action, float32, numerically stable for large |logits|."""
    x = np.asarray(logits, dtype=np.float32)
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


def named_scores(probs: np.ndarray) -> dict[str, np.ndarray]:
    """[B, C, A] probabilities -> {serving name: [B, C] float32}."""
    if probs.shape[-1] != len(SCORE_NAMES):
        raise ValueError(f"logits: last dim must be {len(SCORE_NAMES)} actions, got shape {probs.shape}")
    return {name: np.ascontiguousarray(probs[..., i], dtype=np.float32) for i, name in enumerate(SCORE_NAMES)}


def weighted_score(probs: np.ndarray, params: ScoringParams = ScoringParams(),
                   vqv_eligible: np.ndarray | None = None) -> np.ndarray:
    """Home-mixer weighted score with offset, [B, C] float32 (computed in float64).

    vqv_eligible [B, C] bool (videos longer than the minimum duration); None = every candidate.
    """
    w = np.array([params.weights[a] for a in ACTIONS], dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    terms = p * w
    if vqv_eligible is not None:
        vqv = ACTIONS.index(VQV_ACTION)
        terms[..., vqv] *= np.asarray(vqv_eligible, dtype=np.float64)
    combined = terms.sum(-1)
    negative_sum = -sum(params.weights[a] for a in NEGATIVE_ACTIONS)
    positive_sum = sum(params.weights[a] for a in ACTIONS
                       if a not in NEGATIVE_ACTIONS and a not in CONTINUOUS_ACTIONS)
    total_sum = positive_sum + negative_sum
    off = params.negative_scores_offset
    if total_sum == 0:
        out = np.maximum(combined, 0.0)
    else:
        out = np.where(combined < 0, (combined + negative_sum) / total_sum * off, combined + off)
    return out.astype(np.float32)


def author_diversity(scores: np.ndarray, author_keys: np.ndarray, valid: np.ndarray,
                     decay: float = 0.5, floor: float = 0.25) -> np.ndarray:
    """Multiply the k-th post (k from 0, in score order) of each author by (1-floor)*decay**k + floor.

    Only valid candidates count; an author key of 0 (unknown author) is never penalised.
    """
    scores = np.asarray(scores, dtype=np.float32)
    out = scores.copy()
    for b in range(scores.shape[0]):
        seen: dict[int, int] = {}
        for c in _order(scores[b], valid[b]):
            key = int(author_keys[b, c])
            if key == 0:
                continue
            k = seen.get(key, 0)
            seen[key] = k + 1
            out[b, c] = scores[b, c] * ((1.0 - floor) * decay ** k + floor)
    return out


def _order(row_scores: np.ndarray, row_valid: np.ndarray) -> np.ndarray:
    """Indices of the valid entries, best score first, ties by index."""
    idx = np.flatnonzero(row_valid)
    return idx[np.argsort(-row_scores[idx], kind="stable")]


def ranking(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """[B, C] int32: candidate indices best first, padded/invalid candidates left out, -1 at the tail."""
    out = np.full(scores.shape, -1, dtype=np.int32)
    for b in range(scores.shape[0]):
        order = _order(scores[b], valid[b])
        out[b, : len(order)] = order
    return out


def score_logits(logits: np.ndarray, candidate_post_hashes: np.ndarray,
                 candidate_author_hashes: np.ndarray | None = None,
                 params: ScoringParams = ScoringParams(), in_network: np.ndarray | None = None,
                 vqv_eligible: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Everything the postprocess model returns, from logits [B, C, A] and candidate hashes [B, C, H].

    Validity is the first post hash != 0 (as in the model). Padded candidates get weighted and final
    score 0 and never appear in the ranking. in_network [B, C] bool: None = all in network.
    """
    logits = np.asarray(logits)
    post = np.asarray(candidate_post_hashes)
    valid = post[..., 0] != 0 if post.ndim == 3 else post != 0
    probs = probabilities(logits)
    out = named_scores(probs)
    weighted = np.where(valid, weighted_score(probs, params, vqv_eligible), 0.0).astype(np.float32)
    final = weighted
    if candidate_author_hashes is not None:
        authors = np.asarray(candidate_author_hashes)
        authors = authors[..., 0] if authors.ndim == 3 else authors
        final = author_diversity(weighted, authors, valid, params.author_diversity_decay,
                                 params.author_diversity_floor)
    if in_network is not None:
        final = np.where(np.asarray(in_network, dtype=bool), final, final * params.oon_factor)
    out["weighted_score"] = weighted
    out["final_score"] = final.astype(np.float32)
    out["ranking"] = ranking(final, valid)
    return out


def describe_input_error(mask: int, ranges: dict[str, str] | None = None) -> str:
    """Turn a ranker `input_error` bitmask into a sentence naming the offending field(s)."""
    names = [name for i, name in enumerate(INPUT_FIELDS) if int(mask) >> i & 1]
    if not names:
        return ""
    ranges = ranges or {}
    parts = [f"{n} holds a value outside {ranges[n]}" if n in ranges else f"{n} holds an out-of-range value"
             for n in names]
    return "; ".join(parts)


def valid_ranges(user_vocab: int, post_vocab: int, author_vocab: int, num_surfaces: int = 16) -> dict[str, str]:
    """Human-readable valid range of every input field, for error messages."""
    return {
        "user_hashes": f"[0, {user_vocab})",
        "history_post_hashes": f"[0, {post_vocab})",
        "history_author_hashes": f"[0, {author_vocab})",
        "history_actions": "{0, 1}",
        "history_product_surface": f"[0, {num_surfaces})",
        "candidate_post_hashes": f"[0, {post_vocab})",
        "candidate_author_hashes": f"[0, {author_vocab})",
        "candidate_product_surface": f"[0, {num_surfaces})",
    }
