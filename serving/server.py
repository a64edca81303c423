"""Launch and supervise a real Triton Inference Server on a Phoenix model repository.

    python -m serving.server --model-repository triton_repo

Uses a `tritonserver` on PATH if there is one (NVIDIA's container), else the one bundled in the
`nvidia-pytriton` wheel (Python backend only). For the bundled server this module prepares a backend
folder with the Python-backend stub of the running Python version and sets LD_LIBRARY_PATH to the
wheel's libraries and to this interpreter's libpython, so the stub embeds this interpreter (its numpy < 2
and onnxruntime). The repository is self-contained: its Python models import only numpy, the Python
backend's utils, the packages the build copied beside them and their engine's runtime.

What the launcher adds to tritonserver (serving/supervisor.py does most of it, the same code the container runs):
- it refuses a folder without a complete build (no manifest.json, or one whose models or files are missing);
- it loads exactly the manifest's models (`--model-control-mode=explicit`) with strict readiness;
- admin APIs closed: a fresh random key per start (never logged; written to a file of mode 0600 whose path it
  prints) closes the model-repository, shared-memory, logging and trace APIs to clients without it (header
  `phoenix-admin-key`; over gRPC `triton-grpc-protocol-phoenix-admin-key`). Reload a model as the operator:
  `curl -X POST localhost:8000/v2/repository/models/<name>/load -H "phoenix-admin-key: $(cat KEYFILE)"`;
- its own health endpoint (`--health-port`, printed): /v2/health/ready is 200 only when every model of the
  manifest is READY, none is being healed and it is not draining; /v2/health/live;
- it heals dead or hung Python-backend model processes (a reload of their model, seconds), frees a model's
  shared memory grown by a large request (an in-place reload), restarts a dead tritonserver with backoff and
  reports each event as `[supervisor] ...`;
- on SIGTERM or Ctrl-C: readiness red, `--drain-seconds` of serving on, then tritonserver finishes the requests
  in flight and stops; no process is left behind; the stubs' shared-memory regions are removed.

Python API (tests, benchmarks, quickstart):

    with TritonServer("triton_repo") as server:      # free loopback ports, waits until ready
        server.grpc_url, server.http_url, server.metrics_url, server.health_url, server.admin_key
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from serving.supervisor import (ADMIN_HEADER, DRAIN_SECONDS, GRPC_ADMIN_HEADER, HANG_TIMEOUT, HANG_TIMEOUT_HELP,
                                IGNORED, MAX_RESTARTS, SHM, STARTUP_TIMEOUT, ServerSupervisor, admin_headers,
                                check_admin_key, new_admin_key)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class ServerError(RuntimeError):
    """tritonserver could not start; the message is one sentence plus the server's own error line."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on host:port. Checked before starting, because tritonserver binds
    with SO_REUSEPORT: a second server on the same port would start and share it silently."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _bundled_dist() -> Path:
    try:
        import pytriton
    except ImportError:
        raise ServerError("no tritonserver on PATH and the nvidia-pytriton wheel is not installed "
                          "(pip install nvidia-pytriton)") from None
    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def _bundled_backend_dir(dist: Path, version: str) -> Path:
    """A backend folder with the Python backend and the stub of Python `version` (made once)."""
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(f"the bundled tritonserver has no Python-backend stub for Python {version} ({stub})")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "phoenix_serving"
    target = cache / f"backends-py{version}-{hashlib.sha256(str(dist).encode()).hexdigest()[:12]}"
    if not (target / "python" / "triton_python_backend_stub").exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache))
        shutil.copytree(dist / "backends" / "python", tmp / "python",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
        try:
            tmp.rename(target)
        except OSError:  # another process made it first
            shutil.rmtree(tmp, ignore_errors=True)
    return target


_FACTS = ("import json, sys, sysconfig; print(json.dumps({'version': '%d.%d' % sys.version_info[:2], "
          "'libdir': sysconfig.get_config_var('LIBDIR'), 'ldlibrary': sysconfig.get_config_var('LDLIBRARY')}))")


def interpreter(python: str | Path | None = None) -> dict:
    """The stubs' interpreter: its bin folder, Python version and the folder of its libpython (if shared).
    None: the launcher's own interpreter."""
    if python is None:
        facts = {"version": f"{sys.version_info.major}.{sys.version_info.minor}",
                 "libdir": sysconfig.get_config_var("LIBDIR"), "ldlibrary": sysconfig.get_config_var("LDLIBRARY")}
        bindir = Path(sys.executable).parent
    else:
        python = Path(python)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        try:
            out = subprocess.run([str(python), "-c", _FACTS], capture_output=True, text=True, env=env, timeout=60)
        except OSError as e:
            raise ServerError(f"--python {python}: cannot run it ({e.strerror})") from None
        if out.returncode:
            raise ServerError(f"--python {python}: not a Python interpreter ({out.stderr.strip()[-300:]})")
        facts, bindir = json.loads(out.stdout), python.absolute().parent
    shared = facts["libdir"] and facts["ldlibrary"] and (Path(facts["libdir"]) / facts["ldlibrary"]).exists()
    return {"bin": str(bindir), "version": facts["version"], "libdir": facts["libdir"] if shared else None}


def server_command(model_repository: Path, http_port: int, grpc_port: int, metrics_port: int,
                   host: str = "127.0.0.1", extra_args: list[str] | None = None,
                   python: str | Path | None = None) -> tuple[list[str], dict]:
    """The tritonserver command line and environment (system binary if on PATH, else bundled). The
    Python-backend stubs run in the environment of `python` (default: this interpreter's)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    # the repository is self-contained: nothing of this project on the stubs' path. The embedded interpreter
    # finds its prefix through `python3` on PATH: put the chosen interpreter's folder first so its virtual
    # environment's site-packages (numpy < 2 ...) are the stubs' too
    stubs_python = interpreter(python)
    env["PATH"] = os.pathsep.join([stubs_python["bin"], env.get("PATH", "")])
    system = shutil.which("tritonserver")
    args = [f"--model-repository={model_repository}",
            f"--http-address={host}", f"--grpc-address={host}", f"--metrics-address={host}",
            f"--http-port={http_port}", f"--grpc-port={grpc_port}", f"--metrics-port={metrics_port}",
            "--exit-timeout-secs=10", *(extra_args or [])]
    if system:
        return [system, *args], env
    dist = _bundled_dist()
    libs = [str(dist.parent.parent / "nvidia_pytriton.libs")]
    if stubs_python["libdir"]:
        libs.insert(0, stubs_python["libdir"])  # the stub then embeds that interpreter, not the system libpython
    ours = sysconfig.get_config_var("LIBDIR") if python is not None else None
    libs += [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != ours]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    backend_dir = _bundled_backend_dir(dist, stubs_python["version"])
    return [str(dist / "bin" / "tritonserver"), f"--backend-directory={backend_dir}", *args], env


FATAL = re.compile(r"failed to start \w+ service|failed to load all models|error: creating server", re.I)


def explain_failure(log: str, ports: dict[str, int]) -> str:
    """One clear sentence about why tritonserver stopped, with the server's own error line."""
    # one line each; Triton escapes a Python traceback as literal "\n": keep only its first line
    lines = [ln.strip().split("\\n")[0] for ln in log.splitlines() if ln.strip()]
    for line in lines:
        if re.search(r"failed to start \w+ service.*in use", line, re.I):
            which = next((f"{k} port {v}" for k, v in ports.items() if f":{v}'" in line), "a port")
            return f"tritonserver could not start: {which} is already in use. Server said: {line}"
    for line in lines:
        m = re.search(r"failed to load (?:model )?'([^']+)'", line)
        if m:
            return f"tritonserver could not start: model '{m.group(1)}' failed to load. Server said: {line}"
    for line in lines:
        if re.match(r"^E\d{4} ", line) or line.lower().startswith("error:"):
            if IGNORED.search(line):
                continue
            return f"tritonserver could not start. Server said: {line}"
    tail = lines[-1] if lines else "(no output)"
    return f"tritonserver exited before it was ready. Last server line: {tail}"


def repository_models(model_repository: Path) -> list[str]:
    """The models a complete build holds (its manifest's Triton configs); ServerError when it is not one."""
    from phoenix_runtime.manifest import ManifestError, artifact_files, read_manifest

    try:
        manifest = read_manifest(model_repository)
    except ManifestError as e:
        raise ServerError(f"refusing to serve {model_repository}: {e}") from None
    models = sorted(a["model"] for a in manifest["artifacts"] if a["kind"] == "triton_config")
    missing = [m for m in models if not (model_repository / m / "config.pbtxt").is_file()]
    if not models or missing:
        raise ServerError(f"refusing to serve {model_repository}: its manifest lists models {models} but "
                          f"{missing or 'none'} have no config.pbtxt; rebuild with `python -m export.build`")
    absent = sorted(p for p in artifact_files(manifest) if not (model_repository / p).exists())
    if absent:
        more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
        raise ServerError(f"refusing to serve {model_repository}: files its manifest lists are missing: "
                          f"{', '.join(absent[:5])}{more}; rebuild with `python -m export.build`")
    return models


class TritonServer:
    """A tritonserver process on a model repository: start (free loopback ports), wait until every model is
    ready, supervise (serving.supervisor.ServerSupervisor), stop.

    `admin_key`: the key that opens the admin APIs (default: a fresh random one; `open_admin=True`: no key, the
    APIs open to every client); written to `admin_key_file` (default: a new private temporary file) while the
    server runs. `health_port`: our health endpoint (default: a free port). `supervise` False: no healing of
    model processes; `max_restarts` 0: a dead tritonserver is not restarted."""

    def __init__(self, model_repository, host: str = "127.0.0.1", http_port: int | None = None,
                 grpc_port: int | None = None, metrics_port: int | None = None,
                 startup_timeout: float = STARTUP_TIMEOUT, extra_args: list[str] | None = None,
                 log_path: str | Path | None = None, check_ports: bool = True, supervise: bool = True,
                 model_control: str = "explicit", on_event=None, python: str | Path | None = None,
                 hang_timeout: float = HANG_TIMEOUT, health_port: int | None = None, admin_key: str | None = None,
                 open_admin: bool = False, admin_key_file: str | Path | None = None,
                 max_restarts: int = MAX_RESTARTS):
        self.model_repository = Path(model_repository).resolve()
        self.host = host
        self.ports = {"HTTP": http_port or free_port(host), "gRPC": grpc_port or free_port(host),
                      "metrics": metrics_port or free_port(host), "health": health_port or free_port(host)}
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args or [])
        self.log_path = Path(log_path) if log_path else None
        self.check_ports = check_ports  # False: let tritonserver itself report a taken port
        self.supervise = supervise and model_control == "explicit"
        self.model_control = model_control
        self.on_event = on_event or (lambda message: None)
        self.python = python  # the interpreter whose environment the Python-backend stubs run in
        self.hang_timeout = hang_timeout  # seconds before a stopped or stuck model process is killed (0: never)
        self.max_restarts = max_restarts
        self.admin_key = None if open_admin else check_admin_key(admin_key or new_admin_key(), "admin_key")
        self.admin_key_file = Path(admin_key_file) if admin_key_file else None
        self._temp_key_dir: Path | None = None
        self.shm_prefix = f"phoenix{os.getpid()}x{free_port(host)}_"
        self._temp_log = False
        self.supervisor: ServerSupervisor | None = None

    http_url = property(lambda self: f"{self.host}:{self.ports['HTTP']}")
    grpc_url = property(lambda self: f"{self.host}:{self.ports['gRPC']}")
    metrics_url = property(lambda self: f"http://{self.host}:{self.ports['metrics']}/metrics")
    health_url = property(lambda self: f"http://{self.host}:{self.ports['health']}")

    @property
    def process(self) -> subprocess.Popen | None:
        """The tritonserver process running now (a new one after each restart)."""
        return self.supervisor.process if self.supervisor is not None else None

    @property
    def ready_at(self) -> float | None:
        return self.supervisor.ready_at if self.supervisor is not None else None

    def admin_headers(self, protocol: str = "http") -> dict[str, str]:
        """Headers that open the admin APIs: HTTP (urllib, tritonclient.http) or gRPC (tritonclient.grpc)."""
        return admin_headers(self.admin_key, protocol)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def args(self, models: list[str]) -> list[str]:
        """tritonserver flags beyond the ports: model control, readiness, the stubs' shared-memory prefix."""
        out = [f"--model-control-mode={self.model_control}", "--strict-readiness=true",
               f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}"]
        if self.model_control == "explicit":
            out += [f"--load-model={m}" for m in models]
        return out + self.extra_args      # ServerSupervisor adds the admin APIs' restriction and MEMORY_ARGS

    def _write_admin_key(self):
        if not self.admin_key:
            return
        if self.admin_key_file is None:
            self._temp_key_dir = Path(tempfile.mkdtemp(prefix="phoenix-admin-"))      # mode 0700
            self.admin_key_file = self._temp_key_dir / "admin-key"
        fd = os.open(self.admin_key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.admin_key + "\n")

    def _remove_admin_key(self):
        if self.admin_key_file is not None and self.admin_key:
            self.admin_key_file.unlink(missing_ok=True)      # the key dies with the server
        if self._temp_key_dir is not None:
            shutil.rmtree(self._temp_key_dir, ignore_errors=True)
            self._temp_key_dir = None
            self.admin_key_file = None

    def start(self) -> "TritonServer":
        if not self.model_repository.is_dir():
            raise ServerError(f"model repository {self.model_repository} does not exist "
                              "(build it with `python -m export.build`)")
        models = repository_models(self.model_repository)
        for name, port in self.ports.items():
            if self.check_ports and port_in_use(self.host, port):
                raise ServerError(f"tritonserver not started: {name} port {port} on {self.host} is already in use "
                                  f"by another process (choose another --{name.lower()}-port, or 0 for any free one)")
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
            self.log_path, self._temp_log = Path(name), True
        self.log_path.write_bytes(b"")           # a fresh log per start; restarts append to it
        cmd, env = server_command(self.model_repository, self.ports["HTTP"], self.ports["gRPC"],
                                  self.ports["metrics"], self.host, self.args(models), self.python)
        try:
            supervisor = ServerSupervisor(
                cmd, f"http://{self.http_url}", env=env, metrics_url=self.metrics_url, admin_key=self.admin_key,
                models=models, health_host=self.host, health_port=self.ports["health"], on_event=self.on_event,
                heal=self.supervise, load_timeout=self.startup_timeout, hang_timeout=self.hang_timeout,
                max_restarts=self.max_restarts, startup_timeout=self.startup_timeout, log_path=self.log_path,
                new_session=True)
        except OSError as e:
            raise ServerError(f"tritonserver not started: cannot serve the health endpoint on {self.host}:"
                              f"{self.ports['health']} ({e.strerror}); choose another --health-port") from None
        self._write_admin_key()
        try:
            self.supervisor = supervisor.start()
        except OSError as e:
            self._remove_admin_key()
            raise ServerError(f"tritonserver not started: cannot run {cmd[0]} ({e.strerror})") from None
        self._wait_ready()
        return self

    @property
    def events(self) -> list[dict]:
        """The supervisor's heal attempts so far (serving.supervisor.StubSupervisor.events)."""
        return list(self.supervisor.events) if self.supervisor is not None else []

    @property
    def restarts(self) -> list[dict]:
        """The restarts of a dead tritonserver so far ({"time", "reason", "delay"} each)."""
        return list(self.supervisor.restarts) if self.supervisor is not None else []

    def crashed(self) -> str | None:
        """None while the server runs or is being restarted; once the supervisor gave up, why."""
        if self.supervisor is None or not self.supervisor.finished.is_set():
            return None
        return self.crash_report()

    def _wait_ready(self):
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.supervisor.finished.is_set() or FATAL.search(self.log()):
                # a port in use or a model that fails to load: the server logs it, then may linger
                message = explain_failure(self.log(), self.ports)
                self.stop(timeout=5)
                raise ServerError(message)
            if self.supervisor.readiness()[0]:
                return
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"tritonserver was not ready after {self.startup_timeout:.0f} s; "
                          f"see its log {self.log_path}. {explain_failure(self.log(), self.ports)}")

    def readiness(self) -> tuple[bool, str]:
        """(ready, why) as our health endpoint answers it."""
        return self.supervisor.readiness() if self.supervisor is not None else (False, "not started")

    def is_ready(self) -> bool:
        """Our health endpoint's /v2/health/ready: every model of the manifest ready, not draining."""
        try:
            with urllib.request.urlopen(f"{self.health_url}/v2/health/ready", timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def crash_report(self) -> str:
        """Why the supervisor stopped running tritonserver: exit code or signal, uptime, its last lines."""
        if self.supervisor is not None and self.supervisor.gave_up:
            return self.supervisor.gave_up
        return f"tritonserver is not running. {self.supervisor.last_lines() if self.supervisor else ''}"

    def stop(self, timeout: float = 30.0, drain: float = 0.0, interrupted=None):
        """Stop: with `drain` > 0, readiness red and `drain` s of serving on first (or until the event
        `interrupted` is set); then tritonserver finishes the requests in flight and exits."""
        sup, self.supervisor = self.supervisor, None
        if sup is not None:
            if drain > 0:
                sup.drain(drain, interrupted)
            sup.stop(timeout)
        for region in SHM.glob(f"{self.shm_prefix}*"):   # a killed stub's region outlives it
            region.unlink(missing_ok=True)
        self._remove_admin_key()

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, *exc):
        self.stop()
        if self._temp_log and exc_type is None:  # keep the log of a failed run for reading
            self.log_path.unlink(missing_ok=True)


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m serving.server",
        description="Start tritonserver on a Phoenix model repository (a system tritonserver if on "
                    "PATH, else the one bundled in nvidia-pytriton), wait until every model is ready, "
                    "print the URLs, keep it healthy (heal dead model processes, restart a dead server), close "
                    "its admin APIs with a fresh key, and stop gracefully on Ctrl-C or SIGTERM.")
    ap.add_argument("--model-repository", default="triton_repo",
                    help="model repository folder written by `python -m export.build` (default: triton_repo)")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to bind HTTP, gRPC, metrics and health to (default: 127.0.0.1; 0.0.0.0 for all)")
    ap.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port (default: 8000; 0 = any free port)")
    ap.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default: 8001; 0 = any free port)")
    ap.add_argument("--metrics-port", type=int, default=8002,
                    help="Prometheus metrics port (default: 8002; 0 = any free port)")
    ap.add_argument("--health-port", type=int, default=0,
                    help="port of our health endpoint: GET /v2/health/ready (200 only when every model of the "
                         "manifest is ready and the server is not draining) and /v2/health/live "
                         "(default: 0 = any free port, printed)")
    ap.add_argument("--drain-seconds", type=float, default=DRAIN_SECONDS,
                    help=f"on Ctrl-C or SIGTERM: seconds to keep serving with readiness red before tritonserver "
                         f"stops (default: {DRAIN_SECONDS:g}; a second Ctrl-C stops at once)")
    ap.add_argument("--admin-key-file", default=None,
                    help="write this start's admin key there (mode 0600; removed on stop). Default: a new private "
                         "temporary file, printed")
    ap.add_argument("--insecure-open-admin", action="store_true",
                    help="do not close the admin APIs: any client may then load models (with uploaded code), "
                         "unload them, register shared memory and change logging and trace settings")
    ap.add_argument("--max-restarts", type=int, default=MAX_RESTARTS,
                    help=f"restarts of a dead tritonserver within 10 minutes before the launcher gives up and "
                         f"exits 1 (default: {MAX_RESTARTS}; 0: never restart)")
    ap.add_argument("--startup-timeout", type=float, default=STARTUP_TIMEOUT,
                    help=f"seconds to wait for every model to load and warm up (default: {STARTUP_TIMEOUT:.0f})")
    ap.add_argument("--log-file", default=None, help="write the server log here (default: a temporary file)")
    ap.add_argument("--verbose", action="store_true", help="also print the server log while it runs")
    ap.add_argument("--model-control-mode", choices=("explicit", "none", "poll"), default="explicit",
                    help="explicit (default): load the manifest's models, reload one with POST "
                         "/v2/repository/models/<name>/load (with the admin key), and heal crashed model "
                         "processes; none/poll: tritonserver's own modes (no healing)")
    ap.add_argument("--no-supervise", action="store_true",
                    help="do not watch the Python-backend stub processes (no automatic reload after a crash)")
    ap.add_argument("--hang-timeout", type=float, default=HANG_TIMEOUT, help=HANG_TIMEOUT_HELP)
    ap.add_argument("--trt-version-compatible", action="store_true",
                    help="let the TensorRT backend load version-compatible plans (built with "
                         "--trt-version-compatible): --backend-config=tensorrt,version-compatible=true")
    ap.add_argument("--python", default=None,
                    help="the Python interpreter whose environment the Python-backend model processes run in, "
                         "e.g. a venv holding only numpy<2, onnxruntime and tritonclient (default: this one)")
    ap.add_argument("extra", nargs="*", help="extra tritonserver arguments, after `--` (e.g. -- --log-verbose=1)")
    args = ap.parse_args(argv)
    extra = list(args.extra)
    if args.trt_version_compatible:
        extra.append("--backend-config=tensorrt,version-compatible=true")
    if args.drain_seconds < 0:
        ap.error(f"--drain-seconds {args.drain_seconds:g}: give a number of seconds >= 0")

    started, term, hurry = [False], threading.Event(), threading.Event()

    def on_signal(*_):
        if not started[0]:
            raise KeyboardInterrupt          # still starting: stop at once
        (hurry if term.is_set() else term).set()

    signal.signal(signal.SIGTERM, on_signal)  # `kill` stops it as cleanly as Ctrl-C
    signal.signal(signal.SIGINT, on_signal)   # also when started in the background (SIGINT ignored there)
    server = TritonServer(args.model_repository, host=args.host, http_port=args.http_port or None,
                          grpc_port=args.grpc_port or None, metrics_port=args.metrics_port or None,
                          health_port=args.health_port or None, startup_timeout=args.startup_timeout,
                          extra_args=extra, log_path=args.log_file, supervise=not args.no_supervise,
                          model_control=args.model_control_mode,
                          on_event=lambda message: print(f"[supervisor] {message}", flush=True),
                          python=args.python, hang_timeout=args.hang_timeout, open_admin=args.insecure_open_admin,
                          admin_key_file=args.admin_key_file, max_restarts=args.max_restarts)
    print(f"starting tritonserver on {server.model_repository} ...", flush=True)
    t0 = time.monotonic()
    try:
        server.start()
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        server.stop()
        return 130
    started[0] = True
    if server.admin_key:
        admin = (f"  admin   key in {server.admin_key_file} (mode 0600): send it as header {ADMIN_HEADER} (gRPC: "
                 f"{GRPC_ADMIN_HEADER}) to load, unload, shared memory, logging, trace")
    else:
        admin = "  admin   OPEN to every client (--insecure-open-admin)"
    print(f"ready in {time.monotonic() - t0:.1f} s\n  HTTP    {server.http_url}\n  gRPC    {server.grpc_url}\n"
          f"  metrics {server.metrics_url}\n  health  {server.health_url}/v2/health/ready\n{admin}\n"
          f"  log     {server.log_path}\nPress Ctrl-C to stop.", flush=True)
    offset = 0
    while not term.is_set() and not server.supervisor.finished.is_set():
        if args.verbose:
            text = server.log()
            print(text[offset:], end="", flush=True)
            offset = len(text)
        term.wait(0.5)
    if not term.is_set():
        print(f"error: {server.crash_report()}", file=sys.stderr)
        server.stop()
        return 1
    server.stop(drain=args.drain_seconds, interrupted=hurry)
    print("stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
