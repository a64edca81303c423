"""Export one serving graph for a runtime engine kind with `export`'s own build functions.

`export_for(kind, graph, folder, device)` writes the ONNX graph (and, for aoti / tensorrt, the compiled
engine) plus a `manifest.json` into `folder`, so `export.runtime.load_engine(folder, kind=...)` loads it
exactly as the serving host does. A folder that already holds a manifest is reused (the caller names
folders by a hash of the model, the sources and torch's version).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from export.manifest import MANIFEST, new_manifest, write_manifest

TRT_PROFILE = "B=1:8:512,C=1:64:1024"   # covers every B and C the engine mode measures


def export_for(kind: str, graph, folder, device: str = "cpu") -> Path:
    from export.manifest import add_file_info
    from export.onnx_export import export_onnx

    folder = Path(folder)
    if (folder / MANIFEST).exists():
        return folder
    stage = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent if folder.parent.exists() else None))
    try:
        artifacts = []
        if kind in ("onnxruntime", "tensorrt"):
            artifacts.append(export_onnx(graph, stage / "phoenix_ranker" / "1" / "model.onnx", root=stage))
        if kind == "aoti":  # export.aoti directly: export.engines needs tritonclient (absent on the GPU host)
            from export.aoti import build_aoti
            dev = device.split(":")[0]
            art = build_aoti(graph, stage / "phoenix_ranker" / "1" / f"model_{dev}.pt2", dev, root=stage)
            artifacts.append(add_file_info(stage, art))
        elif kind == "tensorrt":
            from export import engines
            args = argparse.Namespace(trt_profile=TRT_PROFILE, trt_workspace_gb=None, trt_timing_cache=None,
                                      trt_version_compatible=False, trt_hardware_compatible=False)
            artifacts += engines.build_tensorrt_engines({"ranker": graph}, artifacts, stage, args)
        elif kind != "onnxruntime":
            raise ValueError(f"engine kind {kind!r} has no exported artifact")
        write_manifest(stage, new_manifest(preset="benchmark", precision=graph.precision, target=device,
                                           model_config={}, retrieval_config=None, tables={},
                                           artifacts=artifacts))
        folder.parent.mkdir(parents=True, exist_ok=True)
        if folder.exists():
            shutil.rmtree(folder)
        stage.rename(folder)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return folder
