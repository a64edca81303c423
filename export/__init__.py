"""Build steps from the Phoenix model to serving artifacts (ONNX, torch, AOTInductor, TensorRT, Triton).

`python -m export.build` chains them; `phoenix_runtime.engines.load_engine` loads any built engine.
"""
