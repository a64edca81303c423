"""Home-mixer's scoring of the ranker's output: the score names, their sources, the weights, and the math.

What the build decides (recorded in the manifest's phoenix_postprocess record): which column of a model feeds
which PhoenixScores field (`score_sources`) and the weights and scalars (`scoring_params`, the published defaults
with `--weight` overrides). What the server computes from it (`score`, over numpy arrays).
Every rule below is home-mixer's, from the x-algorithm repository (January release aaa167b3,
`home-mixer/`; the weight sums from the August release 28e414f, `home-mixer/scorers/ranking_scorer.rs`):

Named scores (`scorers/phoenix_scorer.rs`, `extract_phoenix_scores`; `candidate_pipeline/candidate.rs`,
`PhoenixScores`)
    A model's logit columns are named by its ordered action list: the January names (`favorite`, `repost`,
    ..., `dwell_time`) or proto `ActionName` names in lower case (`server_tweet_fav`, ...). Each of the 19
    PhoenixScores fields (PHOENIX_SCORES) reads the first column whose name is its January name or
    the ActionName that `extract_phoenix_scores` reads (score_sources); its value is that column's
    probability, an independent sigmoid of the logit. `dwell_time` reads `continuous_preds[..., 1]`
    (ContinuousActionName DWELL_TIME = 1; the model's sigmoid output, dwell time over a 30 s scale) when
    the model has a continuous head, else the January column `dwell_time` (its sigmoid). A field with no
    source is NaN (upstream: `None`). Columns that no field reads are served under their own name; a
    `dwell_time` column of a model that also has a continuous head is superseded and not served.

Weighted score (`scorers/weighted_scorer.rs`)
    combined = sum over fields of (value, or 0 when NaN) * weight                   (`apply`, :40-42)
    the vqv weight counts only when video_duration_ms > min_video_duration_ms, 0 = unknown (:72-81)
    offset (:83-91), with positive_sum = the positive weights except dwell_time, negative_sum =
    -(not_interested + block_author + mute_author + report), total_sum = positive_sum + negative_sum
    (ranking_scorer.rs:105-128):
        max(combined, 0)                                                  if total_sum == 0
        (combined + negative_sum) / total_sum * negative_scores_offset    if combined < 0
        combined + negative_scores_offset                                 otherwise
    `normalize_score` (util/score_normalizer.rs) is not public; it is treated as the identity.

Author diversity (`scorers/author_diversity_scorer.rs`)
    Candidates in weighted-score order, best first, stable (ties keep the candidate order); the k-th
    candidate (k from 0) of an author is multiplied by (1 - floor) * decay**k + floor. The author key is
    `candidate_author_ids` (every value a key, 0 included, as upstream's u64 author_id). Without ids
    (not upstream: the ranker sees only hashes), the first author hash is the key and hash 0 means
    "unknown author": never penalised and not counted. With neither, nothing is penalised.

Out of network (`scorers/oon_scorer.rs`)
    in_network False multiplies by oon_factor; True, or the input absent (unknown), leaves the score.

final_score = weighted -> author diversity -> out of network (home-mixer's scorer order). `ranking`:
valid candidates by final score, best first, ties by candidate index; -1 pads the tail. Padded
candidates (`valid` False) get weighted and final score 0, are left out of author diversity counting
and of the ranking; their named scores are passed through. The math is float64 throughout (the order
decisions too); outputs are float32 [B, C] (`ranking` int32).

Standard library and numpy only: part of phoenix_runtime, which the build copies whole into the repository.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

# ------------------------------------------------------------------------------------------ served scores

# home-mixer's PhoenixScores, in the struct's order (candidate_pipeline/candidate.rs:30-51), and the column each
# field reads (scorers/phoenix_scorer.rs:129-151, extract_phoenix_scores): the January action name, or the proto
# ActionName (lower case) of May-style models. dwell_time reads ContinuousActionName DWELL_TIME (1).
PHOENIX_SCORES = {
    "favorite_score": ("favorite", "server_tweet_fav"),
    "reply_score": ("reply", "server_tweet_reply"),
    "retweet_score": ("repost", "server_tweet_retweet"),
    "photo_expand_score": ("photo_expand", "client_tweet_photo_expand"),
    "click_score": ("click", "client_tweet_click"),
    "profile_click_score": ("profile_click", "client_tweet_click_profile"),
    "vqv_score": ("vqv", "client_tweet_video_quality_view"),
    "share_score": ("share", "client_tweet_share"),
    "share_via_dm_score": ("share_via_dm", "client_tweet_click_send_via_direct_message"),
    "share_via_copy_link_score": ("share_via_copy_link", "client_tweet_share_via_copy_link"),
    "dwell_score": ("dwell", "client_tweet_recap_dwelled"),
    "quote_score": ("quote", "server_tweet_quote"),
    "quoted_click_score": ("quoted_click", "client_quoted_tweet_click"),
    "follow_author_score": ("follow_author", "client_tweet_follow_author"),
    "not_interested_score": ("not_interested", "client_tweet_not_interested_in"),
    "block_author_score": ("block_author", "client_tweet_block_author"),
    "mute_author_score": ("mute_author", "client_tweet_mute_author"),
    "report_score": ("report", "client_tweet_report"),
    "dwell_time": ("dwell_time", None),
}
DWELL_TIME = "dwell_time"
DWELL_TIME_CONTINUOUS = 1      # ContinuousActionName::DwellTime
RESULT_NAMES = ("weighted_score", "final_score", "ranking", "probs")
WEIGHT_NAMES = tuple(n.removesuffix("_score") for n in PHOENIX_SCORES)   # `weight.<name>` scoring parameters
# Published defaults (the August release's home-mixer; the docs' table in README "Served scores").
DEFAULT_WEIGHTS = {
    "favorite": 0.5, "reply": 5.0, "retweet": 1.0, "photo_expand": 0.05, "click": 0.4, "profile_click": 0.0,
    "vqv": 0.05, "share": 2.0, "share_via_dm": 5.0, "share_via_copy_link": 20.0, "dwell": 0.0, "quote": 5.0,
    "quoted_click": 0.05, "follow_author": 4.0, "not_interested": -43.2, "block_author": -31.2,
    "mute_author": -58.8, "report": -234.0, "dwell_time": 0.004,
}
NEGATIVE_WEIGHTS = ("not_interested", "block_author", "mute_author", "report")   # ranking_scorer.rs:127
CONTINUOUS_WEIGHTS = ("dwell_time",)        # a value, not a positive action: outside the weight sums
# The order weighted_scorer.rs:49-67 adds the terms in (dwell_time before follow_author): float sums depend on it.
WEIGHTED_ORDER = (*WEIGHT_NAMES[:13], "dwell_time", *WEIGHT_NAMES[13:18])
SCALAR_DEFAULTS = {"negative_scores_offset": 0.001, "author_diversity_decay": 0.5, "author_diversity_floor": 0.25,
                   "oon_factor": 0.75, "min_video_duration_ms": 10000}
SCALAR_PARAMS = tuple(SCALAR_DEFAULTS)


def score_sources(actions, num_continuous: int) -> dict:
    """{"fields": {PhoenixScores field: ["column", i] | ["continuous", j] | None (the model cannot produce
    it)}, "columns": {name: i} for every column no field reads (served under its own name), "num_actions"}. A
    field reads the first column named its January name or its ActionName; dwell_time reads continuous_preds[..., 1]
    when the model has a continuous head (a `dwell_time` column is then superseded and not served)."""
    actions = list(actions)
    dupes = sorted({a for a in actions if actions.count(a) > 1})
    clash = [a for a in actions if a != DWELL_TIME and a in (*PHOENIX_SCORES, *RESULT_NAMES)]
    if dupes or clash:
        raise ValueError(f"actions: duplicate column names {dupes} / names that clash with served outputs {clash}")
    fields: dict[str, list | None] = {}
    for name, (january, action_name) in PHOENIX_SCORES.items():
        if name == DWELL_TIME and num_continuous > DWELL_TIME_CONTINUOUS:
            fields[name] = ["continuous", DWELL_TIME_CONTINUOUS]
            continue
        col = next((i for i, a in enumerate(actions) if a in (january, action_name)), None)
        fields[name] = None if col is None else ["column", col]
    read = {src[1] for src in fields.values() if src and src[0] == "column"}
    columns = {a: i for i, a in enumerate(actions) if i not in read and a != DWELL_TIME}
    return {"fields": fields, "columns": columns, "num_actions": len(actions)}


def served_score_names(sources: dict) -> list[str]:
    """What a postprocessor serves: the 19 fields, the unread columns, weighted/final score, ranking, probs."""
    return [*sources["fields"], *sources["columns"], *RESULT_NAMES]


def scoring_params(overrides: dict) -> dict:
    """The complete scoring parameters (defaults + `weight.<name>` / scalar overrides given as strings), as
    the manifest records them; an unknown name or a value that is not a finite number raises ValueError
    naming the key."""
    weights, scalars = dict(DEFAULT_WEIGHTS), dict(SCALAR_DEFAULTS)
    for key, value in overrides.items():
        name = key.removeprefix("weight.")
        target = weights if key.startswith("weight.") else scalars
        if name not in target:
            raise ValueError(f"scoring parameter {key!r}: unknown; weights are {list(WEIGHT_NAMES)}, scalars "
                             f"{list(SCALAR_PARAMS)}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if not np.isfinite(number):
            raise ValueError(f"scoring parameter {key!r} must be a finite number, got {value!r}")
        target[name] = number
    if scalars["min_video_duration_ms"] != int(scalars["min_video_duration_ms"]):
        raise ValueError("scoring parameter 'min_video_duration_ms' must be a whole number of milliseconds")
    return {"weights": weights, "order": list(WEIGHTED_ORDER), "negative": list(NEGATIVE_WEIGHTS),
            "continuous": list(CONTINUOUS_WEIGHTS), **scalars}


# Public input names, as error messages use them.
LOGITS = "logits"
CONTINUOUS_PREDS = "continuous_preds"
AUTHOR_IDS = "candidate_author_ids"
AUTHOR_HASHES = "candidate_author_hashes"
VIDEO_DURATION = "candidate_video_duration_ms"
IN_NETWORK = "candidate_in_network"
VALID = "valid"


@dataclass(frozen=True)
class ScoringParams:
    """home-mixer's weights (one per PhoenixScores field, by short name), the order weighted_scorer.rs adds the
    terms in, which weights are negative / continuous, and the scalars of the scorers. Built from the
    manifest record (scoring_params)."""
    weights: dict
    order: tuple
    negative: tuple
    continuous: tuple
    negative_scores_offset: float
    author_diversity_decay: float
    author_diversity_floor: float
    oon_factor: float
    min_video_duration_ms: int

    @classmethod
    def from_dict(cls, d: dict) -> "ScoringParams":
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(d))
        if missing:
            raise ValueError(f"scoring parameters lack {missing}")
        values = {k: tuple(d[k]) if k in ("order", "negative", "continuous") else d[k] for k in names}
        values["weights"] = {w: float(v) for w, v in d["weights"].items()}
        values["min_video_duration_ms"] = int(d["min_video_duration_ms"])
        unknown = set(values["order"]) ^ set(values["weights"])
        if unknown:
            raise ValueError(f"scoring parameters: the weights and their order disagree on {sorted(unknown)}")
        return cls(**values)

    @property
    def positive_sum(self) -> float:
        """Sum of the positive actions' weights, the continuous ones excluded (ranking_scorer.rs:105-126)."""
        return sum(v for w, v in self.weights.items() if w not in self.negative and w not in self.continuous)

    @property
    def negative_sum(self) -> float:
        """-(sum of the negative actions' weights): positive for negative weights (ranking_scorer.rs:127)."""
        return -sum(self.weights[w] for w in self.negative)

    @property
    def total_sum(self) -> float:
        """WEIGHTS_SUM of weighted_scorer.rs: positive_sum + negative_sum (ranking_scorer.rs:128)."""
        return self.positive_sum + self.negative_sum


# ------------------------------------------------------------------------------------------ inputs

def sigmoid(x) -> np.ndarray:
    """Logistic function in float64, without overflow for any finite x."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(under="ignore"):           # exp(-1000) = 0 is the right answer
        e = np.exp(-np.abs(x))                  # in [0, 1]: never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _check_logits(logits, num_actions: int) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 3 or x.shape[-1] != num_actions:
        raise ValueError(f"{LOGITS}: shape {x.shape} is not [B, C, {num_actions}] ({num_actions} actions)")
    if not np.isfinite(x).all():
        raise ValueError(f"{LOGITS}: holds non-finite values (NaN or inf)")
    return x


def _check_continuous(preds, batch_shape: tuple[int, int]) -> np.ndarray | None:
    if preds is None:
        return None
    x = np.asarray(preds, dtype=np.float64)
    if x.ndim != 3 or x.shape[:2] != batch_shape:
        raise ValueError(f"{CONTINUOUS_PREDS}: shape {x.shape} is not [B, C, K] for the candidates {batch_shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{CONTINUOUS_PREDS}: holds non-finite values (NaN or inf)")
    return x


def _per_candidate(name: str, values, batch_shape: tuple[int, int]) -> np.ndarray | None:
    """An optional [B, C] input, or None; a shape that is not [B, C] raises ValueError naming it."""
    if values is None:
        return None
    x = np.asarray(values)
    if x.shape != batch_shape:
        raise ValueError(f"{name}: shape {x.shape} does not match the candidates {batch_shape}")
    return x


def _check_durations(values, batch_shape: tuple[int, int]) -> np.ndarray | None:
    x = _per_candidate(VIDEO_DURATION, values, batch_shape)
    if x is None:
        return None
    x = x.astype(np.float64)
    if not (x >= 0).all():
        raise ValueError(f"{VIDEO_DURATION}: must be >= 0; 0 = unknown")
    return x


# ------------------------------------------------------------------------------------------ math

def named_scores(probs: np.ndarray, continuous: np.ndarray | None, sources: dict) -> dict[str, np.ndarray]:
    """The PhoenixScores fields (NaN where the model has no source) and the unread columns, float64."""
    out = {}
    for name, src in sources["fields"].items():
        if src is None:
            out[name] = np.full(probs.shape[:2], np.nan)
        elif src[0] == "continuous":
            if continuous is None or continuous.shape[2] <= src[1]:
                raise ValueError(f"{CONTINUOUS_PREDS}: {name} reads its column {src[1]}, which the input lacks")
            out[name] = continuous[..., src[1]].copy()
        else:
            out[name] = probs[..., src[1]].copy()
    out.update({name: probs[..., i].copy() for name, i in sources["columns"].items()})
    return out


def vqv_eligible(video_duration_ms: np.ndarray | None, batch_shape, min_video_duration_ms: int) -> np.ndarray:
    """[B, C] bool: a known duration strictly above the minimum (weighted_scorer.rs:72-81; 0/None = unknown)."""
    if video_duration_ms is None:
        return np.zeros(batch_shape, dtype=bool)
    return (video_duration_ms > 0) & (video_duration_ms > min_video_duration_ms)


def combined_score(fields_: dict[str, np.ndarray], eligible: np.ndarray, params: ScoringParams) -> np.ndarray:
    """sum over fields of (value, 0 when NaN) * weight, in weighted_scorer.rs's order; the vqv weight only
    where eligible (:44-67). A field's short name is its name without `_score`. The values are finite or NaN
    (the inputs were checked), and the sum runs field by field in that order, as the Rust loop adds."""
    by_short = {name.removesuffix("_score"): values for name, values in fields_.items()}
    values = np.stack([by_short[short] for short in params.order])            # [F, B, C]
    values[np.isnan(values)] = 0.0                                              # a field the model lacks adds 0
    weights = np.array([params.weights[short] for short in params.order])
    terms = values * weights[:, None, None]
    if "vqv" in params.order:
        terms[params.order.index("vqv")] *= eligible
    total = np.zeros(eligible.shape, dtype=np.float64)
    for term in terms:
        total += term
    return total


def offset_score(combined: np.ndarray, params: ScoringParams) -> np.ndarray:
    """weighted_scorer.rs `offset_score` (:83-91), sums as ranking_scorer.rs:105-128."""
    total_sum = params.total_sum
    if total_sum == 0.0:
        return np.maximum(combined, 0.0)
    negative = (combined + params.negative_sum) / total_sum * params.negative_scores_offset
    return np.where(combined < 0.0, negative, combined + params.negative_scores_offset)


def diversity_multiplier(k: np.ndarray, decay: float, floor: float) -> np.ndarray:
    """(1 - floor) * decay**k + floor for the k-th post of an author (author_diversity_scorer.rs:29-31)."""
    return (1.0 - floor) * np.power(decay, np.asarray(k, dtype=np.float64)) + floor


def _best_first(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Indices where mask, by score descending, ties by index (a stable sort, as Rust's sort_by)."""
    idx = np.flatnonzero(mask)
    return idx[np.argsort(-scores[idx], kind="stable")]


def _occurrence(keys: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions hold the same key (0 for a key's first)."""
    n = len(keys)
    by_key = np.argsort(keys, kind="stable")
    sorted_keys = keys[by_key]
    starts = np.ones(n, dtype=bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0)) if n else np.zeros(0, dtype=int)
    out = np.empty(n, dtype=np.int64)
    out[by_key] = np.arange(n) - group_start
    return out


def author_keys_of(author_ids, author_hash_fallback, batch_shape) -> tuple[np.ndarray, np.ndarray]:
    """(keys [B, C], counted [B, C] bool): ids when given (every id counts, 0 included); else the first
    author hash, hash 0 (unknown author) not counted; with neither, nothing counts."""
    if author_ids is not None:
        return np.asarray(author_ids).astype(np.int64), np.ones(batch_shape, dtype=bool)
    if author_hash_fallback is not None:
        keys = np.asarray(author_hash_fallback).astype(np.int64)
        return keys, keys != 0
    return np.zeros(batch_shape, dtype=np.int64), np.zeros(batch_shape, dtype=bool)


def author_diversity(weighted: np.ndarray, keys: np.ndarray, counted: np.ndarray, valid: np.ndarray,
                     decay: float, floor: float) -> np.ndarray:
    """author_diversity_scorer.rs:42-65: in stable weighted-score order, the k-th candidate of an author
    is multiplied by diversity_multiplier(k). Only valid, counted candidates take part; others keep 1."""
    multiplier = np.ones(weighted.shape, dtype=np.float64)
    for b in range(weighted.shape[0]):
        order = _best_first(weighted[b], valid[b] & counted[b])
        multiplier[b, order] = diversity_multiplier(_occurrence(keys[b, order]), decay, floor)
    return weighted * multiplier


def out_of_network(scores: np.ndarray, in_network: np.ndarray | None, oon_factor: float) -> np.ndarray:
    """oon_scorer.rs:20-23: in_network False -> * oon_factor; True or unknown (None) unchanged."""
    if in_network is None:
        return scores
    return np.where(np.asarray(in_network).astype(bool), scores, scores * oon_factor)


def ranking(final: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """[B, C] int32: valid candidates best first (ties by index), -1 at the tail."""
    out = np.full(final.shape, -1, dtype=np.int32)
    for b in range(final.shape[0]):
        order = _best_first(final[b], valid[b])
        out[b, :len(order)] = order
    return out


def score(logits, sources: dict, valid, continuous_preds=None, author_keys=None, author_hash_fallback=None,
          video_duration_ms=None, in_network=None, params: ScoringParams | None = None) -> dict[str, np.ndarray]:
    """Every served name (served_score_names) for ranker output logits [B, C, A].

    sources: score_sources of the model (which column feeds which field); valid [B, C] bool
    (False = padded candidate); continuous_preds [B, C, K] or None (no continuous head); author_keys =
    candidate_author_ids [B, C]; author_hash_fallback: the first candidate author hash [B, C], used without
    ids; video_duration_ms [B, C] (0 = unknown); in_network [B, C] bool or None (unknown); params: the
    manifest's scoring parameters. Bad input raises ValueError naming it.
    """
    x = _check_logits(logits, sources["num_actions"])
    shape = x.shape[:2]
    continuous = _check_continuous(continuous_preds, shape)
    if valid is None:
        raise ValueError(f"{VALID}: required ([B, C] bool, False = padded candidate)")
    valid = _per_candidate(VALID, valid, shape).astype(bool)
    ids = _per_candidate(AUTHOR_IDS, author_keys, shape)
    hashes = _per_candidate(AUTHOR_HASHES, author_hash_fallback, shape)
    durations = _check_durations(video_duration_ms, shape)
    network = _per_candidate(IN_NETWORK, in_network, shape)

    probs = sigmoid(x)
    fields_ = named_scores(probs, continuous, sources)
    eligible = vqv_eligible(durations, shape, params.min_video_duration_ms)
    weighted = np.where(valid, offset_score(combined_score(fields_, eligible, params), params), 0.0)
    keys, counted = author_keys_of(ids, hashes, shape)
    diversified = author_diversity(weighted, keys, counted, valid, params.author_diversity_decay,
                                   params.author_diversity_floor)
    final = np.where(valid, out_of_network(diversified, network, params.oon_factor), 0.0)

    out = {name: values.astype(np.float32) for name, values in fields_.items()}
    out["weighted_score"] = weighted.astype(np.float32)
    out["final_score"] = final.astype(np.float32)
    out["ranking"] = ranking(final, valid)
    out["probs"] = probs.astype(np.float32)
    return out


class Scorer:
    """home-mixer's scoring as a served model does it, from its manifest record (phoenix_postprocess's)."""

    def __init__(self, record: dict):
        self.sources = record["sources"]
        self.params = ScoringParams.from_dict(record["params"])
        self.request_inputs = record["request_inputs"]     # home-mixer's optional per-candidate facts

    def __call__(self, outputs: dict, arrays: dict) -> dict[str, np.ndarray]:
        """Every served score from a ranker's `outputs` (logits, continuous_preds) and the request's `arrays`
        (candidate_post_hashes: hash 0 = padding; the optional author hashes, author ids, video durations and
        in-network flags). Bad values raise ValueError naming the input."""
        authors = arrays.get(AUTHOR_HASHES)
        return score(outputs[LOGITS], self.sources, arrays["candidate_post_hashes"][..., 0] != 0,
                     outputs.get(CONTINUOUS_PREDS), author_keys=arrays.get(AUTHOR_IDS),
                     author_hash_fallback=None if authors is None else authors[..., 0],
                     video_duration_ms=arrays.get(VIDEO_DURATION), in_network=arrays.get(IN_NETWORK),
                     params=self.params)
