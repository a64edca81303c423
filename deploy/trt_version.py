"""The TensorRT pin of deploy/Dockerfile, and a check that a container really has that TensorRT.

A TensorRT plan deserializes only in the TensorRT version that built it (version-compatible plans
aside), so the container that builds plans (nvcr.io/nvidia/tensorrt:<release>-py3), the server image
(nvcr.io/nvidia/tritonserver:<release>-py3) and the `tensorrt` pin of pyproject's `gpu` extra must
agree. The release and the TensorRT version are written once, as the `ARG TRITON_RELEASE=` and
`ARG TENSORRT_VERSION=` defaults at the top of deploy/Dockerfile; this file reads them from there.

    python3 deploy/trt_version.py pins                      # TRITON_RELEASE=... TENSORRT_VERSION=...
    python3 deploy/trt_version.py check                     # this machine's TensorRT vs the pin
    python3 deploy/trt_version.py check --python --strict --expect 10.13.3.9

`check` exits 1 on a mismatch. Where it cannot tell which TensorRT is installed it warns and exits
0, or exits 2 with --strict. Standard library only: it runs inside the containers before anything
is installed there.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().with_name("Dockerfile")
PIN_NAMES = ("TRITON_RELEASE", "TENSORRT_VERSION", "TORCH_SPEC")


def read_pins(dockerfile: Path | str = DOCKERFILE) -> dict[str, str]:
    """The `ARG NAME=default` defaults of `dockerfile` (quotes stripped), first declaration wins."""
    pins: dict[str, str] = {}
    for line in Path(dockerfile).read_text().splitlines():
        m = re.match(r"\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)=(\S*)\s*$", line)
        if m and m.group(1) not in pins:
            pins[m.group(1)] = m.group(2).strip("\"'")
    return pins


def _numbers(version: str) -> list[int]:
    m = re.match(r"\d+(?:\.\d+)*", version.strip())
    if not m:
        raise ValueError(f"not a TensorRT version: {version!r}")
    return [int(p) for p in m.group(0).split(".")]


def same_tensorrt(found: str, pin: str) -> bool:
    """True when `found` is the pinned TensorRT. Library file names carry three components
    (libnvinfer.so.10.13.3) and packages four (10.13.3.9): compare the components both have, and
    at least major.minor.patch."""
    a, b = _numbers(found), _numbers(pin)
    n = min(len(a), len(b))
    return n >= 3 and a[:n] == b[:n]


def installed_tensorrt(python: bool = False) -> tuple[str | None, str]:
    """(version, where it was read) of the TensorRT here; (None, reason) when it cannot be told.
    python=True reads the `tensorrt` Python package (what export.build and the gpu-python engine
    host load); otherwise the container's TRT_VERSION and the libnvinfer library (what Triton's
    TensorRT backend loads)."""
    if python:
        try:
            import tensorrt  # noqa: PLC0415
        except ImportError as e:
            return None, f"the tensorrt Python package does not import ({e})"
        return str(tensorrt.__version__), "tensorrt.__version__"
    env = os.environ.get("TRT_VERSION", "").strip()
    if env:
        return env, "$TRT_VERSION"
    candidates = []
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False).stdout
        candidates += re.findall(r"=>\s*(\S*libnvinfer\.so\.\d+)\s*$", out, flags=re.M)
    except OSError:
        pass
    candidates += glob.glob("/usr/lib/*/libnvinfer.so.*") + glob.glob("/usr/local/tensorrt/lib/libnvinfer.so.*")
    for lib in candidates:
        m = re.search(r"libnvinfer\.so\.(\d+\.\d+\.\d+)", os.path.realpath(lib))
        if m:
            return m.group(1), os.path.realpath(lib)
    return None, "no $TRT_VERSION and no versioned libnvinfer.so found"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dockerfile", default=str(DOCKERFILE), help="where the pins are (default: %(default)s)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("pins", help="print NAME=value for the pins, shell-sourceable")
    c = sub.add_parser("check", help="compare the TensorRT installed here with the pin")
    c.add_argument("--expect", help="the pinned version (default: ARG TENSORRT_VERSION of --dockerfile)")
    c.add_argument("--python", action="store_true", help="check the tensorrt Python package, not the library")
    c.add_argument("--strict", action="store_true", help="exit 2 when the installed version cannot be told")
    args = p.parse_args(argv)

    if args.cmd == "pins":
        pins = read_pins(args.dockerfile)
        for name in PIN_NAMES:
            print(f"{name}={pins.get(name, '')}")
        return 0

    pin = args.expect or read_pins(args.dockerfile).get("TENSORRT_VERSION")
    if not pin:
        print(f"error: no TensorRT pin (ARG TENSORRT_VERSION=) in {args.dockerfile}", file=sys.stderr)
        return 2
    found, where = installed_tensorrt(python=args.python)
    if found is None:
        print(f"{'error' if args.strict else 'warning'}: cannot tell the TensorRT version here: {where}",
              file=sys.stderr)
        return 2 if args.strict else 0
    if not same_tensorrt(found, pin):
        print(f"error: TensorRT here is {found} ({where}) but the pin is {pin}: plans built by one do not "
              f"load in the other. Change ARG TRITON_RELEASE and ARG TENSORRT_VERSION in deploy/Dockerfile "
              f"and the tensorrt pin in pyproject.toml together.", file=sys.stderr)
        return 1
    print(f"TensorRT {found} ({where}) matches the pin {pin}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
