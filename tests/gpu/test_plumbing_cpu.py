"""GPU code paths checked on any machine, with fakes where CUDA, TensorRT or Triton's stub cannot run here.

- a Triton GPU instance's `cuda:N` reaches every engine: the engine host (triton_repo/phoenix_ranker) opens
  its engine on `cuda:<model_instance_device_id>` (and picks the artifact built for CUDA); ONNX Runtime's CUDA
  provider gets `device_id` N; AOTInductor loads with `device_index` N under GPU N; a torch.export program is
  moved to `cuda:N` (TensorRT's PlanRunner: tests/test_tensorrt.py);
- phoenix_retrieval's BLS call to the user tower asks for its output in CPU memory (`preferred_memory`), so
  `as_numpy()` works when the tower runs on a GPU;
- native backends batch only requests of equal shapes, so the client pads C to the build's candidate sizes:
  the padding is exact (the real candidates' scores do not change), checked through the torch model.
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

from export import contract, runtime
from export import repository as repo
from export.graphs import hashes_in
from export.models import ModelSource, load_models, torch_tables
from phoenix_torch import HashedPhoenixModel, RecsysBatch
from serving import batching, scoring
from serving.cli import demo_request
from serving.client import PhoenixClient

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

    pb.InferenceRequest = InferenceRequest
    return pb


def load_model(monkeypatch, folder: str, pb) -> types.ModuleType:
    """triton_repo/<folder>/1/model.py, importing the fake pb_utils and the packages the build copies beside it."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    export_pkg = types.ModuleType("phoenix_export")
    export_pkg.contract, export_pkg.runtime = contract, runtime
    serving_pkg = types.ModuleType("phoenix_serving")
    serving_pkg.batching, serving_pkg.scoring = batching, scoring
    monkeypatch.setitem(sys.modules, "phoenix_export", export_pkg)
    monkeypatch.setitem(sys.modules, "phoenix_serving", serving_pkg)
    spec = importlib.util.spec_from_file_location(f"_triton_{folder}", ROOT / "triton_repo" / folder / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_manifest(root: Path, served: dict, artifacts: list) -> None:
    root.mkdir(parents=True, exist_ok=True)
    contract.write_manifest(root, {"format": contract.FORMAT, "served": served, "artifacts": artifacts,
                                   "limits": contract.Limits(4, 8, 2).to_dict(), "model_config": {},
                                   "tables": {"ranker": {}}})


USER = {"name": "user_hashes", "dtype": "int64", "shape": ["B", 2], "check": "hash", "high": 10, "entity": "user"}
LOGITS = {"name": "logits", "dtype": "float32", "shape": ["B", "C", 3]}


# ------------------------------------------------------------------------------------------ cuda:N reaches the engines

@pytest.mark.parametrize("kind, device_id, want", [("GPU", "2", "cuda:2"), ("GPU", "0", "cuda:0"), ("CPU", "0", "cpu")])
def test_engine_host_opens_its_engine_on_the_instance_device(monkeypatch, tmp_path, kind, device_id, want):
    rec = {"graph": "ranker_embeddings", "backend": "python", "engine": "aoti", "inputs": [USER], "outputs": [LOGITS],
           "tables": "ranker"}
    arts = [{"name": f"r_aoti_{d}", "model": "ranker_embeddings", "kind": "aoti", "path": f"phoenix_ranker/1/r_{d}.pt2",
             "device": d, "inputs": [USER], "outputs": [LOGITS]} for d in ("cpu", "cuda")]
    write_manifest(tmp_path, {contract.RANKER: rec}, arts)
    opened = []
    monkeypatch.setattr(runtime, "open_engine", lambda art, root, device, kind: opened.append(
        (art["path"], Path(root), device, kind)) or types.SimpleNamespace(input_names=["user_hashes"]))
    model = load_model(monkeypatch, "phoenix_ranker", fake_pb_utils())
    model.TritonPythonModel().initialize({
        "model_name": contract.RANKER, "model_repository": str(tmp_path / contract.RANKER), "model_version": "1",
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
    rec = {"backend": "python", "inputs": [USER], "top_k": 3, "index": "exact", "corpus_rows": 5}
    write_manifest(root, {contract.RETRIEVAL: rec}, [])
    folder = root / contract.RETRIEVAL / "1"
    folder.mkdir(parents=True)
    np.save(folder / "corpus.npy", np.eye(5, 4, dtype=np.float32))
    np.save(folder / "corpus_post_ids.npy", np.arange(100, 105, dtype=np.uint64))
    np.save(folder / "corpus_author_ids.npy", np.arange(200, 205, dtype=np.uint64))
    return root


def run_retrieval(monkeypatch, root: Path, pb) -> dict:
    model = load_model(monkeypatch, "phoenix_retrieval", pb).TritonPythonModel()
    model.initialize({"model_name": contract.RETRIEVAL, "model_repository": str(root / contract.RETRIEVAL),
                      "model_version": "1"})
    (response,) = model.execute([{"user_hashes": Tensor("user_hashes", np.array([[1, 2]], np.int64))}])
    assert not response.has_error(), response.error().message
    return {t.name(): t.as_numpy() for t in response.output_tensors}


def test_retrieval_asks_the_user_tower_for_cpu_memory(monkeypatch, tmp_path):
    """On a GPU the user tower's output would stay in GPU memory, where as_numpy() cannot read it."""
    pb = fake_pb_utils(tower_output=np.array([[0.1, 0.9, 0.5, 0.0]], np.float32))
    out = run_retrieval(monkeypatch, retrieval_repo(tmp_path), pb)
    (call,) = pb.bls
    assert call["model_name"] == contract.USER_TOWER and call["requested_output_names"] == ["user_representation"]
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


# ------------------------------------------------------------------------------------------ client padding is exact

@pytest.fixture(scope="module")
def demo():
    """The demo ranker, its client config (as phoenix_postprocess serves it) and the scoring record."""
    models = load_models(ModelSource(preset="demo", vocab=500, towers=False))
    cfg = models.ranker.config
    inputs = [t.to_dict() for t in hashes_in("ranker", models.ranker, {e: len(t) for e, t in
                                                                        models.ranker_tables.items()})[0]]
    post = repo.postprocess_record(cfg, contract.scoring_params({}), inputs)
    manifest = {"model_config": {"actions": list(cfg.actions)}, "served": {contract.RANKER: {"inputs": inputs},
                                                                           contract.POSTPROCESS: post},
                "limits": contract.Limits(64, 16, cfg.history_seq_len).to_dict(),
                "hashing": {e: h.to_dict() for e, h in models.ranker_hashing.items()}}
    ranker = HashedPhoenixModel(models.ranker, torch_tables(models.ranker_tables)).eval()
    return ranker, contract.client_config(manifest), post


def client_for(demo, max_batch_size: int, sizes: tuple, seen: list) -> PhoenixClient:
    """A PhoenixClient whose server is the torch ranker + phoenix_postprocess's math, in process."""
    ranker, config, post = demo
    limits = contract.Limits(max_batch_size, 16, config["limits"]["history_len"], candidate_sizes=sizes)
    client = PhoenixClient("127.0.0.1:1", config={**config, "limits": limits.to_dict()})

    def infer(arrays, model=None):
        seen.append(arrays["candidate_post_hashes"].shape[:2])
        batch = RecsysBatch(**{s["name"]: torch.from_numpy(arrays[s["name"]]) for s in config["ranker_inputs"]})
        with torch.no_grad():
            logits = ranker(batch).logits.numpy()
        return scoring.score(logits, post["sources"], arrays["candidate_post_hashes"][..., 0] != 0,
                             author_keys=arrays.get("candidate_author_ids"),
                             author_hash_fallback=arrays["candidate_author_hashes"][..., 0],
                             video_duration_ms=arrays.get("candidate_video_duration_ms"),
                             in_network=arrays.get("candidate_in_network"),
                             params=scoring.ScoringParams.from_dict(post["params"]))

    client.infer = infer
    return client


def test_client_padding_to_candidate_sizes_is_exact(demo):
    """Scores of the real candidates are the same whether the client sends each user alone and unpadded, all
    users padded to one fixed size, or in batches padded to the sizes the build fixed (--candidate-sizes)."""
    ranker, config, _ = demo
    requests = [demo_request(config["actions"], seed=40 + i, num_history=2 + 7 * i, num_candidates=c)
                for i, c in enumerate((1, 3, 5, 9))]
    alone, padded, pairs = [], [], []
    want = client_for(demo, 1, (), alone).score_many(requests)
    got = client_for(demo, 64, (4, 16), padded).score_many(requests)
    got_pairs = client_for(demo, 2, (4, 16), pairs).score_many(requests)
    assert alone == [(1, 1), (1, 3), (1, 5), (1, 9)], "reference: no padding at all"
    assert padded == [(4, 16)] and pairs == [(2, 4), (2, 16)], "the client padded C to the fixed sizes"
    for i, (w, *others) in enumerate(zip(want, got, got_pairs)):
        for g in others:
            np.testing.assert_allclose(g.probs, w.probs, atol=1e-6, rtol=0, err_msg=f"user {i}: probs")
            for name, value in w.scores.items():
                np.testing.assert_allclose(g.scores[name], value, atol=1e-6, rtol=0, err_msg=f"user {i}: {name}")
            np.testing.assert_allclose(g.weighted_score, w.weighted_score, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(g.final_score, w.final_score, rtol=1e-5, atol=1e-7)
            assert g.ranking == w.ranking and sorted(g.ranking) == list(range(len(requests[i]["candidates"])))
