"""phoenix_runtime: hashing raw ids as upstream does, THE request check (names the input or the limit; the same
value rules on numpy arrays and torch tensors), the limits, exact top-k, the manifest's one way to find artifacts."""
import json

import numpy as np
import pytest
from conftest import MAY_ARTIFACTS

from phoenix_runtime.hashing import EntityHash, hash_ids
from phoenix_runtime.manifest import FORMAT, ManifestError, find_artifact, read_manifest
from phoenix_runtime.request import Limits, RequestError, check_request, out_of_range, value_problem
from phoenix_runtime.topk import MASKED_SCORE, Int8Scan, PrunedSearch, exact_top_k


def reference_hash(raw_id: int, scale: int, bias: int, modulus: int, vocab: int) -> int:
    """run_pipeline.py's hash with Python integers: int64 reinterpretation, two's-complement wrap of
    id * scale + bias, floor modulo, + 1; id 0 -> 0."""
    if raw_id == 0:
        return 0
    x = raw_id - (1 << 64) if raw_id >= 1 << 63 else raw_id
    y = (x * scale + bias) % (1 << 64)
    y = y - (1 << 64) if y >= 1 << 63 else y
    return (y % modulus) % (vocab - 1) + 1


def test_hash_ids_matches_upstreams_integer_arithmetic():
    rng = np.random.default_rng(0)
    ids = [0, 1, 2, 702688722969334, 667167312399263425, (1 << 63) + 12345, (1 << 64) - 1,
           *rng.integers(1, 1 << 62, 50).tolist()]
    params = EntityHash((364225209, 1251343995), (473867648, 430945270), 2305843009213693951, 5000)
    got = hash_ids(np.array(ids, dtype=np.uint64), params)
    want = [[reference_hash(i, s, b, params.modulus, params.vocab) for s, b in zip(params.scales, params.biases)]
            for i in ids]
    assert got.tolist() == want
    assert got.dtype == np.int64 and (got[1:] >= 1).all() and (got < params.vocab).all()
    assert (got[0] == 0).all()
    wraps = [i for i in ids if i and (i * params.scales[0] + params.biases[0]) >= 1 << 63]
    assert wraps, "the test must include ids whose product wraps around int64"


def test_release_config_hash_params_hash_the_example_sequence():
    cfg = json.loads((MAY_ARTIFACTS / "ranker" / "config.json").read_text())
    hp = cfg["hash_params"]
    user = EntityHash(hp["user_hash_scales"], hp["user_biases"], hp["user_modulus"], cfg["user_vocab_size"])
    seq = json.loads((MAY_ARTIFACTS / "example_sequence.json").read_text())
    h = hash_ids(np.array([seq["user_id"]], dtype=np.uint64), user)[0]
    assert h.tolist() == [reference_hash(seq["user_id"], s, b, user.modulus, user.vocab)
                          for s, b in zip(user.scales, user.biases)]


SPECS = [{"name": "user_hashes", "dtype": "int64", "shape": ["B", 2], "check": "hash", "high": 100, "entity": "user"},
         {"name": "history_actions", "dtype": "float32", "shape": ["B", 4, 3], "check": "multi_hot"},
         {"name": "candidate_post_hashes", "dtype": "int64", "shape": ["B", "C", 2], "check": "hash", "high": 50,
          "entity": "item"},
         {"name": "candidate_product_surface", "dtype": "int64", "shape": ["B", "C"], "check": "index", "high": 16},
         {"name": "candidate_impr_ts", "dtype": "int64", "shape": ["B", "C"], "check": "time"},
         {"name": "history_continuous_actions", "dtype": "float32", "shape": ["B", 4, 8], "check": "finite"}]
LIMITS = Limits(max_batch_size=4, max_candidates=10, history_len=4, max_request_bytes=1 << 20)


def request(b=2, c=3):
    return {"user_hashes": np.ones((b, 2), np.int64), "history_actions": np.zeros((b, 4, 3), np.float32),
            "candidate_post_hashes": np.ones((b, c, 2), np.int64), "candidate_product_surface": np.zeros((b, c), np.int64),
            "candidate_impr_ts": np.zeros((b, c), np.int64), "history_continuous_actions": np.zeros((b, 4, 8), np.float32)}


def test_a_valid_request_passes_and_reports_its_dims():
    assert check_request(SPECS, request(), LIMITS, "m") == {"B": 2, "C": 3}


@pytest.mark.parametrize("change,message", [
    (lambda r: r.pop("candidate_impr_ts"), "missing input 'candidate_impr_ts'"),
    (lambda r: r.update(user_hashes=r["user_hashes"].astype(np.int32)), "'user_hashes' has dtype int32"),
    (lambda r: r.update(candidate_product_surface=np.zeros((2, 5), np.int64)),
     "'candidate_post_hashes' and 'candidate_product_surface' disagree on C: 3 vs 5"),
    (lambda r: r.update(candidate_post_hashes=np.ones((2, 0, 2), np.int64)), "C = 0"),
    (lambda r: r.update(history_actions=np.zeros((2, 5, 3), np.float32)), "'history_actions' has shape"),
    (lambda r: r.update(user_hashes=np.full((2, 2), 100, np.int64)), "holds 100, outside \\[0, 100\\) \\(the user table\\)"),
    (lambda r: r.update(user_hashes=np.full((2, 2), 1 << 40, np.int64)), "outside \\[0, 100\\)"),
    (lambda r: r.update(candidate_product_surface=np.full((2, 3), 16, np.int64)), "outside \\[0, 16\\)"),
    (lambda r: r.update(history_actions=np.full((2, 4, 3), 0.5, np.float32)), "multi-hot 0/1"),
    (lambda r: r.update(candidate_impr_ts=np.full((2, 3), -1, np.int64)), "timestamps are seconds >= 0"),
    (lambda r: r.update(history_continuous_actions=np.full((2, 4, 8), np.nan, np.float32)), "NaN or infinite"),
])
def test_bad_requests_are_named(change, message):
    r = request()
    change(r)
    with pytest.raises(RequestError, match=message):
        check_request(SPECS, r, LIMITS, "m")


def test_limits_are_named():
    with pytest.raises(RequestError, match="11 candidates per user; the limit max_candidates is 10"):
        check_request(SPECS, request(c=11), LIMITS, "m")
    with pytest.raises(RequestError, match="5 users; the limit max_batch_size is 4"):
        check_request(SPECS, request(b=5), LIMITS, "m")
    small = Limits(4, 10, 4, max_request_bytes=500)
    with pytest.raises(RequestError, match="above the limit max_request_bytes = 500"):
        check_request(SPECS, request(), small, "m")
    with pytest.raises(RequestError, match="B = 0"):
        check_request(SPECS, request(b=0), LIMITS, "m")


def test_candidate_sizes_pad_up_and_end_at_the_limit():
    limits = Limits(4, 256, 4, candidate_sizes=(64, 16, 256))
    assert limits.candidate_sizes == (16, 64, 256)
    assert [limits.padded_candidates(c) for c in (1, 16, 17, 200, 256)] == [16, 16, 64, 256, 256]
    with pytest.raises(RequestError, match="257 candidates per user; the limit max_candidates is 256"):
        limits.padded_candidates(257)
    assert Limits(4, 100, 4).padded_candidates(37) == 37
    with pytest.raises(ValueError, match="end at max_candidates"):
        Limits(4, 256, 4, candidate_sizes=(64, 128))


def test_find_artifact_by_device_and_kind():
    manifest = {"artifacts": [
        {"model": "ranker_embeddings", "kind": "onnx", "path": "a.onnx"},
        {"model": "ranker_embeddings", "kind": "aoti", "device": "cpu", "path": "cpu.pt2"},
        {"model": "ranker_embeddings", "kind": "aoti", "device": "cuda", "path": "cuda.pt2"},
        {"model": "user_tower_embeddings", "kind": "aoti", "device": "cpu", "path": "u.pt2"}]}
    assert find_artifact(manifest, "ranker_embeddings", "aoti", "cuda:1")["path"] == "cuda.pt2"
    assert find_artifact(manifest, "ranker_embeddings", "onnx", "cuda")["path"] == "a.onnx"
    with pytest.raises(ManifestError, match=r"built for \['cpu'\], not 'cuda'"):
        find_artifact(manifest, "user_tower_embeddings", "aoti", "cuda")
    with pytest.raises(ManifestError, match="no 'tensorrt' artifact"):
        find_artifact(manifest, "ranker_embeddings", "tensorrt", "cuda")


def test_an_incomplete_manifest_is_refused(tmp_path):
    with pytest.raises(ManifestError, match="no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": FORMAT, "artifacts": []}))
    with pytest.raises(ManifestError, match="an incomplete build"):
        read_manifest(tmp_path)


# ------------------------------------------------------------------------------------------ value rules

@pytest.mark.parametrize("check, values, high, problem", [
    ("hash", [0, 5, 9], 10, None), ("hash", [3, 10], 10, "holds 10, outside [0, 10) (the user table)"),
    ("hash", [-1, 2], 10, "holds -1, outside [0, 10)"), ("index", [0, 15], 16, None),
    ("multi_hot", [0.0, 1.0], None, None), ("multi_hot", [0.0, 0.5], None, "must be multi-hot 0/1, holds 0.5"),
    ("finite", [1.0, float("inf")], None, "NaN or infinite"), ("finite", [float("nan")], None, "NaN or infinite"),
    ("time", [0, 1_750_000_000], None, None), ("time", [-3], None, "holds -3: timestamps are seconds >= 0"),
])
def test_one_value_rule_for_numpy_arrays_and_torch_tensors(check, values, high, problem):
    """The served check (numpy) and the torch model's check (tensors) are one function with one wording; the
    element-wise mask the exported graphs use is the same rule."""
    import torch

    dtype = np.float32 if check in ("multi_hot", "finite") else np.int64
    a = np.array(values, dtype=dtype)
    for v in (a, torch.from_numpy(a)):
        got = value_problem(check, v, high, "user")
        assert (got is None) if problem is None else (problem in got), (type(v), got)
    assert np.asarray(out_of_range(check, torch.from_numpy(a), high)).tolist() == out_of_range(check, a, high).tolist()


# ------------------------------------------------------------------------------------------ top-k

def test_exact_top_k_is_the_brute_force_order_with_ties_to_the_lower_row():
    rng = np.random.default_rng(3)
    corpus = rng.standard_normal((500, 16)).astype(np.float32)
    corpus[100:110] = corpus[7]                       # eleven equal rows: ties
    users = np.stack([corpus[7], rng.standard_normal(16).astype(np.float32)])
    idx, scores = exact_top_k(users, corpus, 20)
    brute = (users.astype(np.float64) @ corpus.astype(np.float64).T).astype(np.float32)   # the definition
    for b in range(2):
        want = sorted(range(500), key=lambda i: (-brute[b, i], i))[:20]
        assert idx[b].tolist() == want
        np.testing.assert_array_equal(scores[b], brute[b, want])
    assert idx[0, :11].tolist() == [7, *range(100, 110)]


def test_exact_top_k_masks_rows_per_user_and_keeps_the_lowest_masked_rows_last():
    rng = np.random.default_rng(4)
    corpus = rng.standard_normal((50, 8)).astype(np.float32)
    users = rng.standard_normal((2, 8)).astype(np.float32)
    mask = np.zeros((2, 50), bool)
    mask[0, [3, 9, 40]] = True
    mask[1, :] = True
    idx, scores = exact_top_k(users, corpus, 5, mask)
    assert set(idx[0, :3].tolist()) == {3, 9, 40} and idx[0, 3:].tolist() == [0, 1]   # upstream: -1e12, lowest rows
    assert (scores[0, 3:] == np.float32(MASKED_SCORE)).all()
    assert idx[1].tolist() == np.argsort(-(users[1] @ corpus.T), kind="stable")[:5].tolist()
    with pytest.raises(ValueError, match="top_k 51 outside \\[1, 50\\]"):
        exact_top_k(users, corpus, 51)
    with pytest.raises(ValueError, match="corpus_mask"):
        exact_top_k(users, corpus, 5, mask.astype(np.int8))


def corpora():
    """Unit-norm corpora as served: unstructured, and clustered by author (the May candidate tower averages a
    post's and its author's vectors), with exact duplicates (ties)."""
    rng = np.random.default_rng(7)
    plain = rng.standard_normal((6000, 64)).astype(np.float32)
    authors = rng.standard_normal((300, 128)).astype(np.float32)
    clustered = (authors[rng.integers(0, 300, 20000)] + 0.3 * rng.standard_normal((20000, 128))).astype(np.float32)
    for x in (plain, clustered):
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        x[100:120] = x[5]
    return plain, clustered


@pytest.mark.parametrize("which", [0, 1])
def test_the_pruned_search_returns_exactly_the_exact_top_k(which, tmp_path):
    """PrunedSearch (the served exact search) over the int8 scan the build writes, and over the float32 scan,
    gives exact_top_k's rows and scores, bit for bit: any K, ties, users that are corpus rows, a user of norm 3,
    masks shared and per user, a mask leaving fewer than K rows; and it scores only a small part of the corpus."""
    from export.corpus import write_corpus_scan

    corpus = corpora()[which]
    n, d = corpus.shape
    art = write_corpus_scan(corpus, tmp_path / "scan.onnx", tmp_path)
    searches = [PrunedSearch(corpus, Int8Scan.open(tmp_path / "scan.onnx", art.info)), PrunedSearch(corpus)]
    rng = np.random.default_rng(8)
    users = np.concatenate([corpus[[5, 7]], rng.standard_normal((5, d)).astype(np.float32)])
    users[2:] /= np.linalg.norm(users[2:], axis=1, keepdims=True)
    users[3] *= 3.0
    masks = [None, rng.random(n) < 0.3, np.stack([rng.random(n) < 0.5] * 6 + [rng.random(n) < 0.002])]
    for k in (1, 10, 200):
        for mask in masks:
            want = exact_top_k(users, corpus, k, mask)
            for search in searches:
                got = search(users, k, mask)
                np.testing.assert_array_equal(got[0], want[0], err_msg=f"{type(search.scan).__name__} k={k}")
                np.testing.assert_array_equal(got[1], want[1])
    searches[0](users[2:3], 200)
    assert searches[0].last_candidates < n / 4, "the bound rules out most rows"
