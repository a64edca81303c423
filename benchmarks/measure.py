"""Timing loop and latency statistics shared by the engine and server modes.

`time_call(fn)` runs warm-up calls, then repetitions until the median is stable (the median of
all samples and the median of the newest half agree within `rel_tol`, with at least `min_reps`
samples) or the time budget is spent, whichever comes first, and returns the samples in seconds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass
class Budget:
    warmup: int = 3             # untimed calls first (compilation, caches, allocator)
    min_reps: int = 10          # never fewer timed calls than this, unless one call exceeds max_seconds
    max_reps: int = 2000
    seconds: float = 2.0        # stop once this much timed time is spent (after min_reps)
    max_seconds: float = 20.0   # hard stop even below min_reps (slow configurations)
    rel_tol: float = 0.02       # median stability criterion


def time_call(fn, sync=lambda: None, budget: Budget | None = None) -> dict:
    """Time `fn()` (followed by `sync()`); returns {"samples_s", "warmup_s", "stable"}."""
    b = budget or Budget()
    warm = []
    for _ in range(b.warmup):
        t0 = time.perf_counter()
        fn()
        sync()
        warm.append(time.perf_counter() - t0)
    samples: list[float] = []
    start = time.perf_counter()
    stable = False
    while len(samples) < b.max_reps:
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t0)
        n, spent = len(samples), time.perf_counter() - start
        if n >= b.min_reps and n % 5 == 0:
            stable = is_stable(samples, b.rel_tol)
            if stable or spent > b.seconds:
                break
        if spent > b.max_seconds and n >= 3:
            break
    return {"samples_s": samples, "warmup_s": warm, "stable": bool(stable)}


def is_stable(samples, rel_tol: float) -> bool:
    a = np.asarray(samples)
    whole, recent = np.median(a), np.median(a[len(a) // 2:])
    return bool(abs(recent - whole) <= rel_tol * whole)


def latency_stats(samples_s, items_per_call: float = 1.0, candidates_per_call: float = 0.0,
                  flops_per_call: float = 0.0) -> dict:
    """p50/p90/p99/mean in ms, requests/s and candidates/s at the median, achieved TFLOP/s."""
    a = np.asarray(samples_s, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no samples")
    p50 = float(np.percentile(a, 50))
    out = {"n": int(a.size), "p50_ms": p50 * 1e3, "p90_ms": float(np.percentile(a, 90)) * 1e3,
           "p99_ms": float(np.percentile(a, 99)) * 1e3, "mean_ms": float(a.mean()) * 1e3,
           "min_ms": float(a.min()) * 1e3,
           "requests_per_s": items_per_call / p50, "candidates_per_s": candidates_per_call / p50}
    if flops_per_call:
        out["gflop_per_call"] = flops_per_call / 1e9
        out["tflops"] = flops_per_call / p50 / 1e12
    return out
