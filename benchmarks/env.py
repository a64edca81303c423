"""The environment a benchmark ran in: CPU model and cores, GPU and driver, library versions."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata

LIBRARIES = ("torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "tensorrt",
             "tritonclient", "nvidia-pytriton", "triton", "matplotlib")


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info() -> dict | None:
    try:
        import torch
        if not torch.cuda.is_available():
            return None
        p = torch.cuda.get_device_properties(0)
        info = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "count": torch.cuda.device_count(),
                "capability": f"{p.major}.{p.minor}", "cuda_runtime": torch.version.cuda}
    except Exception as e:  # a broken CUDA install should not stop a CPU benchmark
        return {"error": f"{type(e).__name__}: {e}"}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
        info["driver"] = out[0] if out else None
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None
    return info


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def environment() -> dict:
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    try:
        import torch
        threads = torch.get_num_threads()
    except Exception:
        threads = None
    return {"time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(),
            "platform": platform.platform(), "cpu_model": cpu_model(), "cpu_cores": os.cpu_count(),
            "torch_threads": threads, "load_average": load, "gpu": gpu_info(), "versions": versions(),
            "command": " ".join(["python -m benchmarks", *sys.argv[1:]])}
