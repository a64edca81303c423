"""Memory of a process tree (tritonserver and its Python-backend stubs): RSS sampled over time, peak RSS per
process (VmHWM), and RSS / PSS now (PSS counts shared pages, such as memory-mapped tables, once). Linux /proc."""
from __future__ import annotations

import os
import threading


def children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                out += [int(c) for c in open(f"/proc/{pid}/task/{tid}/children").read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (the Python-backend stubs are children of tritonserver)."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children(p)
    return tree


def status_kib(pid: int, key: str) -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class MemorySampler:
    """Samples the RSS of a process tree in a thread; keeps the peak and each process's VmHWM.

    `pid` may be a callable returning the pid or None (not started yet), so sampling can begin before
    the process exists and cover its start-up.
    """

    # It runs in the process that times the requests: sampling every 0.05 s (walking /proc under the GIL) made
    # the served release-size pipeline 5-12 ms slower in a measurement of 30 ms. Every 0.5 s still sees the
    # loading peak (seconds long), and each process's own peak is its VmHWM, whatever the interval.
    def __init__(self, pid, interval: float = 0.5):
        self.pid, self.interval = pid, interval
        self.peak_kib, self.hwm_kib, self.names = 0, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def sample(self):
        pid = self.pid() if callable(self.pid) else self.pid
        if pid is None:
            return
        tree = process_tree(pid)
        self.alive = tree
        total = 0
        for p in tree:
            total += status_kib(p, "VmRSS")
            hwm = status_kib(p, "VmHWM")
            if hwm:
                self.hwm_kib[p] = max(self.hwm_kib.get(p, 0), hwm)
                if p not in self.names:
                    try:
                        self.names[p] = open(f"/proc/{p}/comm").read().strip()
                    except OSError:
                        self.names[p] = "?"
        self.peak_kib = max(self.peak_kib, total)

    def _loop(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def stop(self) -> dict:
        """Stop sampling (call while the processes still run: the last sample names the live ones)."""
        self._stop.set()
        self._thread.join()
        self.sample()
        alive = [p for p in getattr(self, "alive", []) if p in self.hwm_kib]
        per = {}
        for p in alive:
            per.setdefault(self.names.get(p, "?"), []).append(round(self.hwm_kib[p] / 1024, 1))
        return {"peak_rss_mib": round(self.peak_kib / 1024, 1),
                "sum_process_peak_rss_mib": round(sum(self.hwm_kib[p] for p in alive) / 1024, 1),
                "processes": len(alive), "peak_rss_mib_by_process": per}


def tree_memory(pid: int) -> dict:
    """RSS and PSS (GiB) of a process and its descendants (tritonserver and its stubs)."""
    rss = pss = 0
    for p in process_tree(pid):
        try:
            for line in open(f"/proc/{p}/smaps_rollup"):
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pass
    return {"rss_gib": round(rss / 2**20, 2), "pss_gib": round(pss / 2**20, 2)}
