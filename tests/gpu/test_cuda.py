"""The first checks to run on a CUDA GPU: `python -m pytest -q tests/gpu` (see tests/gpu/README.md).

Skipped, with the reason, where torch sees no CUDA GPU. Each test says what else it needs (a C++ compiler for
AOTInductor, nvidia-pytriton and numpy < 2 for the server, the `tensorrt` package for plans) and skips alone
without it.
- the upstream golden files on the GPU (phoenix_torch.golden --device cuda);
- an AOTInductor package compiled for CUDA against the torch module;
- a gpu-python build served by the bundled tritonserver (Python backend, engine host on cuda:0, torch engine)
  answering like the cpu build of the same model;
- a TensorRT plan against ONNX Runtime.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import golden_files

from export.models import ModelSource, load_models
from phoenix_runtime.manifest import RANKER, VERSION, read_manifest
from phoenix_runtime.request import Limits
from phoenix_torch.parity import TOLERANCE, check_parity

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (torch.cuda.is_available() is False here); run "
                                       "`python -m pytest -q tests/gpu` on a GPU host")
SOURCE = ModelSource(preset="demo", vocab=1000)
BUILD = ["--preset", "demo", "--vocab", "1000", "--corpus", "64", "--top-k", "5"]


@pytest.fixture(scope="module")
def specs():
    from export.build import graph_specs

    return graph_specs(load_models(SOURCE), {"ranker", "ranker_embeddings"})


@pytest.mark.parametrize("path", golden_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_golden_file_on_cuda(path):
    from phoenix_torch import golden

    rows = golden.run_case(path, "cuda")
    assert rows
    for impl, name, err, tol in rows:
        assert err <= tol, f"{path.name} {impl} {name} on cuda: max abs err {err:.3e} > {tol:.0e}"


def test_aoti_cuda_package_matches_torch(specs, tmp_path):
    from export import aoti
    from phoenix_runtime.engines import compiler_missing, open_engine

    if compiler_missing():
        pytest.skip(compiler_missing())
    spec = specs["ranker_embeddings"]
    art = aoti.build_aoti(spec, tmp_path / "ranker_embeddings_cuda.pt2", "cuda", root=tmp_path)
    assert art.device == "cuda" and art.info["parity_max_abs_err"] <= TOLERANCE["fp32"]
    engine = open_engine(art.to_dict(), tmp_path, "cuda:0")
    for seed, dims in enumerate(({"B": 1, "C": 1}, {"B": 3, "C": 8}, {"B": 5, "C": 13})):
        feed = spec.random_inputs(dims, seed=300 + seed)
        got = engine({n: v.numpy() for n, v in feed.items()})
        check_parity(got, spec(feed), spec.output_names, spec.precision, f"AOTInductor cuda vs torch at {dims}")


def _served_scores(repo: Path, requests) -> tuple[list, dict]:
    from serving.client import PhoenixClient
    from serving.server import TritonServer
    from serving.supervisor import stubs

    with TritonServer(repo, startup_timeout=600) as server:
        maps = {s.model: Path(f"/proc/{pid}/maps").read_text() for pid, s in stubs(server.process.pid).items()}
        with PhoenixClient(server.grpc_url) as client:
            return client.score_many(requests), maps


def test_gpu_python_build_served_on_the_gpu_answers_like_the_cpu_build(tmp_path):
    import numpy

    from export import build
    from serving.cli import demo_request

    pytest.importorskip("pytriton", reason="the bundled tritonserver comes with nvidia-pytriton (pip install it)")
    if int(numpy.__version__.split(".")[0]) >= 2:
        pytest.skip(f"numpy {numpy.__version__} here: Triton's Python backend returns empty outputs with numpy 2 "
                    "(run from an environment with numpy<2)")
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    assert build.main([*BUILD, "--target", "cpu", "--output", str(cpu)]) == 0
    assert build.main([*BUILD, "--target", "gpu-python", "--engines", "torch", "--python-engine", "torch",
                       "--output", str(gpu)]) == 0
    manifest = read_manifest(gpu)
    assert manifest["served"][RANKER]["engine"] == "torch"
    assert "kind: KIND_GPU" in (gpu / RANKER / "config.pbtxt").read_text()
    actions = manifest["model_config"]["actions"]
    requests = [demo_request(actions, seed=i, num_history=4 + 5 * i, num_candidates=c) for i, c in enumerate((2, 8, 5))]
    want, _ = _served_scores(cpu, requests)
    got, maps = _served_scores(gpu, requests)
    assert "libcuda.so" in maps[RANKER], "the engine host's stub uses the GPU"
    for i, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_allclose(g.probs, w.probs, atol=TOLERANCE["fp32"], rtol=0, err_msg=f"user {i}")
        np.testing.assert_allclose(g.final_score, w.final_score, rtol=1e-3, atol=1e-6, err_msg=f"user {i}")
        assert sorted(g.ranking) == list(range(len(requests[i]["candidates"])))


def test_tensorrt_plan_matches_onnxruntime(specs, tmp_path):
    pytest.importorskip("tensorrt", reason="the `tensorrt` package is not installed (pip install \".[gpu]\" or "
                                           "NVIDIA's TensorRT container)")
    from export import engines
    from export.onnx_export import export_onnx
    from phoenix_runtime.engines import open_engine

    spec = specs["ranker"]
    folder = tmp_path / RANKER / VERSION
    onnx = export_onnx(spec, folder / "ranker.onnx", root=tmp_path).with_file_info(tmp_path)
    limits = Limits(8, 32, spec.config.history_seq_len, candidate_sizes=(8, 32))
    plan = engines.build_tensorrt_plan(spec, onnx, folder, tmp_path,
                                       engines.TensorRTOptions(timing_cache=str(tmp_path / "timing.cache")), limits)
    assert plan.info["profile"]["B"]["max"] == 8 and plan.info["profile"]["C"] == {"min": 1, "opt": 8, "max": 32}
    engine, reference = open_engine(plan.to_dict(), tmp_path, "cuda:0"), open_engine(onnx.to_dict(), tmp_path, "cpu")
    feed = {n: v.numpy() for n, v in spec.random_inputs({"B": 3, "C": 11}, seed=7).items()}
    check_parity(engine(feed), reference(feed), spec.output_names, spec.precision, "TensorRT vs ONNX Runtime")


def test_the_gpu_engine_host_gathers_on_the_device_like_on_the_host(tmp_path):
    """gpu-python (issue 26): the engine host on cuda:0 keeps the tables on the GPU and gathers there; the same
    answers as gathering from the memory-mapped tables on the host."""
    from export import build
    from phoenix_runtime.host import EngineHost

    repo = tmp_path / "gpu"
    assert build.main([*BUILD, "--target", "gpu-python", "--engines", "torch", "--no-towers",
                       "--output", str(repo)]) == 0
    manifest = read_manifest(repo)
    device = EngineHost.open(repo, manifest, RANKER, "cuda:0")
    host = EngineHost.open(repo, manifest, RANKER, "cuda:0", device_tables=False)
    assert all(t.is_cuda for t in device.tables.values()) and all(isinstance(t, np.ndarray) for t in host.tables.values())
    rng = np.random.default_rng(3)
    arrays = {s["name"]: (rng.integers(0, s.get("high") or 2, [3 if d == "B" else 9 if d == "C" else d
                                                               for d in s["shape"]])).astype(s["dtype"])
              for s in host.inputs if not s.get("optional")}
    arrays["history_actions"] = (arrays["history_actions"] > 0).astype(np.float32)
    (want,), (got,) = host.run([arrays]), device.run([arrays])
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=TOLERANCE["fp32"], rtol=0, err_msg=name)
