"""A feature added by configuration only (the seed guide's user language and a candidate media category)
flows through the build, the real server and the client, without a code edit."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from model_fixtures import EXTRA_FEATURES

from export.models import ModelSource, features_from_json, load_models, torch_tables
from phoenix_runtime.manifest import read_manifest
from phoenix_torch import HashedPhoenixModel, RecsysBatch
from serving.client import PhoenixClient, PhoenixInputError
from serving.server import TritonServer


@pytest.fixture(scope="module")
def repo(features_repo):
    return features_repo


@pytest.fixture(scope="module")
def server(repo):
    with TritonServer(repo) as s:
        yield s


def test_the_json_declaration_round_trips():
    assert features_from_json(json.loads(json.dumps([f.to_dict() for f in EXTRA_FEATURES]))) == EXTRA_FEATURES
    with pytest.raises(ValueError, match="unknown kind 'embedding'"):
        features_from_json([{"kind": "embedding", "name": "x", "side": "user"}])
    with pytest.raises(ValueError, match="unknown key"):
        features_from_json([{"kind": "categorical", "name": "x", "side": "user", "vocab": 3, "size": 2}])


def test_a_typo_in_the_json_declaration_exits_2_naming_the_key_and_its_closest_match(tmp_path, capsys):
    from export import build
    cases = {"num_hash": ("item [1] (hashed feature 'user_language_hashes'): unknown key 'num_hash'; did you mean "
                          "'num_hashes'?"),
             "kind": "item [1]: unknown kind 'hashd'; did you mean 'hashed'?"}
    for typo, message in cases.items():
        item = {"kind": "hashed", "name": "user_language_hashes", "side": "user", "entity": "language"}
        item.update({"num_hash": 1} if typo == "num_hash" else {"kind": "hashd", "num_hashes": 1})
        path = tmp_path / f"{typo}.json"
        path.write_text(json.dumps([EXTRA_FEATURES[1].to_dict(), item]))
        with pytest.raises(SystemExit) as exit_:
            build.main(["--preset", "demo", "--extra-features", str(path), "--output", str(tmp_path / "never")])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
        assert not (tmp_path / "never").exists()


def test_added_features_reach_every_layer(repo):
    m = read_manifest(repo)
    ranker_inputs = {s["name"]: s for s in m["served"]["phoenix_ranker"]["inputs"]}
    lang, media = ranker_inputs["user_language_hashes"], ranker_inputs["candidate_media_category"]
    assert (lang["shape"], lang["entity"], lang["key"], lang["high"]) == (["B", 1], "language", "language_id", 300)
    assert (media["shape"], media["high"], media["key"]) == (["B", "C"], 8, "media_category")
    assert "language" in m["hashing"] and "language" in m["tables"]["ranker"]            # its own hash table
    engine = {s["name"] for s in m["served"]["phoenix_ranker_embeddings"]["inputs"]}
    assert {"user_language_embeddings", "candidate_media_category"} <= engine
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc
    for model in ("phoenix_ranker", "phoenix"):
        cfg = text_format.Parse((repo / model / "config.pbtxt").read_text(), mc.ModelConfig())
        assert {"user_language_hashes", "candidate_media_category"} <= {i.name for i in cfg.input}, model


def test_the_client_scores_the_added_features_like_torch(server, features_file):
    models = load_models(ModelSource(preset="demo", release="may", vocab=300, towers=False,
                                     extra_features=features_from_json(json.loads(features_file.read_text()))))
    with PhoenixClient(server.grpc_url) as client:
        history = [(5, 1, ["server_tweet_fav"], 2), {"post_id": 6, "author_id": 2, "actions": [4],
                                                    "product_surface": 1, "continuous_actions": {1: 12.5}}]
        candidates = [{"post_id": 11 + i, "author_id": 1 + i % 2, "product_surface": 0, "media_category": i % 8,
                       "impr_ts": 1_750_000_000, "post_creation_ts": 1_750_000_000 - 3600 * i} for i in range(5)]
        result = client.score(user_id=42, user={"language_id": 7}, history=history, candidates=candidates)
        row = client.build_row(user_id=42, user={"language_id": 7}, history=history, candidates=candidates)
        other = client.score(user_id=42, user={"language_id": 8}, history=history, candidates=candidates)
        with pytest.raises(PhoenixInputError, match=r"candidates\[0\]: missing 'media_category'"):
            client.score(user_id=42, user={"language_id": 7}, history=history, candidates=[(11, 1, 0)])
    ranker = HashedPhoenixModel(models.ranker, torch_tables(models.ranker_tables)).eval()
    with torch.no_grad():
        logits = ranker(RecsysBatch(**{k: torch.from_numpy(v[None]) for k, v in row.items()
                                       if k in {f.name for f in models.ranker.config.batch_fields}})).logits[0]
    np.testing.assert_allclose(result.probs, torch.sigmoid(logits).numpy(), atol=2e-5)
    assert np.abs(other.probs - result.probs).max() > 1e-4, "the language feature must reach the model"


def test_the_cli_takes_the_added_features(server):
    out = subprocess.run([sys.executable, "-m", "serving.client", "score", "--url", server.grpc_url, "--json",
                          "--user-id", "42", "--user", "language_id=7", "--candidate", "11:1:0:media_category=3",
                          "--candidate", "12:2:0:media_category=5", "--history", "5:1:server_tweet_fav:2"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["ranking"]) == 2
    bad = subprocess.run([sys.executable, "-m", "serving.client", "score", "--url", server.grpc_url,
                          "--user-id", "42", "--user", "language_id=7", "--candidate", "11:1:0:media_category=9"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "candidate_media_category' holds 9, outside [0, 8)" in bad.stderr
