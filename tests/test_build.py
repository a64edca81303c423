"""`python -m export.build`: a complete, self-contained, relocatable repository, and the ways a build must fail
(named errors, the output left as it was, no staging litter after a failure, a signal or a kill)."""
import ast
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO_BUILD, DEMO_VOCAB

from export import build
from phoenix_runtime.engines import load_engine
from phoenix_runtime.manifest import (CANDIDATE_TOWER, ENSEMBLE, ENSEMBLE_EMBEDDINGS, MANIFEST, PIPELINE, POSTPROCESS,
                                      RANKER, RANKER_EMBEDDINGS, RETRIEVAL, USER_TOWER, read_manifest, verify)
from phoenix_torch.parity import TOLERANCE

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# the standard library, numpy, the Python backend, the runtime package and engine runtimes (imported lazily)
ALLOWED_IMPORTS = {*sys.stdlib_module_names, "numpy", "triton_python_backend_utils", "phoenix_runtime", "onnxruntime",
                   "torch", "tensorrt", "faiss"}


def test_demo_build_is_complete_and_its_files_match_the_manifest(demo_repo):
    manifest = read_manifest(demo_repo)
    assert (manifest["release"], manifest["precision"], manifest["target"]) == ("january", "fp32", "cpu")
    assert verify(demo_repo) == []
    assert set(manifest["served"]) == {RANKER, RANKER_EMBEDDINGS, USER_TOWER, CANDIDATE_TOWER, POSTPROCESS, RETRIEVAL,
                                       ENSEMBLE, ENSEMBLE_EMBEDDINGS, PIPELINE}
    configs = sorted(a["model"] for a in manifest["artifacts"] if a["kind"] == "triton_config")
    assert configs == sorted(manifest["served"])     # the Python-host target: phoenix(_embeddings) are served records
    assert {p.name for p in demo_repo.iterdir() if p.is_dir()} == set(configs)   # Triton loads every folder
    ranker = manifest["served"][RANKER]
    assert ranker["graph"] == "ranker_embeddings" and ranker["engine"] == "onnxruntime"
    assert [s["name"] for s in ranker["inputs"]][:2] == ["user_hashes", "history_post_hashes"]
    assert all(s["dtype"] == "int64" for s in ranker["inputs"] if s.get("check") == "hash")
    assert {s["name"]: s["high"] for s in ranker["inputs"] if s.get("check") == "hash"} == {
        "user_hashes": 500, "history_post_hashes": 1000, "history_author_hashes": 700,
        "candidate_post_hashes": 1000, "candidate_author_hashes": 700}
    assert {e: t["vocab"] for e, t in manifest["tables"]["ranker"].items()} == DEMO_VOCAB
    for e, t in manifest["tables"]["ranker"].items():
        table = np.load(demo_repo / t["path"], mmap_mode="r")
        assert table.shape == (DEMO_VOCAB[e], 128) and not table[0].any()            # row 0: zero padding
    onnx = [a for a in manifest["artifacts"] if a["kind"] == "onnx"]
    assert all(0 <= a["info"]["parity_max_abs_err"] <= TOLERANCE["fp32"] for a in onnx)
    assert manifest["limits"] == {"max_batch_size": 64, "max_candidates": 1024, "history_len": 32,
                                  "max_request_bytes": 64 << 20, "candidate_sizes": []}
    assert not list(demo_repo.parent.glob(".build-*"))


def test_repository_holds_no_build_host_path(demo_repo):
    for path in demo_repo.rglob("*"):
        if path.suffix in (".pbtxt", ".json", ".py"):
            text = path.read_text()
            for host_path in (str(PROJECT_ROOT), str(demo_repo), "/tmp/"):
                assert host_path not in text, f"{path.relative_to(demo_repo)} holds {host_path}"


def test_python_models_import_only_numpy_triton_and_what_the_build_copied(demo_repo):
    files = list(demo_repo.glob("*/1/model.py")) + list(demo_repo.glob("*/1/phoenix_*/*.py"))
    assert len(files) > 8
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [] if node.level else [node.module.split(".")[0]]
            else:
                continue
            bad = set(names) - ALLOWED_IMPORTS
            assert not bad, f"{path.relative_to(demo_repo)} imports {bad}"


def test_built_engines_load_from_the_manifest_and_agree_with_torch(demo_repo):
    from export.graphs import ranker_graph
    from phoenix_torch import PhoenixModel, PhoenixModelConfig

    manifest = read_manifest(demo_repo)
    engine = load_engine(demo_repo, "ranker_embeddings", "onnxruntime")
    spec = ranker_graph(PhoenixModel(PhoenixModelConfig.from_dict(manifest["model_config"])))
    feed = {k: v.numpy() for k, v in spec.random_inputs({"B": 2, "C": 5}, seed=9).items()}
    out = engine(feed)
    assert out["logits"].shape == (2, 5, 19) and out["input_error"].tolist() == [0, 0]
    # the cpu target's graphs run only behind the engine host, which refuses out-of-range values first
    # (tests/test_faults.py): they carry no in-graph checks, and the manifest says where the checks run
    assert {r["input_checks"] for m, r in manifest["served"].items() if "graph" in r} == {"host"}


def test_parity_check_stops_on_a_real_mismatch(demo_repo):
    """The build's check raises when torch and the graph disagree: here a graph built from other weights."""
    from export.graphs import ranker_graph
    from phoenix_runtime.manifest import Artifact, find_artifact
    from phoenix_torch import PhoenixModel, PhoenixModelConfig
    from phoenix_torch.parity import ParityError

    manifest = read_manifest(demo_repo)
    other = ranker_graph(PhoenixModel(PhoenixModelConfig.from_dict(manifest["model_config"])))   # zero weights
    art = Artifact.from_dict(find_artifact(manifest, "ranker_embeddings", "onnx"))
    with pytest.raises(ParityError, match=r"ranker_embeddings: ONNX Runtime vs torch at .* > 0.0001 \(fp32\)"):
        build.check_onnx(other, art, demo_repo, 8)


@pytest.mark.parametrize("argv, message", [
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--precision", "fp8"], "invalid choice: 'fp8'"),
    (["--vocab", "1"], "--vocab must be at least 2"),
    (["--engines", "aoti,tensorrtx"], "unknown engine(s) ['tensorrtx']"),
    (["--checkpoint", "/nonexistent/ckpt.npz"], "--checkpoint /nonexistent/ckpt.npz: no such file"),
    (["--weight", "likes=3"], "'weight.likes': unknown"),
    (["--weight", "report"], "expected NAME=VALUE"),
    (["--candidate-sizes", "64,128"], "must be >= 1 and end at max_candidates"),
    (["--engines", "tensorrt", "--trt-profile", "C=1:8:16"], "C max 16 is below --max-candidates 1024"),
])
def test_bad_options_exit_2_with_a_clear_message(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        build.main([*argv, "--output", str(tmp_path / "out")])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_broken_checkpoint_fails_naming_the_keys_and_leaves_the_old_build(tmp_path, capsys, demo_repo):
    from phoenix_torch import PhoenixModel, export_upstream_params, get_preset
    params = export_upstream_params(PhoenixModel(get_preset("demo")))
    del params["phoenix_model/proj_mat_1"]
    params["phoenix_model/unembeddings"] = np.zeros((128, 7), np.float32)
    ckpt = tmp_path / "broken.npz"
    np.savez(ckpt, **{f"param/{k}": v for k, v in params.items()})
    before = (demo_repo / MANIFEST).read_bytes()
    assert build.main([*DEMO_BUILD, "--checkpoint", str(ckpt), "--output", str(demo_repo)]) == 1
    err = capsys.readouterr().err
    assert "build failed" in err and "missing key: phoenix_model/proj_mat_1" in err and "broken.npz" in err
    assert "mis-shaped key: phoenix_model/unembeddings" in err
    assert (demo_repo / MANIFEST).read_bytes() == before and verify(demo_repo) == []
    assert not list(demo_repo.parent.glob(".build-*"))


def test_a_folder_of_other_files_is_never_replaced(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert build.main([*DEMO_BUILD, "--no-towers", "--output", str(tmp_path)]) == 1
    assert "not a Phoenix repository" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_help_explains_every_option():
    res = subprocess.run([sys.executable, "-m", "export.build", "--help"], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for opt in ("--artifacts", "--preset", "--release", "--checkpoint", "--tables", "--extra-features", "--vocab",
                "--precision", "--output", "--engines", "--target", "--max-candidates", "--candidate-sizes",
                "--weight", "--retrieval-index"):
        assert opt in res.stdout
    assert "==SUPPRESS==" not in res.stdout


def _build_process(output: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "export.build", *DEMO_BUILD, "--vocab", "200", "--no-towers",
                             "--output", str(output)], cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_stage(output: Path, proc, timeout=60.0) -> Path | None:
    """The build's staging folder, once the build has been working in it for a moment (mid-export)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        stages = list(output.parent.glob(f".build-{proc.pid}-*"))
        if stages:
            time.sleep(1.5)
            return stages[0]
        time.sleep(0.1)
    return None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_an_interrupted_or_killed_rebuild_leaves_the_old_build_and_no_staging_folder(demo_repo, tmp_path, sig):
    out = tmp_path / "repo"
    out.mkdir()
    for item in demo_repo.iterdir():   # an existing complete build (a copy: the shared one stays untouched)
        os.system(f"cp -r '{item}' '{out}/'")
    before = (out / MANIFEST).read_bytes()
    proc = _build_process(out)
    stage = _wait_for_stage(out, proc)
    assert stage is not None, proc.stderr.read()
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert (out / MANIFEST).read_bytes() == before and verify(out) == []      # the old build, complete
    if sig == signal.SIGKILL:          # nothing can clean up after SIGKILL: the next build does
        assert stage.exists()
        build.remove_dead_stages(out)
    else:
        assert proc.returncode == 130 and "left as it was" in proc.stderr.read()
    assert not list(tmp_path.glob(".build-*"))


def test_a_rebuild_replaces_the_repository_in_one_step(tmp_path, small_repo):
    out = tmp_path / "repo"
    shutil.copytree(small_repo, out)                                       # a previous build (vocab 2000)
    first = read_manifest(out)
    (out / "phoenix_ranker" / "1" / "leftover.txt").write_text("from the old build")
    assert build.main([*DEMO_BUILD, "--vocab", "400", "--no-towers", "--output", str(out)]) == 0
    second = read_manifest(out)
    assert first["tables"]["ranker"]["user"]["vocab"] == 2000 and second["tables"]["ranker"]["user"]["vocab"] == 400
    assert verify(out) == [] and not (out / "phoenix_ranker" / "1" / "leftover.txt").exists()
    assert not list(tmp_path.glob(".build-*"))


def test_load_engine_says_why_it_cannot(demo_repo, tmp_path, monkeypatch):
    from phoenix_runtime import engines as runtime
    from phoenix_runtime.manifest import ManifestError

    with pytest.raises(ManifestError, match="no manifest.json in .*the build did not complete"):
        load_engine(tmp_path)
    with pytest.raises(ValueError, match="unknown engine kind 'tensorflow'"):
        load_engine(demo_repo, kind="tensorflow")
    with pytest.raises(ManifestError, match="no 'aoti' artifact for 'ranker_embeddings'.*--engines"):
        load_engine(demo_repo, kind="aoti")
    reasons = runtime.available_engines()
    assert set(reasons) == set(runtime.KINDS) and reasons["onnxruntime"] is None and reasons["torch"] is None
    monkeypatch.setattr(runtime.shutil, "which", lambda name: None)   # no C++ compiler on PATH
    reasons = runtime.available_engines()
    assert "C++ compiler" in reasons["aoti"] and "C++ compiler" in reasons["torch_compile"]


def test_the_cpu_target_serves_the_fastest_engine_it_built_and_records_why(tmp_path):
    """With more than one CPU engine built, the build times each on the served ranker graph (B=1, C=64) and
    serves the fastest; the manifest keeps the timings. (--python-engine overrides the choice: tests/test_aoti.py's
    build asks for aoti.)"""
    common = ["--preset", "demo", "--target", "cpu", "--engines", "torch", "--vocab", "300", "--no-towers"]
    assert build.main([*common, "--output", str(tmp_path / "chosen")]) == 0
    manifest = read_manifest(tmp_path / "chosen")
    choice = manifest["engine_choice"]
    assert set(choice["p50_ms"]) == {"onnxruntime", "torch"} and choice["dims"] == {"B": 1, "C": 64}
    assert all(v > 0 for v in choice["p50_ms"].values())
    fastest = min(choice["p50_ms"], key=choice["p50_ms"].get)
    assert choice["engine"] == fastest
    assert {manifest["served"][m]["engine"] for m in (RANKER, RANKER_EMBEDDINGS)} == {fastest}

