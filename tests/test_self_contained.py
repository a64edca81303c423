"""A built repository is relocatable and self-contained: moved to another folder and served by the bundled
tritonserver whose Python-backend stubs run in a bare virtual environment holding only `numpy<2`,
`onnxruntime` and `tritonclient[grpc]` (no torch, no project code, no PYTHONPATH), it answers like the torch
model it was built from.

One demo build (cpu target), one fresh virtual environment (python -m venv + pip install; only pip's own
cache is reused between runs), one server start, a few requests. Skipped, with the reason, only when pip
cannot install the three packages because PyPI cannot be reached.

The launcher runs the stubs in the bare environment through its `python=` option (`--python` on the CLI).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from export.graphs import user_tower_graph
from export.models import ModelSource, load_models, torch_tables
from phoenix_runtime.batching import stack_rows
from phoenix_runtime.hashing import hash_params_from
from phoenix_runtime.manifest import MANIFEST, RANKER, RETRIEVAL, USER_TOWER, model_path, read_manifest, verify
from phoenix_torch import HashedPhoenixModel, RecsysBatch
from serving import server as launcher
from serving.cli import demo_request
from serving.client import PhoenixClient
from serving.supervisor import stubs

BARE_PACKAGES = ("numpy<2", "onnxruntime", "tritonclient[grpc]")
SOURCE = ModelSource(preset="demo", vocab=2000, seed=0)      # the models of small_repo (server_helpers.SMALL_BUILD)
ATOL = 1e-5


def pypi_reachable(timeout: float = 5.0) -> bool:
    for host in ("pypi.org", "files.pythonhosted.org"):
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
        except OSError:
            return False
    return True


def clean_env(env: dict | None = None) -> dict:
    env = dict(os.environ if env is None else env)
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONUSERBASE"):
        env.pop(key, None)
    env["PYTHONNOUSERSITE"] = "1"            # no ~/.local site-packages either
    return env


def make_bare_env(folder: Path) -> Path:
    """A fresh venv with BARE_PACKAGES only; its python."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, env=clean_env())
    python = folder / "bin" / "python"
    pip = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                          *BARE_PACKAGES], capture_output=True, text=True, env=clean_env(), timeout=900)
    if pip.returncode:
        if not pypi_reachable():
            pytest.skip(f"PyPI cannot be reached, so the bare environment ({', '.join(BARE_PACKAGES)}) cannot be "
                        f"installed: {pip.stderr.strip().splitlines()[-1] if pip.stderr.strip() else 'pip failed'}")
        pytest.fail(f"pip could not install {BARE_PACKAGES} into {folder}:\n{pip.stderr[-3000:]}")
    return python


@pytest.fixture(scope="module")
def moved_repo(small_repo, tmp_path_factory):
    """The session's small build (SMALL_BUILD), copied to a folder of another name under another
    parent: (the folder it was built in, the copy)."""
    moved = tmp_path_factory.mktemp("elsewhere") / "moved_repo"
    shutil.copytree(small_repo, moved)
    assert (moved / MANIFEST).is_file()
    return small_repo, moved


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """Made from this interpreter (`python -m venv`), so the bundled stub of this Python version fits it."""
    return make_bare_env(tmp_path_factory.mktemp("bare") / "venv")


@pytest.fixture(scope="module")
def served(moved_repo, bare_python, tmp_path_factory):
    """The moved repository served by the bundled tritonserver, stubs in the bare environment, started from a
    neutral working folder."""
    _, moved = moved_repo
    mp = pytest.MonkeyPatch()
    mp.chdir(tmp_path_factory.mktemp("cwd"))
    for key in ("PYTHONPATH", "VIRTUAL_ENV"):
        mp.delenv(key, raising=False)
    mp.setenv("PYTHONNOUSERSITE", "1")                  # no ~/.local site-packages in the stubs either
    try:
        with launcher.TritonServer(moved, supervise=False, startup_timeout=240, python=bare_python) as server:
            yield server
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def models():
    return load_models(SOURCE)


# ------------------------------------------------------------------------------------------ the folder

def test_repository_names_no_build_path(moved_repo):
    """Nothing in the repository points at the folder it was built in (configs, manifest, sources)."""
    built, moved = moved_repo
    for path in moved.rglob("*"):
        if path.is_file() and path.suffix in (".pbtxt", ".json", ".py", ".md", ".txt"):
            text = path.read_text(errors="replace")
            assert str(built) not in text and str(built.parent) not in text, f"{path} names the build folder"
    assert verify(moved) == [], "every file of the manifest is in the moved folder, unchanged"


def test_bare_environment_holds_only_the_three_packages(bare_python, tmp_path):
    code = ("import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None for m in "
            "('numpy', 'onnxruntime', 'tritonclient', 'torch', 'export', 'serving', 'phoenix_torch', "
            "'phoenix_runtime')}))")
    found = json.loads(subprocess.run([str(bare_python), "-c", code], capture_output=True, text=True, check=True,
                                      cwd=tmp_path, env=clean_env()).stdout)
    assert found == {"numpy": True, "onnxruntime": True, "tritonclient": True, "torch": False, "export": False,
                     "serving": False, "phoenix_torch": False, "phoenix_runtime": False}
    version = subprocess.run([str(bare_python), "-c", "import numpy; print(numpy.__version__)"], capture_output=True,
                             text=True, check=True, env=clean_env()).stdout.strip()
    assert int(version.split(".")[0]) < 2, f"numpy {version} in the bare environment (Python backend needs < 2)"


# ------------------------------------------------------------------------------------------ served

def test_stubs_run_in_the_bare_environment(served, moved_repo, bare_python):
    """Every Python-backend stub maps numpy and onnxruntime from the bare venv, nothing from this one."""
    _, moved = moved_repo
    bare_prefix = str(bare_python.parent.parent)
    server_libs = str(launcher._bundled_dist().parent.parent / "nvidia_pytriton.libs")   # tritonserver's own .so
    running = stubs(served.process.pid)
    manifest = read_manifest(moved)
    python_models = {m for m, rec in manifest["served"].items() if rec["backend"] == "python"}
    assert {s.model for s in running.values()} == python_models
    for pid, stub in running.items():
        mapped = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
                  if "site-packages" in line}
        assert mapped, f"{stub.model}: no site-packages library mapped"
        outside = sorted(p for p in mapped if not p.startswith(bare_prefix) and not p.startswith(server_libs))
        assert not outside, f"{stub.model} loaded libraries from outside the bare environment: {outside[:3]}"
        assert any("/numpy/" in p for p in mapped), stub.model
        if stub.model in (RANKER, USER_TOWER):      # ONNX Runtime engine hosts
            assert any("/onnxruntime/" in p for p in mapped), stub.model
        assert str(moved) in Path(f"/proc/{pid}/cmdline").read_text(), "the stub serves the moved folder"


def test_ensemble_scores_equal_the_torch_models_sigmoid(served, moved_repo, models):
    _, moved = moved_repo
    manifest = read_manifest(moved)
    assert manifest["model_config"] == models.ranker.config.to_dict(), "the reference is the model that was built"
    tables = {e: np.load(moved / t["path"]) for e, t in manifest["tables"]["ranker"].items()}
    for e, table in tables.items():
        np.testing.assert_array_equal(table, models.ranker_tables[e], err_msg=f"{e} table")
    ranker = HashedPhoenixModel(models.ranker, torch_tables(tables)).eval()

    with PhoenixClient(served.grpc_url) as client:
        requests = [demo_request(client.actions, seed=70 + i, num_history=3 + 9 * i, num_candidates=c)
                    for i, c in enumerate((3, 8, 5))]
        results = client.score_many(requests)
        names = [s["name"] for s in client.inputs if s["shape"][1:2] == ["C"]] + \
            [s["name"] for s in client.config["postprocess_inputs"]]
        arrays = stack_rows([client.build_row(**r) for r in requests], names)
        sources = client.config["score_sources"]["fields"]
    batch = RecsysBatch(**{s["name"]: torch.from_numpy(arrays[s["name"]])
                           for s in manifest["served"][RANKER]["inputs"]})
    with torch.no_grad():
        probs = torch.sigmoid(ranker(batch).logits).numpy()
    for b, (request, result) in enumerate(zip(requests, results)):
        n = len(request["candidates"])
        assert result.probs.shape == (n, len(client.actions))
        np.testing.assert_allclose(result.probs, probs[b, :n], atol=ATOL, rtol=0, err_msg=f"user {b}: probs")
        for field, source in sources.items():
            if source and source[0] == "column":
                np.testing.assert_allclose(result.scores[field], probs[b, :n, source[1]], atol=ATOL, rtol=0,
                                           err_msg=f"user {b}: {field}")
        assert sorted(result.ranking) == list(range(n)), "every real candidate ranked once, padding never"


def test_retrieval_returns_top_k_of_the_corpus(served, moved_repo, models):
    _, moved = moved_repo
    manifest = read_manifest(moved)
    tables = {e: np.load(moved / t["path"]) for e, t in manifest["tables"]["retrieval"].items()}
    tower = user_tower_graph(models.retrieval, torch_tables(tables))
    corpus = np.load(moved / model_path(RETRIEVAL, "corpus.npy"))
    post_ids = np.load(moved / model_path(RETRIEVAL, "corpus_post_ids.npy"))
    with PhoenixClient(served.grpc_url) as client:
        request = demo_request(client.actions, seed=90, num_history=6)
        got = client.retrieve(user_id=request["user_id"], history=request["history"], top_k=3)
        full = client.retrieve(user_id=request["user_id"], history=request["history"])
        client.inputs, client.hashing = client.config["retrieval_inputs"], \
            hash_params_from(client.config["retrieval_hashing"])
        row = client.build_row(user_id=request["user_id"], history=request["history"])
    user = tower({n: row[n][None] for n in tower.input_names})["user_representation"].numpy()[0]
    scores = corpus @ user
    best = np.argsort(-scores, kind="stable")
    assert got["top_k_indices"].shape == (3,) and full["top_k_indices"].shape == (manifest["served"]
                                                                                   [RETRIEVAL]["top_k"],)
    np.testing.assert_array_equal(got["top_k_indices"], best[:3])
    np.testing.assert_array_equal(full["top_k_indices"][:3], got["top_k_indices"])
    np.testing.assert_allclose(got["top_k_scores"], scores[best[:3]], atol=ATOL, rtol=0)
    np.testing.assert_array_equal(got["top_k_post_ids"], post_ids[best[:3]])
    np.testing.assert_allclose(got["user_representation"], user, atol=ATOL, rtol=0)
    assert (np.diff(got["top_k_scores"]) <= 0).all(), "best first"
