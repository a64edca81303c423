"""Build steps from the Phoenix model to serving artifacts (ONNX, torch, AOTInductor, TensorRT, Triton).

`python -m export.build` chains them; `export.runtime.load_engine` loads any built engine.
"""
