"""The machine's measured peak: what one process gets from large matmuls (float32 and bfloat16) and from memory.

Every benchmark point is reported as a fraction of these numbers (`fraction_of_peak`): a point's FLOP/s over
the matmul peak of its precision. A large matmul is the best case of the machine's matrix units through
torch's CPU library (oneDNN / MKL on x86; CUDA's cuBLAS on a GPU), so the fraction says how much of the
hardware a point uses, and the rest is what the report names as lost.

    python -m benchmarks.peak [--device cpu] [--seconds 2]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MAX_CALL_S = 0.5       # the longest one matmul call of the peak measurement may take
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8")


def cpu_model() -> dict:
    """The CPU's model name and its flags that matter for matmuls (Linux /proc/cpuinfo)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return {"name": name, "flags": [f for f in CPU_FLAGS if f in flags]}


def _best_rate(fn, work: float, seconds: float, sync) -> float:
    """work / the fastest of the timed calls (after two warm-up calls), over about `seconds`."""
    for _ in range(2):
        fn()
    sync()
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return work / best


def matmul_gflops(precision: str, n: int = 2048, device: str = "cpu", seconds: float = 2.0) -> float:
    """GFLOP/s of an m x m x m matmul (2 m^3 FLOP) in `precision` on `device`: the best of the calls. m is n, or
    less where one call would take more than MAX_CALL_S (a CPU without a fast path for the precision: bf16 on
    a CPU without AVX-512 BF16 or AMX runs at well under 1 GFLOP/s, where a 2048^3 call takes a minute)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    m = min(n, 256)
    with torch.inference_mode():
        while m < n:
            a = torch.randn(m, m, dtype=DTYPES[precision], device=device)
            t = time.perf_counter()
            a @ a
            sync()
            if (time.perf_counter() - t) * 8 > MAX_CALL_S:     # the next size up costs 8x as much
                break
            m *= 2
        a = torch.randn(m, m, dtype=DTYPES[precision], device=device)
        b = torch.randn(m, m, dtype=DTYPES[precision], device=device)
        return _best_rate(lambda: a @ b, 2.0 * m ** 3, seconds, sync) / 1e9


def copy_gbs(mib: int = 256, device: str = "cpu", seconds: float = 2.0) -> float:
    """GB/s moved by copying a `mib` MiB buffer (bytes read + bytes written)."""
    src = torch.empty(mib << 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    return _best_rate(lambda: dst.copy_(src), 2.0 * (mib << 20), seconds, sync) / 1e9


def measure(device: str = "cpu", seconds: float = 2.0) -> dict:
    """{"matmul_gflops": {precision: GFLOP/s}, "copy_gbs", "threads", "cpu"} of this machine."""
    return {"device": device, "threads": torch.get_num_threads(), "cpu": cpu_model(),
            "matmul_gflops": {p: round(matmul_gflops(p, device=device, seconds=seconds), 1) for p in DTYPES},
            "copy_gbs": round(copy_gbs(device=device, seconds=seconds), 1),
            "how": "best call of a 2048^3 matmul (2 n^3 FLOP; smaller where one call would take over "
                   f"{MAX_CALL_S} s) per precision; a 256 MiB copy (read + write)"}


def fraction_of_peak(tflops: float | None, precision: str, peak: dict | None) -> float | None:
    """A point's share of the machine's matmul peak of its precision (None when either is unknown)."""
    if not tflops or not peak:
        return None
    gflops = peak.get("matmul_gflops", {}).get(precision)
    return round(tflops * 1e3 / gflops, 4) if gflops else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peak",
                                 description="Measure this machine's matmul peak (fp32, bf16) and memory copy "
                                             "bandwidth, as the benchmarks use them; print JSON.")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement (default: 2)")
    args = ap.parse_args(argv)
    print(json.dumps(measure(args.device, args.seconds), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
