"""Heal a tritonserver whose Python-backend model process (stub) died.

Triton's Python backend runs each model instance in a stub process, a child of tritonserver. When a stub
dies (a crash, an out-of-memory kill, `kill -9`), Triton 2.51 keeps the model marked ready and answers every
request with "Stub process ... is not healthy" for good. The supervisor polls tritonserver's children every
`interval` seconds; when a stub it saw is gone (or a zombie), it unloads and loads that model through the
repository API (explicit model control): readiness turns red for the moment of the reload, then the model
serves again from a fresh stub. Why a supervisor and not a health model: a probe request would only notice the
failure, and in-band healing from inside Triton is not possible; the launcher owns the process tree anyway.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

STUB = "triton_python_backend_stub"


def stubs(server_pid: int) -> dict[int, str]:
    """{pid: model name} of the live Python-backend stubs under tritonserver (from their command lines:
    `<stub> <repository>/<model>/<version>/model.py ...`)."""
    out = {}
    for task in Path(f"/proc/{server_pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in map(int, children):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if argv and argv[0].endswith(STUB.encode()) and len(argv) > 1 and state != "Z":
                out[pid] = Path(argv[1].decode()).parent.parent.name
    return out


def _post(url: str, timeout: float = 120.0) -> tuple[int, str]:
    req = urllib.request.Request(url, data=b"{}", method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


class StubSupervisor:
    """Watches tritonserver's stubs from a thread; reloads the model of any stub that dies."""

    def __init__(self, server_pid: int, http_base: str, on_event=print, interval: float = 0.5):
        self.pid, self.base, self.on_event, self.interval = server_pid, http_base, on_event, interval
        self.known: dict[int, str] = {}
        self.events: list[dict] = []
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

    def _loop(self):
        while not self._stop.wait(self.interval):
            live = stubs(self.pid)
            dead = {pid: model for pid, model in self.known.items() if pid not in live}
            for model in sorted(set(dead.values())):
                self.reload(model, [pid for pid, m in dead.items() if m == model])
            self.known = stubs(self.pid) if dead else {**self.known, **live}

    def reload(self, model: str, pids: list[int]):
        t0 = time.monotonic()
        self.on_event(f"the process of model {model!r} (pid {', '.join(map(str, pids))}) died; reloading it")
        _post(f"{self.base}/v2/repository/models/{model}/unload")
        status, body = _post(f"{self.base}/v2/repository/models/{model}/load")
        ok = status == 200
        event = {"model": model, "pids": pids, "reloaded": ok, "seconds": round(time.monotonic() - t0, 2),
                 "time": time.time()}
        self.events.append(event)
        self.on_event(f"model {model!r} reloaded in {event['seconds']} s" if ok else
                      f"reloading model {model!r} failed (HTTP {status}): {json.loads(body).get('error', body) if body.startswith('{') else body}")
