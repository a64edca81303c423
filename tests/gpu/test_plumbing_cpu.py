"""GPU code paths checked on any machine, with fakes where CUDA, TensorRT or Triton's stub cannot run here.

- a Triton GPU instance's `cuda:N` reaches every engine: the engine host (triton_repo/phoenix_ranker) opens
  its engine on `cuda:<model_instance_device_id>` (and picks the artifact built for CUDA); ONNX Runtime's CUDA
  provider gets `device_id` N; AOTInductor loads with `device_index` N under GPU N; a torch.export program is
  moved to `cuda:N` (TensorRT's PlanRunner: tests/test_tensorrt.py);
- phoenix_retrieval's BLS call to the user tower asks for its output in CPU memory (`preferred_memory`), so
  `as_numpy()` works when the tower runs on a GPU;
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._inductor

from phoenix_runtime import engines as runtime
from phoenix_runtime.manifest import FORMAT, RANKER, RETRIEVAL, USER_TOWER, write_manifest
from phoenix_runtime.request import Limits

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ a fake Python backend

class Tensor:
    def __init__(self, name, array):
        self._name, self._array = name, np.asarray(array)

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array


class TritonError:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message, code=None):
        self.message, self.code = message, code


class InferenceResponse:
    def __init__(self, output_tensors=None, error=None):
        self.output_tensors, self.error_ = output_tensors or [], error

    def has_error(self):
        return self.error_ is not None

    def error(self):
        return self.error_


class Request(dict):
    """A request: its input tensors by name; it asks for every output."""

    def requested_output_names(self):
        return []


class PreferredMemory:
    def __init__(self, kind, device_id):
        self.kind, self.device_id = kind, device_id


def fake_pb_utils(tower_output=None, preferred_memory=True) -> types.ModuleType:
    """triton_python_backend_utils as far as our models use it; BLS requests are recorded in `pb.bls`."""
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor, pb.TritonError, pb.InferenceResponse = Tensor, TritonError, InferenceResponse
    pb.bls = []
    pb.get_input_tensor_by_name = lambda request, name: request.get(name)
    pb.get_output_tensor_by_name = lambda response, name: next(
        (t for t in response.output_tensors if t.name() == name), None)
    if preferred_memory:
        pb.PreferredMemory, pb.TRITONSERVER_MEMORY_CPU, pb.TRITONSERVER_MEMORY_GPU = PreferredMemory, 0, 1

    class InferenceRequest:
        def __init__(self, **kwargs):
            pb.bls.append(kwargs)

        def exec(self):
            return InferenceResponse([Tensor("user_representation", tower_output)])

        async def async_exec(self):
            return self.exec()

    pb.InferenceRequest = InferenceRequest
    return pb


def load_model(monkeypatch, folder: str, pb) -> types.ModuleType:
    """triton_repo/<folder>/1/model.py with the fake pb_utils (it imports phoenix_runtime by its own name)."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    spec = importlib.util.spec_from_file_location(f"_triton_{folder}", ROOT / "triton_repo" / folder / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_test_manifest(root: Path, served: dict, artifacts: list) -> None:
    root.mkdir(parents=True, exist_ok=True)
    write_manifest(root, {"format": FORMAT, "served": served, "artifacts": artifacts,
                          "limits": Limits(4, 8, 2).to_dict(), "model_config": {}, "tables": {"ranker": {}}})


USER = {"name": "user_hashes", "dtype": "int64", "shape": ["B", 2], "check": "hash", "high": 10, "entity": "user"}
LOGITS = {"name": "logits", "dtype": "float32", "shape": ["B", "C", 3]}


# ------------------------------------------------------------------------------------------ cuda:N reaches the engines

@pytest.mark.parametrize("kind, device_id, want", [("GPU", "2", "cuda:2"), ("GPU", "0", "cuda:0"), ("CPU", "0", "cpu")])
def test_engine_host_opens_its_engine_on_the_instance_device(monkeypatch, tmp_path, kind, device_id, want):
    rec = {"graph": "ranker_embeddings", "backend": "python", "engine": "aoti", "inputs": [USER], "outputs": [LOGITS],
           "tables": "ranker"}
    arts = [{"name": f"r_aoti_{d}", "model": "ranker_embeddings", "kind": "aoti", "path": f"phoenix_ranker/1/r_{d}.pt2",
             "device": d, "inputs": [USER], "outputs": [LOGITS]} for d in ("cpu", "cuda")]
    write_test_manifest(tmp_path, {RANKER: rec}, arts)
    opened = []
    monkeypatch.setattr(runtime, "open_engine", lambda art, root, device, kind: opened.append(
        (art["path"], Path(root), device, kind)) or types.SimpleNamespace(input_names=["user_hashes"]))
    model = load_model(monkeypatch, "phoenix_ranker", fake_pb_utils())
    model.TritonPythonModel().initialize({
        "model_name": RANKER, "model_repository": str(tmp_path / RANKER), "model_version": "1",
        "model_instance_kind": kind, "model_instance_device_id": device_id,
        "model_config": json.dumps({"output": [{"name": "logits", "dims": [-1, 3]}]})})
    built_for = "cuda" if want.startswith("cuda") else "cpu"
    assert opened == [(f"phoenix_ranker/1/r_{built_for}.pt2", tmp_path.resolve(), want, "aoti")]


def test_onnxruntime_cuda_provider_gets_the_device_id(monkeypatch, tmp_path):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert runtime.ort_providers("cuda:2") == [("CUDAExecutionProvider", {"device_id": 2}), "CPUExecutionProvider"]
    assert runtime.ort_providers("cuda") == [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    assert runtime.ort_providers("cpu") == ["CPUExecutionProvider"]
    sessions = []
    monkeypatch.setattr(ort, "InferenceSession", lambda path, sess_options=None, providers=None:
                        sessions.append(providers))
    runtime.OnnxRuntimeEngine(tmp_path / "g.onnx", [USER], [LOGITS], device="cuda:3")
    assert sessions == [[("CUDAExecutionProvider", {"device_id": 3}), "CPUExecutionProvider"]]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(runtime.EngineUnavailable, match="onnxruntime-gpu"):
        runtime.ort_providers("cuda:1")


def test_aoti_package_loads_on_gpu_n(monkeypatch, tmp_path):
    events = []

    @contextlib.contextmanager
    def device(index):
        events.append(("device", index))
        yield

    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda path, **kw: events.append(("load", kw)))
    engine = runtime.AotiEngine(tmp_path / "r_cuda.pt2", [USER], [LOGITS], device="cuda:3", built_for="cuda")
    assert engine.device == "cuda:3"
    assert events == [("device", 3), ("load", {"device_index": 3})], "loaded with GPU 3 current, device_index 3"
    events.clear()
    runtime.AotiEngine(tmp_path / "r_cpu.pt2", [USER], [LOGITS], device="cpu", built_for="cpu")
    assert events == [("load", {})]
    with pytest.raises(runtime.EngineUnavailable, match="compiled for cpu, not cuda:1"):
        runtime.AotiEngine(tmp_path / "r_cpu.pt2", [USER], [LOGITS], device="cuda:1", built_for="cpu")


def test_torch_program_is_moved_to_gpu_n(monkeypatch, tmp_path):
    moved = []

    class Module:
        def to(self, device):
            moved.append(device)
            return self

    monkeypatch.setattr(torch.export, "load", lambda path: types.SimpleNamespace(module=lambda: Module()))
    runtime.TorchEngine(tmp_path / "r.pt2", [USER], [LOGITS], device="cuda:1")
    assert moved == ["cuda:1"]


# ------------------------------------------------------------------------------------------ retrieval's BLS call

def retrieval_repo(root: Path) -> Path:
    rec = {"backend": "python", "inputs": [USER], "top_k": 3, "index": "exact", "corpus_rows": 5,
           "request_inputs": [{"name": "corpus_mask", "dtype": "bool", "shape": ["B", "N"], "optional": True},
                              {"name": "top_k", "dtype": "int32", "shape": ["B", 1], "optional": True}]}
    write_test_manifest(root, {RETRIEVAL: rec}, [])
    folder = root / RETRIEVAL / "1"
    folder.mkdir(parents=True)
    np.save(folder / "corpus.npy", np.eye(5, 4, dtype=np.float32))
    np.save(folder / "corpus_post_ids.npy", np.arange(100, 105, dtype=np.uint64))
    np.save(folder / "corpus_author_ids.npy", np.arange(200, 205, dtype=np.uint64))
    return root


def run_retrieval(monkeypatch, root: Path, pb) -> dict:
    model = load_model(monkeypatch, "phoenix_retrieval", pb).TritonPythonModel()
    outputs = [{"name": n, "dims": [-1]} for n in ("top_k_indices", "top_k_post_ids", "top_k_author_ids",
                                                    "top_k_scores", "user_representation")]
    model.initialize({"model_name": RETRIEVAL, "model_repository": str(root / RETRIEVAL),
                      "model_version": "1", "model_config": json.dumps({"output": outputs})})
    (response,) = model.execute([Request(user_hashes=Tensor("user_hashes", np.array([[1, 2]], np.int64)))])
    assert not response.has_error(), response.error().message
    return {t.name(): t.as_numpy() for t in response.output_tensors}


def test_retrieval_asks_the_user_tower_for_cpu_memory(monkeypatch, tmp_path):
    """On a GPU the user tower's output would stay in GPU memory, where as_numpy() cannot read it."""
    pb = fake_pb_utils(tower_output=np.array([[0.1, 0.9, 0.5, 0.0]], np.float32))
    out = run_retrieval(monkeypatch, retrieval_repo(tmp_path), pb)
    (call,) = pb.bls
    assert call["model_name"] == USER_TOWER and call["requested_output_names"] == ["user_representation"]
    memory = call["preferred_memory"]
    assert isinstance(memory, PreferredMemory)
    assert (memory.kind, memory.device_id) == (pb.TRITONSERVER_MEMORY_CPU, 0)
    np.testing.assert_array_equal(out["top_k_indices"], [[1, 2, 0]])
    np.testing.assert_array_equal(out["top_k_post_ids"], [[101, 102, 100]])


def test_retrieval_still_answers_on_a_python_backend_without_preferred_memory(monkeypatch, tmp_path):
    pb = fake_pb_utils(tower_output=np.array([[0.1, 0.9, 0.5, 0.0]], np.float32), preferred_memory=False)
    out = run_retrieval(monkeypatch, retrieval_repo(tmp_path), pb)
    assert "preferred_memory" not in pb.bls[0]
    np.testing.assert_array_equal(out["top_k_indices"], [[1, 2, 0]])


def test_the_bundled_stub_knows_preferred_memory():
    """The bundled Python backend (what test_self_contained serves with) has the API the call uses."""
    from serving import server

    stub = server._bundled_dist() / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / \
        "triton_python_backend_stub"
    if not stub.exists():
        pytest.skip(f"no bundled stub for this Python ({stub})")
    data = stub.read_bytes()
    assert b"PreferredMemory" in data and b"preferred_memory" in data and b"TRITONSERVER_MEMORY_CPU" in data


# ------------------------------------------------------------------------------------------ gpu-python: gather on the device

def test_the_engine_host_gathers_from_device_tables_like_from_mapped_ones(demo_repo):
    """gpu-python keeps the hash tables as torch tensors on the instance's GPU and gathers the rows there: only
    the hashes cross to the device. Checked here with tensors on the CPU: the same outputs as the memory-mapped
    tables, and the engine is fed the gathered torch tensors, never numpy copies of the embeddings."""
    from phoenix_runtime.host import EngineHost
    from phoenix_runtime.manifest import read_manifest
    from serving.cli import demo_request

    manifest = read_manifest(demo_repo)
    mapped = EngineHost.open(demo_repo, manifest, RANKER)
    device = EngineHost.open(demo_repo, manifest, RANKER, device_tables=True)
    assert all(isinstance(t, np.ndarray) for t in mapped.tables.values())
    assert all(isinstance(t, torch.Tensor) for t in device.tables.values())
    fed = []
    engine = device.engine

    class Spy:
        input_names, inputs = engine.input_names, engine.inputs

        def __call__(self, feed):
            fed.append({n: type(v) for n, v in feed.items()})
            return engine(feed)
    device.engine = Spy()
    rng = np.random.default_rng(5)
    requests = []
    for c in (3, 7):
        arrays = {}
        for s in mapped.inputs:
            shape = [2 if d == "B" else c if d == "C" else d for d in s["shape"]]
            high = s.get("high") or 2
            arrays[s["name"]] = (rng.integers(0, high, shape) if s["dtype"] == "int64"
                                 else (rng.random(shape) < 0.2)).astype(s["dtype"])
        requests.append(arrays)
    for want, got in zip(mapped.run(requests), device.run(requests)):
        assert set(want) == set(got)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    gathered = [emb for emb in device.lookups]
    assert fed and all(f[emb] is torch.Tensor for f in fed for emb in gathered)
