"""Manifest look-ups: engines built for one device are found only for that device."""
import pytest

from export.manifest import ManifestError, find_artifact

MANIFEST = {"artifacts": [
    {"model": "ranker", "kind": "onnx", "path": "phoenix_ranker/1/model.onnx"},
    {"model": "ranker", "kind": "aoti", "device": "cpu", "path": "phoenix_ranker/1/model_cpu.pt2"},
    {"model": "ranker", "kind": "aoti", "device": "cuda", "path": "phoenix_ranker/1/model_cuda.pt2"},
    {"model": "user_tower", "kind": "aoti", "device": "cpu", "path": "phoenix_user_tower/1/model_cpu.pt2"},
]}


def test_device_picks_the_matching_package():
    assert find_artifact(MANIFEST, "ranker", "aoti", "cpu")["path"].endswith("model_cpu.pt2")
    assert find_artifact(MANIFEST, "ranker", "aoti", "cuda:1")["path"].endswith("model_cuda.pt2")
    assert find_artifact(MANIFEST, "ranker", "onnx", "cuda")["path"].endswith("model.onnx")  # any device


def test_wrong_device_and_missing_kind_are_named():
    with pytest.raises(ManifestError, match=r"built for \['cpu'\], not 'cuda'"):
        find_artifact(MANIFEST, "user_tower", "aoti", "cuda")
    with pytest.raises(ManifestError, match="no 'tensorrt' artifact for model 'ranker'"):
        find_artifact(MANIFEST, "ranker", "tensorrt", "cuda")
