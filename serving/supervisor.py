"""Heal a tritonserver whose Python-backend model process (stub) died.

Triton's Python backend runs each model instance in a stub process, a child of tritonserver. When a stub
dies (a crash, an out-of-memory kill, `kill -9`), Triton 2.51 keeps the model marked ready and answers every
request with "Stub process ... is not healthy" for good; the dead stub's shared-memory region stays in
/dev/shm. The supervisor polls tritonserver's children every `interval` seconds. When a stub it saw is gone
(or a zombie), no new stub took over its instance within a grace period (an operator's reload through the
repository API replaces a model's stubs), and the repository index still says the model is READY (so it was not
unloaded on purpose), it heals the model through the repository API (explicit model control):

1. unload the model: readiness (strict) turns red at once; Triton also unloads the ensembles that use it;
2. load it again: a fresh stub; Triton loads those ensembles again by itself, and the supervisor loads any
   model that was READY before the heal and is not after it;
3. remove the dead stub's shared-memory region.

Measured on the demo build (2-core CPU): a killed phoenix_ranker stub is detected within `interval`, the model
serves again about 2 s after the kill, requests in flight at the kill fail (500 "Stub process ... is not
healthy"), those sent during the reload get 400/404 "unknown model" or "not ready", readiness is red from the
unload until the load completes. A load that fails is retried with backoff (2, 4, ... 60 s) while readiness
stays red. A server that is gone or exiting is never "healed": the launcher reports its crash.

A stub can also hang rather than die. The supervisor treats two kinds of hang as a death: it kills the
model's stubs (SIGKILL) and heals the model as above.
- stopped: the stub's process has been stopped (state T, e.g. SIGSTOP or a cgroup freezer) for `hang_timeout`
  seconds. Triton then answers every request to the model with "Stub process ... is not healthy", for good.
- stuck: requests wait for the model (Triton's metric nv_inference_pending_request_count > 0) and none of its
  requests has finished, well or with an error, for `hang_timeout` seconds (an execute() that never returns;
  Triton then waits for it for good). This needs Triton's metrics endpoint (`metrics_url`); a model with
  several instances of which only one is stuck still finishes requests and is not noticed.
The default, HANG_TIMEOUT, is far above the longest legitimate engine call within the build's limits.

Why a supervisor and not a health model: a probe request would only notice the failure, and in-band healing from
inside Triton is not possible; the launcher owns the process tree anyway.

Two ways to run it: `python -m serving.server` starts one with every server it launches; in a container
without this project (NVIDIA's tritonserver image, deploy/Dockerfile) this file alone, stdlib only, runs
tritonserver as its child and supervises it:

    python3 supervisor.py --http-url http://127.0.0.1:8000 -- tritonserver --model-repository=/models ...
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

STUB = "triton_python_backend_stub"
HANG_TIMEOUT = 30.0     # seconds; far above the longest legitimate engine call within a build's limits
HANG_TIMEOUT_HELP = (f"seconds a model process may stay stopped, or a model keep requests waiting without finishing "
                     f"any, before its process is killed and the model reloaded (default: {HANG_TIMEOUT:.0f}; "
                     f"0: never)")
SHM = Path("/dev/shm")


@dataclass(frozen=True)
class Stub:
    """One live stub: the model it serves, its instance (`phoenix_ranker_0_0`), its shared-memory region."""
    model: str
    instance: str
    region: str


def _state(pid: int) -> str | None:
    """The process state letter (R, S, Z, ...) of pid, None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def process_alive(pid: int) -> bool:
    state = _state(pid)
    return state is not None and state not in ("Z", "X")


def stubs(server_pid: int) -> dict[int, Stub]:
    """{pid: Stub} of the live Python-backend stubs under tritonserver, from their command lines
    (`<stub> <repository>/<model>/<version>/model.py <shm region> <size> <growth> <parent pid> <backend dir>
    <ipc> <instance name> ...`)."""
    out = {}
    for task in Path(f"/proc/{server_pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in map(int, children):
            try:
                argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
            except OSError:
                continue
            if not (argv and argv[0].endswith(STUB) and len(argv) > 1) or not process_alive(pid):
                continue
            model = Path(argv[1]).parent.parent.name
            region = argv[2] if len(argv) > 2 else ""
            instance = argv[8] if len(argv) > 8 else model
            out[pid] = Stub(model, instance, region)
    return out


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


def http_request(url: str, data: bytes | None = None, timeout: float = 10.0) -> tuple[int, str]:
    """(HTTP status, body); status 0 when the server cannot be reached."""
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                 headers={"Content-Type": "application/json"})
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


class StubSupervisor:
    """Watches tritonserver's stubs from a thread; heals the model of any stub that dies (see the module doc).

    `events`: one dict per heal attempt {"model", "pids", "reloaded", "seconds", "time", "attempt", "error"}."""

    def __init__(self, server_pid: int, http_base: str, on_event=print, interval: float = 0.5,
                 load_timeout: float = 300.0, max_backoff: float = 60.0, grace: float = 1.5,
                 metrics_url: str | None = None, hang_timeout: float = HANG_TIMEOUT):
        self.pid, self.base, self.on_event, self.interval = server_pid, http_base.rstrip("/"), on_event, interval
        self.metrics_url, self.hang_timeout = metrics_url, hang_timeout     # hang_timeout 0: no hang watch
        self.stopped_since: dict[int, float] = {}           # stub pid -> when it was first seen stopped
        self.stuck_since: dict[str, tuple[float, float]] = {}  # model -> (finished count, since) while some wait
        self._metrics_ok = True
        self.load_timeout, self.max_backoff = load_timeout, max_backoff
        self.known: dict[int, Stub] = {}
        self.suspects: dict[int, tuple[Stub, float]] = {}   # vanished stubs not yet replaced: pid -> (stub, since)
        self.grace = grace
        self.events: list[dict] = []
        self.pending: dict[str, dict] = {}      # model -> {"due", "attempt", "pids", "regions", "ready_before"}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stub-supervisor", daemon=True)

    def start(self) -> "StubSupervisor":
        self.known = stubs(self.pid)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    @property
    def healing(self) -> bool:
        """True while a model's heal has failed and waits for its next attempt."""
        return bool(self.pending)

    # ------------------------------------------------------------------ server state
    def _server_up(self) -> bool:
        """tritonserver runs and is not exiting (/v2/health/live turns false when it begins to exit)."""
        if not process_alive(self.pid):
            return False
        status, _ = http_request(f"{self.base}/v2/health/live", timeout=5)
        return status == 200

    def index(self) -> dict[str, str] | None:
        """{model: state} from the repository index (READY, UNAVAILABLE, LOADING, UNLOADING), None on failure."""
        status, body = http_request(f"{self.base}/v2/repository/index", b"{}", timeout=10)
        if status != 200:
            return None
        try:
            return {m["name"]: m.get("state", "") for m in json.loads(body)}
        except (ValueError, KeyError, TypeError):
            return None

    # ------------------------------------------------------------------ loop
    def _loop(self):
        while not self._stop.wait(self.interval):
            if not process_alive(self.pid):
                return                                   # the server is gone: the launcher reports it
            try:
                self._tick()
            except Exception as e:  # never let the watcher die silently
                self.on_event(f"supervisor error: {type(e).__name__}: {e}")

    def _tick(self):
        live = stubs(self.pid)
        now = time.monotonic()
        for pid, s in self.known.items():                # a stub that vanished: a suspect for `grace` seconds
            if pid not in live:
                self.suspects.setdefault(pid, (s, now))
        taken_over = {s.instance for s in live.values()}           # an operator's reload starts a new stub
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
                elif states.get(model) == "READY":              # READY with a dead stub: a crash
                    self._heal(model, list(mine), [s.region for s in mine.values()],
                               [m for m, st in states.items() if st == "READY"], attempt=1)
                # else: the model was unloaded on purpose (or is being reloaded by someone): leave it
            live = stubs(self.pid)
        if self.hang_timeout > 0:
            self._kill_hung(live, now)
        for model, p in list(self.pending.items()):
            if now >= p["due"] and self._server_up():
                del self.pending[model]
                self._heal(model, p["pids"], p["regions"], p["ready_before"], p["attempt"] + 1)
                live = stubs(self.pid)
        self.known = live

    # ------------------------------------------------------------------ hangs
    def _hung(self, live: dict[int, Stub], now: float) -> dict[str, str]:
        """{model: why} for the models whose stubs hang (see the module doc); updates the watch state."""
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
        pid_text = ", ".join(map(str, pids))
        if attempt == 1:
            self.on_event(f"the process of model {model!r} (pid {pid_text}) died; reloading it "
                          f"(readiness is red until it is back)")
            http_request(f"{self.base}/v2/repository/models/{model}/unload", b"{}", timeout=self.load_timeout)
        else:
            self.on_event(f"reloading model {model!r}, attempt {attempt}")
        status, body = http_request(f"{self.base}/v2/repository/models/{model}/load", b"{}", timeout=self.load_timeout)
        if self._stop.is_set():
            return                                       # the server is being stopped: nothing to report
        ok = status == 200
        error = None if ok else f"HTTP {status}: {_error_text(status, body)}"
        also = []
        if ok:   # ensembles that use the model: Triton reloads them itself; make sure of every model READY before
            states = self.index() or {}
            for other in sorted(set(ready_before) - {model}):
                if states.get(other) != "READY":
                    s, b = http_request(f"{self.base}/v2/repository/models/{other}/load", b"{}",
                                    timeout=self.load_timeout)
                    also.append(other if s == 200 else f"{other} (failed: {_error_text(s, b)})")
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


def stop_with_parent():
    """In a child process: ask Linux to send it SIGINT when its parent dies (no orphaned servers)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv=None) -> int:
    """Run a tritonserver command as this process's child, heal its stubs, forward SIGTERM/SIGINT to it and
    exit with its exit status (a container's entry point)."""
    ap = argparse.ArgumentParser(
        prog="supervisor.py", description="Run tritonserver (the command after --) and reload any model whose "
        "Python-backend process dies. Needs --model-control-mode=explicit in that command.")
    ap.add_argument("--http-url", default="http://127.0.0.1:8000",
                    help="tritonserver's HTTP endpoint as reachable from here (default: http://127.0.0.1:8000)")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between looks at the stubs (default: 0.5)")
    ap.add_argument("--load-timeout", type=float, default=600.0,
                    help="seconds one model reload may take (default: 600)")
    ap.add_argument("--metrics-url", default="http://127.0.0.1:8002/metrics",
                    help="tritonserver's Prometheus metrics as reachable from here, read to notice a model whose "
                         "requests wait while none finishes (default: http://127.0.0.1:8002/metrics)")
    ap.add_argument("--hang-timeout", type=float, default=HANG_TIMEOUT, help=HANG_TIMEOUT_HELP)
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

    server = subprocess.Popen(command, preexec_fn=stop_with_parent)
    signal.signal(signal.SIGTERM, lambda signum, frame: server.send_signal(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: server.send_signal(signum))
    # watch from the first moment the server is ready: while models load, stubs come and go by design
    while server.poll() is None and http_request(f"{args.http_url.rstrip('/')}/v2/health/ready", timeout=5)[0] != 200:
        time.sleep(args.interval)
    supervisor = None
    if server.poll() is None:
        log("tritonserver is ready; watching its model processes")
        supervisor = StubSupervisor(server.pid, args.http_url, log, args.interval, args.load_timeout,
                                    metrics_url=args.metrics_url, hang_timeout=args.hang_timeout).start()
    code = server.wait()
    if supervisor is not None:
        supervisor.stop()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
