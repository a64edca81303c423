"""torch engines: one real CPU build with a torch.export program and an AOTInductor package of the ranker
(`python -m export.build --engines torch,aoti --python-engine aoti`), parity with ONNX Runtime at several B and
C, candidate isolation on the compiled ranker, and the repository serving the compiled engine."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import run_build

from export import aoti
from export.graphs import candidate_tower_graph, ranker_graph
from phoenix_runtime.engines import EngineUnavailable, available_engines, load_engine, open_engine
from phoenix_runtime.manifest import find_artifact, read_manifest, verify
from phoenix_torch import PhoenixModel, PhoenixModelConfig, PhoenixRetrievalModel, get_preset, init_seeded
from phoenix_torch.parity import TOLERANCE, max_abs_err

SIZES = ({"B": 1, "C": 1}, {"B": 2, "C": 8}, {"B": 5, "C": 13})
EXACT = 1e-5   # isolation: what a candidate's logits may move when something they must not see changes


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return run_build(["--preset", "demo", "--release", "may", "--engines", "torch,aoti", "--aoti-device", "cpu",
                      "--python-engine", "aoti", "--vocab", "500", "--no-towers"],
                     tmp_path_factory.mktemp("aoti") / "repo")


@pytest.fixture(scope="module")
def manifest(repo):
    return read_manifest(repo)


@pytest.fixture(scope="module")
def spec(manifest):
    """The ranker_embeddings graph spec (random valid inputs)."""
    return ranker_graph(PhoenixModel(PhoenixModelConfig.from_dict(manifest["model_config"])))


@pytest.fixture(scope="module")
def engines(repo):
    return {k: load_engine(repo, "ranker_embeddings", k, "cpu") for k in ("onnxruntime", "torch", "aoti")}


def feed(spec, dims, seed=0):
    return {k: v.numpy() for k, v in spec.random_inputs(dims, seed=seed).items()}


def test_build_records_checked_engines_inside_the_model_folder(repo, manifest):
    arts = {a["kind"]: a for a in manifest["artifacts"] if a["model"] == "ranker_embeddings"}
    assert {"onnx", "torch_export", "aoti"} <= set(arts)
    assert arts["aoti"]["path"] == "phoenix_ranker/1/ranker_embeddings_cpu.pt2" and arts["aoti"]["device"] == "cpu"
    for kind in ("torch_export", "aoti"):
        assert 0 <= arts[kind]["info"]["parity_max_abs_err"] <= TOLERANCE["fp32"]
    # --python-engine aoti: served as asked, no timing of the engines built (the cpu target's choice otherwise)
    assert manifest["served"]["phoenix_ranker"]["engine"] == "aoti" and manifest["engine_choice"] is None
    assert verify(repo, manifest) == []


def test_every_engine_gives_the_same_outputs(spec, engines):
    assert set(available_engines()) >= {"torch", "onnxruntime", "aoti"}
    for i, dims in enumerate(SIZES):
        f = feed(spec, dims, seed=i)
        outs = {k: e(f) for k, e in engines.items()}
        assert outs["aoti"]["logits"].shape == (dims["B"], dims["C"], 19)
        for kind, out in outs.items():
            err = max_abs_err(out, outs["onnxruntime"], spec.output_names)
            assert err <= TOLERANCE["fp32"], f"{kind} at {dims}: {err:.3g}"


def test_compiled_ranker_keeps_candidates_isolated(spec, engines):
    ranker = engines["aoti"]
    f = feed(spec, {"B": 2, "C": 6}, seed=11)
    base = ranker(f)["logits"]
    g = {k: v.copy() for k, v in f.items()}
    g["candidate_post_embeddings"][:, 3] += 1.0
    g["candidate_impr_ts"][:, 3] += 7 * 86400
    moved = ranker(g)["logits"]
    others = [c for c in range(6) if c != 3]
    assert np.abs(moved[:, others] - base[:, others]).max() <= EXACT
    assert np.abs(moved[:, 3] - base[:, 3]).max() > 1e-3
    padded = {k: (np.concatenate([v, np.zeros_like(v[:, :3])], 1) if spec.inputs[spec.input_names.index(k)].shape[1:2]
                  == ("C",) else v) for k, v in f.items()}
    assert np.abs(ranker(padded)["logits"][:, :6] - base).max() <= EXACT
    for b in range(2):
        alone = ranker({k: v[b:b + 1] for k, v in f.items()})["logits"]
        assert np.abs(alone[0] - base[b]).max() <= EXACT


def test_the_repository_serves_the_compiled_engine(repo, engines, spec):
    from serving.client import PhoenixClient
    from serving.server import TritonServer

    with TritonServer(repo) as server, PhoenixClient(server.grpc_url) as client:
        res = client.score(user_id=3, history=[(5, 1, ["server_tweet_fav"], 0)],
                           candidates=[(11, 1, 0), (12, 2, 0), (13, 1, 3)])
        row = client.build_row(user_id=3, history=[(5, 1, ["server_tweet_fav"], 0)],
                               candidates=[(11, 1, 0), (12, 2, 0), (13, 1, 3)])
        logits = client.infer({s["name"]: row[s["name"]][None] for s in client.inputs}, "phoenix_ranker")["logits"]
    assert res.probs.shape == (3, 19) and len(res.ranking) == 3
    np.testing.assert_allclose(res.probs, 1 / (1 + np.exp(-logits[0])), atol=1e-6)


def test_bf16_package_matches_bf16_torch(tmp_path):
    """bf16 forward: a compiled candidate tower within the bf16 tier (a cheap graph to compile)."""
    retrieval = init_seeded(PhoenixRetrievalModel(get_preset("demo", retrieval=True, fprop_dtype="bfloat16")), 3)
    spec = candidate_tower_graph(retrieval.eval())
    art = aoti.build_aoti(spec, tmp_path / "tower_cpu.pt2", "cpu", root=tmp_path)
    assert art.precision == "bf16" and art.info["parity_max_abs_err"] <= TOLERANCE["bf16"]
    engine = open_engine(art.to_dict(), tmp_path, "cpu")
    f = feed(spec, {"B": 3}, seed=5)
    assert max_abs_err(engine(f), spec(f), spec.output_names) <= TOLERANCE["bf16"]


def test_aoti_engine_refuses_another_device(repo, manifest):
    art = find_artifact(manifest, "ranker_embeddings", "aoti", "cpu")
    with pytest.raises(EngineUnavailable, match="compiled for cpu, not cuda"):
        open_engine(art, repo, "cuda:0")
