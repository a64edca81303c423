"""End to end against the REAL tritonserver (the one bundled in nvidia-pytriton, Python backend).

One demo build (cpu target) and one server per module, on free loopback ports. The reference is the
torch model (the build's `torch` engine: the same graph module and weights the ONNX was exported
from) followed by serving.scoring, the one home-mixer implementation.
"""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import urllib.request
from functools import partial

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.manifest import read_manifest
from export.runtime import load_engine
from phoenix_torch import SCORE_NAMES
from serving import scoring
from serving.client import (PhoenixClient, PhoenixInputError, PhoenixServerError, demo_request, stack_rows)
from serving.server import ServerError, TritonServer

PROB_ATOL = 2e-5      # probabilities from ONNX Runtime vs torch (fp32)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    from export import build

    out = tmp_path_factory.mktemp("triton_repo")
    rc = build.main(["--preset", "demo", "--target", "cpu", "--output", str(out), "--corpus", "64", "--vocab", "2000", "--engines", "none",
                     "--top-k", "5"])
    assert not rc, f"export.build failed with {rc}"
    return out


@pytest.fixture(scope="module")
def server(repo):
    with TritonServer(repo) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with PhoenixClient(server.grpc_url) as c:
        yield c


@pytest.fixture(scope="module")
def torch_ranker(repo):
    return load_engine(repo, model="ranker", kind="torch")


def reference(torch_ranker, arrays: dict) -> dict:
    """Torch logits + serving.scoring: what every served answer must equal."""
    logits = torch_ranker({k: arrays[k] for k in torch_ranker.input_names})["logits"]
    out = scoring.score_logits(logits, arrays["candidate_post_hashes"], arrays["candidate_author_hashes"])
    out["logits"] = logits
    return out


def assert_matches(got: dict, ref: dict, rows=slice(None), n=None):
    n = slice(None) if n is None else slice(0, n)
    for name in SCORE_NAMES:
        np.testing.assert_allclose(got[name][rows, n], ref[name][rows, n], atol=PROB_ATOL, err_msg=name)
    for name in ("weighted_score", "final_score"):
        np.testing.assert_allclose(got[name][rows, n], ref[name][rows, n], rtol=1e-3, atol=1e-7, err_msg=name)
    np.testing.assert_array_equal(got["ranking"][rows], ref["ranking"][rows], err_msg="ranking")


def users(client, count, seed=0, max_c=None):
    """`count` demo users with varying history length and candidate count."""
    max_c = max_c or client.max_candidates
    return [demo_request(seed + i, num_history=1 + (3 * i) % (client.history_len + 4),
                         num_candidates=1 + (5 * i + 2) % max_c) for i in range(count)]


# ------------------------------------------------------------------------------------------ parity

@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_end_to_end_matches_torch(server, torch_ranker, protocol):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    with PhoenixClient(url, protocol=protocol) as c:
        assert c.max_batch_size == 64  # read from the server
        c.max_batch_size = 3           # so 4 users take two requests
        reqs = users(c, 4, seed=10)
        results = c.score_many(reqs)
        arrays = stack_rows([c.build_row(**r) for r in reqs])
    ref = reference(torch_ranker, arrays)
    for b, (req, res) in enumerate(zip(reqs, results)):
        n = len(req["candidates"])
        got = {**{k: v[None] for k, v in res.scores.items()}, "weighted_score": res.weighted_score[None],
               "final_score": res.final_score[None]}
        for name in SCORE_NAMES:
            np.testing.assert_allclose(got[name][0], ref[name][b, :n], atol=PROB_ATOL, err_msg=name)
        np.testing.assert_allclose(res.weighted_score, ref["weighted_score"][b, :n], rtol=1e-3, atol=1e-7)
        np.testing.assert_allclose(res.final_score, ref["final_score"][b, :n], rtol=1e-3, atol=1e-7)
        assert res.ranking == [int(i) for i in ref["ranking"][b] if i >= 0]
        assert sorted(res.ranking) == list(range(n)), "every real candidate ranked once, padding never"


def test_python_backend_outputs_are_not_empty(client, torch_ranker):
    """The numpy-2 trap: a Python-backend model can return EMPTY outputs without an error."""
    reqs = users(client, 3, seed=20, max_c=client.max_candidates)
    arrays = stack_rows([client.build_row(**r) for r in reqs])
    out = client.infer_arrays(arrays)
    b, c = arrays["candidate_post_hashes"].shape[:2]
    assert set(out) == set(scoring.OUTPUT_NAMES)
    for name, value in out.items():
        assert value.shape == (b, c), f"{name}: shape {value.shape}, expected {(b, c)}"
        assert np.isfinite(value).all(), name
    for name in SCORE_NAMES:
        assert ((out[name] > 0) & (out[name] < 1)).all(), f"{name}: probabilities must be in (0, 1)"
    assert_matches(out, reference(torch_ranker, arrays))


def test_each_composing_model_answers_on_its_own(repo, client, torch_ranker):
    reqs = users(client, 2, seed=30)
    arrays = stack_rows([client.build_row(**r) for r in reqs])
    ref = reference(torch_ranker, arrays)
    # the engine
    ranker = client.infer_arrays(arrays, model="phoenix_ranker")
    np.testing.assert_allclose(ranker["logits"], ref["logits"], atol=1e-4)
    assert ranker["input_error"].reshape(-1).tolist() == [0, 0]
    # the postprocess, fed the torch logits
    post = client.infer_arrays({"logits": ref["logits"].astype(np.float32),
                                "input_error": np.zeros((2, 1), np.int32),
                                "candidate_post_hashes": arrays["candidate_post_hashes"],
                                "candidate_author_hashes": arrays["candidate_author_hashes"]},
                               model="phoenix_postprocess")
    assert_matches(post, ref)
    # the towers and retrieval
    user_feed = {k: v for k, v in arrays.items() if not k.startswith("candidate")}
    user_ref = load_engine(repo, model="user_tower", kind="torch")(user_feed)["user_representation"]
    user = client.infer_arrays(user_feed, model="phoenix_user_tower")["user_representation"]
    np.testing.assert_allclose(user, user_ref, atol=1e-4)
    cand_feed = {"candidate_post_hashes": arrays["candidate_post_hashes"][0],
                 "candidate_author_hashes": arrays["candidate_author_hashes"][0]}
    cand_ref = load_engine(repo, model="candidate_tower", kind="torch")(cand_feed)["candidate_representation"]
    cand = client.infer_arrays(cand_feed, model="phoenix_candidate_tower")["candidate_representation"]
    np.testing.assert_allclose(cand, cand_ref, atol=1e-4)
    corpus = np.load(repo / "phoenix_retrieval" / "1" / "corpus.npy")
    post_hashes = np.load(repo / "phoenix_retrieval" / "1" / "corpus_post_hashes.npy")
    got = client.infer_arrays(user_feed, model="phoenix_retrieval")
    expect_scores = user_ref @ corpus.T
    for b in range(2):
        k = got["top_k_indices"].shape[1]
        best = np.sort(expect_scores[b])[::-1][:k]
        np.testing.assert_allclose(got["top_k_scores"][b], best, atol=1e-4)
        np.testing.assert_allclose(expect_scores[b, got["top_k_indices"][b]], best, atol=1e-4)
        np.testing.assert_array_equal(got["top_k_post_hashes"][b], post_hashes[got["top_k_indices"][b]])
    one = client.retrieve(**{k: reqs[0][k] for k in ("user_id", "history")})
    np.testing.assert_array_equal(one["top_k_indices"], got["top_k_indices"][0])


# ------------------------------------------------------------------------------------------ bad input

def test_client_rejects_bad_inputs_naming_them(client):
    good = demo_request(1)
    cases = [
        (dict(candidates=[]), "candidates: empty"),
        (dict(candidates=good["candidates"] * (client.max_candidates + 1)), "at most"),
        (dict(candidates=[(5, 6, 16)]), r"candidate\[0\]\.surface: 16 outside \[0, 16\)"),
        (dict(candidates=[(5, 6, -1)]), r"candidate\[0\]\.surface"),
        (dict(candidates=[(1.5, 6, 0)]), "candidate post_id: expected integers"),
        (dict(candidates=[(0, 6, 0)]), r"candidates\[0\]\.post_id: 0 is the padding id"),
        (dict(candidates=[(5, 6)]), r"candidate\[0\]: expected \(post_id, author_id, surface\)"),
        (dict(history=[(5, 6, ["likes"], 0)]), r"history\[0\]\.actions: unknown action"),
        (dict(history=[(5, 6, [2.0] * 19, 0)]), r"history\[0\]\.actions"),
        (dict(user_id=None, user_hashes=[1, 2, 3]), "user_hashes: expected 2 hashes"),
        (dict(user_id=None, user_hashes=[1, 10 ** 9]), r"user_hashes: hash 1000000000 outside \[0, "),
        (dict(user_hashes=[1, 2]), "exactly one of user_id or user_hashes"),
    ]
    for change, message in cases:
        with pytest.raises(PhoenixInputError, match=message):
            client.score(**{**good, **change})


def _bad_arrays(client, post_vocab):
    arrays = stack_rows([client.build_row(**demo_request(2))])
    cases = {
        "wrong dtype": ({"user_hashes": arrays["user_hashes"].astype(np.float32)}, "user_hashes"),
        "wrong shape": ({"history_post_hashes": arrays["history_post_hashes"][:, :3]}, "history_post_hashes"),
        "hash out of range": ({"candidate_post_hashes": arrays["candidate_post_hashes"] + post_vocab},
                              r"candidate_post_hashes holds a value outside \[0, "),
        "negative hash": ({"history_author_hashes": -arrays["history_author_hashes"] - 1}, "history_author_hashes"),
        "surface out of range": ({"candidate_product_surface": arrays["candidate_product_surface"] + 16},
                                 r"candidate_product_surface holds a value outside \[0, 16\)"),
        "action not 0/1": ({"history_actions": arrays["history_actions"] * 3}, "history_actions"),
    }
    return arrays, {k: ({**arrays, **change}, msg) for k, (change, msg) in cases.items()}


def test_server_rejects_bad_inputs_and_keeps_serving(client, server, torch_ranker):
    arrays, bad = _bad_arrays(client, int(client.tables["post_vocab"]))
    for case, (feed, message) in bad.items():
        with pytest.raises(PhoenixServerError, match=message):
            client.infer_arrays(feed)
    assert server.is_ready()
    assert_matches(client.infer_arrays(arrays), reference(torch_ranker, arrays))


def test_good_requests_batched_with_bad_ones_are_unaffected(server, torch_ranker):
    """Bad and good requests fired at once (async gRPC): the dynamic batcher puts them in the same
    engine calls; each bad one gets its own error, each good one its own right answer."""
    with PhoenixClient(server.grpc_url) as c:
        goods = [stack_rows([c.build_row(**r)]) for r in users(c, 8, seed=40)]
        _, bad = _bad_arrays(c, int(c.tables["post_vocab"]))
        bads = [bad["hash out of range"], bad["surface out of range"], bad["action not 0/1"]]
        refs = [reference(torch_ranker, g) for g in goods]
        jobs = ([("good", i) for i in range(len(goods))] + [("bad", i) for i in range(len(bads))]) * 4
        stats0 = c._c.get_inference_statistics("phoenix_ranker", as_json=True)["model_stats"][0]
        answers, done = {}, threading.Semaphore(0)

        def callback(n, result, error):
            answers[n] = (result, error)
            done.release()

        for n, (kind, i) in enumerate(jobs):
            feed = goods[i] if kind == "good" else bads[i][0]
            c._c.async_infer("phoenix", c.make_inputs(feed), partial(callback, n))
        for _ in jobs:
            assert done.acquire(timeout=60), "a response never came back"
        stats1 = c._c.get_inference_statistics("phoenix_ranker", as_json=True)["model_stats"][0]
    for n, (kind, i) in enumerate(jobs):
        result, error = answers[n]
        if kind == "good":
            assert error is None, error
            assert_matches({name: result.as_numpy(name) for name in scoring.OUTPUT_NAMES}, refs[i])
        else:
            assert result is None and re.search(bads[i][1], error.message()), error
    requests = int(stats1.get("inference_count", 0)) - int(stats0.get("inference_count", 0))
    executions = int(stats1.get("execution_count", 0)) - int(stats0.get("execution_count", 0))
    assert requests == len(jobs)
    assert executions < requests, "no two requests were ever batched: this test did not test batching"


def test_concurrent_clients_get_their_own_answers(server, torch_ranker):
    with PhoenixClient(server.grpc_url) as c:
        reqs = users(c, 24, seed=100)
        rows = [stack_rows([c.build_row(**r)]) for r in reqs]
    refs = [reference(torch_ranker, r) for r in rows]
    n_threads, per_thread = 8, 40
    errors = []

    def worker(t):
        protocol = "grpc" if t % 2 == 0 else "http"
        url = server.grpc_url if protocol == "grpc" else server.http_url
        with PhoenixClient(url, protocol=protocol) as c:
            for j in range(per_thread):
                i = (t * 7 + j * 5) % len(reqs)
                try:
                    assert_matches(c.infer_arrays(rows[i]), refs[i])
                except Exception as e:  # collected: a thread's assert must fail the test
                    errors.append(f"thread {t} request {j} (user {i}): {e}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def _metric(server, name, model):
    """Sum of a counter over its label sets (e.g. failure reasons) for one model."""
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    return sum(float(v) for v in re.findall(rf'^{name}{{[^}}]*model="{model}"[^}}]*}} (\S+)$', text, re.M))


def test_metrics_endpoint_counts_requests(server, client):
    before = _metric(server, "nv_inference_request_success", "phoenix")
    ensemble_failed_before = _metric(server, "nv_inference_request_failure", "phoenix")
    for r in users(client, 5, seed=200):
        client.score(**r)
    arrays, bad = _bad_arrays(client, int(client.tables["post_vocab"]))
    with pytest.raises(PhoenixServerError):
        client.infer_arrays(bad["surface out of range"][0])
    assert _metric(server, "nv_inference_request_success", "phoenix") - before == 5
    # Triton 2.51 counts a failed ensemble request twice (reason OTHER), so only "it counted" here
    assert _metric(server, "nv_inference_request_failure", "phoenix") > ensemble_failed_before


# ------------------------------------------------------------------------------------------ server + CLI

def test_generated_configs_on_disk_parse(repo):
    configs = {p.parent.name: text_format.Parse(p.read_text(), mc.ModelConfig()) for p in repo.glob("*/config.pbtxt")}
    assert set(configs) == {"phoenix_ranker", "phoenix_postprocess", "phoenix", "phoenix_user_tower",
                            "phoenix_candidate_tower", "phoenix_retrieval"}
    assert read_manifest(repo)["target"] == "cpu"
    for name, cfg in configs.items():
        assert (repo / name / "1").is_dir(), f"{name}: no version folder"


def test_port_in_use_is_one_clear_sentence(server, repo):
    """Checked before starting: tritonserver itself binds with SO_REUSEPORT and would share the port."""
    with pytest.raises(ServerError, match=rf"HTTP port {server.ports['HTTP']} on 127.0.0.1 is already in use"):
        TritonServer(repo, http_port=server.ports["HTTP"], startup_timeout=60).start()
    with pytest.raises(ServerError, match=rf"gRPC port {server.ports['gRPC']} on 127.0.0.1 is already in use"):
        TritonServer(repo, grpc_port=server.ports["gRPC"], startup_timeout=60).start()
    assert server.is_ready()


def test_port_taken_reports_the_servers_own_line(tmp_path):
    """Without the launcher's own check (a port lost between check and bind), the sentence carries
    tritonserver's own error line."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerError, match=rf"HTTP port {port} is already in use\. Server said: E.*already in use"):
            TritonServer(tmp_path, http_port=port, startup_timeout=60, check_ports=False).start()


def test_model_failing_to_load_is_one_clear_sentence(tmp_path):
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 1\ninput [{ name: "x" data_type: TYPE_FP32 dims: [1] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [1] }]\n')
    (tmp_path / "broken" / "1" / "model.py").write_text("import module_that_does_not_exist\n")
    with pytest.raises(ServerError, match=r"model 'broken' failed to load\. Server said: .*module_that_does_not_exist"):
        TritonServer(tmp_path, startup_timeout=60).start()


def test_client_cli_prints_ranked_table(server):
    out = subprocess.run([sys.executable, "-m", "serving.client", "score", "--url", server.grpc_url,
                          "--candidate", "11:1:0", "--candidate", "12:1:3", "--candidate", "13:2:1",
                          "--history", "5:1:favorite,reply:2"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "rank" in out.stdout and "favorite" in out.stdout
    assert len(re.findall(r"│\s+\d+\s+│\s+1[123]\s+│", out.stdout)) == 3, out.stdout
    bad = subprocess.run([sys.executable, "-m", "serving.client", "score", "--url", server.grpc_url,
                          "--candidate", "11:1:99"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "surface: 99 outside [0, 16)" in bad.stderr


# ------------------------------------------------------------------------------------------ scoring math (no server)

def _probs(**named):
    p = np.zeros((1, 1, len(scoring.ACTIONS)), np.float32)
    for name, value in named.items():
        p[..., scoring.ACTIONS.index(name)] = value
    return p


def test_weighted_score_offset_branches():
    w = scoring.DEFAULT_WEIGHTS
    positive = sum(v for k, v in w.items() if k not in scoring.NEGATIVE_ACTIONS and k != "dwell_time")
    negative = -sum(w[k] for k in scoring.NEGATIVE_ACTIONS)
    assert scoring.weighted_score(_probs(favorite=1.0))[0, 0] == pytest.approx(0.5 + 0.001)
    got = scoring.weighted_score(_probs(report=1.0))[0, 0]
    assert got == pytest.approx((-234.0 + negative) / (positive + negative) * 0.001, rel=1e-6)
    assert 0 <= got < 0.001, "negative combined scores land below every positive one"
    zero = scoring.ScoringParams(weights={k: 0.0 for k in scoring.ACTIONS})
    assert scoring.weighted_score(_probs(report=1.0), zero)[0, 0] == 0.0
    vqv = _probs(vqv=1.0)
    assert scoring.weighted_score(vqv, vqv_eligible=np.zeros((1, 1), bool))[0, 0] == pytest.approx(0.001)


def test_author_diversity_ranking_and_padding():
    scores = np.array([[4.0, 3.0, 2.0, 1.0, 9.0]], np.float32)
    authors = np.array([[7, 7, 8, 7, 7]])
    valid = np.array([[True, True, True, True, False]])  # the last is padding: never counted or ranked
    out = scoring.author_diversity(scores, authors, valid)
    np.testing.assert_allclose(out[0, :4], [4.0, 3.0 * 0.625, 2.0, 1.0 * 0.4375])
    assert scoring.ranking(out, valid).tolist() == [[0, 2, 1, 3, -1]]
    logits = np.zeros((1, 3, 19), np.float32)
    post = np.array([[[5, 1], [0, 0], [6, 2]]], np.int32)
    res = scoring.score_logits(logits, post, np.ones_like(post))
    assert res["ranking"][0, -1] == -1 and 1 not in res["ranking"][0].tolist()
    assert res["weighted_score"][0, 1] == 0.0


def test_weight_overrides_from_config_parameters():
    p = scoring.params_from_strings({"weight.report": "-300", "oon_factor": "0.5", "project_root": "/x"})
    assert p.weights["report"] == -300.0 and p.oon_factor == 0.5
    with pytest.raises(ValueError, match="'weight.report' must be a number"):
        scoring.params_from_strings({"weight.report": "a lot"})
