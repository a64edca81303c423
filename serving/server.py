"""Launch and supervise a real Triton Inference Server on a Phoenix model repository.

    python -m serving.server --model-repository triton_repo

Uses a `tritonserver` on PATH if there is one (NVIDIA's container), else the one bundled in the
`nvidia-pytriton` wheel (Python backend only). For the bundled server this module prepares a backend
folder with the Python-backend stub of the running Python version and sets LD_LIBRARY_PATH to the
wheel's libraries and to this interpreter's libpython, so the stub embeds this interpreter (its numpy < 2
and onnxruntime). The repository is self-contained: its Python models import only numpy, the Python
backend's utils, the packages the build copied beside them and their engine's runtime.

What the launcher adds to tritonserver:
- it refuses a folder without a complete build (no manifest.json, or one whose models or files are missing);
- it loads exactly the manifest's models (`--model-control-mode=explicit`, which also lets you reload one:
  `curl -X POST localhost:8000/v2/repository/models/<name>/load`) with strict readiness;
- it supervises the Python-backend stub processes (serving/supervisor.py): when one dies (a crash, an OOM
  kill), it unloads and loads that model through the repository API, so requests work again within seconds
  (about 2 s for the demo build), while readiness is red until the model is back; the ensembles that use the
  model come back with it; the dead stub's shared-memory region is removed; every such event is logged; a
  stub that hangs (stopped, or requests waiting while none finishes, for `--hang-timeout` s) is killed first;
- it gives the stubs' shared-memory regions a prefix of its own and removes any left on stop;
- a server that exits after it was ready is reported as a crash (exit code or signal, uptime, last lines).

Python API (tests, benchmarks, quickstart):

    with TritonServer("triton_repo") as server:      # free loopback ports, waits until ready
        server.grpc_url, server.http_url, server.metrics_url
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
import time
import urllib.error
import urllib.request
from pathlib import Path

from serving.supervisor import HANG_TIMEOUT, HANG_TIMEOUT_HELP, SHM, StubSupervisor, stop_with_parent

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
IGNORED = re.compile(r"NVML|DCGM|CudaDriverHelper|cuda|GPU", re.I)


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
    """A tritonserver process on a model repository: start (free loopback ports), wait ready, supervise, stop."""

    def __init__(self, model_repository, host: str = "127.0.0.1", http_port: int | None = None,
                 grpc_port: int | None = None, metrics_port: int | None = None,
                 startup_timeout: float = 300.0, extra_args: list[str] | None = None,
                 log_path: str | Path | None = None, check_ports: bool = True, supervise: bool = True,
                 model_control: str = "explicit", on_event=None, python: str | Path | None = None,
                 hang_timeout: float = HANG_TIMEOUT):
        self.model_repository = Path(model_repository).resolve()
        self.host = host
        self.ports = {"HTTP": http_port or free_port(host), "gRPC": grpc_port or free_port(host),
                      "metrics": metrics_port or free_port(host)}
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args or [])
        self.log_path = Path(log_path) if log_path else None
        self.check_ports = check_ports  # False: let tritonserver itself report a taken port
        self.supervise = supervise and model_control == "explicit"
        self.model_control = model_control
        self.on_event = on_event or (lambda message: None)
        self.python = python  # the interpreter whose environment the Python-backend stubs run in
        self.hang_timeout = hang_timeout  # seconds before a stopped or stuck model process is killed (0: never)
        self.shm_prefix = f"phoenix{os.getpid()}x{free_port(host)}_"
        self._temp_log = False
        self.process: subprocess.Popen | None = None
        self.supervisor = None
        self.ready_at: float | None = None

    http_url = property(lambda self: f"{self.host}:{self.ports['HTTP']}")
    grpc_url = property(lambda self: f"{self.host}:{self.ports['gRPC']}")
    metrics_url = property(lambda self: f"http://{self.host}:{self.ports['metrics']}/metrics")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def args(self, models: list[str]) -> list[str]:
        """tritonserver flags beyond the ports: model control, readiness, the stubs' shared-memory prefix."""
        out = [f"--model-control-mode={self.model_control}", "--strict-readiness=true",
               f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}"]
        if self.model_control == "explicit":
            out += [f"--load-model={m}" for m in models]
        return out + self.extra_args

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
        cmd, env = server_command(self.model_repository, self.ports["HTTP"], self.ports["gRPC"],
                                  self.ports["metrics"], self.host, self.args(models), self.python)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            preexec_fn=stop_with_parent)
        self._wait_ready()
        self.ready_at = time.monotonic()
        if self.supervise:
            self.supervisor = StubSupervisor(self.process.pid, f"http://{self.http_url}", self.on_event,
                                             load_timeout=self.startup_timeout, metrics_url=self.metrics_url,
                                             hang_timeout=self.hang_timeout).start()
        return self

    @property
    def events(self) -> list[dict]:
        """The supervisor's heal attempts so far (serving.supervisor.StubSupervisor.events)."""
        return list(self.supervisor.events) if self.supervisor is not None else []

    def crashed(self) -> str | None:
        """None while tritonserver runs; once it has exited on its own, why (crash_report)."""
        if self.process is None or self.process.poll() is None:
            return None
        return self.crash_report()

    def _wait_ready(self):
        url = f"http://{self.http_url}/v2/health/ready"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None or FATAL.search(self.log()):
                # a port in use or a model that fails to load: the server logs it, then may linger
                message = explain_failure(self.log(), self.ports)
                self.stop(timeout=5)
                raise ServerError(message)
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"tritonserver was not ready after {self.startup_timeout:.0f} s; "
                          f"see its log {self.log_path}. {explain_failure(self.log(), self.ports)}")

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def crash_report(self) -> str:
        """Why a server that was ready has exited: exit code or signal, uptime, its last lines."""
        code = self.process.returncode if self.process else None
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        up = f" after {time.monotonic() - self.ready_at:.0f} s of serving" if self.ready_at else ""
        lines = [ln.strip() for ln in self.log().splitlines() if ln.strip() and not IGNORED.search(ln)][-3:]
        return f"tritonserver crashed ({how}){up}. Last server lines: " + " | ".join(lines)

    def stop(self, timeout: float = 30.0):
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None
        p, self.process = self.process, None
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for region in SHM.glob(f"{self.shm_prefix}*"):   # a killed stub's region outlives it
            region.unlink(missing_ok=True)

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
                    "print the URLs, reload any model whose process dies, and stop cleanly on Ctrl-C.")
    ap.add_argument("--model-repository", default="triton_repo",
                    help="model repository folder written by `python -m export.build` (default: triton_repo)")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to bind HTTP, gRPC and metrics to (default: 127.0.0.1; 0.0.0.0 for all)")
    ap.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port (default: 8000; 0 = any free port)")
    ap.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default: 8001; 0 = any free port)")
    ap.add_argument("--metrics-port", type=int, default=8002,
                    help="Prometheus metrics port (default: 8002; 0 = any free port)")
    ap.add_argument("--startup-timeout", type=float, default=300.0,
                    help="seconds to wait for every model to load and warm up (default: 300)")
    ap.add_argument("--log-file", default=None, help="write the server log here (default: a temporary file)")
    ap.add_argument("--verbose", action="store_true", help="also print the server log while it runs")
    ap.add_argument("--model-control-mode", choices=("explicit", "none", "poll"), default="explicit",
                    help="explicit (default): load the manifest's models, reload one with POST "
                         "/v2/repository/models/<name>/load, and heal crashed model processes; none/poll: "
                         "tritonserver's own modes (no healing)")
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

    def interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # `kill` stops it as cleanly as Ctrl-C
    signal.signal(signal.SIGINT, interrupt)   # also when started in the background (SIGINT ignored there)
    server = TritonServer(args.model_repository, host=args.host, http_port=args.http_port or None,
                          grpc_port=args.grpc_port or None, metrics_port=args.metrics_port or None,
                          startup_timeout=args.startup_timeout, extra_args=extra, log_path=args.log_file,
                          supervise=not args.no_supervise, model_control=args.model_control_mode,
                          on_event=lambda message: print(f"[supervisor] {message}", flush=True),
                          python=args.python, hang_timeout=args.hang_timeout)
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
    print(f"ready in {time.monotonic() - t0:.1f} s\n  HTTP    {server.http_url}\n  gRPC    {server.grpc_url}\n"
          f"  metrics {server.metrics_url}\n  log     {server.log_path}\nPress Ctrl-C to stop.", flush=True)
    offset = 0
    try:
        while server.process.poll() is None:
            if args.verbose:
                text = server.log()
                print(text[offset:], end="", flush=True)
                offset = len(text)
            time.sleep(0.5)
        print(f"error: {server.crash_report()}", file=sys.stderr)
        server.stop()
        return 1
    except KeyboardInterrupt:
        print("\nstopping tritonserver ...", flush=True)
        server.stop()
        print("stopped.")
        return 0


if __name__ == "__main__":
    sys.exit(main())
