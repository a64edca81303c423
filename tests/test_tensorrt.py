"""The TensorRT path (export/tensorrt.py, export/engines.py, phoenix_runtime.engines.PlanRunner, the launcher's flag).

Everywhere: profile defaults from the limits, parsing and validation, the check of a profile against
--max-batch-size / --max-candidates, plan metadata, what `--engines tensorrt` says where TensorRT cannot run,
and PlanRunner's plumbing with a fake `tensorrt` module and fake torch.cuda streams (GPU N, a stream of its
own, host code for version-compatible plans). Building and running real plans needs the `tensorrt` package
and a CUDA GPU: those tests skip elsewhere.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from export import engines, tensorrt as trt_export
from export.engines import EngineOptions, TensorRTOptions
from export.tensorrt import (ProfileError, check_against_limits, check_points, default_profile, input_shapes,
                             parse_profile)
from phoenix_runtime import engines as runtime
from phoenix_runtime.engines import EngineUnavailable
from phoenix_runtime.request import Limits, RequestError
from phoenix_torch.parity import TOLERANCE

ROOT = Path(__file__).resolve().parents[1]
LIMITS = Limits(max_batch_size=64, max_candidates=1000, history_len=32)
DEFAULTS = default_profile(LIMITS)


# ---------------------------------------------------------------------------------------------- profiles

def test_default_profile_follows_the_limits():
    assert DEFAULTS == {"B": (1, 8, 64), "C": (1, 64, 1000)}
    assert default_profile(Limits(128, 1000, 32))["B"] == (1, 8, 128)       # Triton's max_batch_size
    assert default_profile(Limits(4, 1000, 32))["B"] == (1, 4, 4)           # opt never above max
    assert default_profile(Limits(64, 16, 32))["C"] == (1, 16, 16)
    assert default_profile(Limits(64, 1000, 32, candidate_sizes=(32, 256, 1000)))["C"] == (1, 32, 1000), \
        "C's opt is the smallest size a client pads to"


def test_a_profile_must_cover_the_limits():
    check_against_limits(DEFAULTS, LIMITS)
    check_against_limits({"B": (1, 8, 128), "C": (1, 64, 2000)}, LIMITS)        # wider is fine
    check_against_limits({"B": (1, 8, 64)}, LIMITS)                               # a tower: no C
    with pytest.raises(ProfileError, match=r"B max 32 is below --max-batch-size 64"):
        check_against_limits({"B": (1, 8, 32), "C": (1, 64, 1000)}, LIMITS)
    with pytest.raises(ProfileError, match=r"C max 512 is below --max-candidates 1000"):
        check_against_limits({"B": (1, 8, 64), "C": (1, 64, 512)}, LIMITS)


def test_plan_build_checks_the_profile_against_the_limits_before_any_tensorrt_work(tmp_path):
    """build_tensorrt_plan refuses a --trt-profile narrower than the limits before it touches TensorRT or a GPU."""
    opts = TensorRTOptions(profile="B=1:2:4", timing_cache=None)
    with pytest.raises(ProfileError, match="--max-batch-size 8"):
        engines.build_tensorrt_plan(None, None, tmp_path, tmp_path, opts, Limits(8, 16, 4))
    opts = TensorRTOptions(profile="C=1:4:8", timing_cache=None)
    with pytest.raises(ProfileError, match="--max-candidates 16"):
        engines.build_tensorrt_plan(None, None, tmp_path, tmp_path, opts, Limits(8, 16, 4))
    assert list(tmp_path.iterdir()) == []


def test_parse_profile_overrides_only_named_dims():
    assert parse_profile(None, DEFAULTS) == DEFAULTS
    assert parse_profile("", DEFAULTS) == DEFAULTS
    assert parse_profile("B=2:4:16", DEFAULTS) == {"B": (2, 4, 16), "C": (1, 64, 1000)}
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
    inputs = [{"name": "user_hashes", "dtype": "int64", "shape": ["B", 2]},
              {"name": "candidate_post_hashes", "dtype": "int64", "shape": ["B", "C", 2]},
              {"name": "history_actions", "dtype": "float32", "shape": ["B", 32, 19]}]
    shapes = input_shapes(inputs, {"B": (1, 8, 64), "C": (1, 32, 1000)})
    assert shapes["user_hashes"] == ((1, 2), (8, 2), (64, 2))
    assert shapes["candidate_post_hashes"] == ((1, 1, 2), (8, 32, 2), (64, 1000, 2))
    assert shapes["history_actions"] == ((1, 32, 19), (8, 32, 19), (64, 32, 19))
    with pytest.raises(ProfileError, match="'N'"):
        input_shapes([{"name": "x", "dtype": "float32", "shape": ["N", 4]}], {"B": (1, 1, 1)})


def test_plan_metadata_records_what_a_host_needs_to_know():
    meta = trt_export.plan_metadata(
        trt_version="10.13.3.9", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0",
        profile={"B": (1, 8, 64), "C": (1, 32, 1000)}, precision="bf16",
        onnx_path="phoenix_ranker/1/ranker.onnx", onnx_sha256="ab" * 32, inputs=[], outputs=[],
        version_compatible=True, hardware_compatible=False, workspace_bytes=1 << 30)
    assert json.loads(json.dumps(meta)) == meta  # plain JSON
    assert meta["tensorrt_version"] == "10.13.3.9" and meta["compute_capability"] == "9.0"
    assert meta["profiles"] == [{"B": {"min": 1, "opt": 8, "max": 64}, "C": {"min": 1, "opt": 32, "max": 1000}}]
    assert meta["precision"] == "bf16" and meta["source_onnx_sha256"] == "ab" * 32
    assert meta["version_compatible"] is True and meta["hardware_compatibility"] == "none"
    assert trt_export.metadata_path(Path("a/ranker.sm90.plan")) == Path("a/ranker.sm90.plan.json")


# ---------------------------------------------------------------------------------------------- where TensorRT cannot run

def test_unavailable_reason_is_one_sentence_naming_what_is_missing():
    reason = trt_export.unavailable_reason()
    assert reason == runtime.tensorrt_missing()
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "`tensorrt` Python package" in reason and "nvcr.io/nvidia/tensorrt" in reason
        assert "pypi.nvidia.com" in reason and reason.count(". ") == 0
    else:
        assert (reason is None) == torch.cuda.is_available()


def test_engines_tensorrt_stops_with_one_clear_sentence_where_tensorrt_cannot_run(tmp_path):
    reason = trt_export.unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT and a CUDA GPU are available here, so --engines tensorrt builds")
    with pytest.raises(EngineUnavailable) as err:
        engines.build_engines(["tensorrt"], {}, {}, {}, tmp_path, EngineOptions(), LIMITS)
    assert str(err.value) == f"--engines tensorrt: {reason}"
    assert list(tmp_path.iterdir()) == []                    # nothing was written


def test_engines_auto_skips_tensorrt_with_a_one_line_notice(capsys):
    reason = trt_export.unavailable_reason()
    kinds = engines.resolve_kinds(["auto"])
    err = capsys.readouterr().err
    if reason is None:
        assert "tensorrt" in kinds and "skipping tensorrt" not in err
    else:
        assert "tensorrt" not in kinds
        assert f"--engines auto: skipping tensorrt: {reason}" in [" ".join(line.split()) for line in err.splitlines()]


def test_tensorrt_options_come_from_the_build_command_line():
    from export import build

    p = build.parser()
    args = p.parse_args(["--trt-profile", "B=1:4:32", "--trt-workspace-gb", "2", "--trt-version-compatible",
                         "--trt-hardware-compatible", "--aoti-device", "cpu", "--max-batch-size", "32",
                         "--max-candidates", "512", "--engines", "tensorrt"])
    _, opts, eng, _ = build.options_from(args, p)
    assert eng.kinds == ("tensorrt",) and eng.aoti_device == "cpu"
    assert eng.tensorrt == TensorRTOptions("B=1:4:32", 2.0, args.trt_timing_cache, True, True)
    assert eng.tensorrt.timing_cache, "the timing cache persists by default, outside the model repository"
    limits = opts.limits.with_history(32)
    assert default_profile(limits) == {"B": (1, 8, 32), "C": (1, 64, 512)}
    assert parse_profile(eng.tensorrt.profile, default_profile(limits)) == {"B": (1, 4, 32), "C": (1, 64, 512)}


# ---------------------------------------------------------------------------------------------- PlanRunner, faked

class FakeEngine:
    """One int64 input `x` [B, 2] (profile B 1..4), one float32 output `y` [B]."""
    names = ("x", "y")

    def __init__(self, log):
        self.log, self.num_io_tensors = log, 2

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return FakeTRT.TensorIOMode.INPUT if name == "x" else FakeTRT.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return FakeTRT.DataType.INT64 if name == "x" else FakeTRT.DataType.FLOAT

    def get_tensor_profile_shape(self, name, profile):
        return [(1, 2), (2, 2), (4, 2)]

    def create_execution_context(self):
        return FakeContext(self.log)


class FakeContext:
    def __init__(self, log):
        self.log, self.shapes, self.addresses = log, {}, {}

    def set_input_shape(self, name, shape):
        self.log.append(("set_input_shape", name, shape))
        self.shapes[name] = shape
        return 1 <= shape[0] <= 4

    def set_tensor_address(self, name, address):
        self.addresses[name] = address

    def get_tensor_shape(self, name):
        return (self.shapes["x"][0],)

    def execute_async_v3(self, stream_handle):
        self.log.append(("execute", stream_handle))
        b = self.shapes["x"][0]
        ctypes.memmove(self.addresses["y"], np.full(b, 7.0, np.float32).ctypes.data, 4 * b)   # "runs" the plan
        return True


class FakeTRT(types.ModuleType):
    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class TensorIOMode:
        INPUT, OUTPUT = "input", "output"

    class DataType:
        FLOAT, HALF, BF16, INT32, INT64, INT8, UINT8, BOOL = "f32", "f16", "bf16", "i32", "i64", "i8", "u8", "b"

    def __init__(self, log):
        super().__init__("tensorrt")
        self.log = log
        module = self

        class Runtime:
            def __init__(self, logger):
                self.engine_host_code_allowed = False

            def deserialize_cuda_engine(self, data):
                module.log.append(("deserialize", data, self.engine_host_code_allowed))
                return FakeEngine(module.log)

        self.Runtime = Runtime


class FakeStream:
    def __init__(self, log, handle, device=None):
        self.log, self.cuda_stream, self.device = log, handle, device

    def wait_stream(self, other):
        self.log.append(("wait_stream", self.cuda_stream, other.cuda_stream))

    def synchronize(self):
        self.log.append(("synchronize", self.cuda_stream))


@pytest.fixture
def fake_cuda(monkeypatch):
    """A fake `tensorrt` module and fake torch.cuda device / stream functions that log what they are asked."""
    log = []
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTRT(log))

    @contextlib.contextmanager
    def device(d):
        log.append(("device", str(d)))
        yield

    @contextlib.contextmanager
    def stream(s):
        log.append(("enter_stream", s.cuda_stream))
        yield
        log.append(("exit_stream", s.cuda_stream))

    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: FakeStream(log, 1234, device))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream(log, 0, device))
    return log


def test_plan_runner_runs_on_gpu_n_on_a_stream_of_its_own(fake_cuda, tmp_path):
    plan = tmp_path / "ranker.sm90.plan"
    plan.write_bytes(b"PLAN")
    runner = runtime.PlanRunner(plan, "cuda:2")
    assert runner.device == torch.device("cuda", 2)
    assert ("device", "cuda:2") in fake_cuda and ("deserialize", b"PLAN", False) in fake_cuda
    assert fake_cuda.index(("device", "cuda:2")) < fake_cuda.index(("deserialize", b"PLAN", False)), \
        "the plan is deserialized with GPU 2 current"
    assert runner.stream.cuda_stream == 1234 and runner.stream.device == torch.device("cuda", 2)
    assert runner.input_names == ["x"] and runner.output_names == ["y"]
    assert runner.dtypes == {"x": torch.int64, "y": torch.float32}

    runner.device = torch.device("cpu")      # the call's own logic, with CPU tensors in place of CUDA ones
    fake_cuda.clear()
    out = runner({"x": np.ones((3, 2), np.int64)})
    np.testing.assert_array_equal(out["y"].numpy(), np.full(3, 7.0, np.float32))
    events = [e[0] for e in fake_cuda]
    assert ("wait_stream", 1234, 0) in fake_cuda, "the plan's stream waits for the caller's stream"
    assert events.index("wait_stream") < events.index("enter_stream") < events.index("execute") < \
        events.index("synchronize") < events.index("exit_stream")
    assert ("execute", 1234) in fake_cuda, "TensorRT runs on the runner's own stream, not the default one"

    with pytest.raises(RequestError, match=r"outside the plan's optimization profile .*\(4, 2\)"):
        runner({"x": np.ones((5, 2), np.int64)})


def test_version_compatible_plans_load_with_host_code_allowed(fake_cuda, tmp_path):
    plan = tmp_path / "tower.sm90.plan"
    plan.write_bytes(b"LEAN")
    runtime.PlanRunner(plan, "cuda:0", allow_host_code=True)
    assert ("deserialize", b"LEAN", True) in fake_cuda


def test_open_engine_passes_the_device_and_version_compatibility_to_the_plan_runner(monkeypatch, tmp_path):
    seen = []

    class Runner:
        def __init__(self, path, device, allow_host_code=False):
            seen.append((Path(path).name, device, allow_host_code))

    monkeypatch.setattr(runtime, "PlanRunner", Runner)
    monkeypatch.setattr(runtime, "tensorrt_missing", lambda: None)
    art = {"kind": "tensorrt", "model": "ranker", "path": "phoenix_ranker/1/ranker.sm90.plan", "inputs": [],
           "outputs": [], "device": "cuda", "info": {"version_compatible": True}}
    engine = runtime.open_engine(art, tmp_path, "cuda:3")
    assert isinstance(engine, runtime.TensorRTEngine) and engine.device == "cuda:3"
    assert seen == [("ranker.sm90.plan", "cuda:3", True)]
    with pytest.raises(EngineUnavailable, match="CUDA GPU only"):
        runtime.open_engine(art, tmp_path, "cpu")


# ---------------------------------------------------------------------------------------------- version-compatible plans, served

def launcher_extra_args(monkeypatch, argv) -> list[str]:
    """The tritonserver extra arguments `python -m serving.server ARGV` starts the server with."""
    from serving import server as launcher

    seen = {}

    class Server:
        def __init__(self, repo, **kwargs):
            seen.update(kwargs)
            self.model_repository = repo

        def start(self):
            raise launcher.ServerError("not started in this test")

        def stop(self):
            pass

    monkeypatch.setattr(launcher, "TritonServer", Server)
    monkeypatch.setattr(launcher.signal, "signal", lambda *a: None)   # keep pytest's own handlers
    assert launcher.main(argv) == 1
    return seen["extra_args"]


def test_launcher_flag_lets_the_tensorrt_backend_load_version_compatible_plans(monkeypatch, capsys):
    flag = "--backend-config=tensorrt,version-compatible=true"
    assert launcher_extra_args(monkeypatch, ["--model-repository", "r", "--trt-version-compatible"]) == [flag]
    assert launcher_extra_args(monkeypatch, ["--model-repository", "r"]) == [], "opt-in only"
    assert launcher_extra_args(monkeypatch, ["--trt-version-compatible", "--", "--log-verbose=1"]) == \
        ["--log-verbose=1", flag]
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "--trt-version-compatible" in readme and flag in readme


# ---------------------------------------------------------------------------------------------- real TensorRT

@pytest.fixture(scope="module")
def trt_build(tmp_path_factory):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here (NVIDIA container or pypi.nvidia.com)")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU; torch sees none")
    from export.build import graph_specs
    from export.models import ModelSource, load_models
    from export.onnx_export import export_onnx

    stage = tmp_path_factory.mktemp("trt")
    models = load_models(ModelSource(preset="demo", vocab=1000))
    specs = graph_specs(models, {"ranker", "candidate_tower"})
    limits = Limits(4, 16, models.ranker.config.history_seq_len)
    opts = TensorRTOptions(profile="B=1:2:4,C=1:4:16", timing_cache=str(stage / "cache" / "timing.cache"))
    onnx, plans = {}, {}
    for name, spec in specs.items():
        folder = stage / name / "1"
        onnx[name] = export_onnx(spec, folder / f"{name}.onnx", root=stage).with_file_info(stage)
        plans[name] = engines.build_tensorrt_plan(spec, onnx[name], folder, stage, opts, limits).with_file_info(stage)
    return stage, specs, onnx, plans, opts, limits


def test_plans_are_built_next_to_their_metadata_and_checked(trt_build):
    stage, _, onnx, plans, _, _ = trt_build
    major, minor = torch.cuda.get_device_capability()
    for name, art in plans.items():
        assert art.path == f"{name}/1/{name}.sm{major}{minor}.plan" and (stage / art.path).stat().st_size > 0
        meta = json.loads(trt_export.metadata_path(stage / art.path).read_text())
        assert meta["source_onnx_sha256"] == onnx[name].sha256 and meta["precision"] == "fp32"
        assert meta["tensorrt_version"] and meta["gpu_name"] and meta["compute_capability"] == f"{major}.{minor}"
        assert art.info["parity_max_abs_err"] <= TOLERANCE["fp32"] and art.device == "cuda"
    assert plans["ranker"].info["profile"] == {"B": {"min": 1, "opt": 2, "max": 4}, "C": {"min": 1, "opt": 4, "max": 16}}
    assert plans["candidate_tower"].info["profile"] == {"B": {"min": 1, "opt": 2, "max": 4}}
    assert (stage / "cache" / "timing.cache").stat().st_size > 0


def test_tensorrt_engine_matches_onnxruntime_and_rejects_shapes_outside_the_profile(trt_build):
    stage, specs, onnx, plans, _, _ = trt_build
    engine = runtime.open_engine(plans["ranker"].to_dict(), stage, "cuda:0")
    reference = runtime.open_engine(onnx["ranker"].to_dict(), stage, "cpu")
    feed = {n: v.numpy() for n, v in specs["ranker"].random_inputs({"B": 3, "C": 7}, seed=5).items()}
    got, want = engine(feed), reference(feed)
    for name in engine.output_names:
        np.testing.assert_allclose(got[name], want[name], atol=TOLERANCE["fp32"], rtol=0, err_msg=name)
    too_many = {n: v.numpy() for n, v in specs["ranker"].random_inputs({"B": 3, "C": 17}, seed=5).items()}
    with pytest.raises(RequestError, match="outside the plan's optimization profile"):
        engine(too_many)


def test_version_compatible_plan_builds_and_loads(trt_build, tmp_path):
    from dataclasses import replace

    stage, specs, onnx, _, opts, limits = trt_build
    art = onnx["candidate_tower"]
    (tmp_path / art.path).parent.mkdir(parents=True)
    (tmp_path / art.path).write_bytes((stage / art.path).read_bytes())
    plan = engines.build_tensorrt_plan(specs["candidate_tower"], art, (tmp_path / art.path).parent, tmp_path,
                                       replace(opts, version_compatible=True), limits)
    assert plan.info["version_compatible"] and plan.info["parity_max_abs_err"] <= TOLERANCE["fp32"]
    engine = runtime.open_engine(plan.to_dict(), tmp_path, "cuda:0")
    feed = {n: v.numpy() for n, v in specs["candidate_tower"].random_inputs({"B": 2}, seed=1).items()}
    assert engine(feed)["candidate_representation"].shape == (2, specs["candidate_tower"].outputs[0].shape[1])
