"""Export one serving graph for a runtime engine kind with `export`'s own build functions.

`export_for(kind, graph, folder, device)` writes the ONNX graph (and, for aoti / tensorrt, the compiled
engine) plus a `manifest.json` into `folder`, so `phoenix_runtime.engines.load_engine(folder, model=graph.name,
kind=...)` loads it exactly as the serving host does. A folder that already holds a manifest is reused (the
caller names folders by a hash of the model, the sources and torch's version). The folder appears whole or
not at all: everything is written to a staging folder next to it, then renamed.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from phoenix_runtime.manifest import FORMAT, MANIFEST, RANKER, model_path, write_manifest
from phoenix_runtime.request import Limits

TRT_PROFILE = "B=1:8:512,C=1:64:1024"   # covers every B and C the engine mode measures


def export_for(kind: str, graph, folder, device: str = "cpu") -> Path:
    from export.onnx_export import export_onnx, write_cpu_bf16

    folder = Path(folder)
    if (folder / MANIFEST).exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    model_dir = stage / model_path(RANKER, "")
    try:
        artifacts = []
        if kind in ("onnxruntime", "tensorrt"):
            onnx = export_onnx(graph, model_dir / f"{graph.name}.onnx", root=stage).with_file_info(stage)
            artifacts.append(onnx)
            if kind == "onnxruntime" and graph.precision == "bf16" and not device.startswith("cuda"):
                artifacts.append(write_cpu_bf16(onnx, stage).with_file_info(stage))   # what the cpu host runs
        if kind == "aoti":  # export.aoti directly: export.engines needs tritonclient (absent on the GPU host)
            from export.aoti import build_aoti
            dev = device.split(":")[0]
            artifacts.append(build_aoti(graph, model_dir / f"{graph.name}_{dev}.pt2", dev, root=stage)
                             .with_file_info(stage))
        elif kind == "tensorrt":
            from export.engines import TensorRTOptions, build_tensorrt_plan
            limits = Limits(512, 1024, 1)     # the plan's profile covers B <= 512, C <= 1024
            artifacts.append(build_tensorrt_plan(graph, artifacts[0], model_dir, stage, TensorRTOptions(TRT_PROFILE),
                                                 limits).with_file_info(stage))
        elif kind != "onnxruntime":
            raise ValueError(f"engine kind {kind!r} has no exported artifact")
        write_manifest(stage, {"format": FORMAT, "preset": "benchmark", "precision": graph.precision,
                                        "target": device, "served": {}, "limits": {}, "model_config": {},
                                        "artifacts": [a.to_dict() for a in artifacts]})
        if folder.exists():
            shutil.rmtree(folder)
        stage.rename(folder)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return folder
