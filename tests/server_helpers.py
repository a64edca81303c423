"""Helpers of the tests that run the REAL tritonserver (test_faults, test_security, test_rollover): requests,
their comparison, process and memory facts, and the container's entry point run as deploy/Dockerfile runs it."""
from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from phoenix_runtime.batching import stack_rows  # noqa: E402
from phoenix_runtime.manifest import ENSEMBLE  # noqa: E402
from serving.cli import demo_request  # noqa: E402
from serving.client import PhoenixClient  # noqa: E402
from serving.supervisor import (ADMIN_KEY_ENV, DRAIN_ENV, SHM, http_request, process_alive, stubs,  # noqa: E402
                                stubs_of_server)

DTYPES = {"int64": "INT64", "int32": "INT32", "float32": "FP32", "bool": "BOOL"}
MAX_REQUEST_MB = 8          # the small build's request-size limit: small, so a test reaches it cheaply
# the small build the server tests share (conftest.py `small_repo`): demo preset, no extra engines, tiny tables
SMALL_BUILD = ["--preset", "demo", "--target", "cpu", "--engines", "none", "--vocab", "2000", "--corpus", "64",
               "--top-k", "5", "--max-request-mb", str(MAX_REQUEST_MB)]
# Issue 24's "104-byte" request (105 bytes as written there): a JSON input declaring 2^41 INT64 values. Triton
# 2.51's HTTP frontend allocates the declared size before it reads the data: std::bad_alloc, abort (signal 6).
# Releases from 25.06 (2.59) on refuse it.
HUGE_SHAPE_BODY = (b'{"inputs":[{"name":"candidate_post_hashes","datatype":"INT64","shape":[1,1099511627776,2],'
                   b'"data":[1,2]}]}')


def request_arrays(client: PhoenixClient, seed: int, num_candidates: int = 8, num_history: int = 12) -> dict:
    """One demo user's [1, ...] arrays for the `phoenix` ensemble (ranker inputs + candidate_author_ids)."""
    row = client.build_row(**demo_request(client.actions, seed, num_history=num_history,
                                          num_candidates=num_candidates))
    names = [s["name"] for s in client.inputs if s["shape"][1:2] == ["C"]] + ["candidate_author_ids"]
    return stack_rows([row], names)


def with_candidates(arrays: dict, c: int) -> dict:
    """The same user with its first candidate repeated to c candidates (c may be far above the limit)."""
    return {k: np.ascontiguousarray(np.repeat(v[:, :1], c, axis=1)) if k.startswith("candidate") else v
            for k, v in arrays.items()}


def infer(url: str, arrays: dict, model: str = ENSEMBLE, protocol: str = "grpc", timeout: float = 60):
    """(True, {output: array}) or (False, (status, message)); status 400 / 'StatusCode.INVALID_ARGUMENT' ..."""
    if protocol == "grpc":
        import tritonclient.grpc as t
    else:
        import tritonclient.http as t
    kwargs = {"network_timeout": timeout, "connection_timeout": timeout} if protocol == "http" else {}
    with t.InferenceServerClient(url, **kwargs) as cl:
        inputs = []
        for name, a in arrays.items():
            a = np.ascontiguousarray(a)
            i = t.InferInput(name, list(a.shape), DTYPES[str(a.dtype)])
            i.set_data_from_numpy(a)
            inputs.append(i)
        try:
            res = cl.infer(model, inputs, **({"client_timeout": timeout} if protocol == "grpc" else {}))
        except t.InferenceServerException as e:
            return False, (str(e.status()), e.message() or "")
        response = res.get_response(**({"as_json": True} if protocol == "grpc" else {}))
        return True, {o["name"]: res.as_numpy(o["name"]) for o in response["outputs"]}


def is_bad_input(status) -> bool:
    return status in ("400", "StatusCode.INVALID_ARGUMENT")


def json_body(arrays: dict, replace: dict | None = None) -> bytes:
    """A KServe v2 JSON request; `replace` = {input name: raw JSON text of its data list} (values numpy cannot
    hold, e.g. 2^40 for an INT32 input)."""
    parts = []
    for name, a in arrays.items():
        data = (replace or {}).get(name) or json.dumps(np.asarray(a).reshape(-1).tolist())
        parts.append(f'{{"name": "{name}", "shape": {list(a.shape)}, "datatype": "{DTYPES[str(a.dtype)]}", '
                     f'"data": {data}}}')
    return ('{"inputs": [' + ", ".join(parts) + "]}").encode()


def http_post(base: str, path: str, body: bytes, timeout: float = 60, headers: dict | None = None) -> tuple[int, str]:
    return http_request(f"http://{base}{path}", body, timeout=timeout, headers=headers)


def http_status(base: str, path: str) -> int:
    return http_request(f"http://{base}{path}", timeout=5)[0]


def server_memory_mb(server_pid: int) -> float:
    """Proportional set size (MiB) of tritonserver and its stubs: shared memory counted once."""
    pids = [server_pid, *stubs(server_pid)]
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        m = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
        total += int(m.group(1)) if m else 0
    return total / 1024


def stub_of(server_pid: int, model: str):
    found = [(pid, s) for pid, s in stubs(server_pid).items() if s.model == model]
    assert found, f"no stub process of {model} under tritonserver {server_pid}"
    return found[0]


def same_answer(got: dict, alone: dict) -> bool:
    """Bit-identical outputs (the same request in the same batch composition: e.g. alone, before and after)."""
    return set(got) == set(alone) and all(np.array_equal(got[k], alone[k], equal_nan=True) for k in alone)


def matches(got: dict, alone: dict) -> bool:
    """The request's own answer whatever it was batched with: the same ranking, every score equal up to float32
    rounding. Padded into a larger engine call, a request's floats may differ in the last bits (measured: up to
    3.6e-7 on probabilities for a C = 1 request batched with larger ones: ONNX Runtime picks another matmul
    path for one candidate row); another request's answer, or a corrupted one, differs by orders more."""
    if set(got) != set(alone) or not np.array_equal(got["ranking"], alone["ranking"]):
        return False
    return all(np.allclose(got[k], alone[k], rtol=1e-5, atol=1e-6, equal_nan=True) for k in alone)


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def tritonserver_of(pid: int) -> int:
    """The one tritonserver child of a launcher or entry point."""
    found = [c for c in children(pid) if b"tritonserver" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert len(found) == 1, f"expected one tritonserver under {pid}, found {found}"
    return found[0]


def wait_gone(pids, timeout: float = 30.0) -> list[int]:
    """The pids still alive (not zombies) after up to `timeout` s."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if process_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if process_alive(p)]
    return alive


def health(url: str, what: str = "ready") -> tuple[int, str]:
    """(status, reason) of our health endpoint's /v2/health/<what>."""
    status, body = http_request(f"{url}/v2/health/{what}", timeout=5)
    try:
        return status, json.loads(body).get("reason", "")
    except ValueError:
        return status, body


def wait_for(predicate, timeout: float, step: float = 0.2):
    """predicate()'s first truthy value within `timeout` s, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None


@dataclass
class Container:
    """The entry point under test: its process, the server's URLs, our health endpoint, the key, the log."""
    process: subprocess.Popen
    http: str
    grpc: str
    health: str
    key: str | None
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def entry_point_command(folder: Path, repo: Path, server_args=(), supervisor_args=()) -> tuple[list[str], dict, dict]:
    """The container's entry point as deploy/Dockerfile runs it: serving/supervisor.py copied alone into `folder`
    (stdlib only, no project code) running tritonserver with the image's flags plus `server_args`.
    Returns (argv, env, {"http", "grpc", "metrics", "health"} ports)."""
    from serving.server import free_port, server_command

    script = folder / "supervisor.py"
    shutil.copy(ROOT / "serving" / "supervisor.py", script)
    ports = {name: free_port() for name in ("http", "grpc", "metrics", "health")}
    cmd, env = server_command(repo, ports["http"], ports["grpc"], ports["metrics"], extra_args=[
        "--model-control-mode=explicit", "--load-model=*", "--strict-readiness=true", *server_args])
    argv = [sys.executable, str(script), "--http-url", f"http://127.0.0.1:{ports['http']}",
            "--metrics-url", f"http://127.0.0.1:{ports['metrics']}/metrics", "--health-host", "127.0.0.1",
            "--health-port", str(ports["health"]), *supervisor_args, "--", *cmd]
    return argv, env, ports


@contextlib.contextmanager
def entry_point(repo: Path, folder: Path, server_args=(), supervisor_args=(), drain: float = 0.0,
                key: str | None = "generate"):
    """Runs the container's entry point (entry_point_command) with PHOENIX_ADMIN_KEY set (`key` None: unset and
    --insecure-open-admin) and PHOENIX_DRAIN_SECONDS = `drain`. Yields a Container once the supervisor watches;
    stops it with SIGTERM unless the test already did."""
    argv, env, ports = entry_point_command(folder, repo, server_args, supervisor_args)
    if key == "generate":
        key = secrets.token_hex(24)
    if key:
        env[ADMIN_KEY_ENV] = key
    else:
        argv.insert(2, "--insecure-open-admin")
    env[DRAIN_ENV] = str(drain)
    log = folder / "container.log"
    with open(log, "w") as out:
        p = subprocess.Popen(argv, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
    box = Container(p, f"127.0.0.1:{ports['http']}", f"127.0.0.1:{ports['grpc']}",
                    f"http://127.0.0.1:{ports['health']}", key, log)
    try:
        deadline = time.monotonic() + 240
        while "watching its model processes" not in box.text():
            assert p.poll() is None and time.monotonic() < deadline, \
                "the server never became ready: " + box.text()[-3000:]
            time.sleep(0.2)
        yield box
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=90)
            except subprocess.TimeoutExpired:
                p.kill()                   # tritonserver gets SIGINT when its parent dies (PR_SET_PDEATHSIG)
                p.wait()


class Load:
    """`threads` clients sending `requests` (round robin) to the `phoenix` ensemble until stopped, over gRPC and
    HTTP in turn; each answer is checked against the request's answer alone (`matches`). `gate()` is asked
    before each request: False means do not send now (a load balancer that took the server out)."""

    def __init__(self, grpc_url: str, http_url: str, requests: list[dict], alone: list[dict], threads: int = 4,
                 gate=lambda: True, pause: float = 0.0):
        self.urls = {"grpc": grpc_url, "http": http_url}
        self.requests, self.alone, self.gate, self.pause = requests, alone, gate, pause
        self.log: list[tuple[float, float, bool, bool, object]] = []   # (sent, answered, ok, right, error)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(threads)]

    def _run(self, k: int):
        i = k
        while not self._stop.is_set():
            if not self.gate():
                self._stop.wait(0.02)
                continue
            protocol = "grpc" if i % 2 == 0 else "http"
            t0 = time.monotonic()
            try:
                ok, out = infer(self.urls[protocol], self.requests[i % len(self.requests)], protocol=protocol,
                                timeout=60)
            except Exception as e:  # noqa: BLE001 - a connection reset or refused is a failed request too
                ok, out = False, (type(e).__name__, str(e))
            right = ok and matches(out, self.alone[i % len(self.requests)])
            self.log.append((t0, time.monotonic(), ok, right, None if ok else out))
            i += 1
            if self.pause:
                self._stop.wait(self.pause)

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=90)

    @property
    def failed(self) -> list:
        return [(t0, error) for t0, _, ok, _, error in self.log if not ok]

    @property
    def wrong(self) -> int:
        return sum(1 for *_, ok, right, _ in self.log if ok and not right)


def answers_alone(url: str, requests: list[dict]) -> list[dict]:
    out = []
    for arrays in requests:
        ok, answer = infer(url, arrays)
        assert ok, answer
        out.append(answer)
    return out


def region_sizes(server_pid: int) -> dict[str, int]:
    """{model: bytes} of the shared-memory regions of tritonserver's live stubs."""
    out = {}
    for s in stubs(server_pid).values():
        try:
            out[s.model] = max(out.get(s.model, 0), (SHM / s.region).stat().st_size)
        except OSError:
            pass
    return out


def no_process_left(server_pid: int, stub_pids, timeout: float = 30.0) -> list[str]:
    """What is still running of a stopped server: tritonserver itself and its stubs."""
    left = [f"tritonserver {p}" for p in wait_gone([server_pid], timeout)]
    left += [f"stub {p}" for p in wait_gone(stub_pids, timeout)]
    left += [f"stub {p} ({s.model})" for p, s in stubs_of_server(server_pid).items()]
    return left
