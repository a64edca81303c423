"""phoenix_runtime/scoring.py: the math with its sources and parameters (the names and weights),
against hand-computed home-mixer numbers.

Rust references are x-algorithm's home-mixer at the January release (aaa167b3): scorers/weighted_scorer.rs,
scorers/author_diversity_scorer.rs, scorers/oon_scorer.rs, scorers/phoenix_scorer.rs; the weight sums from
the August release (28e414f) scorers/ranking_scorer.rs. Every expected number below is written out as
arithmetic on the published defaults, never computed by the module under test.
"""
from __future__ import annotations

import ast
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from phoenix_runtime import scoring

JANUARY = [
    "favorite", "reply", "repost", "photo_expand", "click", "profile_click", "vqv", "share", "share_via_dm",
    "share_via_copy_link", "dwell", "quote", "quoted_click", "follow_author", "not_interested", "block_author",
    "mute_author", "report", "dwell_time",
]
MAY = [
    "invalid_name", "server_tweet_fav", "server_tweet_unfav", "server_tweet_create", "server_tweet_reply",
    "server_tweet_quote", "server_tweet_retweet", "server_tweet_unreply", "server_tweet_unquote",
    "server_tweet_unretweet", "server_tweet_report", "client_tweet_recap_dwelled", "client_tweet_recap_not_dwelled",
    "client_tweet_video_quality_view", "client_tweet_photo_expand", "client_tweet_click_mention_screen_name",
    "client_tweet_report", "client_tweet_not_interested_in", "client_tweet_undo_not_interested_in",
]
FIELDS = [
    "favorite_score", "reply_score", "retweet_score", "photo_expand_score", "click_score", "profile_click_score",
    "vqv_score", "share_score", "share_via_dm_score", "share_via_copy_link_score", "dwell_score", "quote_score",
    "quoted_click_score", "follow_author_score", "not_interested_score", "block_author_score",
    "mute_author_score", "report_score", "dwell_time",
]

# Published August defaults, summed by hand (ranking_scorer.rs:105-128).
OFFSET = 0.001
POSITIVE_SUM = 0.5 + 5.0 + 1.0 + 0.05 + 0.4 + 0.0 + 0.05 + 2.0 + 5.0 + 20.0 + 0.0 + 5.0 + 0.05 + 4.0  # 43.05
NEGATIVE_SUM = 43.2 + 31.2 + 58.8 + 234.0                                                             # 367.2
TOTAL_SUM = POSITIVE_SUM + NEGATIVE_SUM                                                               # 410.25
# author_diversity_scorer.rs:29-31, (1 - 0.25) * 0.5**k + 0.25
K0, K1, K2 = 1.0, 0.75 * 0.5 + 0.25, 0.75 * 0.25 + 0.25  # 1, 0.625, 0.4375
OON = 0.75

NEVER = -80.0  # a logit whose sigmoid (1.8e-35) adds nothing measurable


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def logits_for(actions, rows) -> np.ndarray:
    """[1, C, A] logits: each row {action: probability}; unnamed actions never happen."""
    out = np.full((1, len(rows), len(actions)), NEVER)
    for c, row in enumerate(rows):
        for name, p in row.items():
            out[0, c, actions.index(name)] = logit(p)
    return out


def zero_weights(**overrides) -> dict:
    return {**{w: 0.0 for w in scoring.WEIGHT_NAMES}, **overrides}


def params(weights: dict | None = None, **scalars) -> scoring.ScoringParams:
    """The parameters a build records (defaults + overrides), as the postprocessor reads them."""
    overrides = {f"weight.{w}": str(v) for w, v in (weights or {}).items()}
    return scoring.ScoringParams.from_dict(scoring.scoring_params({**overrides, **scalars}))


def sources(actions, has_continuous: bool) -> dict:
    return scoring.score_sources(actions, 8 if has_continuous else 0)


def served_names(actions, has_continuous: bool) -> list:
    return scoring.served_score_names(sources(actions, has_continuous))


def score(logits, actions, valid, continuous_preds=None, **kw):
    return scoring.score(logits, sources(actions, continuous_preds is not None), valid, continuous_preds,
                         params=kw.pop("params", None) or params(), **kw)


@dataclass
class Case:
    id: str
    actions: list
    probs: list                        # one {action: probability} per candidate
    weighted: list
    final: list
    ranking: list
    valid: list | None = None
    dwell_time_continuous: list | None = None   # continuous_preds[..., 1] per candidate
    author_ids: list | None = None
    author_hashes: list | None = None
    durations: list | None = None
    in_network: list | None = None
    weights: dict | None = None
    expect: dict = field(default_factory=dict)  # other outputs: name -> values (nan = NaN)


CASES = [
    # weighted_scorer.rs:72-81 vqv eligibility (is_some_and(ms > MIN)), :55 the vqv term
    Case("vqv_eligible_15000ms", JANUARY, [{"favorite": 0.5, "vqv": 0.5}],
         weighted=[0.5 * 0.5 + 0.05 * 0.5 + OFFSET], final=[0.5 * 0.5 + 0.05 * 0.5 + OFFSET], ranking=[0],
         durations=[15000]),
    # weighted_scorer.rs:72-81 a short video gets vqv weight 0
    Case("vqv_ineligible_5000ms", JANUARY, [{"favorite": 0.5, "vqv": 0.5}],
         weighted=[0.5 * 0.5 + OFFSET], final=[0.5 * 0.5 + OFFSET], ranking=[0], durations=[5000]),
    # weighted_scorer.rs:75 strictly greater: exactly the minimum is not eligible
    Case("vqv_at_minimum_10000ms", JANUARY, [{"favorite": 0.5, "vqv": 0.5}],
         weighted=[0.5 * 0.5 + OFFSET], final=[0.5 * 0.5 + OFFSET], ranking=[0], durations=[10000]),
    # weighted_scorer.rs:73-75 video_duration_ms None (0 = unknown) is not eligible
    Case("vqv_unknown_duration_0", JANUARY, [{"favorite": 0.5, "vqv": 0.5}],
         weighted=[0.5 * 0.5 + OFFSET], final=[0.5 * 0.5 + OFFSET], ranking=[0], durations=[0]),
    # weighted_scorer.rs:73-75 no duration input at all: unknown, not eligible
    Case("vqv_duration_absent", JANUARY, [{"favorite": 0.5, "vqv": 0.5}],
         weighted=[0.5 * 0.5 + OFFSET], final=[0.5 * 0.5 + OFFSET], ranking=[0]),
    # oon_scorer.rs:20-23 Some(true) keeps the score
    Case("in_network_true", JANUARY, [{"favorite": 0.5}],
         weighted=[0.25 + OFFSET], final=[0.25 + OFFSET], ranking=[0], in_network=[True]),
    # oon_scorer.rs:21 Some(false) multiplies by OON_WEIGHT_FACTOR
    Case("in_network_false", JANUARY, [{"favorite": 0.5}],
         weighted=[0.25 + OFFSET], final=[(0.25 + OFFSET) * OON], ranking=[0], in_network=[False]),
    # oon_scorer.rs:22 None (unknown) keeps the score
    Case("in_network_absent", JANUARY, [{"favorite": 0.5}],
         weighted=[0.25 + OFFSET], final=[0.25 + OFFSET], ranking=[0]),
    # author_diversity_scorer.rs:45-58 weighted order 1, 2, 0 -> k = 2, 0, 1; multipliers 1, 0.625, 0.4375
    Case("three_posts_one_author", JANUARY, [{"favorite": 0.4}, {"favorite": 0.8}, {"favorite": 0.6}],
         weighted=[0.2 + OFFSET, 0.4 + OFFSET, 0.3 + OFFSET],
         final=[(0.2 + OFFSET) * K2, (0.4 + OFFSET) * K0, (0.3 + OFFSET) * K1],
         ranking=[1, 2, 0], author_ids=[9, 9, 9]),
    # author_diversity_scorer.rs:46-50 sort_by is stable: on a tie the earlier candidate (1) is k=0
    Case("tie_stable_order", JANUARY, [{"favorite": 0.2}, {"favorite": 0.5}, {"favorite": 0.5}],
         weighted=[0.1 + OFFSET, 0.25 + OFFSET, 0.25 + OFFSET],
         final=[0.1 + OFFSET, 0.25 + OFFSET, (0.25 + OFFSET) * K1],
         ranking=[1, 2, 0], author_ids=[7, 5, 5]),
    # author_diversity_scorer.rs:53 author_id is a u64 key: id 0 is an author like any other
    Case("author_id_0_is_a_key", JANUARY, [{"favorite": 0.8}, {"favorite": 0.6}],
         weighted=[0.4 + OFFSET, 0.3 + OFFSET], final=[0.4 + OFFSET, (0.3 + OFFSET) * K1],
         ranking=[0, 1], author_ids=[0, 0]),
    # author_diversity_scorer.rs:45-58 then oon_scorer.rs:20-23: diversity orders by WEIGHTED score, so
    # the out-of-network candidate 0 is still k=0 (OON first would have made candidate 1 k=0)
    Case("diversity_then_oon", JANUARY, [{"favorite": 0.8}, {"favorite": 0.6}],
         weighted=[0.4 + OFFSET, 0.3 + OFFSET], final=[(0.4 + OFFSET) * K0 * OON, (0.3 + OFFSET) * K1],
         ranking=[0, 1], author_ids=[4, 4], in_network=[False, True]),
    # weighted_scorer.rs:86-87 combined < 0: (combined + NEGATIVE_WEIGHTS_SUM) / WEIGHTS_SUM * OFFSET
    Case("negative_combined", JANUARY,
         [{"report": 0.5}, {"favorite": 0.5, "not_interested": 0.5}],
         weighted=[(-234.0 * 0.5 + NEGATIVE_SUM) / TOTAL_SUM * OFFSET,
                   (0.5 * 0.5 - 43.2 * 0.5 + NEGATIVE_SUM) / TOTAL_SUM * OFFSET],
         final=[(-117.0 + 367.2) / 410.25 * 0.001, (0.25 - 21.6 + 367.2) / 410.25 * 0.001],
         ranking=[1, 0]),
    # weighted_scorer.rs:88-89 combined >= 0: combined + OFFSET (negative terms included)
    Case("positive_combined", JANUARY, [{"favorite": 0.5, "reply": 0.5, "not_interested": 0.01}],
         weighted=[0.5 * 0.5 + 5.0 * 0.5 - 43.2 * 0.01 + OFFSET], final=[2.318 + 0.001], ranking=[0]),
    # weighted_scorer.rs:84-85 WEIGHTS_SUM == 0 -> max(combined, 0), no offset; ranking_scorer.rs:105-126
    # leaves dwell_time (continuous) out of the sums, so its weight alone still scores
    Case("total_weights_zero", JANUARY, [{"dwell_time": 0.5}, {"favorite": 0.9}],
         weighted=[0.004 * 0.5, 0.0], final=[0.002, 0.0], ranking=[0, 1], weights=zero_weights(dwell_time=0.004)),
    # weighted_scorer.rs:84-85 a zero total with a negative combined score clamps to 0
    # (favorite -1 in positive_sum, report -1 -> negative_sum +1: total 0)
    Case("total_weights_zero_negative_combined", JANUARY, [{"favorite": 0.5, "report": 0.5}],
         weighted=[0.0], final=[0.0], ranking=[0], weights=zero_weights(favorite=-1.0, report=-1.0)),
    # phoenix_scorer.rs:129-151, 168-171 a May model has no column for click etc.: None -> NaN, and
    # weighted_scorer.rs:40-42 unwrap_or(0.0) adds nothing; phoenix_scorer.rs:149 dwell_time continuous
    Case("may_model_missing_actions", MAY,
         [{"server_tweet_fav": 0.5, "server_tweet_reply": 0.5, "client_tweet_recap_dwelled": 0.5,
           "server_tweet_unfav": 0.9, "client_tweet_report": 0.01}],
         weighted=[0.5 * 0.5 + 5.0 * 0.5 + 0.0 * 0.5 + 0.004 * 0.5 - 234.0 * 0.01 + OFFSET],
         final=[0.412 + 0.001], ranking=[0], dwell_time_continuous=[0.5],
         expect={"click_score": [np.nan], "profile_click_score": [np.nan], "share_score": [np.nan],
                 "share_via_dm_score": [np.nan], "share_via_copy_link_score": [np.nan],
                 "quoted_click_score": [np.nan], "follow_author_score": [np.nan],
                 "block_author_score": [np.nan], "mute_author_score": [np.nan],
                 "favorite_score": [0.5], "report_score": [0.01], "dwell_time": [0.5],
                 "server_tweet_unfav": [0.9]}),
    # phoenix_scorer.rs:149, 173-175 dwell_time = continuous_preds[..., DWELL_TIME = 1], as is
    Case("may_dwell_time_from_continuous", MAY, [{}],
         weighted=[0.004 * 0.75 + OFFSET], final=[0.003 + 0.001], ranking=[0], dwell_time_continuous=[0.75],
         expect={"dwell_time": [0.75]}),
    # phoenix_scorer.rs:173-175 no continuous head: dwell_time None -> NaN, adds 0
    Case("may_without_continuous_head", MAY, [{"server_tweet_fav": 0.5}],
         weighted=[0.25 + OFFSET], final=[0.25 + OFFSET], ranking=[0], expect={"dwell_time": [np.nan]}),
    # weighted_scorer.rs:62 the January model's dwell_time column (its sigmoid) times CONT_DWELL_TIME_WEIGHT
    Case("january_dwell_time_column", JANUARY, [{"dwell_time": 0.75}],
         weighted=[0.004 * 0.75 + OFFSET], final=[0.004], ranking=[0], expect={"dwell_time": [0.75]}),
    # author_diversity_scorer.rs:52-56 a padded candidate never takes an author's k=0 slot; it scores 0
    # and is left out of the ranking; its named scores pass through
    Case("padded_candidate", JANUARY, [{"favorite": 0.5}, {"favorite": 0.9}],
         weighted=[0.25 + OFFSET, 0.0], final=[0.25 + OFFSET, 0.0], ranking=[0, -1],
         valid=[True, False], author_ids=[3, 3], expect={"favorite_score": [0.5, 0.9]}),
    # author_diversity_scorer.rs:52-58 on the hash fallback (no ids): hash 0 = unknown author, never
    # penalised; hash 7 counts as an author (tie: candidate 2 is k=0)
    Case("author_hash_fallback", JANUARY,
         [{"favorite": 0.8}, {"favorite": 0.6}, {"favorite": 0.5}, {"favorite": 0.5}],
         weighted=[0.4 + OFFSET, 0.3 + OFFSET, 0.25 + OFFSET, 0.25 + OFFSET],
         final=[0.4 + OFFSET, 0.3 + OFFSET, 0.25 + OFFSET, (0.25 + OFFSET) * K1],
         ranking=[0, 1, 2, 3], author_hashes=[0, 0, 7, 7]),
]


def run_case(case: Case) -> dict:
    C = len(case.probs)
    continuous = None
    if case.dwell_time_continuous is not None:
        continuous = np.zeros((1, C, 8))
        continuous[0, :, 1] = case.dwell_time_continuous
    as_row = (lambda v, dtype: None if v is None else np.array([v], dtype=dtype))
    return score(
        logits_for(case.actions, case.probs), case.actions,
        np.array([case.valid or [True] * C]), continuous,
        author_keys=as_row(case.author_ids, np.int64), author_hash_fallback=as_row(case.author_hashes, np.int64),
        video_duration_ms=as_row(case.durations, np.int32), in_network=as_row(case.in_network, bool),
        params=params(case.weights))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hand_computed_case(case):
    out = run_case(case)
    np.testing.assert_allclose(out["weighted_score"][0], case.weighted, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(out["final_score"][0], case.final, rtol=1e-6, atol=1e-9)
    assert out["ranking"][0].tolist() == case.ranking
    for name, values in case.expect.items():
        np.testing.assert_allclose(out[name][0], values, rtol=1e-6, atol=1e-9, err_msg=name)
    assert set(out) == set(served_names(case.actions, case.dwell_time_continuous is not None))
    assert all(out[n].dtype == np.float32 and out[n].shape == (1, len(case.probs)) for n in out
               if n not in ("ranking", "probs"))
    assert out["ranking"].dtype == np.int32


def test_there_are_enough_hand_computed_cases():
    assert len(CASES) >= 12


def test_default_sums_are_home_mixers():
    p = params()
    assert p.positive_sum == pytest.approx(43.05)
    assert p.negative_sum == pytest.approx(367.2)
    assert p.total_sum == pytest.approx(410.25)


def test_rows_of_a_batch_are_scored_independently():
    one = logits_for(JANUARY, [{"favorite": 0.8}, {"favorite": 0.6}])
    out = score(np.concatenate([one, one]), JANUARY, np.ones((2, 2), bool),
                        author_keys=np.array([[1, 1], [1, 2]]))
    np.testing.assert_allclose(out["final_score"], [[0.401, 0.301 * 0.625], [0.401, 0.301]], rtol=1e-6)


# ------------------------------------------------------------------------------------------ sources

def test_field_sources_follow_extract_phoenix_scores():
    january = sources(JANUARY, has_continuous=False)["fields"]
    assert list(january) == FIELDS
    assert all(january[f] == ["column", i] for i, f in enumerate(FIELDS))
    may = sources(MAY, has_continuous=True)["fields"]
    assert may["favorite_score"] == ["column", 1]        # SERVER_TWEET_FAV
    assert may["retweet_score"] == ["column", 6]         # SERVER_TWEET_RETWEET
    assert may["dwell_score"] == ["column", 11]          # CLIENT_TWEET_RECAP_DWELLED
    assert may["report_score"] == ["column", 16]         # CLIENT_TWEET_REPORT, not SERVER_TWEET_REPORT
    assert may["dwell_time"] == ["continuous", 1]
    assert may["click_score"] is None
    with_click = sources([*MAY, "client_tweet_click"], has_continuous=True)["fields"]
    assert with_click["click_score"] == ["column", 19]


def test_served_names_january():
    assert served_names(JANUARY, has_continuous=False) == [*FIELDS, "weighted_score", "final_score", "ranking", "probs"]


def test_served_names_may():
    unmapped = ["invalid_name", "server_tweet_unfav", "server_tweet_create", "server_tweet_unreply",
                "server_tweet_unquote", "server_tweet_unretweet", "server_tweet_report",
                "client_tweet_recap_not_dwelled", "client_tweet_click_mention_screen_name",
                "client_tweet_undo_not_interested_in"]
    assert served_names(MAY, has_continuous=True) == [*FIELDS, *unmapped, "weighted_score", "final_score",
                                                      "ranking", "probs"]
    assert served_names(MAY, has_continuous=False) == served_names(MAY, has_continuous=True)


def test_custom_and_extra_columns_are_served_under_their_names():
    actions = [*MAY, "client_tweet_click", "my_head"]
    names = served_names(actions, has_continuous=True)
    assert "my_head" in names and "client_tweet_click" not in names
    out = score(logits_for(actions, [{"client_tweet_click": 0.5, "my_head": 0.25}]), actions,
                np.ones((1, 1), bool), np.full((1, 1, 8), 0.0))
    np.testing.assert_allclose(out["click_score"][0], [0.5])
    np.testing.assert_allclose(out["my_head"][0], [0.25])
    np.testing.assert_allclose(out["weighted_score"][0], [0.4 * 0.5 + 0.001], rtol=1e-6)


# ------------------------------------------------------------------------------------------ bad input

def _inputs(C=2):
    return logits_for(JANUARY, [{"favorite": 0.5}] * C), JANUARY, np.ones((1, C), bool)


def test_negative_duration_is_named():
    with pytest.raises(ValueError, match=r"candidate_video_duration_ms: must be >= 0; 0 = unknown"):
        score(*_inputs(), video_duration_ms=np.array([[15000, -1]]))


def test_author_ids_of_the_wrong_shape_are_named():
    message = r"candidate_author_ids: shape \(1, 3\) does not match the candidates \(1, 2\)"
    with pytest.raises(ValueError, match=message):
        score(*_inputs(), author_keys=np.array([[1, 2, 3]]))


def test_logits_with_the_wrong_number_of_actions_are_named():
    logits, actions, valid = _inputs()
    with pytest.raises(ValueError, match="logits"):
        score(logits[..., :18], actions, valid)


@pytest.mark.parametrize("name,kwargs", [
    ("candidate_in_network", {"in_network": np.ones((2, 2), bool)}),
    ("candidate_author_hashes", {"author_hash_fallback": np.ones((1,), np.int64)}),
    ("candidate_video_duration_ms", {"video_duration_ms": np.ones((1, 2, 1), np.int32)}),
    ("continuous_preds", {"continuous_preds": np.zeros((1, 2))}),
    ("continuous_preds", {"continuous_preds": np.zeros((1, 3, 8))}),
])
def test_other_bad_shapes_are_named(name, kwargs):
    with pytest.raises(ValueError, match=name):
        score(*_inputs(), **kwargs)


def test_non_finite_logits_are_named():
    logits, actions, valid = _inputs()
    logits[0, 1, 3] = np.nan
    with pytest.raises(ValueError, match="logits"):
        score(logits, actions, valid)


def test_large_logits_do_not_overflow():
    logits = np.full((1, 2, 19), 1000.0)
    logits[0, 1] = -1000.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            out = score(logits, JANUARY, np.ones((1, 2), bool))
    assert out["favorite_score"][0].tolist() == [1.0, 0.0]


# ------------------------------------------------------------------------------------------ parameters

def test_build_options_override_the_defaults_by_name():
    p = params({"report": -300}, oon_factor="0.5", min_video_duration_ms="8000")
    assert p.weights["report"] == -300.0 and p.oon_factor == 0.5 and p.min_video_duration_ms == 8000
    assert p.weights["favorite"] == 0.5
    recorded = scoring.scoring_params({"weight.report": "-300"})
    assert scoring.ScoringParams.from_dict(json.loads(json.dumps(recorded))) == params({"report": -300})


def test_defaults_are_the_published_ones():
    p = params()
    assert p.weights == {
        "favorite": 0.5, "reply": 5.0, "retweet": 1.0, "photo_expand": 0.05, "click": 0.4, "profile_click": 0.0,
        "vqv": 0.05, "share": 2.0, "share_via_dm": 5.0, "share_via_copy_link": 20.0, "dwell": 0.0, "quote": 5.0,
        "quoted_click": 0.05, "follow_author": 4.0, "not_interested": -43.2, "block_author": -31.2,
        "mute_author": -58.8, "report": -234.0, "dwell_time": 0.004}
    assert (p.negative_scores_offset, p.author_diversity_decay, p.author_diversity_floor, p.oon_factor,
            p.min_video_duration_ms) == (0.001, 0.5, 0.25, 0.75, 10000)


def test_unknown_weight_is_an_error():
    with pytest.raises(ValueError, match="weight.likes"):
        scoring.scoring_params({"weight.likes": "3"})


def test_non_number_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match="oon_factor"):
        scoring.scoring_params({"oon_factor": "high"})
    with pytest.raises(ValueError, match="weight.favorite"):
        scoring.scoring_params({"weight.favorite": "lots"})
    with pytest.raises(ValueError, match="min_video_duration_ms"):
        scoring.scoring_params({"min_video_duration_ms": "10.5"})


# ------------------------------------------------------------------------------------------ packaging

def test_module_imports_only_numpy_and_the_standard_library():
    tree = ast.parse(Path(scoring.__file__).read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree))
    assert roots <= {"__future__", "math", "dataclasses", "numpy"}, roots
