"""End to end against the REAL tritonserver (the one bundled in nvidia-pytriton, Python backend).

One demo build (cpu target, the session's `demo_repo`) and one server for the module, on free loopback
ports. The reference is the torch model the build was made from (export.models.load_models with the same
options: same seeded weights, same table file) followed by phoenix_runtime.scoring with the manifest's score
sources and parameters.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from functools import partial

import numpy as np
import pytest
import torch

from export.models import ModelSource, load_models, torch_tables
from phoenix_runtime import scoring
from phoenix_runtime.batching import stack_rows
from phoenix_runtime.manifest import read_manifest
from phoenix_runtime.request import Limits, resolve_shape
from phoenix_torch import HashedPhoenixModel, RecsysBatch
from phoenix_torch.parity import TOLERANCE
from serving.cli import demo_request
from serving.client import PhoenixClient, PhoenixInputError, PhoenixServerError
from serving.server import ServerError, TritonServer

PROB_ATOL = 2e-5      # probabilities from ONNX Runtime vs torch (fp32)


@pytest.fixture(scope="module")
def server(demo_repo):
    with TritonServer(demo_repo) as s:
        yield s


@pytest.fixture(scope="module")
def models(demo_tables):
    """The models demo_repo was built from (seeded weights, the tables file)."""
    return load_models(ModelSource(preset="demo", tables=str(demo_tables)))


@pytest.fixture(scope="module")
def manifest(demo_repo):
    return read_manifest(demo_repo)


def candidate_names(client) -> list[str]:
    return [s["name"] for s in client.inputs if s["shape"][1:2] == ["C"]] + \
        [s["name"] for s in client.config["postprocess_inputs"]]


def rows(client, requests) -> dict[str, np.ndarray]:
    return stack_rows([client.build_row(**r) for r in requests], candidate_names(client))


def reference(models, manifest, arrays: dict) -> dict:
    """Torch logits, then the home-mixer math: what every served answer must equal."""
    ranker = HashedPhoenixModel(models.ranker, torch_tables(models.ranker_tables)).eval()
    batch = RecsysBatch(**{s["name"]: torch.from_numpy(arrays[s["name"]]) for s in manifest["served"]["phoenix_ranker"]["inputs"]})
    with torch.no_grad():
        logits = ranker(batch).logits.numpy()
    post = manifest["served"]["phoenix_postprocess"]
    out = scoring.score(logits, post["sources"], arrays["candidate_post_hashes"][..., 0] != 0,
                        author_keys=arrays.get("candidate_author_ids"),
                        params=scoring.ScoringParams.from_dict(post["params"]))
    out["logits"] = logits
    return out


def assert_matches(got: dict, ref: dict, names, n=None):
    n = slice(None) if n is None else slice(0, n)
    for name in names:
        np.testing.assert_allclose(got[name][:, n], ref[name][:, n], atol=PROB_ATOL, err_msg=name)
    for name in ("weighted_score", "final_score"):
        np.testing.assert_allclose(got[name][:, n], ref[name][:, n], rtol=1e-3, atol=1e-7, err_msg=name)
    np.testing.assert_array_equal(got["ranking"], ref["ranking"], err_msg="ranking")


def users(client, count, seed=0, max_c=12):
    """`count` demo users with varying history length and candidate count."""
    return [demo_request(client.actions, seed + i, num_history=1 + (3 * i) % (client.history_len + 4),
                         num_candidates=1 + (5 * i + 2) % max_c) for i in range(count)]


# ------------------------------------------------------------------------------------------ parity

@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_end_to_end_matches_torch(server, models, manifest, protocol):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    with PhoenixClient(url, protocol=protocol) as c:
        assert c.limits.max_batch_size == 64   # read from the server
        reqs = users(c, 4, seed=10)
        results = c.score_many(reqs)
        arrays = rows(c, reqs)
    ref = reference(models, manifest, arrays)
    names = [n for n, src in manifest["served"]["phoenix_postprocess"]["sources"]["fields"].items() if src]
    for b, (req, res) in enumerate(zip(reqs, results)):
        n = len(req["candidates"])
        for name in names:
            np.testing.assert_allclose(res.scores[name], ref[name][b, :n], atol=PROB_ATOL, err_msg=name)
        np.testing.assert_allclose(res.weighted_score, ref["weighted_score"][b, :n], rtol=1e-3, atol=1e-7)
        np.testing.assert_allclose(res.final_score, ref["final_score"][b, :n], rtol=1e-3, atol=1e-7)
        assert res.ranking == [int(i) for i in ref["ranking"][b] if i >= 0]
        assert sorted(res.ranking) == list(range(n)), "every real candidate ranked once, padding never"


def test_outputs_are_the_phoenix_scores_and_not_empty(client, models, manifest):
    """The served names are PhoenixScores' (retweet_score, not repost_score) and the numpy-2 trap (a
    Python-backend model returning EMPTY outputs without an error) would show here."""
    arrays = rows(client, users(client, 3, seed=20))
    out = client.infer(arrays)
    b, c = arrays["candidate_post_hashes"].shape[:2]
    assert set(out) == set(scoring.served_score_names(manifest["served"]["phoenix_postprocess"]["sources"]))
    assert "retweet_score" in out and "repost_score" not in out and "dwell_time" in out
    for name, value in out.items():
        assert value.shape[:2] == (b, c) and np.isfinite(value).all(), name
    assert ((out["favorite_score"] > 0) & (out["favorite_score"] < 1)).all()
    np.testing.assert_allclose(out["probs"], 1 / (1 + np.exp(-reference(models, manifest, arrays)["logits"])),
                               atol=PROB_ATOL)


def test_each_composing_model_answers_on_its_own(demo_repo, client, models, manifest):
    arrays = rows(client, users(client, 2, seed=30))
    ref = reference(models, manifest, arrays)
    ranker_inputs = [s["name"] for s in manifest["served"]["phoenix_ranker"]["inputs"]]
    ranker = client.infer({k: arrays[k] for k in ranker_inputs}, model="phoenix_ranker")
    np.testing.assert_allclose(ranker["logits"], ref["logits"], atol=TOLERANCE["fp32"])
    assert ranker["input_error"].reshape(-1).tolist() == [0, 0]
    # the postprocess alone, fed the torch logits
    post = client.infer({"logits": ref["logits"].astype(np.float32), "input_error": np.zeros((2, 1), np.int32),
                         "candidate_post_hashes": arrays["candidate_post_hashes"],
                         "candidate_author_ids": arrays["candidate_author_ids"]}, model="phoenix_postprocess")
    assert_matches(post, ref, ["favorite_score", "reply_score"])
    # the towers and retrieval, against the torch retrieval model over the served corpus
    retrieval, tables = models.retrieval, torch_tables(models.retrieval_tables)
    user_fields = [s["name"] for s in manifest["served"]["phoenix_user_tower"]["inputs"]]
    batch = RecsysBatch(**{k: torch.from_numpy(arrays[k]) for k in user_fields})
    with torch.no_grad():
        user_ref = retrieval.user_representation(batch, tables.lookup(batch, retrieval.config.features)).numpy()
    user = client.infer({k: arrays[k] for k in user_fields}, model="phoenix_user_tower")["user_representation"]
    np.testing.assert_allclose(user, user_ref, atol=1e-5)
    corpus = np.load(demo_repo / "phoenix_retrieval" / "1" / "corpus.npy")
    got = client.infer({k: arrays[k] for k in user_fields}, model="phoenix_retrieval")
    expect = user_ref @ corpus.T
    for b in range(2):
        best = np.sort(expect[b])[::-1][:got["top_k_indices"].shape[1]]
        np.testing.assert_allclose(got["top_k_scores"][b], best, atol=1e-5)
        np.testing.assert_array_equal(got["top_k_post_ids"][b],
                                      np.load(demo_repo / "phoenix_retrieval/1/corpus_post_ids.npy")[got["top_k_indices"][b]])


def test_embeddings_in_model_gives_the_hashes_paths_scores(client, models, manifest):
    """Bring your own embeddings: rows looked up from the build's own tables, sent to phoenix_embeddings,
    give the scores of the hashes path within 1e-5; changing one candidate's embeddings moves only it."""
    reqs = users(client, 2, seed=50, max_c=6)
    arrays = rows(client, reqs)
    hashes_path = client.infer(arrays)
    specs = manifest["served"]["phoenix_ranker_embeddings"]["inputs"]
    batch = RecsysBatch(**{k: torch.from_numpy(v) for k, v in arrays.items()})
    emb = torch_tables(models.ranker_tables).lookup(batch, models.ranker.config.features)
    feed = {s["name"]: (emb.get(s["name"]).numpy() if emb.get(s["name"]) is not None else arrays[s["name"]])
            for s in specs}
    feed["candidate_author_ids"] = arrays["candidate_author_ids"]
    results = client.score_embeddings(feed)
    for b, res in enumerate(results):
        for name in ("favorite_score", "reply_score", "weighted_score", "final_score"):
            got = res.scores[name] if name in res.scores else getattr(res, name)
            np.testing.assert_allclose(got, hashes_path[name][b], atol=1e-5, rtol=0, err_msg=name)
    engine_feed = {s["name"]: feed[s["name"]] for s in specs}
    moved = {k: v.copy() for k, v in engine_feed.items()}
    moved["candidate_post_embeddings"][:, 2] += 0.5
    after = client.infer(moved, model="phoenix_ranker_embeddings")["logits"]
    before = client.infer(engine_feed, model="phoenix_ranker_embeddings")["logits"]
    others = [i for i in range(after.shape[1]) if i != 2]
    np.testing.assert_allclose(after[:, others], before[:, others], atol=1e-5)
    assert np.abs(after[:, 2] - before[:, 2]).max() > 1e-3


def test_embeddings_bad_input_is_named(client, manifest):
    specs = manifest["served"]["phoenix_ranker_embeddings"]["inputs"]
    rng = np.random.default_rng(0)
    feed = {s["name"]: (rng.standard_normal(resolve_shape(s["shape"], {"B": 1, "C": 3})).astype(np.float32)
                        if s["dtype"] == "float32" and s.get("check") == "finite" else
                        np.ones(resolve_shape(s["shape"], {"B": 1, "C": 3}), dtype=s["dtype"]))
            for s in specs}
    feed["history_actions"][:] = 0
    client.infer(feed, model="phoenix_ranker_embeddings")          # well formed: answered
    nan = {**feed, "candidate_post_embeddings": feed["candidate_post_embeddings"].copy()}
    nan["candidate_post_embeddings"][0, 1, 0, 0] = np.nan
    with pytest.raises(PhoenixServerError, match="candidate_post_embeddings' holds a NaN"):
        client.infer(nan, model="phoenix_embeddings")
    ragged = {**feed, "candidate_author_embeddings": feed["candidate_author_embeddings"][:, :2]}
    with pytest.raises(PhoenixServerError, match="disagree on C: 3 vs 2"):
        client.infer(ragged, model="phoenix_ranker_embeddings")
    wrong_d = {**feed, "user_embeddings": feed["user_embeddings"][..., :64]}
    with pytest.raises(PhoenixServerError, match="user_embeddings"):
        client.infer(wrong_d, model="phoenix_ranker_embeddings")


# ------------------------------------------------------------------------------------------ bad input

def test_client_rejects_bad_inputs_naming_them(client):
    good = demo_request(client.actions, 1)
    cases = [
        (dict(candidates=[]), "candidates: empty"),
        (dict(candidates=good["candidates"] * 200), "the limit max_candidates is 1024"),
        (dict(candidates=[(5, 6, 16)]), r"candidate_product_surface' holds 16, outside \[0, 16\)"),
        (dict(candidates=[(1.5, 6, 0)]), r"candidates\[0\]\.post_id: 1.5 is not an id"),
        (dict(candidates=[(0, 6, 0)]), r"candidates\[0\]\.post_id: 0 is the padding id"),
        (dict(candidates=[(5, 6)]), r"candidates\[0\]: expected \(post_id, author_id, product_surface\)"),
        (dict(history=[(5, 6, ["likes"], 0)]), r"history\[0\]\.actions: unknown action 'likes'"),
        (dict(history=[(5, 6, {"favorite": 2.0}, 0)]), r"history\[0\]\.actions: action 'favorite' has value 2.0"),
        (dict(candidates=[{"post_id": 5, "author_id": 6, "product_surface": 0, "video_duration_ms": -1}]),
         "video_duration_ms: integers >= 0"),
        # a key nobody reads is a typo: named, with its closest allowed key, never ignored
        (dict(history=[{"post_id": 5, "author_id": 6, "action": ["favorite"], "product_surface": 0}]),
         r"history\[0\]: unknown key 'action'; did you mean 'actions'\? \(keys allowed: 'post_id', 'author_id', "
         r"'actions', 'product_surface'\)"),
        (dict(candidates=[{"post_id": 5, "author_id": 6, "product_surface": 0, "video_duration": 15000}]),
         r"candidates\[0\]: unknown key 'video_duration'; did you mean 'video_duration_ms'\?"),
        (dict(user={"foo": 7}), r"user: unknown key 'foo' \(keys allowed: 'user_id'\)"),
        (dict(user={"user_id": 7}), "user: user_id given twice"),
        (dict(candidates=[{"post_id": 5, "author_id": 6, "product_surface": 0, "in_network": "false"}]),
         "in_network: True or False, got 'false'"),
        (dict(history=[(5, 6, ["client_tweet_share"], 0)]),         # a May name of an action this model has
         None),
        (dict(history=[(5, 6, ["server_tweet_unfav"], 0)]),
         r"unknown action 'server_tweet_unfav'; did you mean 'server_tweet_fav'\? The served model uses the January "
         r"release's action names: \['favorite', "),
    ]
    for change, message in cases:
        if message is None:
            client.score(**{**good, **change})
            continue
        with pytest.raises(PhoenixInputError, match=message):
            client.score(**{**good, **change})


def test_either_releases_action_names_are_the_same_actions(client):
    request = dict(user_id=42, candidates=[(11, 1, 0), (12, 2, 3)])
    january = client.score(**request, history=[(5, 1, ["favorite", "repost", "share"], 2)])
    may = client.score(**request, history=[(5, 1, ["server_tweet_fav", "server_tweet_retweet",
                                                   "client_tweet_share"], 2)])
    by_score_name = client.score(**request, history=[(5, 1, ["favorite_score", "retweet", 7], 2)])
    other = client.score(**request, history=[(5, 1, ["favorite"], 2)])
    np.testing.assert_array_equal(may.final_score, january.final_score)
    np.testing.assert_array_equal(by_score_name.final_score, january.final_score)
    assert np.abs(other.final_score - january.final_score).max() > 0, "the actions reach the model"


def test_requests_are_checked_against_the_served_models_metadata(client, manifest):
    """Unknown, misspelled and missing inputs are named by the client before sending, from Triton's metadata
    (an ensemble's required inputs from its steps' configs)."""
    arrays = rows(client, [demo_request(client.actions, 3)])
    served = client.served_inputs("phoenix")
    assert {n for n, s in served.items() if s["required"]} == {s["name"] for s in manifest["served"]["phoenix_ranker"]
                                                               ["inputs"]}
    with pytest.raises(PhoenixInputError, match=r"phoenix request: unknown input 'candidate_post_hash'; did you mean "
                                                 r"'candidate_post_hashes'\?"):
        client.infer({**{k: v for k, v in arrays.items() if k != "candidate_post_hashes"},
                      "candidate_post_hash": arrays["candidate_post_hashes"]})
    with pytest.raises(PhoenixInputError, match=r"phoenix request: missing required input\(s\) \['user_hashes'\]"):
        client.infer({k: v for k, v in arrays.items() if k != "user_hashes"})
    with pytest.raises(PhoenixInputError, match=r"input 'user_hashes' has dtype int32; the served model takes INT64"):
        client.infer({**arrays, "user_hashes": arrays["user_hashes"].astype(np.int32)})
    with pytest.raises(PhoenixInputError, match=r"unknown model 'phoenix_embedings'; did you mean 'phoenix_embeddings"):
        client.infer(arrays, model="phoenix_embedings")


def _embeddings_feed(manifest) -> dict:
    specs = manifest["served"]["phoenix_ranker_embeddings"]["inputs"]
    feed = {s["name"]: np.ones(resolve_shape(s["shape"], {"B": 1, "C": 3}), dtype=s["dtype"]) for s in specs}
    feed["history_actions"][:] = 0
    return feed


def test_triton_itself_names_a_missing_ensemble_input_for_raw_clients(server, manifest):
    """A raw tritonclient or curl request without `user_embeddings` but with an optional input: before, Triton's
    count check let it pass and the ensemble deadlocked ("at least one output is not set"); now the step that
    needs it names it, with a 400."""
    import json as _json

    import tritonclient.grpc as grpcclient
    feed = {k: v for k, v in _embeddings_feed(manifest).items() if k != "user_embeddings"}
    feed["candidate_author_ids"] = np.array([[1, 2, 3]], np.int64)          # optional: keeps the count
    with PhoenixClient(server.grpc_url) as client:
        inputs = client.make_inputs(feed)
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(grpcclient.InferenceServerException, match="user_embeddings") as e:
        raw.infer("phoenix_embeddings", inputs)
    assert "deadlock" not in e.value.message() and "INVALID_ARGUMENT" in str(e.value.status())
    body = {"inputs": [{"name": k, "shape": list(v.shape), "datatype": "INT64" if v.dtype == np.int64 else "FP32",
                        "data": v.ravel().tolist()} for k, v in feed.items()]}
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/phoenix_embeddings/infer",
                                     data=_json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as http:               # what curl gets
        urllib.request.urlopen(request, timeout=60)
    assert http.value.code == 400 and "user_embeddings" in http.value.read().decode()


def _bad_arrays(client):
    arrays = rows(client, [demo_request(client.actions, 2)])
    vocab = {s["name"]: s.get("high") for s in client.inputs}
    cases = {
        "hash out of range": ({"candidate_post_hashes": arrays["candidate_post_hashes"] + vocab["candidate_post_hashes"]},
                              r"input 'candidate_post_hashes' holds \d+, outside \[0, 1000\) \(the item table\)"),
        "negative hash": ({"history_author_hashes": -arrays["history_author_hashes"] - 1}, "history_author_hashes"),
        "surface out of range": ({"candidate_product_surface": arrays["candidate_product_surface"] + 16},
                                 r"candidate_product_surface' holds \d+, outside \[0, 16\)"),
        "action not 0/1": ({"history_actions": arrays["history_actions"] * 3}, "history_actions' must be multi-hot"),
        "ragged candidates": ({"candidate_product_surface": arrays["candidate_product_surface"][:, :1]},
                              "disagree on C"),
    }
    return arrays, {k: ({**arrays, **change}, msg) for k, (change, msg) in cases.items()}


def test_server_rejects_bad_inputs_with_400_and_keeps_serving(client, server, models, manifest):
    arrays, bad = _bad_arrays(client)
    for case, (feed, message) in bad.items():
        with pytest.raises(PhoenixServerError, match=message):
            client.infer(feed)
    with PhoenixClient(server.http_url, protocol="http", config=client.config) as http:
        with pytest.raises(PhoenixServerError, match="holds"):
            http.infer(bad["hash out of range"][0])
        try:
            http.triton.infer("phoenix", http.make_inputs(bad["surface out of range"][0]))
        except Exception as e:
            assert e.status() == "400", e
    assert server.is_ready()
    assert_matches(client.infer(arrays), reference(models, manifest, arrays), ["favorite_score"])


def test_good_requests_batched_with_bad_ones_are_unaffected(server, models, manifest):
    """Bad and good requests fired at once (async gRPC): the dynamic batcher puts them in the same
    engine calls; each bad one gets its own error, each good one its own right answer. Whether two
    requests meet in one engine call depends on timing (queue delay 0), so the burst is repeated, a
    bounded number of times, until the server's statistics show a batched call."""
    with PhoenixClient(server.grpc_url) as c:
        goods = [rows(c, [r]) for r in users(c, 8, seed=40)]
        _, bad = _bad_arrays(c)
        bads = [bad["hash out of range"], bad["surface out of range"], bad["action not 0/1"]]
        refs = [reference(models, manifest, g) for g in goods]
        jobs = ([("good", i) for i in range(len(goods))] + [("bad", i) for i in range(len(bads))]) * 4
        inputs = [c.make_inputs(goods[i] if kind == "good" else bads[i][0]) for kind, i in jobs]  # before the burst
        batched = False
        for _ in range(5):
            stats0 = c.triton.get_inference_statistics("phoenix", as_json=True)["model_stats"][0]
            answers, done = {}, threading.Semaphore(0)

            def callback(n, result, error):
                answers[n] = (result, error)
                done.release()

            for n, feed in enumerate(inputs):
                c.triton.async_infer("phoenix", feed, partial(callback, n))
            for _ in jobs:
                assert done.acquire(timeout=60), "a response never came back"
            deadline = time.monotonic() + 5        # Triton counts a request a moment after its answer
            while True:
                stats1 = c.triton.get_inference_statistics("phoenix", as_json=True)["model_stats"][0]
                counted = int(stats1.get("inference_count", 0)) - int(stats0.get("inference_count", 0))
                if counted >= len(jobs) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            for n, (kind, i) in enumerate(jobs):
                result, error = answers[n]
                if kind == "good":
                    assert error is None, error
                    assert_matches({k: result.as_numpy(k) for k in ("favorite_score", "weighted_score",
                                                                    "final_score", "ranking")}, refs[i], ["favorite_score"])
                else:
                    assert result is None and re.search(bads[i][1], error.message()), error
            requests = int(stats1.get("inference_count", 0)) - int(stats0.get("inference_count", 0))
            executions = int(stats1.get("execution_count", 0)) - int(stats0.get("execution_count", 0))
            assert requests == len(jobs)
            if executions < requests:
                batched = True
                break
    assert batched, "in 5 bursts no two requests were ever batched: this test did not test batching"


def test_concurrent_clients_get_their_own_answers(server, models, manifest):
    with PhoenixClient(server.grpc_url) as c:
        reqs = users(c, 12, seed=100)
        feeds = [rows(c, [r]) for r in reqs]
    refs = [reference(models, manifest, r) for r in feeds]
    errors = []

    def worker(t):
        protocol = "grpc" if t % 2 == 0 else "http"
        url = server.grpc_url if protocol == "grpc" else server.http_url
        with PhoenixClient(url, protocol=protocol) as c:
            for j in range(20):
                i = (t * 7 + j * 5) % len(reqs)
                try:
                    assert_matches(c.infer(feeds[i]), refs[i], ["favorite_score"])
                except Exception as e:  # collected: a thread's assert must fail the test
                    errors.append(f"thread {t} request {j} (user {i}): {e}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def _metric(server, name, model):
    """Sum of a counter over its label sets (e.g. failure reasons) for one model."""
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    return sum(float(v) for v in re.findall(rf'^{name}{{[^}}]*model="{model}"[^}}]*}} (\S+)$', text, re.M))


def test_client_padding_to_candidate_sizes_is_exact(server, client):
    """Native backends batch only equal shapes, so a build with --candidate-sizes makes the client pad C up to
    those sizes. Through the real server, the real candidates' scores are the same whether each user is sent
    alone and unpadded, all users in one request padded to one size, or in pairs padded to the sizes."""
    requests = [demo_request(client.actions, seed=40 + i, num_history=2 + 7 * i, num_candidates=c)
                for i, c in enumerate((1, 3, 5, 9))]

    def padding_client(max_batch_size: int, sizes: tuple, seen: list) -> PhoenixClient:
        limits = Limits(max_batch_size, client.limits.max_candidates, client.history_len,
                                 candidate_sizes=sizes)
        c = PhoenixClient(server.grpc_url, config={**client.config, "limits": limits.to_dict()})
        send = c.infer
        c.infer = lambda arrays, model=None: seen.append(arrays["candidate_post_hashes"].shape[:2]) or \
            send(arrays, model)                          # the real call, shapes noted on the way
        return c

    alone, padded, pairs = [], [], []
    top = client.limits.max_candidates
    want = padding_client(1, (), alone).score_many(requests)
    got = padding_client(64, (4, 16, top), padded).score_many(requests)
    got_pairs = padding_client(2, (4, 16, top), pairs).score_many(requests)
    assert alone == [(1, 1), (1, 3), (1, 5), (1, 9)], "reference: no padding at all"
    assert padded == [(4, 16)] and pairs == [(2, 4), (2, 16)], "the client padded C to the fixed sizes"
    for i, (w, *others) in enumerate(zip(want, got, got_pairs)):
        for g in others:
            np.testing.assert_allclose(g.probs, w.probs, atol=1e-6, rtol=0, err_msg=f"user {i}: probs")
            for name, value in w.scores.items():
                np.testing.assert_allclose(g.scores[name], value, atol=1e-6, rtol=0, err_msg=f"user {i}: {name}")
            np.testing.assert_allclose(g.weighted_score, w.weighted_score, rtol=1e-5, atol=1e-7)
            assert g.ranking == w.ranking and sorted(g.ranking) == list(range(len(requests[i]["candidates"])))


def test_metrics_endpoint_counts_requests(server, client):
    import time
    before = _metric(server, "nv_inference_request_success", "phoenix")
    for r in users(client, 5, seed=200):
        client.score(**r)
    deadline = time.monotonic() + 10          # Triton refreshes its counters every couple of seconds
    while _metric(server, "nv_inference_request_success", "phoenix") - before < 5 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _metric(server, "nv_inference_request_success", "phoenix") - before == 5


# ------------------------------------------------------------------------------------------ server + CLI

def test_port_in_use_is_one_clear_sentence(server, demo_repo):
    """Checked before starting: tritonserver itself binds with SO_REUSEPORT and would share the port."""
    with pytest.raises(ServerError, match=rf"HTTP port {server.ports['HTTP']} on 127.0.0.1 is already in use"):
        TritonServer(demo_repo, http_port=server.ports["HTTP"], startup_timeout=60).start()
    assert server.is_ready()


def test_model_failing_to_load_is_one_clear_sentence(tmp_path, demo_repo):
    import shutil
    shutil.copytree(demo_repo, tmp_path / "repo")
    (tmp_path / "repo" / "phoenix_postprocess" / "1" / "model.py").write_text("import module_that_does_not_exist\n")
    with pytest.raises(ServerError, match=r"model 'phoenix_postprocess' failed to load\. Server said: .*"
                                          r"module_that_does_not_exist"):
        TritonServer(tmp_path / "repo", startup_timeout=120).start()


def test_client_cli_prints_ranked_table_and_separates_input_from_transport_errors(server):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "serving.client", *args], capture_output=True, text=True,
                              timeout=120)

    out = cli("score", "--url", server.grpc_url, "--user-id", "42", "--candidate", "11:1:0", "--candidate", "12:1:3",
              "--candidate", "13:2:1:video_duration_ms=15000:in_network=false", "--history", "5:1:favorite, reply:2")
    assert out.returncode == 0, out.stderr
    assert "rank" in out.stdout and "favorite" in out.stdout and "retweet" in out.stdout
    assert len(re.findall(r"│\s+\d+\s+│\s+1[123]\s+│", out.stdout)) == 3, out.stdout
    bad = cli("score", "--url", server.grpc_url, "--user-id", "42", "--candidate", "x:1:0")
    assert bad.returncode == 2 and "input error: --candidate 'x:1:0' post id: 'x' is not an integer" in bad.stderr
    bad = cli("score", "--url", server.grpc_url, "--user-id", "42", "--candidate", "11:1:99")
    assert bad.returncode == 2 and "holds 99, outside [0, 16)" in bad.stderr
    down = cli("score", "--url", "127.0.0.1:1")
    assert down.returncode == 3 and "cannot reach the server" in down.stderr
    js = cli("score", "--url", server.grpc_url, "--json", "--user-id", "42", "--candidate", "11:1:0")
    assert js.returncode == 0 and '"final_score"' in js.stdout


@pytest.mark.parametrize("argv,message", [
    (["--user-id", "42", "--candidate", "11:1:0:video_duration=15000"],
     "--candidate '11:1:0:video_duration=15000': unknown key 'video_duration'; did you mean 'video_duration_ms'? "
     "(keys allowed: 'post_id', 'author_id', 'product_surface', 'video_duration_ms', 'in_network')"),
    (["--user-id", "42", "--candidate", "11:1:0:foo=1"], "--candidate '11:1:0:foo=1': unknown key 'foo' (keys allowed"),
    (["--user-id", "42", "--user", "foo=7", "--candidate", "11:1:0"], "--user: unknown key 'foo'"),
    (["--user-id", "42", "--history", "5:1:favorite:2:dwel=3", "--candidate", "11:1:0"],
     "--history '5:1:favorite:2:dwel=3': unknown key 'dwel'"),
    (["--user-id", "42", "--history", "5:1:likes:2", "--candidate", "11:1:0"],
     "--history '5:1:likes:2' actions: unknown action 'likes'"),
    (["--user-id", "42", "--candidate", "11:1:0:in_network=maybe"], "in_network: 'maybe' is not true or false"),
    (["--user-id", "42", "--candidate", "11:1:0:product_surface=3"], "'product_surface' is given by position"),
    (["--candidate", "11:1:0"], "--user-id: required with --history, --user or --candidate"),
    (["--history", "5:1:favorite:2"], "--user-id: required"),
    (["--user-id", "42"], "--candidate: give at least one POST:AUTHOR:SURFACE"),
    (["--user-id", "42", "--seed", "3", "--candidate", "11:1:0"], "--seed picks the demo user"),
], ids=lambda x: x if isinstance(x, str) and len(x) < 12 else None)
def test_cli_typos_and_half_requests_exit_2_naming_them(server, capsys, argv, message):
    from serving import cli
    assert cli.main(["score", "--url", server.grpc_url, *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_scores_the_demo_user_only_without_input_and_says_so(server, capsys):
    from serving import cli
    assert cli.main(["score", "--url", server.grpc_url, "--json", "--seed", "2"]) == 0
    out = capsys.readouterr()
    assert "note: no --user-id, --history, --user or --candidate: using the demo user (seed 2" in out.err
    assert len(json.loads(out.out)["ranking"]) == 8


def test_embeddings_cli_names_unreadable_unknown_and_missing_arrays(server, manifest, tmp_path, capsys):
    from serving import cli
    feed = _embeddings_feed(manifest)
    cases = {"missing file": (None, "--npz {path}: cannot read an .npz file"),
             "unknown": ({**feed, "user_embedding": feed["user_embeddings"]},
                         "unknown input 'user_embedding'; did you mean 'user_embeddings'?"),
             "missing": ({k: v for k, v in feed.items() if k != "user_embeddings"},
                         "missing required input(s) ['user_embeddings']")}
    for case, (arrays, message) in cases.items():
        path = tmp_path / f"{case}.npz"
        if arrays is not None:
            np.savez(path, **arrays)
        assert cli.main(["embeddings", "--url", server.grpc_url, "--npz", str(path)]) == 2, case
        assert message.format(path=path) in capsys.readouterr().err, case
    np.savez(tmp_path / "ok.npz", **feed)
    assert cli.main(["embeddings", "--url", server.grpc_url, "--npz", str(tmp_path / "ok.npz")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"┃\s*rank\s*┃\s*candidate\s*┃\s*final\s*┃", out), out     # indices; no author ids given


def test_hand_computed_scoring_cases_through_the_real_server(client, manifest):
    """The hand-computed home-mixer cases of tests/test_scoring.py (January action list, the published
    weights), sent to the served phoenix_postprocess with exactly the optional inputs each case has."""
    from test_scoring import CASES, logits_for
    post = manifest["served"]["phoenix_postprocess"]
    cases = [c for c in CASES if list(c.actions) == list(post["actions"]) and c.weights is None
             and c.dwell_time_continuous is None]
    assert len(cases) >= 12
    for case in cases:
        C = len(case.probs)
        valid = np.array(case.valid or [True] * C)
        feed = {"logits": logits_for(case.actions, case.probs).astype(np.float32),
                "input_error": np.zeros((1, 1), np.int32),
                "candidate_post_hashes": np.ones((1, C, 2), np.int64) * valid[None, :, None]}
        if case.author_ids is not None:
            feed["candidate_author_ids"] = np.array([case.author_ids], np.int64)
        if case.author_hashes is not None:
            feed["candidate_author_hashes"] = np.repeat(np.array(case.author_hashes, np.int64)[None, :, None], 2, -1)
        if case.durations is not None:
            feed["candidate_video_duration_ms"] = np.array([case.durations], np.int64)
        if case.in_network is not None:
            feed["candidate_in_network"] = np.array([case.in_network], bool)
        out = client.infer(feed, model="phoenix_postprocess")
        np.testing.assert_allclose(out["weighted_score"][0], case.weighted, rtol=1e-5, err_msg=case.id)
        np.testing.assert_allclose(out["final_score"][0], case.final, rtol=1e-5, err_msg=case.id)
        assert out["ranking"][0].tolist() == list(case.ranking), case.id
        for name, values in case.expect.items():
            np.testing.assert_allclose(out[name][0], values, rtol=1e-5, err_msg=f"{case.id} {name}")
