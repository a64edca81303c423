"""Safe to expose (issue 24), on the REAL tritonserver: what a plain client can no longer do, what the operator's key
still does, readiness that tells the truth, a dead server that comes back, reloads without outage, memory after a
refused large body; the container's entry point the same way.

One server for the module: the launcher's defaults (TritonServer: a fresh admin key, the admin APIs closed, our
health endpoint) on a private copy of the small build (conftest.py `small_repo`, request limit 8 MiB), since one
test edits a config. The test that kills tritonserver runs last: the server after it is a new process.
"""
from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import tritonclient.grpc as grpcclient
from server_helpers import (HUGE_SHAPE_BODY, MAX_REQUEST_MB, Load, answers_alone, entry_point, entry_point_command,
                            health, http_post, http_status, infer, is_bad_input, no_process_left, region_sizes,
                            request_arrays, same_answer, server_memory_mb, stubs, tritonserver_of, wait_for,
                            with_candidates)
from tritonclient.utils import InferenceServerException

from phoenix_runtime.manifest import ENSEMBLE, POSTPROCESS, RANKER
from serving.server import TritonServer
from serving.supervisor import ADMIN_HEADER, ADMIN_KEY_ENV, GRPC_ADMIN_HEADER, http_request

RESTRICTED_HTTP = f"This API is restricted, expecting header '{ADMIN_HEADER}'"
RESTRICTED_GRPC = f"This protocol is restricted, expecting header '{GRPC_ADMIN_HEADER}'"


@pytest.fixture(scope="module")
def repo(small_repo, tmp_path_factory):
    out = tmp_path_factory.mktemp("security") / "repo"
    shutil.copytree(small_repo, out)
    return out


@pytest.fixture(scope="module")
def events():
    return []


@pytest.fixture(scope="module")
def server(repo, events):
    with TritonServer(repo, on_event=events.append) as s:
        yield s


def evil_model(marker) -> tuple[str, str]:
    """(config JSON, model.py) of a Python model whose code, if it ever runs, creates `marker`."""
    config = json.dumps({"name": "evil", "backend": "python", "max_batch_size": 0,
                         "input": [{"name": "X", "data_type": "TYPE_INT32", "dims": [1]}],
                         "output": [{"name": "Y", "data_type": "TYPE_INT32", "dims": [1]}]})
    source = (f"open({str(marker)!r}, 'w').write('the uploaded code ran')\n\n\n"
              "class TritonPythonModel:\n    def execute(self, requests):\n        return []\n")
    return config, source


def model_states(server) -> dict[str, str]:
    status, body = http_post(server.http_url, "/v2/repository/index", b"{}", headers=server.admin_headers())
    assert status == 200, body
    return {m["name"]: m.get("state") for m in json.loads(body)}


def all_served_ready(server) -> bool:
    states = model_states(server)
    return all(states.get(m) == "READY" for m in server.supervisor.models)


# ------------------------------------------------------------------------------------------ closed to clients

def test_admin_apis_are_refused_over_http_and_uploaded_code_never_runs(server, tmp_path):
    marker = tmp_path / "marker"
    config, source = evil_model(marker)
    upload = json.dumps({"parameters": {"config": config,
                                        "file:1/model.py": base64.b64encode(source.encode()).decode()}}).encode()
    region = next(s.region for s in stubs(server.process.pid).values() if s.model == RANKER)
    attacks = {
        "load with uploaded code": ("/v2/repository/models/evil/load", upload),
        "load of a served model": (f"/v2/repository/models/{ENSEMBLE}/load", b"{}"),
        "unload": (f"/v2/repository/models/{RANKER}/unload", b"{}"),
        "repository index": ("/v2/repository/index", b"{}"),
        "system shared memory on the ranker's own region": (
            "/v2/systemsharedmemory/region/steal/register",
            json.dumps({"key": f"/{region}", "offset": 0, "byte_size": 4096}).encode()),
        "system shared memory status": ("/v2/systemsharedmemory/status", None),
        "CUDA shared memory": ("/v2/cudasharedmemory/region/steal/register",
                               json.dumps({"raw_handle": {"b64": base64.b64encode(bytes(64)).decode()},
                                           "device_id": 0, "byte_size": 64}).encode()),
        "logging on": ("/v2/logging", json.dumps({"log_verbose_level": 1}).encode()),
        "logging off": ("/v2/logging", json.dumps({"log_info": False, "log_warning": False,
                                                   "log_error": False}).encode()),
        "logging read": ("/v2/logging", None),
        "trace settings": ("/v2/trace/setting", json.dumps({"trace_level": ["TIMESTAMPS"]}).encode()),
        "model trace settings": (f"/v2/models/{ENSEMBLE}/trace/setting",
                                 json.dumps({"trace_level": ["TIMESTAMPS"]}).encode()),
    }
    for what, (path, body) in attacks.items():
        status, text = http_request(f"http://{server.http_url}{path}", body, timeout=30)
        assert status == 403 and RESTRICTED_HTTP in text, f"{what}: HTTP {status} {text}"
    time.sleep(2.0)
    assert not marker.exists(), "the uploaded model's code ran"
    states = model_states(server)
    assert "evil" not in states and all_served_ready(server), states
    key = server.admin_headers()
    status, text = http_request(f"http://{server.http_url}/v2/logging", timeout=10, headers=key)
    assert status == 200 and json.loads(text)["log_verbose_level"] == 0, text
    status, text = http_request(f"http://{server.http_url}/v2/systemsharedmemory/status", timeout=10, headers=key)
    assert status == 200 and json.loads(text) == [], text
    assert server.is_ready()
    # the control: with the key the same upload runs its code, so the marker would show a refused one that ran
    status, text = http_post(server.http_url, "/v2/repository/models/evil/load", upload, headers=key)
    assert status == 200 and wait_for(marker.exists, 30), f"HTTP {status} {text}"
    assert http_post(server.http_url, "/v2/repository/models/evil/unload", b"{}", headers=key)[0] == 200


def test_admin_apis_are_refused_over_grpc(server, tmp_path):
    marker = tmp_path / "marker"
    config, source = evil_model(marker)
    region = next(s.region for s in stubs(server.process.pid).values() if s.model == RANKER)
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        attacks = {
            "load with uploaded code": lambda: c.load_model("evil", config=config,
                                                            files={"file:1/model.py": source.encode()}),
            "load of a served model": lambda: c.load_model(POSTPROCESS),
            "unload": lambda: c.unload_model(RANKER),
            "repository index": lambda: c.get_model_repository_index(),
            "system shared memory": lambda: c.register_system_shared_memory("steal", f"/{region}", 4096),
            "system shared memory status": lambda: c.get_system_shared_memory_status(),
            "CUDA shared memory": lambda: c.register_cuda_shared_memory("steal", bytes(64), 0, 64),
            "logging": lambda: c.update_log_settings({"log_verbose_level": 1}),
            "logging read": lambda: c.get_log_settings(),
            "trace settings": lambda: c.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]}),
            "model trace settings": lambda: c.update_trace_settings(ENSEMBLE,
                                                                    {"trace_level": ["TIMESTAMPS"]}),
        }
        for what, call in attacks.items():
            with pytest.raises(InferenceServerException) as refused:
                call()
            assert RESTRICTED_GRPC in refused.value.message(), f"{what}: {refused.value}"
            assert str(refused.value.status()) == "StatusCode.UNAVAILABLE", f"{what}: {refused.value.status()}"
        time.sleep(2.0)
        assert not marker.exists(), "the uploaded model's code ran"
        key = server.admin_headers("grpc")
        verbose = c.get_log_settings(headers=key, as_json=True)["settings"]["log_verbose_level"]
        assert verbose.get("uint32Param", 0) == 0, verbose      # protobuf JSON leaves out a 0
        assert "evil" not in {m.name for m in c.get_model_repository_index(headers=key).models}
    assert all_served_ready(server) and wait_for(server.is_ready, 10), health(server.health_url)


def test_inference_metadata_and_health_stay_open(server, client):
    for path in ("/v2", f"/v2/models/{ENSEMBLE}", f"/v2/models/{POSTPROCESS}/config",
                 f"/v2/models/{RANKER}/stats", "/v2/health/live", "/v2/health/ready",
                 f"/v2/models/{ENSEMBLE}/ready"):
        assert http_status(server.http_url, path) == 200, path
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        assert c.is_server_ready() and c.get_server_metadata().name
        assert c.get_model_metadata(ENSEMBLE).name == ENSEMBLE
        assert c.get_inference_statistics(RANKER).model_stats
    arrays = request_arrays(client, seed=1)
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        ok, out = infer(url, arrays, protocol=protocol)
        assert ok and len(out["ranking"][0]) == arrays["candidate_post_hashes"].shape[1], out


# ------------------------------------------------------------------------------------------ the operator

def test_operator_unload_turns_our_readiness_red_and_a_reload_with_the_key_brings_it_back(server, client, events):
    arrays = request_arrays(client, seed=2)
    ok, expected = infer(server.grpc_url, arrays)
    assert ok and health(server.health_url) == (200, "ready")
    before = len(events)
    status, text = http_post(server.http_url, f"/v2/repository/models/{ENSEMBLE}/unload", b"{}",
                             headers=server.admin_headers())
    assert status == 200, text
    red = wait_for(lambda: (lambda s: s if s[0] == 503 else None)(health(server.health_url)), 5, 0.1)
    assert red and ENSEMBLE in red[1], red
    time.sleep(2.0)                                    # the supervisor leaves a model unloaded on purpose
    assert health(server.health_url)[0] == 503 and not events[before:], events[before:]
    assert health(server.health_url, "live")[0] == 200
    print(f"\nafter the operator's unload: our readiness 503 ({red[1]}); Triton's own /v2/health/ready "
          f"{http_status(server.http_url, '/v2/health/ready')}")
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        key = server.admin_headers("grpc")
        c.load_model(ENSEMBLE, headers=key)
    assert wait_for(lambda: health(server.health_url)[0] == 200, 30), health(server.health_url)
    ok, out = infer(server.grpc_url, arrays)
    assert ok and same_answer(out, expected)


CONFIG_EDITS = [("a parameter", lambda t: t + 'parameters { key: "operator_note" value { string_value: "r1" } }\n'),
                ("a second instance", lambda t: t.replace("count: 1", "count: 2")),
                ("back to one instance", lambda t: t.replace("count: 2", "count: 1"))]


def test_documented_reloads_under_load_lose_no_request(server, client, events, repo):
    """Edit the config of `phoenix` (the model the clients call: on the cpu target one Python model), POST load
    with the key, three times (a full reload, an instance added, an instance removed), under load from 4 clients: every request answered, and right; the supervisor heals
    nothing (the model-level process the Python backend runs during a load, and a removed instance, end by
    design)."""
    requests = [request_arrays(client, seed=20 + i, num_candidates=1 + 5 * i) for i in range(4)]
    alone = answers_alone(server.grpc_url, requests)
    config = repo / ENSEMBLE / "config.pbtxt"
    original = config.read_text()
    before = len(events)
    seconds = {}
    try:
        with Load(server.grpc_url, server.http_url, requests, alone, threads=4) as load:
            for what, edit in CONFIG_EDITS:
                old_pids = {p for p, s in stubs(server.process.pid).items() if s.model == ENSEMBLE}
                config.write_text(edit(config.read_text()))
                t0 = time.monotonic()
                status, text = http_post(server.http_url, f"/v2/repository/models/{ENSEMBLE}/load",
                                         b"{}", timeout=120, headers=server.admin_headers())
                seconds[what] = time.monotonic() - t0
                assert status == 200, f"{what}: HTTP {status} {text}"
                time.sleep(2.5)                        # past the supervisor's grace for a vanished process
                new_pids = {p for p, s in stubs(server.process.pid).items() if s.model == ENSEMBLE}
                assert new_pids - old_pids or what == "back to one instance", f"{what}: no new model process"
        sent = len(load.log)
    finally:
        config.write_text(original)
        http_post(server.http_url, f"/v2/repository/models/{ENSEMBLE}/load", b"{}", timeout=120,
                  headers=server.admin_headers())
    print(f"\nthree reloads of {ENSEMBLE} under load ("
          + ", ".join(f"{w}: {s:.1f} s" for w, s in seconds.items())
          + f"): {sent} requests, {len(load.failed)} failed, {load.wrong} wrong")
    assert sent > 20, "too few requests to say anything"
    assert not load.failed, load.failed[:3]
    assert not load.wrong
    assert not [e for e in events[before:] if "died" in str(e)], events[before:]
    assert server.is_ready()


def test_memory_after_a_refused_oversized_body_returns_to_its_level(server, client, events):
    """A request far above the build's request limit is refused with 400, but it went through Triton's buffers and
    the shared-memory region of `phoenix` (the model it was sent to) first. The supervisor reloads that model in place (no request fails) and
    tritonserver keeps no copy: the region and the server's memory return near their level before."""
    requests = [request_arrays(client, seed=40 + i) for i in range(2)]
    alone = answers_alone(server.grpc_url, requests)
    pid = server.process.pid
    time.sleep(1.0)
    before_mb, before_region = server_memory_mb(pid), region_sizes(pid)[ENSEMBLE]
    big = with_candidates(requests[0], 3_000_000)
    body_mb = sum(a.nbytes for a in big.values()) / 2 ** 20
    with Load(server.grpc_url, server.http_url, requests, alone, threads=1, pause=0.05) as load:
        ok, (status, message) = infer(server.grpc_url, big)
        assert not ok and is_bad_input(status) and "max_request_bytes" in message, (status, message)
        peak_mb, peak_region = server_memory_mb(pid), region_sizes(pid).get(ENSEMBLE, 0)
        back = wait_for(lambda: any("reloaded in place" in str(e) for e in events)
                        and region_sizes(pid).get(ENSEMBLE, 1 << 40) <= before_region, 60)
        time.sleep(2.0)
    after_mb, after_region = server_memory_mb(pid), region_sizes(pid)[ENSEMBLE]
    print(f"\nrefused a {body_mb:.0f} MiB request (limit {MAX_REQUEST_MB} MiB): {ENSEMBLE} region "
          f"{before_region / 2 ** 20:.0f} -> {peak_region / 2 ** 20:.0f} -> {after_region / 2 ** 20:.0f} MiB, "
          f"server PSS {before_mb:.0f} -> {peak_mb:.0f} -> {after_mb:.0f} MiB; {len(load.log)} requests meanwhile, "
          f"{len(load.failed)} failed")
    assert back, f"the region of {ENSEMBLE} is still {region_sizes(pid)} after 60 s: {events[-3:]}"
    assert after_region <= before_region
    assert after_mb - before_mb < 40, f"server memory {before_mb:.0f} MiB before, {after_mb:.0f} MiB after"
    assert not load.failed and not load.wrong, load.failed[:3]


# ------------------------------------------------------------------------------------------ a dead server (last)

def test_the_104_byte_request_that_kills_tritonserver_is_followed_by_identical_answers(server, client):
    arrays = request_arrays(client, seed=3)
    ok, expected = infer(server.grpc_url, arrays)
    assert ok
    first = server.process.pid
    first_stubs = list(stubs(first))
    t0 = time.monotonic()
    status, text = http_request(f"http://{server.http_url}/v2/models/{ENSEMBLE}/infer", HUGE_SHAPE_BODY,
                                timeout=60)
    # Triton 2.51 aborts (std::bad_alloc) before it answers; from 2.59 (25.06) on it answers 400 instead
    assert status == 0, f"the bundled tritonserver answered HTTP {status} {text}: update the README's Security"
    red = wait_for(lambda: health(server.health_url)[0] == 503, 10, 0.1)
    back = wait_for(lambda: (lambda r: r[0] and same_answer(r[1], expected))(infer(server.grpc_url, arrays,
                                                                                   timeout=10)), 60, 0.5)
    took = time.monotonic() - t0
    assert back, f"no identical answer 60 s after the request: {server.restarts}"
    assert red, "readiness never turned red while tritonserver was down"
    assert server.process.pid != first and len(server.restarts) == 1
    assert "killed by signal 6 (SIGABRT)" in server.restarts[0]["reason"], server.restarts
    assert wait_for(lambda: health(server.health_url)[0] == 200, 30)
    assert not no_process_left(first, first_stubs, timeout=10)
    print(f"\n104-byte request: tritonserver aborted, restarted, identical answers again after {took:.1f} s")


# ------------------------------------------------------------------------------------------ the container

def test_container_entry_point_refuses_to_start_without_a_key(small_repo, tmp_path):
    argv, env, _ = entry_point_command(tmp_path, small_repo)
    env.pop(ADMIN_KEY_ENV, None)
    for key, named in ((None, "kubectl create secret generic phoenix-admin-key"), ("short", "16 to 512")):
        if key is not None:
            env[ADMIN_KEY_ENV] = key
        t0 = time.monotonic()
        r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        assert ADMIN_KEY_ENV in r.stderr and named in r.stderr, r.stderr
        assert key is not None or "--insecure-open-admin" in r.stderr, r.stderr
        assert time.monotonic() - t0 < 20, "it started something"


def test_container_entry_point_closes_admin_apis_restarts_a_dead_server_and_drains(small_repo, tmp_path):
    """deploy/'s settings: the key from the environment, our health endpoint, a restart after the 104-byte
    request, and SIGTERM: readiness red at once, inference served through the drain, exit 0, nothing left."""
    drain = 3.0
    with entry_point(small_repo, tmp_path, ["--exit-timeout-secs=10"], drain=drain) as box:
        assert box.key not in box.text(), "the key is in the log"
        assert http_post(box.http, "/v2/repository/index", b"{}")[0] == 403
        assert http_post(box.http, "/v2/repository/index", b"{}", headers={ADMIN_HEADER: box.key})[0] == 200
        assert health(box.health) == (200, "ready")
        from serving.client import PhoenixClient
        with PhoenixClient(box.grpc) as client:
            arrays = request_arrays(client, seed=9)
        ok, expected = infer(box.grpc, arrays)
        first = tritonserver_of(box.process.pid)
        assert http_request(f"http://{box.http}/v2/models/{ENSEMBLE}/infer", HUGE_SHAPE_BODY,
                            timeout=60)[0] == 0
        back = wait_for(lambda: (lambda r: r[0] and same_answer(r[1], expected))(infer(box.grpc, arrays, timeout=10)),
                        60, 0.5)
        assert back, box.text()[-3000:]
        assert "crashed (killed by signal 6 (SIGABRT))" in box.text() and "Restarting it in 1 s" in box.text()
        assert wait_for(lambda: health(box.health)[0] == 200, 30), health(box.health)
        second = tritonserver_of(box.process.pid)
        second_stubs = list(stubs(second))
        t0 = time.monotonic()
        box.process.send_signal(signal.SIGTERM)
        red = wait_for(lambda: health(box.health)[0] == 503, 2, 0.05)
        red_after = time.monotonic() - t0
        ok_during, _ = infer(box.grpc, arrays, timeout=10)          # still served while draining
        box.process.wait(timeout=drain + 60)
        stopped_after = time.monotonic() - t0
    assert red and red_after < 1.0, f"readiness red {red_after:.2f} s after SIGTERM"
    assert ok_during, "an inference request during the drain failed"
    assert box.process.returncode == 0, box.text()[-3000:]
    assert stopped_after >= drain
    assert not no_process_left(first, [], timeout=10) and not no_process_left(second, second_stubs, timeout=10)
    assert box.key not in box.text()
    print(f"\ncontainer entry point: restarted after the 104-byte request; SIGTERM: readiness red after "
          f"{red_after:.2f} s, exit 0 after {stopped_after:.1f} s (drain {drain:g} s)")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", *sys.argv[1:]]))
