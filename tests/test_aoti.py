"""AOTInductor engines: one real CPU build of the demo preset (`python -m export.build --engines aoti`),
then parity with torch at several B and C, candidate isolation on the compiled ranker, and the runtime
interface giving the same outputs for every engine this machine can run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from export import aoti, engines
from export.graphs import build_models, graphs_from_manifest, serving_graphs
from export.manifest import read_manifest, verify
from export.repository import MODELS
from export.runtime import TOLERANCE, available_engines, load_engine, max_abs_err
from phoenix_torch import get_preset

COMPILED = ("ranker", "user_tower", "candidate_tower")
SIZES = ({"B": 1, "C": 1}, {"B": 2, "C": 8}, {"B": 5, "C": 13})
EXACT = 1e-5   # isolation: what a candidate's logits may move when something they must not see changes


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    from export import build

    out = tmp_path_factory.mktemp("aoti_repo")
    kinds = "aoti" + (",tensorrt" if engines.unavailable_reason("tensorrt") is None else "")
    rc = build.main(["--preset", "demo", "--engines", kinds, "--aoti-device", "cpu", "--vocab", "1000",
                     "--output", str(out), "--corpus", "16"])
    assert rc == 0, "export.build --engines aoti failed (its output above says why)"
    return out


@pytest.fixture(scope="module")
def manifest(repo):
    return read_manifest(repo)


@pytest.fixture(scope="module")
def specs(manifest):
    return graphs_from_manifest(manifest, models=COMPILED)   # input specs (bounds) for random valid inputs


@pytest.fixture(scope="module")
def aoti_engines(repo):
    return {m: load_engine(repo, model=m, kind="aoti", device="cpu") for m in COMPILED}


@pytest.fixture(scope="module")
def torch_engines(repo):
    return {m: load_engine(repo, model=m, kind="torch", device="cpu") for m in COMPILED}


def feed(spec, dims, seed=0):
    return {k: v.numpy() for k, v in spec.random_inputs(dims, seed=seed).items()}


def test_build_records_checked_packages_inside_the_model_folders(repo, manifest):
    arts = {a["model"]: a for a in manifest["artifacts"] if a["kind"] == "aoti"}
    assert sorted(arts) == sorted(COMPILED)
    for model, a in arts.items():
        assert a["path"] == f"phoenix_{model}/1/model_cpu.pt2" and a["device"] == "cpu"
        assert a["precision"] == "fp32" and 0 <= a["parity_max_abs_err"] <= TOLERANCE["fp32"]
        assert a["compile_s"] > 0 and a["torch_version"] == torch.__version__
        assert [i["name"] for i in a["inputs"]] and a["outputs"][0]["shape"][0] == "B"
    assert verify(repo, manifest) == []                                # sha256 and sizes match the files
    folders = {p.name for p in repo.iterdir() if p.is_dir()}
    assert folders <= set(MODELS), f"non-model folders in the Triton repository: {folders - set(MODELS)}"


@pytest.mark.parametrize("model", COMPILED)
def test_aoti_matches_torch_at_several_sizes(model, specs, aoti_engines, torch_engines):
    engine = aoti_engines[model]
    assert (engine.kind, engine.device, engine.precision) == ("aoti", "cpu", "fp32")
    for i, dims in enumerate(SIZES):
        f = feed(specs[model], dims, seed=i)
        got, want = engine(f), torch_engines[model](f)
        assert got[engine.output_names[0]].shape[0] == dims["B"]
        assert max_abs_err(got, want, engine.output_names) <= TOLERANCE["fp32"], (model, dims)


def test_aoti_flags_out_of_range_inputs_like_torch(specs, aoti_engines, torch_engines):
    f = feed(specs["ranker"], {"B": 3, "C": 4}, seed=7)
    f["candidate_post_hashes"][1, 2, 0] = 10**9          # outside the post table
    f["history_product_surface"][2, 0] = 16               # outside [0, 16)
    got, want = aoti_engines["ranker"](f), torch_engines["ranker"](f)
    assert got["input_error"].tolist() == want["input_error"].tolist()
    assert got["input_error"][0] == 0 and got["input_error"][1] != 0 and got["input_error"][2] != 0
    assert max_abs_err(got, want, ["logits"]) <= TOLERANCE["fp32"]


def test_changing_one_candidate_leaves_the_others_unchanged(specs, aoti_engines):
    ranker = aoti_engines["ranker"]
    f = feed(specs["ranker"], {"B": 2, "C": 6}, seed=11)
    base = ranker(f)["logits"]
    g = {k: v.copy() for k, v in f.items()}
    j = 3
    g["candidate_post_hashes"][:, j] = (g["candidate_post_hashes"][:, j] % 900) + 7
    g["candidate_author_hashes"][:, j] = (g["candidate_author_hashes"][:, j] % 900) + 3
    g["candidate_product_surface"][:, j] = (g["candidate_product_surface"][:, j] + 5) % 16
    moved = ranker(g)["logits"]
    others = [c for c in range(6) if c != j]
    assert np.abs(moved[:, others] - base[:, others]).max() <= EXACT
    assert np.abs(moved[:, j] - base[:, j]).max() > 1e-3       # the changed candidate did change


def test_padding_candidates_and_scoring_a_subset_change_nothing(specs, aoti_engines):
    ranker = aoti_engines["ranker"]
    f = feed(specs["ranker"], {"B": 2, "C": 4}, seed=12)
    base = ranker(f)["logits"]
    padded = dict(f)
    for name, width in (("candidate_post_hashes", 3), ("candidate_author_hashes", 3),
                        ("candidate_product_surface", 3)):
        pad = np.zeros((2, width, *f[name].shape[2:]), dtype=f[name].dtype)
        padded[name] = np.concatenate([f[name], pad], axis=1)        # 3 hash-0 candidates at the end
    out = ranker(padded)
    assert out["logits"].shape == (2, 7, 19)
    assert np.abs(out["logits"][:, :4] - base).max() <= EXACT
    assert out["input_error"].tolist() == [0, 0]
    subset = {k: (v[:, :2] if k.startswith("candidate_") else v) for k, v in f.items()}
    assert np.abs(ranker(subset)["logits"] - base[:, :2]).max() <= EXACT


def test_users_in_a_batch_do_not_affect_each_other(specs, aoti_engines):
    ranker = aoti_engines["ranker"]
    f = feed(specs["ranker"], {"B": 3, "C": 5}, seed=13)
    together = ranker(f)["logits"]
    for b in range(3):
        alone = ranker({k: v[b:b + 1] for k, v in f.items()})["logits"]
        assert np.abs(alone[0] - together[b]).max() <= EXACT


def test_every_available_engine_gives_the_same_outputs(repo, manifest, specs):
    """The runtime interface: torch, onnxruntime, aoti (+ torch_compile on the candidate tower, and tensorrt
    where it exists) load from the same manifest and agree."""
    built = {a["kind"] for a in manifest["artifacts"]}
    kinds = [k for k, reason in available_engines().items() if reason is None]
    assert {"torch", "onnxruntime", "aoti"} <= set(kinds)
    for model in COMPILED:
        f = feed(specs[model], {"B": 2, "C": 3}, seed=21)
        outs = {}
        for kind in kinds:
            if kind not in ("torch", "torch_compile", "onnxruntime") and kind not in built:
                continue
            if kind == "torch_compile" and model != "candidate_tower":
                continue   # compiling the transformer graphs here costs about 45 s each on 2 cores
            engine = load_engine(repo, model=model, kind=kind, device="cuda" if kind == "tensorrt" else "cpu")
            assert engine.kind == kind and engine.output_names == specs[model].output_names
            outs[kind] = engine(f)
        assert {"torch", "onnxruntime", "aoti"} <= set(outs)
        for kind, out in outs.items():
            err = max_abs_err(out, outs["torch"], specs[model].output_names)
            assert err <= TOLERANCE["fp32"], f"{model}: {kind} differs from torch by {err:.3g}"


def test_bf16_package_matches_bf16_torch(tmp_path):
    """bf16 forward (float32 softmax/RMSNorm/logits): the compiled user tower within the bf16 tier."""
    cfg = get_preset("demo", fprop_dtype="bfloat16")
    rcfg = get_preset("demo", retrieval=True, fprop_dtype="bfloat16")
    spec = serving_graphs(*build_models(cfg, rcfg, vocab=1000, seed=3))["user_tower"]
    art = aoti.build_aoti(spec, tmp_path / "phoenix_user_tower/1/model_cpu.pt2", "cpu", root=tmp_path)
    assert art["precision"] == "bf16" and art["parity_max_abs_err"] <= TOLERANCE["bf16"]
    engine = aoti.AotiEngine(art, tmp_path, "cpu")
    f = feed(spec, {"B": 3}, seed=5)
    err = max_abs_err(engine(f), spec(f), spec.output_names)
    assert err <= TOLERANCE["bf16"]
    print(f"bf16 user tower: compile {art['compile_s']} s, parity {art['parity_max_abs_err']:.2e}, here {err:.2e}")


def test_aoti_engine_refuses_another_device(repo, manifest):
    art = next(a for a in manifest["artifacts"] if a["kind"] == "aoti")
    with pytest.raises(RuntimeError, match="compiled for cpu, not cuda"):
        aoti.AotiEngine(art, repo, "cuda")


def test_cuda_package_matches_torch(tmp_path):
    """On GPU hosts: the ranker compiled for CUDA agrees with the torch module run on the CPU."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here: the CUDA AOTInductor package is built and checked on GPU hosts")
    spec = serving_graphs(*build_models(get_preset("demo"), None, vocab=1000, seed=4))["ranker"]
    art = aoti.build_aoti(spec, tmp_path / "phoenix_ranker/1/model_cuda.pt2", "cuda", root=tmp_path)
    assert art["device"] == "cuda" and art["parity_max_abs_err"] <= TOLERANCE["fp32"]
    engine = aoti.AotiEngine(art, tmp_path, "cuda")
    for i, dims in enumerate(SIZES + ({"B": 16, "C": 200},)):
        f = feed(spec, dims, seed=30 + i)
        err = max_abs_err(engine(f), spec(f), spec.output_names)
        assert err <= TOLERANCE["fp32"], (dims, err)
    print(f"cuda ranker: compile {art['compile_s']} s, parity {art['parity_max_abs_err']:.2e}")
