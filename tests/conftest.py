"""Shared fixtures: where the golden files live (tests/golden, in the repository), small seeded models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# The upstream golden files travel with the code (tests/golden/README.md says where they come from);
# PHOENIX_GOLDEN_DIR points the tests at another folder of the same layout.
GOLDEN_DIR = Path(os.environ.get("PHOENIX_GOLDEN_DIR", Path(__file__).resolve().parent / "golden"))
MAY_ARTIFACTS = GOLDEN_DIR / "may" / "may_artifacts_mini"
PIPELINE_ATOL = 1e-6   # the served pipeline (fp32) against upstream's expected_pipeline_fp32.npz (README's claim)

torch.set_num_threads(min(2, torch.get_num_threads()))


def golden_files() -> list[Path]:
    """Every golden .npz: the January files and the May files (may/)."""
    files = sorted(GOLDEN_DIR.glob("*.npz")) + sorted(GOLDEN_DIR.glob("may/*.npz"))
    if not files:
        raise FileNotFoundError(f"no golden .npz files in {GOLDEN_DIR} (set PHOENIX_GOLDEN_DIR)")
    return files


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    golden_files()
    return GOLDEN_DIR


# ---------------------------------------------------------------------------------------------- shared builds

DEMO_BUILD = ["--preset", "demo", "--target", "cpu"]
DEMO_VOCAB = {"user": 500, "item": 1000, "author": 700}


# Every build this session made: build_key(args) -> its output folder. A build with the same options is the
# same build (seeded, deterministic), so tests/test_readme.py reuses one instead of making it twice.
BUILDS: dict[str, Path] = {}


def build_key(args: list[str], cwd: Path | None = None) -> str:
    """export.build's options as the build reads them (its own parser, defaults filled in), without --output:
    paths resolved from `cwd`, and an --extra-features file by the features it declares (not its bytes)."""
    import json

    from export import build
    from export.models import features_from_json
    from phoenix_torch.features import to_dicts

    ns = vars(build.parser().parse_args([*args, "--output", "-"]))
    ns.pop("output")
    for opt in ("artifacts", "checkpoint", "retrieval_checkpoint", "tables", "corpus_file"):
        if ns.get(opt):
            ns[opt] = str(((cwd or Path.cwd()) / ns[opt]).resolve())
    if ns.get("extra_features"):
        path = (cwd or Path.cwd()) / ns["extra_features"]
        ns["extra_features"] = to_dicts(features_from_json(json.loads(path.read_text())))
    return json.dumps(ns, sort_keys=True, default=str)


def run_build(args: list[str], output: Path) -> Path:
    from export import build

    assert build.main([*args, "--output", str(output)]) == 0, f"export.build {' '.join(args)} failed"
    BUILDS[build_key(args)] = output
    return output


@pytest.fixture(scope="session")
def demo_tables(tmp_path_factory) -> Path:
    """Tables in the release's layout with a different vocab per entity."""
    import numpy as np

    path = tmp_path_factory.mktemp("tables") / "tables.npz"
    rng = np.random.default_rng(0)
    np.savez(path, **{f"{e}_embeddings": rng.standard_normal((n, 128)).astype(np.float32) for e, n in DEMO_VOCAB.items()})
    return path


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory, demo_tables) -> Path:
    """The January demo model, cpu target, tables from a file: shared by the build and serving tests."""
    return run_build([*DEMO_BUILD, "--tables", str(demo_tables)], tmp_path_factory.mktemp("demo") / "repo")


@pytest.fixture(scope="session")
def may_repo(tmp_path_factory) -> Path:
    """The May release's artifacts folder (tests/golden/may/may_artifacts_mini), fp32, cpu target."""
    return run_build(["--artifacts", str(MAY_ARTIFACTS), "--precision", "fp32", "--target", "cpu"],
                     tmp_path_factory.mktemp("may") / "repo")


# The seed guide's two example features (tests/model_fixtures.py EXTRA_FEATURES) on the May demo model: a small
# build (300-row tables, no towers), shared by tests/test_features.py and the README's "Add a feature" example.
FEATURES_BUILD = ["--preset", "demo", "--release", "may", "--vocab", "300", "--no-towers", "--target", "cpu"]


@pytest.fixture(scope="session")
def features_file(tmp_path_factory) -> Path:
    import json

    from model_fixtures import EXTRA_FEATURES
    path = tmp_path_factory.mktemp("features") / "features.json"
    path.write_text(json.dumps([f.to_dict() for f in EXTRA_FEATURES], indent=1))
    return path


@pytest.fixture(scope="session")
def features_repo(tmp_path_factory, features_file) -> Path:
    return run_build([*FEATURES_BUILD, "--extra-features", str(features_file)],
                     tmp_path_factory.mktemp("extras") / "repo")


@pytest.fixture(scope="session")
def small_repo(tmp_path_factory) -> Path:
    """The small demo build of the server fault and security tests (server_helpers.SMALL_BUILD: an 8 MiB request
    limit, so a test reaches it cheaply)."""
    from server_helpers import SMALL_BUILD

    return run_build(SMALL_BUILD, tmp_path_factory.mktemp("small") / "repo")


@pytest.fixture(scope="module")
def client(server):
    """A gRPC PhoenixClient of the module's `server` fixture (each server test module defines `server`)."""
    from serving.client import PhoenixClient
    with PhoenixClient(server.grpc_url) as c:
        yield c
