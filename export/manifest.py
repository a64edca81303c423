"""`manifest.json`: the contract between the build, the server, the client and the benchmarks.

Its presence means a build completed: a build deletes the old one first and writes the new one last,
atomically (temp file + rename), so a reader never sees a half-written manifest. Schema: docs/design.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = 1


class ManifestError(RuntimeError):
    """A missing, unreadable or inconsistent manifest (the message says which and what to do)."""


def sha256_file(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def add_file_info(root, artifact: dict) -> dict:
    """Fill `sha256` and `bytes` of `artifact["path"]` (and of its ONNX external data, if any)."""
    root = Path(root)
    path = root / artifact["path"]
    artifact["sha256"], artifact["bytes"] = sha256_file(path), path.stat().st_size
    if artifact.get("external_data"):
        data = path.parent / artifact["external_data"]
        artifact["external_data_sha256"], artifact["external_data_bytes"] = sha256_file(data), data.stat().st_size
    return artifact


def new_manifest(*, preset: str, precision: str, target: str, model_config: dict, retrieval_config: dict | None,
                 tables: dict, artifacts: list[dict] | None = None, **extra) -> dict:
    return {"format": FORMAT, "preset": preset, "precision": precision, "target": target,
            "model_config": model_config, "retrieval_config": retrieval_config, "tables": tables,
            **extra, "artifacts": list(artifacts or [])}


def write_manifest(root, manifest: dict) -> Path:
    """Write `<root>/manifest.json` atomically; return its path."""
    root = Path(root)
    final = root / MANIFEST
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=root)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def read_manifest(root) -> dict:
    """Read `<root>/manifest.json` (root may also be the file itself)."""
    path = Path(root)
    if path.is_dir():
        path = path / MANIFEST
    if not path.exists():
        raise ManifestError(f"no {MANIFEST} in {path.parent}: the build did not complete there "
                            f"(run `python -m export.build --output {path.parent}`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from None
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{path} has format {manifest.get('format')!r}; this code reads format {FORMAT}")
    return manifest


def find_artifact(manifest: dict, model: str, kind: str, device: str | None = None) -> dict:
    """The `kind` artifact of `model`. Artifacts built for one device (AOTInductor packages, TensorRT
    plans record `device`) must match `device`'s type ("cuda:1" matches "cuda"); others match any."""
    found = [a for a in manifest.get("artifacts", []) if a.get("model") == model and a.get("kind") == kind]
    want = device.split(":")[0] if device else None
    for a in found:
        if want is None or a.get("device") in (None, want):
            return a
    if found:
        raise ManifestError(f"the manifest's {kind!r} artifacts for model {model!r} were built for "
                            f"{sorted({a.get('device') for a in found})}, not {device!r}; rebuild on a {want} "
                            f"host (see --aoti-device)")
    have = sorted({a.get("kind") for a in manifest.get("artifacts", []) if a.get("model") == model})
    raise ManifestError(f"the manifest has no {kind!r} artifact for model {model!r} (it has {have or 'none'}); "
                        f"rebuild with `python -m export.build` and the engines you need (see --engines)")


def verify(root, manifest: dict | None = None) -> list[str]:
    """Problems with the files the manifest lists (missing, size or sha256 mismatch); [] when all match."""
    root = Path(root)
    manifest = manifest if manifest is not None else read_manifest(root)
    problems = []
    for a in manifest.get("artifacts", []):
        path = root / a["path"]
        if not path.exists():
            problems.append(f"{a['name']}: {a['path']} is missing")
            continue
        if "bytes" in a and path.stat().st_size != a["bytes"]:
            problems.append(f"{a['name']}: {a['path']} has {path.stat().st_size} bytes, manifest says {a['bytes']}")
        elif "sha256" in a and sha256_file(path) != a["sha256"]:
            problems.append(f"{a['name']}: {a['path']} sha256 differs from the manifest")
    return problems
