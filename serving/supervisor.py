"""Run tritonserver safely: admin APIs behind a key, our own health endpoint, healing, restarts, a graceful stop.

Two ways to run it: `python -m serving.server` (serving/server.py) runs one `ServerSupervisor` per server it
launches; in a container without this project (NVIDIA's tritonserver image, deploy/Dockerfile) this file alone,
stdlib only, is the entry point:

    PHOENIX_ADMIN_KEY=... python3 supervisor.py --http-url http://127.0.0.1:8000 -- tritonserver --model-repository=/models ...

What it adds to tritonserver (each part below has its own section):

- **Admin APIs closed.** tritonserver gets its own restriction flags (`--http-restricted-api`,
  `--grpc-restricted-protocol`) for ADMIN_APIS: model repository (load, also with uploaded files: code
  execution; unload; index), shared memory (system and CUDA), logging and trace settings. A request to them
  needs the header `phoenix-admin-key: <key>` (over gRPC Triton expects the metadata key
  `triton-grpc-protocol-phoenix-admin-key`); without it HTTP answers 403 and gRPC UNAVAILABLE. Inference,
  metadata, model config, statistics and health stay open. The supervisor sends the key on all its own calls,
  so healing works with the restrictions on. The container reads the key from PHOENIX_ADMIN_KEY (a Kubernetes
  Secret) and refuses to start without one unless `--insecure-open-admin` is given; the launcher makes a fresh
  one per start.
- **Health endpoint of ours** (`--health-port`, 8003 in the container): `GET /v2/health/ready` is 200 only when
  tritonserver has become ready and is live, every model of the repository's manifest (else: every model its
  index lists) is READY, no model is being healed and we are not draining; else 503 with the reason. Triton's
  own /v2/health/ready stays 200 while a dead model process fails every request (Triton keeps the model
  READY), and with strict readiness it stays red for good once any model it knows is not ready, also one
  outside the manifest. `GET /v2/health/live` is 200 while tritonserver runs or
  is being restarted, 503 once the supervisor has given up.
- **Dead model processes healed** (StubSupervisor): a Python-backend stub that dies, or hangs, is replaced by
  a reload of its model through the repository API.
- **Dead server restarted.** When tritonserver itself dies after it was ready (a crash, a signal, the
  std::bad_alloc abort of Triton 2.51 on a JSON request declaring a huge shape), it is started again with the
  same command after 1, 2, 4 ... at most 30 s, with a log line each time; after more than `max_restarts`
  restarts within `restart_window` s the supervisor gives up (liveness red, exit non-zero). The dead server's
  stub processes are killed and their shared-memory regions removed.
- **Memory after refused large requests.** The Python backend copies every request into its model's
  shared-memory region, which grows to fit and never shrinks: a refused 500 MiB body leaves 500 MiB there.
  A region above `shm_limit` (default: twice the build's max_request_bytes, at least 64 MiB) makes the
  supervisor reload that model in place (a load with a config override: the old instance serves until the new
  one is ready; no request fails), which frees the region. tritonserver runs with glibc malloc tunables that
  return large freed buffers to the system (MALLOC_TUNABLES) and keeps no gRPC request objects for reuse
  (MEMORY_ARGS), which would otherwise hold the capacity of the largest request seen.
- **Graceful stop.** On SIGTERM (or SIGINT): readiness turns red at once; inference keeps being served for the
  drain period (`--drain-seconds`, env PHOENIX_DRAIN_SECONDS, default 5) so load balancers stop sending;
  then tritonserver gets SIGTERM and finishes the requests in flight (its --exit-timeout-secs); then the
  supervisor exits 0 with no process left behind. A second signal ends the drain at once.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

STUB = "triton_python_backend_stub"
HANG_TIMEOUT = 30.0     # seconds; far above the longest legitimate engine call within a build's limits
HANG_TIMEOUT_HELP = (f"seconds a model process may stay stopped, or a model keep requests waiting without finishing "
                     f"any, before its process is killed and the model reloaded (default: {HANG_TIMEOUT:.0f}; "
                     f"0: never)")
SHM = Path("/dev/shm")

# ---------------------------------------------------------------------------------------------- the admin key
ADMIN_HEADER = "phoenix-admin-key"                       # HTTP header carrying the operator's key
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"   # the gRPC metadata key Triton expects for it
ADMIN_KEY_ENV = "PHOENIX_ADMIN_KEY"                      # the container reads the key from here
# Triton 2.51's restrictable API groups (`tritonserver --help`): health, metadata, inference, shared-memory,
# model-config, model-repository, statistics, trace, logging. Only an operator needs these four; the client
# reads model-config, benchmarks read statistics (read-only counters, as on the metrics port).
ADMIN_APIS = ("model-repository", "shared-memory", "logging", "trace")
ADMIN_KEY_FORMAT = re.compile(r"[A-Za-z0-9_.~-]{16,512}")   # fits Triton's `<apis>:<header>=<key>` flag
MAKE_A_KEY = ("make one, e.g. `kubectl create secret generic phoenix-admin-key "
              "--from-literal=admin-key=\"$(openssl rand -hex 32)\"` (deploy/kubernetes reads it into "
              f"{ADMIN_KEY_ENV}) or `docker run -e {ADMIN_KEY_ENV}=\"$(openssl rand -hex 32)\" ...`")

# ---------------------------------------------------------------------------------------------- defaults
HEALTH_PORT = 8003                  # our health endpoint in the container (deploy/: port name `health`)
DRAIN_SECONDS = 5.0                 # serving on after SIGTERM while readiness is red
DRAIN_ENV = "PHOENIX_DRAIN_SECONDS"
MAX_RESTARTS, RESTART_WINDOW = 5, 600.0     # more restarts than this within the window: give up
LOAD_TIMEOUT = 600.0        # seconds one model (re)load may take (a GPU engine builds its profiles while loading)
STARTUP_TIMEOUT = 600.0     # seconds a (re)started tritonserver may take to load every model and be ready
FIRST_BACKOFF, MAX_BACKOFF = 1.0, 30.0      # seconds before restart n: FIRST_BACKOFF * 2**(n-1), at most MAX_BACKOFF
SHM_MIN_LIMIT = 64 * 2 ** 20        # a model's shared-memory region above max(this, 2 x max_request_bytes) is freed
SHM_RELOAD_COOLDOWN = 10.0          # seconds between two such reloads of one model
RELOAD_PARAMETER = "phoenix_reload"     # the config parameter a controlled reload changes (Triton skips equal configs)
# glibc keeps large freed buffers (a refused request body) in its heaps unless told otherwise: allocations from
# 64 KiB on are mapped and unmapped, and free memory at a heap's top is returned from 64 KiB on
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=65536"
IGNORED = re.compile(r"NVML|DCGM|CudaDriverHelper|cuda|GPU", re.I)   # harmless server lines on a CPU machine


def new_admin_key() -> str:
    return secrets.token_urlsafe(32)


def check_admin_key(key: str, where: str = ADMIN_KEY_ENV) -> str:
    """The key, or ValueError naming `where` when it cannot be one."""
    if not ADMIN_KEY_FORMAT.fullmatch(key):
        raise ValueError(f"{where}: the admin key must be 16 to 512 characters of A-Z a-z 0-9 _ . ~ - "
                         f"(it goes into tritonserver's restriction flags); {MAKE_A_KEY}")
    return key


def restriction_args(key: str) -> list[str]:
    """tritonserver flags that close ADMIN_APIS over HTTP and gRPC to requests without the key."""
    apis = ",".join(ADMIN_APIS)
    return [f"--http-restricted-api={apis}:{ADMIN_HEADER}={key}",
            f"--grpc-restricted-protocol={apis}:{ADMIN_HEADER}={key}"]


# tritonserver keeps up to this many gRPC request objects for reuse (its default: 8), each with the capacity of the
# largest request it held: a refused 130 MiB request kept about 270 MiB. 0: freed after each request.
MEMORY_ARGS = ("--grpc-infer-allocation-pool-size=0",)


def server_flags(command: list[str], admin_key: str | None) -> list[str]:
    """The tritonserver command with what the supervisor adds: the admin APIs' restriction (when a key is given)
    and MEMORY_ARGS (unless the command sets them itself)."""
    out = list(command)
    for arg in MEMORY_ARGS:
        if not any(a.split("=", 1)[0] == arg.split("=", 1)[0] for a in out):
            out.append(arg)
    return out + (restriction_args(admin_key) if admin_key else [])


def admin_headers(key: str | None, protocol: str = "http") -> dict[str, str]:
    """The headers an admin request sends ({} when the APIs are open)."""
    if not key:
        return {}
    return {GRPC_ADMIN_HEADER if protocol == "grpc" else ADMIN_HEADER: key}


# ---------------------------------------------------------------------------------------------- processes

@dataclass(frozen=True)
class Stub:
    """One live stub: the model it serves, its instance (`phoenix_ranker_0_0`), its shared-memory region."""
    model: str
    instance: str
    region: str

    @property
    def model_level(self) -> bool:
        """The short-lived stub the Python backend starts while it loads a model (named after the model, not
        an instance): it ends by design."""
        return self.instance == self.model


def _state(pid: int) -> str | None:
    """The process state letter (R, S, Z, ...) of pid, None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def process_alive(pid: int) -> bool:
    state = _state(pid)
    return state is not None and state not in ("Z", "X")


def _argv(pid: int) -> list[str]:
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    except OSError:
        return []


def _stub_of(argv: list[str]) -> Stub | None:
    """`<stub> <repository>/<model>/<version>/model.py <shm region> <size> <growth> <parent pid> <backend dir>
    <ipc> <instance name> ...`"""
    if not (argv and argv[0].endswith(STUB) and len(argv) > 1):
        return None
    model = Path(argv[1]).parent.parent.name
    return Stub(model, argv[8] if len(argv) > 8 else model, argv[2] if len(argv) > 2 else "")


def stubs(server_pid: int) -> dict[int, Stub]:
    """{pid: Stub} of the live Python-backend stubs under tritonserver, from their command lines."""
    out = {}
    for task in Path(f"/proc/{server_pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in map(int, children):
            stub = _stub_of(_argv(pid))
            if stub is not None and process_alive(pid):
                out[pid] = stub
    return out


def stubs_of_server(server_pid: int) -> dict[int, Stub]:
    """{pid: Stub} of every live stub started by tritonserver `server_pid`, its children or orphans: a stub's
    command line names its server's pid."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = _argv(int(entry.name))
        stub = _stub_of(argv)
        if stub is not None and len(argv) > 5 and argv[5] == str(server_pid) and process_alive(int(entry.name)):
            out[int(entry.name)] = stub
    return out


def end_stubs(server_pid: int) -> list[int]:
    """Kill the stubs a dead (or stopped) tritonserver left, reap those that are our children (a container's
    PID 1 inherits them), remove their shared-memory regions. Returns their pids."""
    left = stubs_of_server(server_pid)
    for pid, stub in left.items():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        if stub.region and "/" not in stub.region:
            (SHM / stub.region).unlink(missing_ok=True)
    return sorted(left)


def stop_with_parent():
    """In a child process: ask Linux to send it SIGINT when its parent dies (no orphaned servers)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------------------------- Triton's APIs

def http_request(url: str, data: bytes | None = None, timeout: float = 10.0,
                 headers: dict[str, str] | None = None) -> tuple[int, str]:
    """(HTTP status, body); status 0 when the server cannot be reached."""
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


def _error_text(status: int, body: str) -> str:
    try:
        return json.loads(body).get("error", body)
    except (ValueError, AttributeError):
        return body or f"HTTP {status}"


def repository_index(base: str, key: str | None, timeout: float = 10.0) -> dict[str, str] | None:
    """{model: state} from the repository index (READY, UNAVAILABLE, LOADING, UNLOADING), None on failure."""
    status, body = http_request(f"{base}/v2/repository/index", b"{}", timeout=timeout, headers=admin_headers(key))
    if status != 200:
        return None
    try:
        return {m["name"]: m.get("state", "") for m in json.loads(body)}
    except (ValueError, KeyError, TypeError):
        return None


METRIC = re.compile(r'^(nv_inference_pending_request_count|nv_inference_request_success|nv_inference_request_failure)'
                    r'\{[^}]*\bmodel="([^"]+)"[^}]*\}\s+(\S+)', re.M)


def model_progress(metrics_text: str) -> dict[str, tuple[float, float]]:
    """{model: (requests waiting, requests finished)} from Triton's Prometheus text (all versions summed;
    finished = succeeded + failed for any reason)."""
    out: dict[str, list[float]] = {}
    for name, model, value in METRIC.findall(metrics_text):
        row = out.setdefault(model, [0.0, 0.0])
        row[0 if name.endswith("pending_request_count") else 1] += float(value)
    return {m: (w, f) for m, (w, f) in out.items()}


# ---------------------------------------------------------------------------------------------- the repository

def command_repositories(command: list[str]) -> list[Path]:
    """The --model-repository folders of a tritonserver command line."""
    out = []
    for i, word in enumerate(command):
        if word.startswith("--model-repository="):
            out.append(Path(word.split("=", 1)[1]))
        elif word in ("--model-repository", "--model-store") and i + 1 < len(command):
            out.append(Path(command[i + 1]))
        elif word.startswith("--model-store="):
            out.append(Path(word.split("=", 1)[1]))
    return out


def read_manifests(repositories: list[Path]) -> list[dict]:
    """The manifest.json of each repository that has one (export.build writes it last)."""
    out = []
    for repo in repositories:
        try:
            out.append(json.loads((repo / "manifest.json").read_text()))
        except (OSError, ValueError):
            continue
    return out


def manifest_models(manifests: list[dict]) -> list[str] | None:
    """The models the manifests serve (one Triton config each), None without a manifest."""
    if not manifests:
        return None
    return sorted({a["model"] for m in manifests for a in m.get("artifacts", []) if a.get("kind") == "triton_config"})


def shm_limit_for(manifests: list[dict]) -> int:
    """Bytes a model's shared-memory region may reach before it is freed by a reload: twice the largest request
    the builds accept (its inputs and outputs together), at least SHM_MIN_LIMIT."""
    sizes = [int(m.get("limits", {}).get("max_request_bytes") or 0) for m in manifests]
    return max([SHM_MIN_LIMIT, *(2 * s for s in sizes)])


# ---------------------------------------------------------------------------------------------- stubs

class StubSupervisor:
    """Heals a tritonserver whose Python-backend model process (stub) died or hangs; frees grown shared memory.

    Triton's Python backend runs each model instance in a stub process, a child of tritonserver. When a stub
    dies (a crash, an out-of-memory kill, `kill -9`), Triton 2.51 keeps the model marked ready and answers every
    request with "Stub process ... is not healthy" for good; the dead stub's shared-memory region stays in
    /dev/shm. This watcher polls tritonserver's children every `interval` seconds. When an instance's stub is
    gone (or a zombie), no new stub took over its instance within `grace` seconds (a reload starts the new
    instances before it stops the old ones), fewer instance stubs of the model run than its config declares (a
    reload that lowers the count stops an instance, not always the last one) and the repository index says the
    model is READY (so it was not unloaded on purpose), it heals the model through the repository API:

    1. unload the model (readiness turns red at once; Triton also unloads the ensembles that use it);
    2. load it again: a fresh stub; Triton loads those ensembles again by itself, and the supervisor loads any
       model that was READY before the heal and is not after it;
    3. remove the dead stub's shared-memory region.

    A load that fails is retried with backoff (2, 4, ... 60 s). The model-level stub the Python backend runs
    while loading a model (named after the model, not after an instance) ends by design and is ignored.

    Hangs, handled like a death after `hang_timeout` s (its stubs are killed, then the model is healed):
    - stopped: the stub's process has been stopped (state T, e.g. SIGSTOP or a cgroup freezer);
    - stuck: requests wait for the model (Triton's metric nv_inference_pending_request_count > 0) and none of its
      requests has finished, well or with an error (an execute() that never returns). Needs `metrics_url`; a
      model with several instances of which only one is stuck still finishes requests and is not noticed.

    Memory: a stub's shared-memory region above `shm_limit` bytes (left by a large request, refused or not) makes
    it reload the model in place (`refresh`), which frees the region without failing a request.

    `events`: one dict per heal attempt {"model", "pids", "reloaded", "seconds", "time", "attempt", "error"}."""

    def __init__(self, server_pid: int, http_base: str, on_event=print, interval: float = 0.5,
                 load_timeout: float = LOAD_TIMEOUT, max_backoff: float = 60.0, grace: float = 1.5,
                 metrics_url: str | None = None, hang_timeout: float = HANG_TIMEOUT, admin_key: str | None = None,
                 shm_limit: int = 0, events: list | None = None):
        self.pid, self.base, self.on_event, self.interval = server_pid, http_base.rstrip("/"), on_event, interval
        self.metrics_url, self.hang_timeout = metrics_url, hang_timeout     # hang_timeout 0: no hang watch
        self.admin_key, self.shm_limit = admin_key, shm_limit               # shm_limit 0: no memory watch
        self.stopped_since: dict[int, float] = {}           # stub pid -> when it was first seen stopped
        self.stuck_since: dict[str, tuple[float, float]] = {}  # model -> (finished count, since) while some wait
        self.refreshed_at: dict[str, float] = {}            # model -> when its region was last freed
        self._metrics_ok = True
        self.load_timeout, self.max_backoff = load_timeout, max_backoff
        self.known: dict[int, Stub] = {}
        self.suspects: dict[int, tuple[Stub, float]] = {}   # vanished stubs not yet replaced: pid -> (stub, since)
        self.grace = grace
        self.events: list[dict] = events if events is not None else []
        self.pending: dict[str, dict] = {}      # model -> {"due", "attempt", "pids", "regions", "ready_before"}
        self.working_on: str | None = None      # the model being healed or refreshed right now
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stub-supervisor", daemon=True)

    def start(self) -> "StubSupervisor":
        self.known = self._instances()
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    @property
    def healing(self) -> bool:
        """True while a model's heal has failed and waits for its next attempt."""
        return bool(self.pending)

    def troubled(self) -> list[str]:
        """Models with a dead stub not yet healed, a heal waiting for its retry, or a heal in progress."""
        out = {s.model for s, _ in self.suspects.values()} | set(self.pending)
        if self.working_on:
            out.add(self.working_on)
        return sorted(out)

    # ------------------------------------------------------------------ server state
    def _headers(self) -> dict[str, str]:
        return admin_headers(self.admin_key)

    def _server_up(self) -> bool:
        """tritonserver runs and is not exiting (/v2/health/live turns false when it begins to exit)."""
        if not process_alive(self.pid):
            return False
        status, _ = http_request(f"{self.base}/v2/health/live", timeout=5)
        return status == 200

    def index(self) -> dict[str, str] | None:
        return repository_index(self.base, self.admin_key)

    def _instances(self) -> dict[int, Stub]:
        return {pid: s for pid, s in stubs(self.pid).items() if not s.model_level}

    def _config(self, model: str) -> dict | None:
        status, body = http_request(f"{self.base}/v2/models/{model}/config", timeout=10, headers=self._headers())
        try:
            return json.loads(body) if status == 200 else None
        except ValueError:
            return None

    def _configured_count(self, model: str) -> int | None:
        """How many instances the model's current config declares (count per GPU listed), None if unknown."""
        config = self._config(model)
        if config is None:
            return None
        return sum(int(g.get("count", 1)) * max(1, len(g.get("gpus") or [])) for g in config.get("instance_group", []))

    # ------------------------------------------------------------------ loop
    def _loop(self):
        while not self._stop.wait(self.interval):
            if not process_alive(self.pid):
                return                                   # the server is gone: its ServerSupervisor restarts it
            try:
                self._tick()
            except Exception as e:  # never let the watcher die silently
                self.on_event(f"supervisor error: {type(e).__name__}: {e}")

    def _tick(self):
        live = self._instances()
        now = time.monotonic()
        for pid, s in self.known.items():                # a stub that vanished: a suspect for `grace` seconds
            if pid not in live:
                self.suspects.setdefault(pid, (s, now))
        taken_over = {s.instance for s in live.values()}           # a reload starts a new stub per instance
        for pid in [p for p, (s, _) in self.suspects.items() if s.instance in taken_over]:
            del self.suspects[pid]
        gone = {pid: s for pid, (s, since) in self.suspects.items() if now - since >= self.grace}
        if gone:
            if not self._server_up():
                return                                   # the server is exiting: change nothing
            states = self.index()
            if states is None:
                return                                   # cannot read the index now: look again next tick
            for pid in gone:
                del self.suspects[pid]
            for model in sorted({s.model for s in gone.values()}):
                mine = {pid: s for pid, s in gone.items() if s.model == model}
                if model in self.pending:
                    self.pending[model]["pids"] += list(mine)
                    self.pending[model]["regions"] += [s.region for s in mine.values()]
                    continue
                if states.get(model) != "READY":
                    continue                             # unloaded on purpose, or being loaded by someone: leave it
                configured = self._configured_count(model)
                if configured is not None and sum(s.model == model for s in live.values()) >= configured:
                    continue                             # a reload removed instances (a smaller count): no gap
                self._heal(model, list(mine), [s.region for s in mine.values()],
                           [m for m, st in states.items() if st == "READY"], attempt=1)
            live = self._instances()
        if self.hang_timeout > 0:
            self._kill_hung(live, now)
        for model, p in list(self.pending.items()):
            if now >= p["due"] and self._server_up():
                del self.pending[model]
                self._heal(model, p["pids"], p["regions"], p["ready_before"], p["attempt"] + 1)
                live = self._instances()
        if self.shm_limit > 0 and self._refresh_grown(live, now):
            live = self._instances()
        self.known = live

    # ------------------------------------------------------------------ hangs
    def _hung(self, live: dict[int, Stub], now: float) -> dict[str, str]:
        """{model: why} for the models whose stubs hang (see the class doc); updates the watch state."""
        hung = {}
        self.stopped_since = {pid: self.stopped_since.get(pid, now) for pid in live if _state(pid) in ("T", "t")}
        for pid, since in self.stopped_since.items():
            if now - since >= self.hang_timeout:
                hung[live[pid].model] = f"its process (pid {pid}) has been stopped for {now - since:.0f} s"
        progress = self._progress()
        if progress is None:
            return hung
        stuck = {}                                           # only models with a stub and requests waiting
        for model in {s.model for s in live.values()}:
            waiting, finished = progress.get(model, (0.0, 0.0))
            if waiting <= 0:
                continue
            done, since = self.stuck_since.get(model, (finished, now))
            if done != finished:
                since = now                                  # it finished something: the clock restarts
            stuck[model] = (finished, since)
            if now - since >= self.hang_timeout:
                hung.setdefault(model, f"{waiting:.0f} request(s) have waited {now - since:.0f} s and none of "
                                       f"its requests finished meanwhile")
        self.stuck_since = stuck
        return hung

    def _progress(self) -> dict[str, tuple[float, float]] | None:
        if not self.metrics_url:
            return None
        status, body = http_request(self.metrics_url, timeout=5)
        if status != 200:
            if self._metrics_ok:
                self.on_event(f"cannot read Triton's metrics at {self.metrics_url} (HTTP {status}): a model "
                              f"whose execute() never returns is not noticed until they can be read")
            self._metrics_ok = False
            return None
        self._metrics_ok = True
        return model_progress(body)

    def _kill_hung(self, live: dict[int, Stub], now: float):
        hung = self._hung(live, now)
        if not hung or not self._server_up():
            return
        states = self.index() or {}
        for model, why in sorted(hung.items()):
            if states.get(model) != "READY" or model in self.pending:
                continue                                     # being loaded, unloaded or healed: leave it
            pids = [pid for pid, s in live.items() if s.model == model]
            self.on_event(f"model {model!r} hangs: {why}; killing its process (pid "
                          f"{', '.join(map(str, pids))}) to reload it")
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)             # the next looks see it gone and heal the model
                except ProcessLookupError:
                    pass
                self.stopped_since.pop(pid, None)
            self.stuck_since.pop(model, None)

    # ------------------------------------------------------------------ heal
    def _heal(self, model: str, pids: list[int], regions: list[str], ready_before: list[str], attempt: int):
        t0 = time.monotonic()
        self.working_on = model
        try:
            ok, error, also = self._reload(model, pids, ready_before, attempt)
        finally:
            self.working_on = None
        if self._stop.is_set():
            return                                       # the server is being stopped: nothing to report
        for region in regions:   # the dead stub's region: Triton never removes it
            if region and "/" not in region:
                (SHM / region).unlink(missing_ok=True)
        event = {"model": model, "pids": pids, "reloaded": ok, "seconds": round(time.monotonic() - t0, 2),
                 "time": time.time(), "attempt": attempt, "error": error, "also_loaded": also}
        self.events.append(event)
        if ok:
            extra = f"; also loaded {', '.join(also)}" if also else ""
            self.on_event(f"model {model!r} reloaded in {event['seconds']} s{extra}")
        else:
            delay = min(self.max_backoff, 2.0 ** attempt)
            self.pending[model] = {"due": time.monotonic() + delay, "attempt": attempt, "pids": pids,
                                   "regions": [], "ready_before": ready_before}
            self.on_event(f"reloading model {model!r} failed ({error}); retrying in {delay:.0f} s "
                          f"(readiness stays red)")

    def _reload(self, model, pids, ready_before, attempt) -> tuple[bool, str | None, list[str]]:
        headers = self._headers()
        if attempt == 1:
            self.on_event(f"the process of model {model!r} (pid {', '.join(map(str, pids))}) died; reloading it "
                          f"(readiness is red until it is back)")
            http_request(f"{self.base}/v2/repository/models/{model}/unload", b"{}", timeout=self.load_timeout,
                         headers=headers)
        else:
            self.on_event(f"reloading model {model!r}, attempt {attempt}")
        status, body = http_request(f"{self.base}/v2/repository/models/{model}/load", b"{}",
                                    timeout=self.load_timeout, headers=headers)
        if status != 200:
            return False, f"HTTP {status}: {_error_text(status, body)}", []
        also = []   # ensembles that use the model: Triton reloads them itself; make sure of every model READY before
        states = self.index() or {}
        for other in sorted(set(ready_before) - {model}):
            if states.get(other) != "READY":
                s, b = http_request(f"{self.base}/v2/repository/models/{other}/load", b"{}",
                                    timeout=self.load_timeout, headers=headers)
                also.append(other if s == 200 else f"{other} (failed: {_error_text(s, b)})")
        return True, None, also

    # ------------------------------------------------------------------ memory
    def _refresh_grown(self, live: dict[int, Stub], now: float) -> bool:
        """Reload in place each model whose shared-memory region grew above shm_limit; True if any was."""
        grown = {}
        for pid, s in live.items():
            try:
                size = (SHM / s.region).stat().st_size if s.region and "/" not in s.region else 0
            except OSError:
                continue
            if size > self.shm_limit and now - self.refreshed_at.get(s.model, -1e9) >= SHM_RELOAD_COOLDOWN:
                grown[s.model] = max(size, grown.get(s.model, 0))
        if not grown or not self._server_up():
            return False
        states = self.index() or {}
        for model, size in sorted(grown.items()):
            if states.get(model) == "READY" and model not in self.pending:
                self.refreshed_at[model] = now
                self.refresh(model, f"its shared-memory region grew to {size / 2 ** 20:.0f} MiB (above "
                                    f"{self.shm_limit / 2 ** 20:.0f} MiB, left by a large request)")
        return True

    def refresh(self, model: str, why: str) -> bool:
        """Reload a READY model in place: a load with its own config plus a changed RELOAD_PARAMETER (Triton
        skips a load whose config and files are unchanged). Triton starts the new instances, then retires the
        old ones once their requests are done: no request fails, and the old stubs' shared memory is freed."""
        t0 = time.monotonic()
        self.on_event(f"model {model!r}: {why}; reloading it in place to free that memory")
        config = self._config(model)
        if config is None:
            self.on_event(f"model {model!r}: cannot read its config; not reloaded")
            return False
        config.setdefault("parameters", {})[RELOAD_PARAMETER] = {"string_value": f"{time.time():.6f}"}
        body = json.dumps({"parameters": {"config": json.dumps(config)}}).encode()
        status, text = http_request(f"{self.base}/v2/repository/models/{model}/load", body,
                                    timeout=self.load_timeout, headers=self._headers())
        if status != 200:
            self.on_event(f"model {model!r}: the in-place reload failed (HTTP {status}: {_error_text(status, text)})"
                          f"; the model serves on as it was")
            return False
        self.on_event(f"model {model!r} reloaded in place in {time.monotonic() - t0:.2f} s")
        return True


# ---------------------------------------------------------------------------------------------- the server

class _HealthHandler(BaseHTTPRequestHandler):
    supervisor: "ServerSupervisor"

    def do_GET(self):   # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/v2/health/ready":
            ok, reason = self.supervisor.readiness()
        elif path == "/v2/health/live":
            ok, reason = self.supervisor.liveness()
        else:
            self._answer(404, {"error": f"unknown path {path!r}: /v2/health/ready or /v2/health/live"})
            return
        self._answer(200 if ok else 503, {"ok": ok, "reason": reason})

    def _answer(self, status: int, payload: dict):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):   # probes every few seconds: no access log
        pass


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class ServerSupervisor:
    """Runs a tritonserver command as a child and keeps it healthy (see the module doc): our health endpoint,
    a StubSupervisor per server, restarts with backoff, the drain-then-stop sequence.

    `command`: the tritonserver command line (server_flags adds the restriction flags of `admin_key`); `http_base`:
    its HTTP endpoint from here; `models`: the models readiness requires (None: the manifests' of the command's
    repositories, else every model the repository index lists); `log_path`: append the server's output there
    (None: inherit ours). `heal` False: no stub supervisor; `max_restarts` 0: never restart."""

    def __init__(self, command: list[str], http_base: str, *, env: dict | None = None,
                 metrics_url: str | None = None, admin_key: str | None = None, models: list[str] | None = None,
                 health_host: str = "127.0.0.1", health_port: int = HEALTH_PORT, on_event=print,
                 heal: bool = True, interval: float = 0.5, load_timeout: float = LOAD_TIMEOUT,
                 hang_timeout: float = HANG_TIMEOUT, max_restarts: int = MAX_RESTARTS,
                 restart_window: float = RESTART_WINDOW, startup_timeout: float = STARTUP_TIMEOUT,
                 shm_limit: int | None = None, log_path: str | Path | None = None, new_session: bool = False):
        self.command, self.base = server_flags(command, admin_key), http_base.rstrip("/")
        self.env = dict(os.environ if env is None else env)
        self.env.pop(ADMIN_KEY_ENV, None)          # the model processes have no business with the key
        self.env.setdefault("GLIBC_TUNABLES", MALLOC_TUNABLES)
        self.metrics_url, self.admin_key, self.on_event = metrics_url, admin_key, on_event
        manifests = read_manifests(command_repositories(command))
        self.models = models if models is not None else manifest_models(manifests)
        self.shm_limit = shm_limit_for(manifests) if shm_limit is None else shm_limit
        self.heal, self.interval, self.load_timeout, self.hang_timeout = heal, interval, load_timeout, hang_timeout
        self.max_restarts, self.restart_window, self.startup_timeout = max_restarts, restart_window, startup_timeout
        self.log_path, self.new_session = (Path(log_path) if log_path else None), new_session
        self.events: list[dict] = []              # heal attempts of every server this supervisor ran
        self.restarts: list[dict] = []            # {"time", "reason", "delay"} per restart
        self.process: subprocess.Popen | None = None
        self.stubs: StubSupervisor | None = None
        self.started_at: float | None = None      # monotonic, of the current process
        self.ready_at: float | None = None        # monotonic, when the current process was first ready
        self.ever_ready = False
        self.draining = False
        self.gave_up: str | None = None           # why the supervisor stopped restarting
        self.exit_code: int | None = None
        self.finished = threading.Event()         # set when the supervisor runs no server any more
        self.became_ready = threading.Event()     # set when the first server is ready
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        handler = type("Handler", (_HealthHandler,), {"supervisor": self})
        self._health = ThreadingHTTPServer((health_host, health_port), handler)
        self._health.daemon_threads = True
        self.health_url = f"http://{health_host}:{self._health.server_address[1]}"
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ probes
    def readiness(self) -> tuple[bool, str]:
        if self.draining or self._stopping.is_set():
            return False, "draining: the server is shutting down"
        if self.gave_up:
            return False, self.gave_up
        p = self.process
        if p is None or p.poll() is not None:
            return False, "tritonserver is not running (being restarted)"
        if self.ready_at is None:
            return False, "tritonserver is starting"
        states = repository_index(self.base, self.admin_key, timeout=2)
        if states is None:
            return False, "cannot read tritonserver's repository index"
        expected = self.models if self.models is not None else sorted(states)
        missing = [f"{m} ({states.get(m) or 'not loaded'})" for m in expected if states.get(m) != "READY"]
        if missing:
            return False, f"models not ready: {', '.join(missing)}"
        # live, not its own ready: with strict readiness Triton's turns red for good once any model it knows is
        # not ready, also one outside the manifest that an operator loaded and unloaded
        status, _ = http_request(f"{self.base}/v2/health/live", timeout=2)
        if status != 200:
            return False, f"tritonserver is not live (its /v2/health/live: HTTP {status})"
        watcher = self.stubs
        troubled = [m for m in (watcher.troubled() if watcher is not None else [])
                    if self.models is None or m in self.models]
        if troubled:
            return False, f"healing model(s) {', '.join(troubled)}"
        return True, "ready"

    def liveness(self) -> tuple[bool, str]:
        if self.gave_up:
            return False, self.gave_up
        p = self.process
        return True, "running" if p is not None and p.poll() is None else "being restarted"

    # ------------------------------------------------------------------ run
    def start(self) -> "ServerSupervisor":
        """Start tritonserver and the watch; OSError (closing the health endpoint) when the command cannot run."""
        try:
            self._spawn()
        except OSError:
            self._health.server_close()
            raise
        for target in (self._health.serve_forever, self._run):
            t = threading.Thread(target=target, name=f"server-supervisor-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _spawn(self):
        with self._lock:
            if self._stopping.is_set():
                return
            out = open(self.log_path, "ab") if self.log_path else None
            try:
                self.process = subprocess.Popen(
                    self.command, env=self.env, stdin=subprocess.DEVNULL if out else None, stdout=out,
                    stderr=subprocess.STDOUT if out else None, start_new_session=self.new_session,
                    preexec_fn=stop_with_parent)
            finally:
                if out:
                    out.close()
            self.started_at, self.ready_at = time.monotonic(), None

    def _await_ready(self, proc: subprocess.Popen) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while proc.poll() is None and not self._stopping.is_set() and time.monotonic() < deadline:
            if http_request(f"{self.base}/v2/health/ready", timeout=5)[0] == 200:
                return True
            time.sleep(min(self.interval, 0.25))
        return False

    def _run(self):
        try:
            while not self._stopping.is_set():
                proc = self.process
                ready = self._await_ready(proc)
                if ready:
                    self.ready_at = time.monotonic()
                    if self.ever_ready:
                        self.on_event(f"tritonserver is ready again after restart {len(self.restarts)} "
                                      f"({self.ready_at - self.started_at:.1f} s to load)")
                    self.ever_ready = True
                    self.became_ready.set()
                    if self.heal:
                        self.stubs = StubSupervisor(
                            proc.pid, self.base, self.on_event, self.interval, self.load_timeout,
                            metrics_url=self.metrics_url, hang_timeout=self.hang_timeout, admin_key=self.admin_key,
                            shm_limit=self.shm_limit, events=self.events).start()
                    proc.wait()
                elif proc.poll() is None and not self._stopping.is_set():
                    self.on_event(f"tritonserver was not ready {self.startup_timeout:.0f} s after its start; "
                                  f"killing it")
                    proc.kill()
                    proc.wait()
                if self._stopping.is_set():
                    break
                if self.stubs is not None:
                    self.stubs.stop()
                    self.stubs = None
                code = proc.wait()
                uptime = time.monotonic() - (self.started_at or time.monotonic())
                left = end_stubs(proc.pid)
                cleanup = f"; ended its {len(left)} model process(es)" if left else ""
                report = " ".join(filter(None, [
                    f"tritonserver {'crashed' if ready else 'stopped before it was ready'} ({describe_exit(code)}) "
                    f"after {uptime:.0f} s{cleanup}.", self.last_lines()]))
                if not self.ever_ready or self.draining:
                    self.exit_code = code
                    self.gave_up = report                # never started (the caller reports it), or stopping anyway
                    return
                now = time.monotonic()
                recent = [r for r in self.restarts if now - r["time"] < self.restart_window]
                if len(recent) >= self.max_restarts:
                    self.exit_code = code
                    self.gave_up = (f"{report} Giving up: {len(recent)} restart(s) within the last "
                                    f"{self.restart_window:.0f} s (at most {self.max_restarts})")
                    self.on_event(self.gave_up)
                    return
                delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** len(recent))
                self.restarts.append({"time": now, "reason": report, "delay": delay})
                self.on_event(f"{report} Restarting it in {delay:.0f} s (restart {len(recent) + 1}, at most "
                              f"{self.max_restarts} within {self.restart_window:.0f} s)")
                if self._stopping.wait(delay):
                    break
                self._spawn()
        except Exception as e:  # never let the keeper die silently
            self.gave_up = f"supervisor error: {type(e).__name__}: {e}"
            self.on_event(self.gave_up)
        finally:
            self.finished.set()

    def last_lines(self, n: int = 3) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 65536))
            text = f.read().decode(errors="replace")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not IGNORED.search(ln)][-n:]
        return "Last server lines: " + " | ".join(lines) if lines else ""

    # ------------------------------------------------------------------ stop
    def drain(self, seconds: float, interrupted: threading.Event | None = None):
        """Readiness red at once, then keep serving for `seconds` (or until `interrupted` is set)."""
        self.draining = True
        if seconds > 0:
            self.on_event(f"draining: readiness is red, serving on for {seconds:g} s, then tritonserver finishes the "
                          f"requests in flight and stops (a second SIGTERM or Ctrl-C: stop now)")
            (interrupted or threading.Event()).wait(seconds)

    def stop(self, timeout: float = 60.0) -> int | None:
        """Stop watching, SIGTERM tritonserver (it finishes the requests in flight, up to its
        --exit-timeout-secs), SIGKILL it after `timeout` s, end any stub left, stop the health endpoint.
        Returns tritonserver's exit code (None if none ran)."""
        with self._lock:
            self._stopping.set()
        self.draining = True
        if self.stubs is not None:
            self.stubs.stop()
        p = self.process
        code = None
        if p is not None:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.on_event(f"tritonserver did not stop within {timeout:.0f} s; killing it")
                    p.kill()
                    p.wait()
            code = p.returncode
            end_stubs(p.pid)
        for t in self._threads:
            if t.name.endswith("_run"):
                t.join(timeout=10)
        self._health.shutdown()
        self._health.server_close()
        self.finished.set()
        return code


def exit_timeout(command: list[str], default: float = 30.0) -> float:
    """tritonserver's --exit-timeout-secs in a command line (its default: 30)."""
    for i, word in enumerate(command):
        if word.startswith("--exit-timeout-secs="):
            return float(word.split("=", 1)[1])
        if word == "--exit-timeout-secs" and i + 1 < len(command):
            return float(command[i + 1])
    return default


# ---------------------------------------------------------------------------------------------- entry point

def _drain_default() -> float:
    raw = os.environ.get(DRAIN_ENV, "").strip()
    if not raw:
        return DRAIN_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise ValueError(f"{DRAIN_ENV}={raw!r}: give a number of seconds >= 0 (default {DRAIN_SECONDS:g})")
    return value


def main(argv=None) -> int:
    """Run a tritonserver command as this process's child, with its admin APIs closed, our health endpoint,
    healing, restarts and the drain-then-stop sequence on SIGTERM (a container's entry point)."""
    ap = argparse.ArgumentParser(
        prog="supervisor.py", description="Run tritonserver (the command after --) with its admin APIs closed by "
        f"the key in ${ADMIN_KEY_ENV}, a health endpoint, healing of dead model processes, restarts of a dead "
        "server and a graceful stop on SIGTERM. The command needs --model-control-mode=explicit.")
    ap.add_argument("--http-url", default="http://127.0.0.1:8000",
                    help="tritonserver's HTTP endpoint as reachable from here (default: http://127.0.0.1:8000)")
    ap.add_argument("--metrics-url", default="http://127.0.0.1:8002/metrics",
                    help="tritonserver's Prometheus metrics as reachable from here, read to notice a model whose "
                         "requests wait while none finishes (default: http://127.0.0.1:8002/metrics)")
    ap.add_argument("--health-host", default="0.0.0.0",
                    help="address of our health endpoint (default: 0.0.0.0, for the kubelet's probes)")
    ap.add_argument("--health-port", type=int, default=HEALTH_PORT,
                    help=f"port of our health endpoint: GET /v2/health/ready (every model ready, not draining) and "
                         f"/v2/health/live (default: {HEALTH_PORT}; 0: any free port)")
    ap.add_argument("--drain-seconds", type=float, default=None,
                    help=f"seconds to keep serving after SIGTERM while readiness is red, before tritonserver is "
                         f"stopped (default: ${DRAIN_ENV}, else {DRAIN_SECONDS:g})")
    ap.add_argument("--insecure-open-admin", action="store_true",
                    help=f"start without ${ADMIN_KEY_ENV}: the model repository (load with uploaded code, unload), "
                         f"shared-memory, logging and trace APIs are then open to every client")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between looks at the stubs (default: 0.5)")
    ap.add_argument("--load-timeout", type=float, default=LOAD_TIMEOUT,
                    help=f"seconds one model reload may take (default: {LOAD_TIMEOUT:.0f})")
    ap.add_argument("--startup-timeout", type=float, default=STARTUP_TIMEOUT,
                    help=f"seconds a restarted tritonserver may take to be ready before it is killed "
                         f"(default: {STARTUP_TIMEOUT:.0f})")
    ap.add_argument("--hang-timeout", type=float, default=HANG_TIMEOUT, help=HANG_TIMEOUT_HELP)
    ap.add_argument("--max-restarts", type=int, default=MAX_RESTARTS,
                    help=f"restarts of a dead tritonserver allowed within --restart-window before giving up "
                         f"(default: {MAX_RESTARTS}; 0: never restart)")
    ap.add_argument("--restart-window", type=float, default=RESTART_WINDOW,
                    help=f"seconds over which restarts are counted (default: {RESTART_WINDOW:.0f})")
    ap.add_argument("--shm-limit-mb", type=float, default=None,
                    help="a model's shared-memory region above this many MiB is freed by reloading the model in "
                         "place (default: twice the manifest's max_request_bytes, at least "
                         f"{SHM_MIN_LIMIT // 2 ** 20}; 0: never)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the tritonserver command line")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command: give the tritonserver command line after --")
    if not any(a in ("--model-control-mode=explicit", "explicit") for a in command):
        ap.error("the command must use --model-control-mode=explicit (healing reloads models through the "
                 "repository API)")

    def log(message: str):
        print(f"[supervisor] {message}", file=sys.stderr, flush=True)

    key = os.environ.get(ADMIN_KEY_ENV, "").strip()
    if key:
        try:
            check_admin_key(key)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    elif not args.insecure_open_admin:
        print(f"error: {ADMIN_KEY_ENV} is not set. It closes tritonserver's admin APIs (model load, also with "
              f"uploaded code, unload, shared memory, logging, trace) to clients without it; {MAKE_A_KEY}. "
              f"To run with those APIs open to every client, pass --insecure-open-admin.", file=sys.stderr)
        return 2
    else:
        log(f"WARNING: --insecure-open-admin: any client can load code, unload models and register shared memory")
    try:
        drain = args.drain_seconds if args.drain_seconds is not None else _drain_default()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if drain < 0:
        ap.error(f"--drain-seconds {drain:g}: give a number of seconds >= 0")
    shm_limit = None if args.shm_limit_mb is None else int(args.shm_limit_mb * 2 ** 20)

    term, hurry = threading.Event(), threading.Event()

    def on_signal(signum, frame):
        (hurry if term.is_set() else term).set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        sup = ServerSupervisor(command, args.http_url, metrics_url=args.metrics_url, admin_key=key or None,
                               health_host=args.health_host, health_port=args.health_port, on_event=log,
                               interval=args.interval, load_timeout=args.load_timeout, hang_timeout=args.hang_timeout,
                               max_restarts=args.max_restarts, restart_window=args.restart_window,
                               startup_timeout=args.startup_timeout, shm_limit=shm_limit)
    except OSError as e:
        print(f"error: cannot serve the health endpoint on {args.health_host}:{args.health_port} ({e.strerror}); "
              f"choose another --health-port", file=sys.stderr)
        return 2
    try:
        sup.start()
    except OSError as e:
        print(f"error: cannot run {command[0]} ({e.strerror})", file=sys.stderr)
        return 2
    log(f"health endpoint {sup.health_url}/v2/health/ready and /v2/health/live; admin APIs "
        f"{'closed (header ' + ADMIN_HEADER + ')' if key else 'OPEN'}")
    announced = False
    while not (term.is_set() or sup.finished.is_set()):
        if not announced and sup.became_ready.wait(0.2):
            log("tritonserver is ready; watching its model processes")
            announced = True
        elif announced:
            term.wait(0.2)
    if sup.finished.is_set() and not term.is_set():     # never started, or gave up after too many restarts
        code = sup.exit_code if sup.exit_code is not None else 1
        if not sup.ever_ready and sup.gave_up:
            log(sup.gave_up)
        sup.stop()
        return code if code > 0 else (128 - code if code < 0 else 1)
    sup.drain(drain, hurry)
    log("stopping tritonserver (it finishes the requests in flight)")
    code = sup.stop(timeout=exit_timeout(command) + 10)
    log(f"tritonserver stopped ({describe_exit(code)})")
    if code is None:
        return 0
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
