"""`python -m export.build`: a demo build in a temp folder, its manifest, and the ways a build must fail."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export import build
from export.manifest import MANIFEST, read_manifest, sha256_file, verify
from export.runtime import load_engine

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FAST = ["--preset", "demo", "--vocab", "1000", "--engines", "none", "--target", "cpu"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A demo build with tables from a file (user 500, post 1000, author 700 rows)."""
    folder = tmp_path_factory.mktemp("build")
    rng = np.random.default_rng(0)
    np.savez(folder / "tables.npz", **{f"{e}_table": rng.standard_normal((n, 128)).astype(np.float32)
                                       for e, n in (("user", 500), ("post", 1000), ("author", 700))})
    out = folder / "repo"
    assert build.main([*FAST, "--tables", str(folder / "tables.npz"), "--output", str(out)]) == 0
    return out


def test_demo_build_writes_a_manifest_whose_entries_exist_and_match(repo):
    manifest = read_manifest(repo)
    assert manifest["preset"] == "demo" and manifest["precision"] == "fp32" and manifest["target"] == "cpu"
    kinds = {(a["model"], a["kind"]) for a in manifest["artifacts"]}
    for model in ("ranker", "ranker_embeddings", "user_tower", "candidate_tower"):
        assert (model, "onnx") in kinds and (model, "torch") in kinds
    for a in manifest["artifacts"]:
        path = repo / a["path"]
        assert path.is_file(), a["path"]
        assert a["bytes"] == path.stat().st_size and a["sha256"] == sha256_file(path), a["path"]
    assert verify(repo) == []
    onnx_paths = {a["model"]: a["path"] for a in manifest["artifacts"] if a["kind"] == "onnx"}
    assert onnx_paths == {"ranker": "phoenix_ranker/1/model.onnx",
                          "ranker_embeddings": "phoenix_ranker/1/ranker_embeddings.onnx",
                          "user_tower": "phoenix_user_tower/1/model.onnx",
                          "candidate_tower": "phoenix_candidate_tower/1/model.onnx"}
    ranker = next(a for a in manifest["artifacts"] if a["name"] == "ranker_onnx")
    assert ranker["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["B", "C", 19]},
                                 {"name": "input_error", "dtype": "int32", "shape": ["B"]}]
    assert ranker["inputs"][5] == {"name": "candidate_post_hashes", "dtype": "int32", "shape": ["B", "C", 2]}
    assert 0 <= ranker["parity_max_abs_err"] <= 1e-4
    assert {k: manifest["tables"][k] for k in ("user_vocab", "post_vocab", "author_vocab")} == \
        {"user_vocab": 500, "post_vocab": 1000, "author_vocab": 700}
    assert manifest["model_config"]["history_seq_len"] == 32
    assert not list(repo.parent.glob(".build-*"))  # the staging folder is gone
    assert json.loads((repo / MANIFEST).read_text()) == manifest


def test_built_engines_load_from_the_manifest_and_agree(repo):
    from export.graphs import graphs_from_manifest

    spec = graphs_from_manifest(read_manifest(repo), models=("ranker",))["ranker"]
    feed = {k: v.numpy() for k, v in spec.random_inputs({"B": 2, "C": 5}, seed=9).items()}
    ort_out = load_engine(repo, "ranker", "onnxruntime")(feed)
    torch_out = load_engine(repo, "ranker", "torch")(feed)      # the saved state dict, no rebuild
    np.testing.assert_allclose(ort_out["logits"], torch_out["logits"], atol=1e-4, rtol=0)
    assert ort_out["input_error"].tolist() == [0, 0]
    feed["user_hashes"][1, 0] = 500                                   # the user table has 500 rows
    assert load_engine(repo, "ranker", "onnxruntime")(feed)["input_error"].tolist() == [0, 1]


def test_parity_check_stops_on_a_real_mismatch(repo):
    """The build's check raises when torch and the graph disagree: here a graph built from other weights."""
    from export.graphs import graphs_from_manifest
    from export.runtime import ParityError

    other = graphs_from_manifest(read_manifest(repo), models=("ranker",))["ranker"]  # zero-initialised weights
    with pytest.raises(ParityError, match=r"ranker: ONNX Runtime differs from torch at .* > 0.0001 \(fp32\)"):
        build.check_parity(other, repo / "phoenix_ranker/1/model.onnx", build.parity_dims(other, 8))


@pytest.mark.parametrize("argv, message", [
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--precision", "fp8"], "invalid choice: 'fp8'"),
    (["--vocab", "1"], "--vocab must be at least 2"),
    (["--engines", "aoti,tensorrtx"], "unknown engine(s) ['tensorrtx']"),
    (["--checkpoint", "/nonexistent/ckpt.npz"], "--checkpoint /nonexistent/ckpt.npz: no such file"),
])
def test_bad_options_exit_2_with_a_clear_message(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        build.main([*argv, "--output", str(tmp_path / "out")])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_broken_checkpoint_fails_naming_the_keys_and_leaves_no_manifest(tmp_path, capsys):
    from phoenix_torch import PhoenixModel, export_upstream_params, get_preset
    params = export_upstream_params(PhoenixModel(get_preset("demo")))
    del params["phoenix_model/proj_mat_1"]
    params["phoenix_model/unembeddings"] = np.zeros((128, 7), np.float32)
    ckpt = tmp_path / "broken.npz"
    np.savez(ckpt, **{f"param/{k}": v for k, v in params.items()})
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text('{"format": 1, "artifacts": []}')  # an older build's manifest
    assert build.main([*FAST, "--checkpoint", str(ckpt), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "build failed" in err and "missing key: phoenix_model/proj_mat_1" in err
    assert "mis-shaped key: phoenix_model/unembeddings" in err
    assert not (out / MANIFEST).exists()
    assert not list(tmp_path.glob(".build-*"))


def test_help_explains_every_option():
    res = subprocess.run([sys.executable, "-m", "export.build", "--help"], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for opt in ("--preset", "--checkpoint", "--tables", "--vocab", "--seed", "--precision", "--output",
                "--engines", "--target"):
        assert opt in res.stdout
    assert "==SUPPRESS==" not in res.stdout


def test_committed_sources_survive_a_build_into_triton_repo(tmp_path, monkeypatch):
    """Moving the staged files into the project's triton_repo never replaces a committed model.py."""
    repo = tmp_path / "triton_repo"
    shutil.copytree(PROJECT_ROOT / "triton_repo", repo, ignore=shutil.ignore_patterns("manifest.json"))
    monkeypatch.setattr(build, "DEFAULT_OUTPUT", repo)
    committed = {p: p.read_bytes() for p in repo.glob("*/1/model.py")}
    assert committed
    stage = tmp_path / "stage"
    for p in committed:
        dst = stage / p.relative_to(repo)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text("# a different file\n")
    (stage / "phoenix_ranker" / "1" / "model.onnx").write_bytes(b"graph")
    build.move_into(stage, repo)
    assert {p: p.read_bytes() for p in repo.glob("*/1/model.py")} == committed
    assert (repo / "phoenix_ranker" / "1" / "model.onnx").read_bytes() == b"graph"

    # files of the previous build that the new one did not write go; committed sources stay
    (repo / "phoenix_ranker" / "1" / "model.plan").write_bytes(b"old plan")
    old = {"format": 1, "artifacts": [{"path": "phoenix_ranker/1/model.plan"}, {"path": "phoenix_ranker/1/model.py"},
                                      {"path": "phoenix_ranker/1/model.onnx"}]}
    (repo / MANIFEST).write_text(json.dumps(old))
    stale = build.previous_build_files(repo) - build.artifact_files({"artifacts": [{"path": "phoenix_ranker/1/model.onnx"}]})
    build.remove_stale(repo, stale)
    assert not (repo / "phoenix_ranker" / "1" / "model.plan").exists()
    assert (repo / "phoenix_ranker" / "1" / "model.onnx").exists()
    assert {p: p.read_bytes() for p in repo.glob("*/1/model.py")} == committed


def test_load_engine_says_why_it_cannot(repo, tmp_path):
    from export.manifest import ManifestError
    from export.runtime import EngineUnavailable, available_engines

    with pytest.raises(ManifestError, match="no manifest.json in .*the build did not complete"):
        load_engine(tmp_path)
    with pytest.raises(ValueError, match="unknown model 'rankr'"):
        load_engine(repo, model="rankr")
    with pytest.raises(ValueError, match="unknown engine kind 'tensorflow'"):
        load_engine(repo, kind="tensorflow")
    reasons = available_engines()
    assert set(reasons) == {"torch", "torch_compile", "onnxruntime", "aoti", "tensorrt"}
    assert reasons["onnxruntime"] is None and reasons["torch"] is None
    if reasons["tensorrt"]:  # no TensorRT here: the error is the reason, before any manifest lookup
        with pytest.raises(EngineUnavailable, match="tensorrt"):
            load_engine(repo, kind="tensorrt", device="cuda")
    else:
        with pytest.raises(ManifestError, match="no 'tensorrt' artifact for model 'ranker'"):
            load_engine(repo, kind="tensorrt", device="cuda")
    if reasons["aoti"] is None:  # this build has no AOTInductor package
        with pytest.raises(ManifestError, match="no 'aoti' artifact for model 'ranker'.*--engines"):
            load_engine(repo, kind="aoti")
