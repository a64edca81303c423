"""A rollover loses no request (issue 25), through the REAL tritonserver: SIGTERM to `python -m serving.server`,
started with its defaults, while clients send requests and stop LAG seconds after our readiness turns red, as a
Kubernetes Service takes a pod out of its endpoints some time after its readiness probe fails. The launcher turns
readiness red at once, serves on for its drain period (5 s), then tritonserver finishes what is in flight and
stops; nothing is left running. (With --drain-seconds 0 the same clients get "Server is stopping" errors.)
"""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from server_helpers import ROOT, Load, answers_alone, health, no_process_left, request_arrays, tritonserver_of

from serving.client import PhoenixClient
from serving.supervisor import DRAIN_SECONDS, SHM, stubs

CLIENTS = 8
POLL = 0.1          # seconds between readiness probes
LAG = 2.0           # seconds a Service keeps routing to a pod after its readiness turned red (probe period, propagation)


def test_sigterm_under_load_fails_no_request_and_leaves_no_process(small_repo, tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "serving.server", "--model-repository", str(small_repo),
                          "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
                          "--log-file", str(tmp_path / "server.log")],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        urls = {ln.split()[0]: ln.split()[1] for ln in lines if ln.startswith("  ")}
        assert {"HTTP", "gRPC", "health"} <= set(urls), "".join(lines) + p.stderr.read()
        health_url = urls["health"].rsplit("/v2/", 1)[0]
        triton = tritonserver_of(p.pid)
        stub_pids, regions = list(stubs(triton)), [s.region for s in stubs(triton).values()]
        with PhoenixClient(urls["gRPC"]) as client:
            requests = [request_arrays(client, seed=60 + i, num_candidates=1 + 3 * i) for i in range(CLIENTS)]
        alone = answers_alone(urls["gRPC"], requests)

        ready, red_at, stop_polling = [True], [None], threading.Event()

        def poll():                                  # the Service's view of the pod
            while not stop_polling.is_set():
                ready[0] = health(health_url)[0] == 200
                if not ready[0] and red_at[0] is None:
                    red_at[0] = time.monotonic()
                stop_polling.wait(POLL)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        def routed() -> bool:                        # the Service still sends to this pod
            return ready[0] or (red_at[0] is not None and time.monotonic() - red_at[0] < LAG)

        with Load(urls["gRPC"], urls["HTTP"], requests, alone, threads=CLIENTS, gate=routed) as load:
            time.sleep(3.0)
            sent_before = len(load.log)
            t_term = time.monotonic()
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=DRAIN_SECONDS + 60)
            t_exit = time.monotonic()
        stop_polling.set()
        poller.join(timeout=10)
        out, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    in_flight = [t0 for t0, t1, *_ in load.log if t0 < t_term < t1]
    after_red = [t0 for t0, *_ in load.log if red_at[0] is not None and t0 > red_at[0]]
    too_late = [t0 for t0 in after_red if t0 > red_at[0] + LAG + POLL]
    print(f"\nSIGTERM under load from {CLIENTS} clients: {len(load.log)} requests ({sent_before} in the 3 s before, "
          f"{len(in_flight)} in flight at SIGTERM, {len(after_red)} sent after readiness turned red), "
          f"{len(load.failed)} failed, {load.wrong} wrong; readiness red "
          f"{red_at[0] - t_term:.2f} s after SIGTERM; the launcher exited {t_exit - t_term:.1f} s after it "
          f"(drain {DRAIN_SECONDS:g} s)")
    assert p.returncode == 0, err[-3000:]
    assert sent_before > 20, "too few requests to say anything"
    assert not load.failed, load.failed[:5]
    assert not load.wrong
    assert red_at[0] is not None and red_at[0] - t_term < 1.0, "readiness did not turn red at once"
    assert after_red and not too_late, "the clients did not model the Service's lag"
    assert t_exit - t_term >= DRAIN_SECONDS, "stopped before the drain period ended"
    assert not no_process_left(triton, stub_pids, timeout=10), "processes left behind"
    assert not [r for r in regions if (SHM / r).exists()], "shared-memory regions left behind"
    assert "stopped." in out, out
