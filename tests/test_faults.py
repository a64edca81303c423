"""Faults against the REAL tritonserver: dead model processes, limits, bad input, concurrency, launcher errors.

One small demo build (cpu target, conftest.py `small_repo`) and one server (TritonServer, supervised, admin APIs
closed) for most tests; the launcher tests run `python -m serving.server` itself (an empty repository: no server;
a dead server: a second server, restarted once, then given up); the container's entry point runs as
deploy/Dockerfile runs it (server_helpers.entry_point). Every loop is bounded. The cross-C batching measurement is not a test:

    python tests/test_faults.py --measure-batching [--repo DIR]

Known limits of Triton 2.51 that these tests document rather than fight: a request body is read whole by
Triton's frontend before any model code (so a refused request still passes once through the ranker's shared
memory), malformed JSON and non-integer JSON values for INT64 get HTTP 500 from Triton's own JSON parser, B = 0
is refused by Triton core ("input byte size mismatch"), a JSON value above 2^31 for an INT32 input wraps
(only `top_k` and `input_error` are INT32).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from server_helpers import (ROOT, SMALL_BUILD, entry_point, health, http_post, http_status, infer, is_bad_input,
                            json_body, matches, no_process_left, request_arrays, same_answer, server_memory_mb, stub_of,
                            tritonserver_of, with_candidates)

from phoenix_runtime.manifest import (CANDIDATE_TOWER, ENSEMBLE, ENSEMBLE_EMBEDDINGS, MANIFEST, POSTPROCESS, RANKER,
                                      RETRIEVAL, read_manifest)
from phoenix_runtime.request import Limits
from serving.cli import demo_request
from serving.client import PhoenixClient
from serving.server import SHM, TritonServer
from serving.supervisor import stubs

# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def repo(small_repo):
    return small_repo


@pytest.fixture(scope="module")
def events():
    return []


@pytest.fixture(scope="module")
def server(repo, events):
    with TritonServer(repo, on_event=events.append, hang_timeout=HANG_TIMEOUT) as s:
        yield s


@pytest.fixture(scope="module")
def limits(repo):
    return Limits.from_dict(read_manifest(repo)["limits"])


# ------------------------------------------------------------------------------------------ helpers

# ------------------------------------------------------------------------------------------ launcher (no server)

def test_empty_repository_is_refused_by_the_launcher(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "serving.server", "--model-repository", str(empty)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "refusing to serve" in r.stderr and "manifest.json" in r.stderr and "export.build" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 60


def test_repository_with_missing_files_is_refused(repo, tmp_path):
    from serving.server import ServerError

    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / MANIFEST).write_text((repo / MANIFEST).read_text())
    with pytest.raises(ServerError, match="refusing to serve .*config.pbtxt"):
        TritonServer(partial).start()
    for name in os.listdir(repo):           # every config present, one engine file missing
        src = repo / name
        if src.is_dir():
            subprocess.run(["cp", "-r", str(src), str(partial / name)], check=True)
    manifest = read_manifest(repo)
    victim = next(a["path"] for a in manifest["artifacts"] if a["kind"] == "table")
    (partial / victim).unlink()
    with pytest.raises(ServerError, match=f"refusing to serve .*missing: .*{re.escape(victim)}"):
        TritonServer(partial).start()


# ------------------------------------------------------------------------------------------ limits

def test_candidates_far_above_the_limit_are_refused_fast_and_memory_stays(server, client, limits):
    base = request_arrays(client, seed=1)
    before = server_memory_mb(server.process.pid)
    slowest, refused_mb = 0.0, 0.0
    ranker_inputs = {s["name"] for s in client.inputs}
    for c, limit, repeats in ((20 * limits.max_candidates, "max_candidates", 3),
                              (230_000, "max_request_bytes", 6)):
        big = with_candidates(base, c)
        ranker_bytes = sum(a.nbytes for k, a in big.items() if k in ranker_inputs)
        assert (ranker_bytes > limits.max_request_bytes) == (limit == "max_request_bytes")
        for protocol in ("grpc", "http"):
            url = server.grpc_url if protocol == "grpc" else server.http_url
            for _ in range(repeats):
                t0 = time.monotonic()
                ok, (status, message) = infer(url, big, protocol=protocol)
                elapsed = time.monotonic() - t0
                assert not ok and is_bad_input(status), (status, message)
                assert limit in message, message
                assert elapsed < 5.0, f"C = {c} over {protocol} refused after {elapsed:.2f} s"   # not parsed
                slowest = max(slowest, elapsed)
                refused_mb += sum(a.nbytes for a in big.values()) / 2 ** 20
    peak = server_memory_mb(server.process.pid)
    deadline = time.monotonic() + 60          # the supervisor gives a grown shared-memory region back (it polls)
    while (after := server_memory_mb(server.process.pid)) - before >= 150 and time.monotonic() < deadline:
        time.sleep(1.0)
    print(f"\nrefused {refused_mb:.0f} MiB of over-limit requests (C up to 230,000), each in at most {slowest:.3f} s; "
          f"server PSS {before:.0f} -> {peak:.0f} -> {after:.0f} MiB")
    # Triton reads a body whole before any model code: a refused request passes once through its buffers and the
    # model's shared memory, which grow (the supervisor reloads a model whose region grew past twice the request
    # limit, in place) and are not kept per request (about 130 MiB were refused); the issue saw 1.4 GB kept for
    # one request of C = 100,000
    assert after - before < 150, f"server memory grew from {before:.0f} MiB to {after:.0f} MiB"
    ok, _ = infer(server.grpc_url, base)
    assert ok


def test_more_users_or_history_than_the_limits_are_refused(server, client, limits):
    base = request_arrays(client, seed=2)
    users = {k: np.repeat(v, limits.max_batch_size + 1, axis=0) for k, v in base.items()}
    ok, (status, message) = infer(server.http_url, users, protocol="http")
    assert not ok and status == "400" and str(limits.max_batch_size) in message, message
    longer = {k: np.concatenate([v, v[:, :1]], axis=1) if k.startswith("history") else v for k, v in base.items()}
    ok, (status, message) = infer(server.http_url, longer, protocol="http")
    assert not ok and status == "400" and "history_" in message, message   # Triton core: fixed dims [S]


# ------------------------------------------------------------------------------------------ bad input

def test_ragged_candidate_inputs_are_refused_naming_both(server, client):
    base = request_arrays(client, seed=3, num_candidates=8)
    ragged = {**base, "candidate_author_hashes": base["candidate_author_hashes"][:, :5]}
    for protocol in ("grpc", "http"):
        url = server.grpc_url if protocol == "grpc" else server.http_url
        ok, (status, message) = infer(url, ragged, protocol=protocol)
        assert not ok and is_bad_input(status), (status, message)
        assert "candidate_post_hashes" in message and "candidate_author_hashes" in message, message
    # the postprocess on its own: logits of 4 candidates, hashes of 3
    post = {"logits": np.zeros((1, 4, len(client.actions)), np.float32), "input_error": np.zeros((1, 1), np.int32),
            "candidate_post_hashes": np.ones((1, 3, 2), np.int64)}
    ok, (status, message) = infer(server.http_url, post, POSTPROCESS, "http")
    assert not ok and status == "400" and "logits" in message and "candidate_post_hashes" in message, message


def test_out_of_range_and_empty_inputs_get_400_over_http(server, client, limits):
    base = request_arrays(client, seed=4)
    vocab = next(s["high"] for s in client.inputs if s["name"] == "candidate_post_hashes")

    def changed(name, value):
        a = base[name].copy()
        a.reshape(-1)[0] = value
        return {**base, name: a}

    cases = {
        "hash above its table": (changed("candidate_post_hashes", vocab), None, "candidate_post_hashes"),
        "negative hash": (changed("user_hashes", -1), None, "user_hashes"),
        "surface outside its vocabulary": (changed("history_product_surface", 10_000), None,
                                           "history_product_surface"),
        "action not 0/1": (changed("history_actions", 2.0), None, "history_actions"),
        # JSON INT64 2^40: parsed exactly, never wrapped into a valid hash
        "JSON INT64 2^40 hash": (base, {"user_hashes": json.dumps([2 ** 40, 1])}, "user_hashes"),
        "C = 0": ({k: v[:, :0] if k.startswith("candidate") else v for k, v in base.items()}, None, "C = 0"),
        "B = 0": ({k: v[:0] for k, v in base.items()}, None, ""),     # Triton core: "input byte size mismatch"
    }
    for what, (arrays, replace, named) in cases.items():
        status, body = http_post(server.http_url, f"/v2/models/{ENSEMBLE}/infer", json_body(arrays, replace))
        assert status == 400, f"{what}: HTTP {status} {body}"
        assert named in body, f"{what}: {body}"
    # the same checks guard the other Python models on their own
    names = [s["name"] for s in client.config["retrieval_inputs"]]
    retrieval = {k: v for k, v in base.items() if k in names}
    for what, arrays, replace, named in (
            ("retrieval hash 2^40", retrieval, {"user_hashes": json.dumps([2 ** 40, 1])}, "user_hashes"),
            ("retrieval top_k 0", {**retrieval, "top_k": np.zeros((1, 1), np.int32)}, None, "top_k"),
            ("retrieval top_k above the maximum", {**retrieval, "top_k": np.full((1, 1), 10 ** 6, np.int32)},
             None, "top_k")):
        status, body = http_post(server.http_url, f"/v2/models/{RETRIEVAL}/infer", json_body(arrays, replace))
        assert status == 400 and named in body, f"{what}: HTTP {status} {body}"
    post = {"logits": np.zeros((1, 3, len(client.actions)), np.float32), "input_error": np.zeros((1, 1), np.int32),
            "candidate_post_hashes": np.full((1, 3, 2), vocab, np.int64)}
    status, body = http_post(server.http_url, f"/v2/models/{POSTPROCESS}/infer", json_body(post))
    assert status == 400 and "candidate_post_hashes" in body, body
    post = {**post, "candidate_post_hashes": np.ones((1, 3, 2), np.int64),
            "logits": np.zeros((1, limits.max_candidates + 1, len(client.actions)), np.float32)}
    post["candidate_post_hashes"] = np.ones((1, limits.max_candidates + 1, 2), np.int64)
    status, body = http_post(server.http_url, f"/v2/models/{POSTPROCESS}/infer", json_body(post))
    assert status == 400 and "max_candidates" in body, body


# ------------------------------------------------------------------------------------------ concurrency

def test_64_concurrent_clients_with_25_percent_bad_requests(server, client):
    n = 64
    good = {i: request_arrays(client, seed=100 + i, num_candidates=1 if i % 8 == 1 else 1 + (7 * i) % 48)
            for i in range(n) if i % 4}
    alone = {}
    for i, arrays in good.items():            # each good request's answer when it is the only one in flight
        ok, out = infer(server.grpc_url, arrays)
        assert ok, out
        alone[i] = out
    bad = {}
    for j, i in enumerate(i for i in range(n) if i % 4 == 0):
        base = request_arrays(client, seed=100 + i)
        kind = j % 4
        if kind == 0:
            a = base["candidate_post_hashes"].copy()
            a[0, 0, 0] = 10 ** 12
            bad[i] = ({**base, "candidate_post_hashes": a}, "candidate_post_hashes")
        elif kind == 1:
            bad[i] = ({**base, "candidate_product_surface": base["candidate_product_surface"][:, :3]},
                      "candidate_product_surface")
        elif kind == 2:
            bad[i] = (with_candidates(base, client.limits.max_candidates + 1), "max_candidates")
        else:
            bad[i] = ({k: v[:, :0] if k.startswith("candidate") else v for k, v in base.items()}, "C = 0")
    results: dict[int, tuple] = {}
    barrier = threading.Barrier(n)

    def one(i):
        protocol = "grpc" if i % 2 else "http"
        url = server.grpc_url if protocol == "grpc" else server.http_url
        arrays = good[i] if i in good else bad[i][0]
        barrier.wait(timeout=60)
        results[i] = infer(url, arrays, protocol=protocol)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == n, "some clients got no answer"
    mismatches = [i for i in good if not (results[i][0] and matches(results[i][1], alone[i]))]
    assert not mismatches, f"good requests whose answer differs from their answer alone: {mismatches}"
    identical = sum(1 for i in good if same_answer(results[i][1], alone[i]))
    print(f"\n64 concurrent clients: {len(good)} good requests, 0 mismatches ({identical} bit-identical to their "
          f"answer alone, the others within float32 rounding), {len(bad)} bad ones refused with 400")
    for i, (_, named) in bad.items():
        ok, detail = results[i]
        assert not ok and is_bad_input(detail[0]) and named in detail[1], (i, detail)
    assert server.is_ready()
    ok, out = infer(server.grpc_url, good[1])
    assert ok and same_answer(out, alone[1])


# ------------------------------------------------------------------------------------------ a dead model process

def _kill_under_load(server, client, model: str, seconds: float = 60.0):
    """Kill `model`'s stub while 2 clients send requests; return (recovery s, red seen, answers, log)."""
    reqs = [request_arrays(client, seed=200 + i, num_candidates=1 + 3 * i) for i in range(4)]
    alone = []
    for arrays in reqs:
        ok, out = infer(server.grpc_url, arrays)
        assert ok, out
        alone.append(out)
    pid, stub = stub_of(server.process.pid, model)
    region = SHM / stub.region
    assert region.exists()
    stop, log = threading.Event(), []

    def load(k):
        i = k
        while not stop.is_set():
            ok, out = infer(server.grpc_url, reqs[i % 4], timeout=30)
            log.append((time.monotonic(), ok, ok and matches(out, alone[i % 4])))
            i += 1
            stop.wait(0.05)

    threads = [threading.Thread(target=load, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    t_kill = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    red = False
    recovered = None
    try:
        while time.monotonic() - t_kill < seconds:
            ready = health(server.health_url)[0]              # ours: red from the death until the model is back
            red = red or ready != 200
            late = [ok for t, ok, _ in log if t > t_kill + 0.2]
            if red and ready == 200 and late and late[-1]:
                recovered = time.monotonic() - t_kill
                break
            time.sleep(0.05)
        time.sleep(1.0)   # a few more requests after recovery
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    return recovered, red, alone, reqs, log, region


@pytest.mark.parametrize("model", [ENSEMBLE, RANKER])
def test_killed_model_process_heals_with_identical_answers(server, client, events, model):
    """With the admin APIs closed (the launcher's default): the supervisor heals through them with its key. Killed:
    `phoenix` (on the cpu target the one process behind the clients' requests) and an engine host alone."""
    assert http_post(server.http_url, "/v2/repository/index", b"{}")[0] == 403, "the admin APIs are open"
    before = len(events)
    recovered, red, alone, reqs, log, region = _kill_under_load(server, client, model)
    assert recovered is not None and recovered < 60, f"not serving again 60 s after killing {model}'s process"
    assert red, "readiness never turned red while the model was reloaded"
    assert any(f"'{model}'" in e and "died" in e for e in events[before:]), events[before:]
    assert any(f"'{model}' reloaded" in e for e in events[before:]), events[before:]
    assert not any(ok and not same for _, ok, same in log), "a request got another answer than before the kill"
    # alone, after the heal, each request gets bit for bit the answer it got alone before the kill
    assert not region.exists(), f"the dead stub's shared-memory region {region} is still there"
    for m in (ENSEMBLE, ENSEMBLE_EMBEDDINGS, RANKER, model):   # every model is back
        assert http_status(server.http_url, f"/v2/models/{m}/ready") == 200, m
    for arrays, expected in zip(reqs, alone):
        ok, out = infer(server.grpc_url, arrays)
        assert ok and same_answer(out, expected)
    print(f"\n{model}: killed, serving again after {recovered:.2f} s, "
          f"{sum(1 for _, ok, _ in log if not ok)} of {len(log)} requests failed meanwhile")


def test_unloading_a_model_on_purpose_is_not_healed(server, events):
    model = CANDIDATE_TOWER
    before = len(events)
    key = server.admin_headers()
    assert http_post(server.http_url, f"/v2/repository/models/{model}/unload", b"{}", headers=key)[0] == 200
    time.sleep(2.0)                               # four supervisor polls
    assert http_status(server.http_url, f"/v2/models/{model}/ready") != 200, "the supervisor loaded it back"
    assert not events[before:], events[before:]
    assert http_post(server.http_url, f"/v2/repository/models/{model}/load", b"{}", headers=key)[0] == 200
    assert server.is_ready()


# ------------------------------------------------------------------------------------------ command line

def test_cli_separates_input_errors_from_transport_errors(server):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "serving.client", "score", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    ok = cli("--url", server.grpc_url, "--json", "--user-id", "42", "--history", "5:1:favorite, reply:2",
             "--candidate", "11:1:0", "--candidate", "12:2:3")
    assert ok.returncode == 0, ok.stderr
    bad = cli("--url", server.grpc_url, "--candidate", "11:1")
    assert bad.returncode == 2 and "input error" in bad.stderr, bad.stderr
    unknown = cli("--url", server.grpc_url, "--user-id", "42", "--history", "5:1:no_such_action:2", "--candidate",
                  "11:1:0")
    assert unknown.returncode == 2 and "no_such_action" in unknown.stderr, unknown.stderr
    from serving.server import free_port
    down = cli("--url", f"127.0.0.1:{free_port()}")
    assert down.returncode == 3 and "connection error" in down.stderr, down.stderr


# ------------------------------------------------------------------------------------------ launcher crash

def _read_until(p: subprocess.Popen, lines: list[str], marker: str, timeout: float = 300) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            return False
        lines.append(line)
        if marker in line:
            return True
    return False


def test_launcher_restarts_a_dead_server_then_gives_up_after_max_restarts(repo, tmp_path):
    """kill -9 of tritonserver: the launcher starts it again (a log line, the same ports, the same answers);
    after --max-restarts restarts it gives up: exit 1 with the crash, no process or shared memory left."""
    log = tmp_path / "server.log"
    p = subprocess.Popen([sys.executable, "-m", "serving.server", "--model-repository", str(repo),
                          "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--log-file", str(log),
                          "--max-restarts", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        assert _read_until(p, lines, "Press Ctrl-C"), "".join(lines) + p.stderr.read()
        grpc_url = next(ln.split()[1] for ln in lines if ln.strip().startswith("gRPC"))
        with PhoenixClient(grpc_url) as client:
            request = demo_request(client.actions, seed=7, num_candidates=5)
            before = client.score(**request).ranking
        first = tritonserver_of(p.pid)
        first_stubs = list(stubs(first))
        os.kill(first, signal.SIGKILL)
        assert _read_until(p, lines, "ready again after restart 1", timeout=120), "".join(lines)
        said = "".join(lines)
        assert "[supervisor] tritonserver crashed (killed by signal 9 (SIGKILL)) after" in said, said
        assert "Restarting it in 1 s (restart 1, at most 1 within 600 s)" in said, said
        with PhoenixClient(grpc_url) as client:
            assert client.score(**request).ranking == before
        assert not no_process_left(first, first_stubs, timeout=10)
        second = tritonserver_of(p.pid)
        regions = [s.region for s in stubs(second).values()]
        os.kill(second, signal.SIGKILL)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 1
    assert "tritonserver crashed (killed by signal 9 (SIGKILL))" in err and "Giving up" in err, err
    assert "before it was ready" not in out + err, out + err
    assert not [r for r in regions if (SHM / r).exists()], "shared-memory regions left behind"
    assert not no_process_left(second, [], timeout=10)


def test_container_entry_point_heals_and_forwards_sigterm(repo, tmp_path):
    """The container's entry point heals a killed model process (with the admin APIs closed), and stops on
    SIGTERM."""
    with entry_point(repo, tmp_path, ["--exit-on-error=true"]) as box:
        assert health(box.health)[0] == 200
        assert http_post(box.http, "/v2/repository/index", b"{}")[0] == 403, "the admin APIs are open"
        with PhoenixClient(box.grpc) as client:
            request = demo_request(client.actions, seed=5, num_candidates=6)
            before = client.score(**request).ranking
            triton = tritonserver_of(box.process.pid)
            os.kill(stub_of(triton, ENSEMBLE)[0], signal.SIGKILL)      # the model the client calls
            deadline, after = time.monotonic() + 60, None
            while after is None and time.monotonic() < deadline:
                time.sleep(0.5)
                try:
                    after = client.score(**request).ranking
                except Exception:
                    pass
        assert after == before, "not serving the same answer again 60 s after the kill"
        box.process.send_signal(signal.SIGTERM)
        box.process.wait(timeout=60)
    err = box.text()
    assert "Signal (15) received" in err, "SIGTERM was not forwarded to tritonserver"
    # 0, or 1 when the killed instance's unload still waits for its dead stub (Triton's stub timeout, 30 s)
    # as --exit-timeout-secs runs out: tritonserver then exits at once, still through its own shutdown
    assert box.process.returncode == 0 or (box.process.returncode == 1 and "Exit timeout expired" in err), err[-3000:]
    assert f"'{ENSEMBLE}' reloaded" in err, err[-3000:]
    assert not no_process_left(triton, [], timeout=10)


# ------------------------------------------------------------------------------------------ a hung model process

HANG_TIMEOUT = 8.0          # the module server's --hang-timeout


def test_a_stopped_model_process_is_killed_and_reloaded(server, client, events):
    """A stub that stops (SIGSTOP, a cgroup freezer) is alive but answers nothing: Triton fails every request to
    its model as "not healthy", for good. The supervisor kills it after the hang timeout and heals the model. The
    stopped process is that of `phoenix`, the model the requests go to."""
    model = ENSEMBLE
    arrays = request_arrays(client, seed=300)
    ok, expected = infer(server.grpc_url, arrays)
    assert ok, expected
    before = len(events)
    pid, _ = stub_of(server.process.pid, model)
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        ok, out = False, None
        while not ok and time.monotonic() - t0 < HANG_TIMEOUT + 60:
            time.sleep(0.5)
            ok, out = infer(server.grpc_url, arrays, timeout=30)
    finally:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)           # never leave a stopped stub to the next tests
    assert ok, f"not serving {HANG_TIMEOUT + 60:.0f} s after stopping {model}'s process: {out}"
    assert same_answer(out, expected), "another answer after the reload"
    assert time.monotonic() - t0 >= HANG_TIMEOUT, "healed before the hang timeout: was the process stopped?"
    said = events[before:]
    assert any(f"'{model}' hangs: its process (pid {pid}) has been stopped" in e for e in said), said
    assert any(f"'{model}' reloaded" in e for e in said), said


SLEEPY_CONFIG = """name: "sleepy"
backend: "python"
max_batch_size: 0
input [ { name: "X", data_type: TYPE_INT32, dims: [ 1 ] } ]
output [ { name: "Y", data_type: TYPE_INT32, dims: [ 1 ] } ]
instance_group [ { count: 1, kind: KIND_CPU } ]
"""
SLEEPY_MODEL = """import threading
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    \"\"\"Y = X; X = 1 never returns (a hung execute), X = 2 takes one second.\"\"\"

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            if x[0] == 1:
                threading.Event().wait()
            if x[0] == 2:
                time.sleep(1.0)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x)]))
        return responses
"""
SLEEPY_HANG_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def sleepy(tmp_path_factory):
    """A one-model repository whose Python model can hang, served by the container's entry point with
    --hang-timeout 3. Yields (HTTP url, the supervisor's log)."""
    root = tmp_path_factory.mktemp("sleepy")
    (root / "repo" / "sleepy" / "1").mkdir(parents=True)
    (root / "repo" / "sleepy" / "config.pbtxt").write_text(SLEEPY_CONFIG)
    (root / "repo" / "sleepy" / "1" / "model.py").write_text(SLEEPY_MODEL)
    # on stop, do not wait long for the killed instance's unload
    with entry_point(root / "repo", root, ["--exit-timeout-secs=3"],
                     ["--hang-timeout", str(SLEEPY_HANG_TIMEOUT)]) as box:
        yield box.http, box.log


def sleepy_call(url: str, x: int) -> tuple[bool, object]:
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(url, connection_timeout=60, network_timeout=60) as c:
        tensor = httpclient.InferInput("X", [1], "INT32")
        tensor.set_data_from_numpy(np.array([x], np.int32))
        try:
            return True, int(c.infer("sleepy", [tensor]).as_numpy("Y")[0])
        except Exception as e:  # noqa: BLE001 - the answer under test
            return False, str(e)


def test_a_slow_model_that_keeps_finishing_is_left_alone(sleepy):
    """Six 1-second requests in one instance keep requests waiting for 5 s, longer than the hang timeout; the
    model finishes one every second, so it is not a hang."""
    url, log = sleepy
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: sleepy_call(url, 2), range(6)))
    assert answers == [(True, 2)] * 6, answers
    assert "hangs" not in log.read_text(errors="replace")


def test_a_model_whose_execute_never_returns_is_killed_and_reloaded(sleepy):
    """execute() never returns: Triton waits for it for good, and the requests behind it too. Once requests
    have waited the hang timeout with none finished, the supervisor kills the process and reloads the model."""
    url, log = sleepy
    with ThreadPoolExecutor(2) as pool:
        hung = pool.submit(sleepy_call, url, 1)
        time.sleep(0.5)
        behind = pool.submit(sleepy_call, url, 7)
        ok_hung, _ = hung.result(timeout=90)          # it ends, with an error, once the process is killed
        behind.result(timeout=90)                     # it ends too (an error, or an answer after the reload)
    assert not ok_hung
    deadline = time.monotonic() + 60
    while "'sleepy' reloaded" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.2)
    assert sleepy_call(url, 5) == (True, 5)
    text = log.read_text(errors="replace")
    assert "model 'sleepy' hangs: 1 request(s) have waited" in text, text


# ------------------------------------------------------------------------------------------ measurement

def ranker_stats(http_url: str) -> dict:
    with urllib.request.urlopen(f"http://{http_url}/v2/models/{RANKER}/stats", timeout=10) as r:
        s = json.loads(r.read())["model_stats"][0]
    return {"executions": int(s["execution_count"]), "inferences": int(s["inference_count"])}


def measure_batching(repo: Path, concurrency: int = 64, rounds: int = 3) -> dict:
    """Ranker engine executions for `concurrency` concurrent requests of C = 8 vs of mixed C (1..64):
    Triton statistics `execution_count` (engine calls) and `inference_count` (users) of phoenix_ranker."""
    out = {}
    with TritonServer(repo) as server, PhoenixClient(server.grpc_url) as client:
        workloads = {
            "C=8": [request_arrays(client, seed=i, num_candidates=8) for i in range(concurrency)],
            "mixed C (1..64)": [request_arrays(client, seed=i, num_candidates=1 + (37 * i) % 64)
                                for i in range(concurrency)],
        }
        for arrays in workloads["C=8"][:4]:       # warm up
            infer(server.grpc_url, arrays)
        for name, reqs in workloads.items():
            per_round = []
            for _ in range(rounds):
                before = ranker_stats(server.http_url)
                barrier = threading.Barrier(len(reqs))
                failures = []

                def one(a):
                    barrier.wait(timeout=60)
                    ok, detail = infer(server.grpc_url, a)
                    if not ok:
                        failures.append(detail)

                threads = [threading.Thread(target=one, args=(a,)) for a in reqs]
                t0 = time.monotonic()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(timeout=120)
                wall = time.monotonic() - t0
                after = ranker_stats(server.http_url)
                per_round.append({"executions": after["executions"] - before["executions"],
                                  "requests": after["inferences"] - before["inferences"],
                                  "wall_s": round(wall, 2), "failures": len(failures)})
            out[name] = per_round
    return out


if __name__ == "__main__":
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description="measure cross-C batching on the Python engine host")
    ap.add_argument("--measure-batching", action="store_true", required=True)
    ap.add_argument("--repo", default=None, help="a built repository (default: build the demo one in a temp dir)")
    args = ap.parse_args()
    if args.repo:
        target = Path(args.repo)
    else:
        from export import build

        target = Path(tempfile.mkdtemp()) / "repo"
        assert build.main([*SMALL_BUILD, "--output", str(target)]) == 0
    print(json.dumps(measure_batching(target), indent=1))
