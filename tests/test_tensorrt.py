"""TensorRT path: profile parsing/validation, check shapes and plan metadata run everywhere; building
and running a plan runs only where the `tensorrt` package and a CUDA GPU exist."""

import argparse
import json

import pytest

from export import tensorrt as trt_export
from export.tensorrt import ProfileError, check_points, default_profile, input_shapes, parse_profile

DEFAULTS = default_profile(8)


def test_default_profile_follows_the_preset():
    assert default_profile(8) == {"B": (1, 8, 64), "C": (1, 8, 1000)}
    assert default_profile(64)["C"] == (1, 64, 1000)
    assert default_profile(2048)["C"] == (1, 2048, 2048)  # max never below opt
    assert default_profile(8, max_batch=128)["B"] == (1, 8, 128)  # follows Triton's max_batch_size
    assert default_profile(8, max_batch=4)["B"] == (1, 4, 4)


def test_parse_profile_overrides_only_named_dims():
    assert parse_profile(None, DEFAULTS) == DEFAULTS
    assert parse_profile("", DEFAULTS) == DEFAULTS
    assert parse_profile("B=2:4:16", DEFAULTS) == {"B": (2, 4, 16), "C": (1, 8, 1000)}
    assert parse_profile(" B=1:8:64 , C=1:32:1000 ", DEFAULTS) == {"B": (1, 8, 64), "C": (1, 32, 1000)}
    assert parse_profile("C=5:5:5", DEFAULTS)["C"] == (5, 5, 5)


@pytest.mark.parametrize("text, message", [
    ("X=1:2:3", "unknown dim 'X'"),
    ("b=1:2:3", "unknown dim 'b'"),
    ("B=1:2", "exactly three values"),
    ("B=1:2:3:4", "exactly three values"),
    ("B=0:2:3", "below 1"),
    ("C=-1:2:3", "below 1"),
    ("B=4:2:8", "min <= opt <= max"),
    ("B=1:9:8", "min <= opt <= max"),
    ("B=1:x:8", "not an integer"),
    ("B=1.5:2:3", "not an integer"),
    ("B1:2:3", "not DIM=MIN:OPT:MAX"),
    ("B=1:2:3,B=1:2:4", "given twice"),
])
def test_parse_profile_rejects_bad_values_with_a_clear_error(text, message):
    with pytest.raises(ProfileError, match="--trt-profile") as err:
        parse_profile(text, DEFAULTS)
    assert message in str(err.value)


def test_check_points_are_the_profile_corners():
    profile = {"B": (1, 8, 64), "C": (2, 32, 1000)}
    assert check_points(profile) == [{"B": 1, "C": 2}, {"B": 8, "C": 32}, {"B": 64, "C": 1000}]


def test_input_shapes_substitute_symbolic_dims():
    inputs = [{"name": "user_hashes", "dtype": "int32", "shape": ["B", 2]},
              {"name": "candidate_post_hashes", "dtype": "int32", "shape": ["B", "C", 2]},
              {"name": "history_actions", "dtype": "float32", "shape": ["B", 32, 19]}]
    shapes = input_shapes(inputs, {"B": (1, 8, 64), "C": (1, 32, 1000)})
    assert shapes["user_hashes"] == ((1, 2), (8, 2), (64, 2))
    assert shapes["candidate_post_hashes"] == ((1, 1, 2), (8, 32, 2), (64, 1000, 2))
    assert shapes["history_actions"] == ((1, 32, 19), (8, 32, 19), (64, 32, 19))
    with pytest.raises(ProfileError, match="'N'"):
        input_shapes([{"name": "x", "dtype": "float32", "shape": ["N", 4]}], {"B": (1, 1, 1)})


def test_plan_metadata_records_what_a_host_needs_to_know():
    meta = trt_export.plan_metadata(
        trt_version="10.9.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0",
        profile={"B": (1, 8, 64), "C": (1, 32, 1000)}, precision="bf16",
        onnx_path="phoenix_ranker/1/model.onnx", onnx_sha256="ab" * 32, inputs=[], outputs=[],
        version_compatible=True, hardware_compatible=False, workspace_bytes=1 << 30)
    assert json.loads(json.dumps(meta)) == meta  # plain JSON
    assert meta["tensorrt_version"] == "10.9.0" and meta["compute_capability"] == "9.0"
    assert meta["profiles"] == [{"B": {"min": 1, "opt": 8, "max": 64}, "C": {"min": 1, "opt": 32, "max": 1000}}]
    assert meta["precision"] == "bf16" and meta["source_onnx_sha256"] == "ab" * 32
    assert meta["version_compatible"] is True and meta["hardware_compatibility"] == "none"


def test_unavailable_reason_names_the_package_and_where_to_get_it():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        reason = trt_export.unavailable_reason()
        assert reason == trt_export.MISSING_TENSORRT
        assert "`tensorrt` Python package" in reason and "nvcr.io/nvidia/tensorrt" in reason
        assert "pypi.nvidia.com" in reason and reason.count(". ") == 0  # one sentence
    else:
        import torch
        assert (trt_export.unavailable_reason() is None) == torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------- the build

def build_args(*argv):
    from export import build
    return build.parser().parse_args(list(argv))


def test_engines_tensorrt_stops_with_one_clear_sentence_where_tensorrt_cannot_run(tmp_path):
    from export import engines
    from export.runtime import EngineUnavailable

    reason = trt_export.unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT and a CUDA GPU are available here, so --engines tensorrt builds")
    with pytest.raises(EngineUnavailable) as err:
        engines.build_engines(["tensorrt"], {}, [], tmp_path, build_args("--engines", "tensorrt"))
    assert str(err.value) == f"--engines tensorrt: {reason}"
    assert list(tmp_path.iterdir()) == []                    # nothing was written


def test_engines_auto_skips_tensorrt_with_a_one_line_notice(capsys):
    from export import engines

    reason = trt_export.unavailable_reason()
    kinds = engines.resolve_kinds(["auto"])
    assert "aoti" in kinds
    err = capsys.readouterr().err
    if reason is None:
        assert "tensorrt" in kinds and "skipping" not in err
    else:
        assert "tensorrt" not in kinds
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines == [f"--engines auto: skipping tensorrt: {reason}"]


def test_engine_options_parse_and_bad_profiles_fail_before_any_work():
    from export import engines

    args = build_args("--trt-profile", "B=1:4:32", "--trt-workspace-gb", "2", "--trt-version-compatible",
                      "--trt-hardware-compatible", "--aoti-device", "cpu")
    assert args.trt_profile == "B=1:4:32" and args.trt_workspace_gb == 2.0 and args.aoti_device == "cpu"
    assert args.trt_version_compatible and args.trt_hardware_compatible
    assert args.trt_timing_cache  # persisted by default, outside the model repository
    assert engines.default_profile(build_args("--preset", "mini", "--max-batch-size", "32")) == \
        {"B": (1, 8, 32), "C": (1, 64, 1000)}
    with pytest.raises(ProfileError, match="min <= opt <= max"):
        parse_profile("C=8:4:16", DEFAULTS)


# ---------------------------------------------------------------------------------------------- real TensorRT

@pytest.fixture(scope="module")
def trt_build(tmp_path_factory):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here (NVIDIA container or pypi.nvidia.com)")
    import torch
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU; torch sees none")
    from export import engines
    from export.build import ONNX_PATHS, model_configs
    from export.graphs import build_models, serving_graphs
    from export.manifest import add_file_info
    from export.onnx_export import export_onnx

    stage = tmp_path_factory.mktemp("trt")
    args = build_args("--preset", "demo", "--trt-profile", "B=1:2:4,C=1:4:16",
                      "--trt-timing-cache", str(stage / "cache" / "timing.cache"))
    cfg, rcfg = model_configs(args)
    graphs = serving_graphs(*build_models(cfg, rcfg, vocab=1000, seed=0))
    graphs = {k: v for k, v in graphs.items() if k in ("ranker", "candidate_tower")}
    onnx_arts = [add_file_info(stage, export_onnx(spec, stage / ONNX_PATHS[name], root=stage))
                 for name, spec in graphs.items()]
    arts = engines.build_tensorrt_engines(graphs, onnx_arts, stage, args)
    return stage, graphs, onnx_arts, {a["model"]: a for a in arts}, args


def test_plans_are_built_next_to_their_metadata_and_checked(trt_build):
    stage, graphs, onnx_arts, arts, _ = trt_build
    onnx_sha = {a["model"]: a["sha256"] for a in onnx_arts}
    for model, a in arts.items():
        assert a["path"] == f"phoenix_{model}/1/model.plan" and (stage / a["path"]).stat().st_size > 0
        meta = json.loads((stage / a["path"]).with_name("model.plan.json").read_text())
        assert meta["source_onnx_sha256"] == onnx_sha[model] and meta["precision"] == "fp32"
        assert meta["tensorrt_version"] and meta["gpu_name"] and "." in meta["compute_capability"]
        assert a["parity_max_abs_err"] <= 1e-4
    assert arts["ranker"]["profile"] == {"B": {"min": 1, "opt": 2, "max": 4}, "C": {"min": 1, "opt": 4, "max": 16}}
    assert arts["candidate_tower"]["profile"] == {"B": {"min": 1, "opt": 2, "max": 4}}
    assert (stage / "cache" / "timing.cache").stat().st_size > 0


def test_tensorrt_engine_matches_onnxruntime_and_rejects_shapes_outside_the_profile(trt_build):
    from export.runtime import OnnxRuntimeEngine, max_abs_err

    stage, graphs, onnx_arts, arts, _ = trt_build
    engine = trt_export.TensorRTEngine(arts["ranker"], stage, "cuda")
    reference = OnnxRuntimeEngine.from_artifact(next(a for a in onnx_arts if a["model"] == "ranker"), stage)
    feed = {k: v.numpy() for k, v in graphs["ranker"].random_inputs({"B": 3, "C": 7}, seed=5).items()}
    assert max_abs_err(engine(feed), reference(feed), engine.output_names) <= 1e-4
    too_many = {k: v.numpy() for k, v in graphs["ranker"].random_inputs({"B": 3, "C": 17}, seed=5).items()}
    with pytest.raises(ValueError, match="outside the plan's optimization profile"):
        engine(too_many)


def test_version_compatible_plan_loads_with_host_code_allowed(trt_build, tmp_path):
    from export import engines

    stage, graphs, onnx_arts, _, args = trt_build
    args = argparse.Namespace(**{**vars(args), "trt_version_compatible": True})
    tower = [a for a in onnx_arts if a["model"] == "candidate_tower"]
    for a in tower:  # a fresh stage with only the tower's ONNX
        (tmp_path / a["path"]).parent.mkdir(parents=True)
        (tmp_path / a["path"]).write_bytes((stage / a["path"]).read_bytes())
    (art,) = engines.build_tensorrt_engines({"candidate_tower": graphs["candidate_tower"]}, tower, tmp_path, args)
    assert art["version_compatible"] and art["parity_max_abs_err"] <= 1e-4
