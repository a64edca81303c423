"""Every target's Triton configs (export.repository.configs), checked without exporting anything.

The served records are made the way export.build makes them (export.graphs specs of the demo models,
export.repository records), then `repository.configs` builds every ModelConfig. Each config must survive
protobuf's text format and parse with tritonclient's model_config_pb2, and both ensembles' maps must be
consistent (`check_ensemble`): every input of every step fed, by a tensor of the same dtype and dims,
every ensemble input optional (each step model names a missing input of its own: Triton counts only). The GPU targets cannot be
loaded by the bundled tritonserver (Python backend only), so this is where their mistakes are caught.
Runs in seconds.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export import build, repository as repo, tensorrt
from export.artifacts import Corpus
from export.build import graph_specs
from export.models import ModelSource, load_models
from phoenix_runtime.manifest import (ENGINE_MODELS, ENSEMBLE, ENSEMBLE_EMBEDDINGS, FORMAT, PIPELINE, POSTPROCESS,
                                      RANKER, RANKER_EMBEDDINGS, RETRIEVAL, USER_TOWER, VERSION, Artifact, model_path,
                                      sha256_file)
from phoenix_runtime.request import DEFAULT_MAX_BATCH_SIZE, Limits, resolve_shape

RELEASES = ("january", "may")
GRAPHS = {"ranker", "ranker_embeddings", "user_tower", "user_tower_embeddings", "candidate_tower",
          "candidate_tower_embeddings"}
CORPUS = Corpus(np.zeros((50, 8), np.float32), np.arange(50), np.arange(50), None)
PLATFORM = {"gpu-tensorrt": "tensorrt_plan", "gpu-onnxruntime": "onnxruntime_onnx"}
# The TensorRT accelerator parameters Triton's ONNX Runtime backend accepts in the pinned release (25.10):
# triton-inference-server/onnxruntime_backend, branch r25.10, src/onnxruntime.cc (any other key fails the model
# load with "unknown parameter ... is provided for TensorRT Execution Accelerator"); the README's "Parameter
# mapping between ONNX Runtime and Triton ONNXRuntime Backend" table lists the same keys.
ORT_BACKEND_TRT_KEYS = {
    "precision_mode", "max_workspace_size_bytes", "trt_max_partition_iterations", "trt_min_subgraph_size",
    "int8_calibration_table_name", "int8_use_native_calibration_table", "trt_dla_enable", "trt_dla_core",
    "trt_engine_cache_enable", "trt_engine_cache_path", "trt_engine_cache_prefix", "trt_dump_subgraphs",
    "trt_force_sequential_engine_build", "trt_context_memory_sharing_enable", "trt_layer_norm_fp32_fallback",
    "trt_timing_cache_enable", "trt_timing_cache_path", "trt_force_timing_cache", "trt_detailed_build_log",
    "trt_build_heuristics_enable", "trt_sparsity_enable", "trt_builder_optimization_level",
    "trt_auxiliary_streams", "trt_tactic_sources", "trt_extra_plugin_lib_paths", "trt_profile_min_shapes",
    "trt_profile_max_shapes", "trt_profile_opt_shapes", "trt_cuda_graph_enable", "trt_dump_ep_context_model",
    "trt_ep_context_file_path", "trt_ep_context_embed_mode"}


# ------------------------------------------------------------------------------------------ records, as the build

@pytest.fixture(scope="module", params=RELEASES)
def built(request):
    """(models, graph specs) of the demo preset of one release; nothing exported."""
    models = load_models(ModelSource(preset="demo", release=request.param, vocab=300))
    return models, graph_specs(models, GRAPHS)


EXACT_SEARCH = {"index": "exact", "index_params": {}, "index_options": {}}   # write_corpus's fields


def served_records(built, opts: repo.RepositoryOptions, engine: str = "onnxruntime") -> dict:
    """The manifest's `served` records of a build with `opts`, over a small corpus searched exactly."""
    models, specs = built
    return build.served_records(models, specs, opts, engine, CORPUS, EXACT_SEARCH)


def manifest_of(built, served: dict, opts: repo.RepositoryOptions) -> dict:
    models, _ = built
    limits = opts.limits.with_history(models.ranker.config.history_seq_len)
    return {"format": FORMAT, "release": models.release, "preset": "demo", "precision": "fp32",
            "target": opts.target, "limits": limits.to_dict(), "model_config": models.ranker.config.to_dict(),
            "hashing": {e: h.to_dict() for e, h in models.ranker_hashing.items()},
            "retrieval_hashing": {e: h.to_dict() for e, h in models.retrieval_hashing.items()},
            "served": served, "artifacts": []}


PLANS = {m: {"8.0": "model.sm80.plan", "9.0": "model.sm90.plan"} for m in ENGINE_MODELS}
PLACED = {m: {"plans": plans} for m, plans in PLANS.items()}
LIMIT_NAMES = ("max_batch_size", "max_candidates", "max_request_bytes", "candidate_sizes")


def options(target: str, **kw) -> repo.RepositoryOptions:
    """RepositoryOptions of `target`; the limits' fields may be given by name among the other options."""
    limits = Limits(**{k: kw.pop(k) for k in LIMIT_NAMES if k in kw})
    return repo.RepositoryOptions(target=target, limits=limits, **kw)


def make_configs(built, target: str, **kw) -> dict[str, mc.ModelConfig]:
    opts = options(target, **kw)
    served = served_records(built, opts)
    cfgs = repo.configs(served, opts, built[0].ranker.config.candidate_seq_len,
                        PLACED if target == "gpu-tensorrt" else None)
    repo.client_parameter(cfgs[POSTPROCESS], manifest_of(built, served, opts))
    return {name: roundtrip(cfg) for name, cfg in cfgs.items()}


def roundtrip(cfg: mc.ModelConfig) -> mc.ModelConfig:
    """Written as write_configs writes it, parsed back with the protobuf text parser."""
    return text_format.Parse(text_format.MessageToString(cfg), mc.ModelConfig())


# ------------------------------------------------------------------------------------------ the ensemble checker

def check_ensemble(configs: dict[str, mc.ModelConfig], name: str) -> None:
    """AssertionError unless the ensemble `name` is consistent: every step is a model of the repository, every
    input of a step model is fed (optional ones may be left out) by an ensemble input or an earlier step's
    output of the same dtype and dims, every ensemble input is optional (a missing one is named by the step
    model that requires it, see export.repository.ensemble_config), every ensemble input is used, every
    ensemble output is produced with its dtype and dims."""
    ens = configs[name]
    assert ens.platform == "ensemble", f"{name} is not an ensemble"
    assert len({i.name for i in ens.input}) == len(ens.input), f"{name}: duplicate ensemble inputs"
    tensors = {i.name: (i.data_type, list(i.dims), i.optional) for i in ens.input}
    used = set()
    for step in ens.ensemble_scheduling.step:
        assert step.model_name in configs, f"{name}: step model {step.model_name} is not in the repository"
        model = configs[step.model_name]
        assert model.max_batch_size >= ens.max_batch_size, f"{name}: {step.model_name} batches fewer users"
        inputs = {i.name: i for i in model.input}
        for key, value in step.input_map.items():
            assert key in inputs, f"{name}: {step.model_name} has no input {key}"
            assert value in tensors, f"{name}: {step.model_name}.{key} is fed by {value}, which nothing makes"
            dtype, dims, optional = tensors[value]
            want = inputs[key]
            assert dtype == want.data_type, f"{name}: {step.model_name}.{key} dtype {want.data_type}, fed {dtype}"
            assert dims == list(want.dims), f"{name}: {step.model_name}.{key} dims {list(want.dims)}, fed {dims}"
            assert optional or value not in {i.name for i in ens.input}, \
                f"{name}: ensemble input {value} is required: Triton counts inputs, a step names a missing one"
            used.add(value)
        unfed = [i.name for i in model.input if not i.optional and i.name not in step.input_map]
        assert not unfed, f"{name}: {step.model_name} inputs {unfed} are not fed"
        outputs = {o.name: o for o in model.output}
        for key, value in step.output_map.items():
            assert key in outputs, f"{name}: {step.model_name} has no output {key}"
            assert value not in tensors, f"{name}: tensor {value} is produced twice"
            tensors[value] = (outputs[key].data_type, list(outputs[key].dims), False)
    unused = [i.name for i in ens.input if i.name not in used]
    assert not unused, f"{name}: ensemble inputs {unused} are never used"
    for o in ens.output:
        assert o.name in tensors, f"{name}: output {o.name} is produced by no step"
        assert tensors[o.name][:2] == (o.data_type, list(o.dims)), f"{name}: output {o.name} dtype/dims"


def dims_of(spec: dict) -> list[int]:
    return [-1 if isinstance(d, str) else d for d in spec["shape"][1:]] or [1]


# ------------------------------------------------------------------------------------------ every target

@pytest.mark.parametrize("target", repo.TARGETS)
def test_every_config_parses_and_both_ensembles_are_consistent(built, target):
    """Every target's configs parse; `phoenix` / `phoenix_embeddings` are the engine and the scoring in one
    Python process on the Python-host targets (inputs: the engine's and home-mixer's facts; outputs: the
    postprocess's), consistent ensembles of the native engine and the postprocess on the others."""
    configs = make_configs(built, target)
    served = served_records(built, options(target))
    assert set(configs) == {*served, ENSEMBLE, ENSEMBLE_EMBEDDINGS}
    for name, cfg in configs.items():
        assert cfg.name == name and cfg.max_batch_size == DEFAULT_MAX_BATCH_SIZE
        assert cfg.platform == "ensemble" or cfg.version_policy.latest.num_versions == 1
    host = target in repo.HOST_TARGETS
    for name, engine in ((ENSEMBLE, RANKER), (ENSEMBLE_EMBEDDINGS, RANKER_EMBEDDINGS)):
        if host:
            cfg = configs[name]
            assert cfg.backend == "python" and served[name]["engine_model"] == engine
            assert [i.name for i in cfg.input] == [i.name for i in configs[engine].input] + \
                [s["name"] for s in served[POSTPROCESS]["request_inputs"]]
            assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == \
                [(o.name, o.data_type, list(o.dims)) for o in configs[POSTPROCESS].output]
            (warmup,) = cfg.model_warmup
            assert set(warmup.inputs) == {i.name for i in cfg.input if not i.optional}
        else:
            check_ensemble(configs, name)
            assert [s.model_name for s in configs[name].ensemble_scheduling.step] == [engine, POSTPROCESS]

    kind = mc.ModelInstanceGroup.KIND_CPU if target == "cpu" else mc.ModelInstanceGroup.KIND_GPU
    for name in ENGINE_MODELS:
        cfg, rec = configs[name], served[name]
        assert (cfg.backend, cfg.platform) == (("python", "") if host else ("", PLATFORM[target])), name
        assert [g.kind for g in cfg.instance_group] == [kind], name
        assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == \
            [(s["name"], repo._DTYPES[s["dtype"]], dims_of(s)) for s in rec["inputs"]], name
        assert [o.name for o in cfg.output] == [o["name"] for o in rec["outputs"]], name
        for i, spec in zip(cfg.input, rec["inputs"]):
            assert i.allow_ragged_batch == (host and "C" in spec["shape"]), f"{name}.{i.name}: ragged only on hosts"
            assert i.optional == (host and bool(spec.get("optional"))), f"{name}.{i.name}: optional only on hosts"
        for o, spec in zip(cfg.output, rec["outputs"]):
            if spec["shape"] == ["B"]:   # [B]: Triton needs dims [1]; a platform engine sees [B] (reshape [])
                assert list(o.dims) == [1] and o.HasField("reshape") == (not host), f"{name}.{o.name}"
        (warmup,) = cfg.model_warmup
        assert set(warmup.inputs) == {i.name for i in cfg.input if not i.optional}
        assert all(d > 0 for w in warmup.inputs.values() for d in w.dims), f"{name}: warm-up dims must be concrete"
    for name in (POSTPROCESS, RETRIEVAL, PIPELINE):
        cfg = configs[name]
        assert cfg.backend == "python"
        on_gpu = name == PIPELINE and target == "gpu-python"     # its engines run in-process there
        want = mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU
        assert [g.kind for g in cfg.instance_group] == [want], "numpy models stay on CPU"
    assert configs[POSTPROCESS].dynamic_batching.max_queue_delay_microseconds == 0
    # phoenix_retrieval takes the user tower's inputs unchanged, plus its own optional ones
    retrieval = {i.name: (i.data_type, list(i.dims)) for i in configs[RETRIEVAL].input if not i.optional}
    assert retrieval == {s["name"]: (repo._DTYPES[s["dtype"]], dims_of(s)) for s in served[USER_TOWER]["inputs"]}
    assert {i.name for i in configs[RETRIEVAL].input if i.optional} == {"corpus_mask", "top_k"}

    if target == "gpu-tensorrt":
        for name in ENGINE_MODELS:
            assert configs[name].default_model_filename == "model.sm90.plan", "the newest capability's plan"
            assert dict(configs[name].cc_model_filenames) == PLANS[name]
    elif target == "gpu-onnxruntime":
        assert all(configs[n].default_model_filename == "model.onnx" for n in ENGINE_MODELS)


@pytest.mark.parametrize("target", repo.TARGETS)
def test_configs_name_no_paths(built, target):
    """Configs hold no folder of the build host: a repository serves from wherever it is copied."""
    for name, cfg in make_configs(built, target, ort_tensorrt=target == "gpu-onnxruntime").items():
        text = text_format.MessageToString(cfg)
        assert str(repo.PROJECT_ROOT) not in text and "/home/" not in text, name
        paths = re.findall(r'"(/[^"]*)"', text)
        assert all(p.startswith(repo.DEFAULT_ENGINE_CACHE + "/") for p in paths), f"{name}: {paths}"


# ------------------------------------------------------------------------------------------ the checker itself

def _drop_input_map(cfgs):
    del cfgs[ENSEMBLE].ensemble_scheduling.step[1].input_map["candidate_post_hashes"]


def _wrong_dtype(cfgs):
    next(i for i in cfgs[POSTPROCESS].input if i.name == "logits").data_type = mc.TYPE_FP16


def _wrong_dims(cfgs):
    next(i for i in cfgs[ENSEMBLE].input if i.name == "user_hashes").dims[:] = [3]


def _required_ensemble_input(cfgs):
    next(i for i in cfgs[ENSEMBLE].input if i.name == "candidate_post_hashes").optional = False


def _unknown_output(cfgs):
    cfgs[ENSEMBLE].ensemble_scheduling.step[0].output_map["no_such_output"] = "engine_x"


def _unproduced_ensemble_output(cfgs):
    cfgs[ENSEMBLE].output.add(name="no_such_score", data_type=mc.TYPE_FP32, dims=[-1])


def _unused_input(cfgs):
    cfgs[ENSEMBLE].input.add(name="stray", data_type=mc.TYPE_INT64, dims=[-1], optional=True)


def _missing_step_model(cfgs):
    del cfgs[POSTPROCESS]


@pytest.mark.parametrize("breakage", [_drop_input_map, _wrong_dtype, _wrong_dims, _required_ensemble_input,
                                      _unknown_output, _unproduced_ensemble_output, _unused_input,
                                      _missing_step_model])
def test_the_checker_fails_on_a_broken_map(built, breakage):
    """A passing check_ensemble means something: each kind of broken map fails it."""
    cfgs = make_configs(built, "gpu-tensorrt")
    check_ensemble(cfgs, ENSEMBLE)
    breakage(cfgs)
    with pytest.raises((AssertionError, KeyError)):
        check_ensemble(cfgs, ENSEMBLE)


# ------------------------------------------------------------------------------------------ options

def test_options_reach_the_configs(built):
    opts = dict(max_batch_size=8, max_candidates=32, candidate_sizes=(4, 32), queue_delay_us=123, instances=3,
                top_k=7, weights={"weight.report": "-300"}, ort_tensorrt=True)
    configs = make_configs(built, "gpu-onnxruntime", **opts)
    assert all(c.max_batch_size == 8 for c in configs.values())
    for name in ENGINE_MODELS:
        assert configs[name].dynamic_batching.max_queue_delay_microseconds == 123
        assert configs[name].instance_group[0].count == 3
    assert configs[POSTPROCESS].instance_group[0].count == 1
    assert configs[POSTPROCESS].dynamic_batching.max_queue_delay_microseconds == 0
    warm = configs[RANKER].model_warmup[0].inputs["candidate_post_hashes"]
    assert list(warm.dims)[0] == built[0].ranker.config.candidate_seq_len and warm.zero_data
    client = __import__("json").loads(configs[POSTPROCESS].parameters["client_config"].string_value)
    assert client["limits"]["max_batch_size"] == 8 and client["limits"]["candidate_sizes"] == [4, 32]
    assert client["limits"]["max_candidates"] == 32
    served = served_records(built, options("gpu-onnxruntime", **opts))
    assert served[RETRIEVAL]["top_k"] == 7
    assert served[POSTPROCESS]["params"]["weights"]["report"] == -300.0
    cpu = make_configs(built, "cpu", instances=2)
    assert [g.count for g in cpu[RANKER].instance_group] == [2]
    assert not cpu[RANKER].optimization.HasField("execution_accelerators")
    more = make_configs(built, "gpu-tensorrt", instances=2, python_instances=3)
    assert {n: more[n].instance_group[0].count for n in (RANKER, POSTPROCESS, RETRIEVAL, PIPELINE)} == \
        {RANKER: 2, POSTPROCESS: 3, RETRIEVAL: 3, PIPELINE: 3}
    gpu_python = make_configs(built, "gpu-python")
    for name in (RANKER, ENSEMBLE, PIPELINE):     # these run an engine in-process: on the GPU
        assert gpu_python[name].instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU, name
    assert gpu_python[POSTPROCESS].instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


def test_the_command_lines_defaults_per_target():
    """Issue 26: GPU targets default to two instances per engine (copies of one overlap the other's compute) and
    to fixed candidate sizes (Triton's native backends batch requests of equal shape only); cpu to one instance
    and any C; --python-instances follows --instances; nothing below 1."""
    p = build.parser()

    def opts(*argv):
        return build.options_from(p.parse_args(list(argv)), p)[1]
    cpu, gpu = opts(), opts("--target", "gpu-onnxruntime")
    assert (cpu.instances, cpu.python_instances, cpu.limits.candidate_sizes) == (1, 1, ())
    assert (gpu.instances, gpu.python_instances) == (2, 2)
    assert gpu.limits.candidate_sizes == (64, 128, 256, 512, 1024)
    assert opts("--target", "gpu-onnxruntime", "--max-candidates", "300").limits.candidate_sizes == (64, 128, 256, 300)
    assert opts("--target", "gpu-onnxruntime", "--candidate-sizes", "16,1024").limits.candidate_sizes == (16, 1024)
    assert opts("--instances", "3").python_instances == 3
    with pytest.raises(SystemExit):
        opts("--instances", "0")


def test_a_gpu_python_build_the_image_cannot_serve_is_refused_naming_the_fix(capsys):
    """Issue 26: deploy/Dockerfile's image has torch and tensorrt, no onnxruntime-gpu: a gpu-python build that
    would serve ONNX Runtime (only .onnx built) exits 2 in seconds, before any export, saying what to build."""
    with pytest.raises(SystemExit) as e:
        build.main(["--target", "gpu-python", "--preset", "demo", "--output", "/nonexistent/never"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "onnxruntime" in err and "--engines tensorrt, aoti or torch" in err and "gpu-onnxruntime" in err
    assert repo.python_engine_kind("gpu-python", {"onnx", "aoti", "tensorrt"}, None) == "tensorrt"
    assert repo.python_engine_kind("gpu-python", {"onnx", "torch_export"}, None) == "torch"
    with pytest.raises(ValueError, match="does not install"):
        repo.python_engine_kind("gpu-python", {"onnx", "aoti"}, "onnxruntime")
    with pytest.raises(SystemExit):
        build.main(["--target", "gpu-onnxruntime", "--retrieval-index", "faiss", "--output", "/nonexistent/never"])
    assert "faiss" in capsys.readouterr().err


def test_ort_tensorrt_accelerator_has_profiles_and_an_engine_cache(built):
    """--ort-tensorrt: parameter names Triton 25.10's ONNX Runtime backend accepts, one profile that covers
    the limits (the same ranges as our own TensorRT plans), an engine cache per ONNX file."""
    opts = options("gpu-onnxruntime", max_batch_size=16, max_candidates=256, candidate_sizes=(32, 256),
                   ort_tensorrt=True)
    served = served_records(built, opts)
    placed = {name: {"onnx_sha256": f"{name:0<64}"[:64]} for name in ENGINE_MODELS}
    configs = repo.configs(served, opts, 8, placed)
    profile = tensorrt.default_profile(opts.limits)
    assert profile == {"B": (1, 8, 16), "C": (1, 32, 256)}
    for name in ENGINE_MODELS:
        (acc,) = configs[name].optimization.execution_accelerators.gpu_execution_accelerator
        assert acc.name == "tensorrt"
        params = dict(acc.parameters)
        assert set(params) <= ORT_BACKEND_TRT_KEYS, set(params) - ORT_BACKEND_TRT_KEYS
        assert params["precision_mode"] in ("FP32", "FP16", "INT8")
        assert params["trt_engine_cache_enable"] in ("1", "true")
        cache = params["trt_engine_cache_path"]
        sha = placed[name]["onnx_sha256"]
        assert cache == repo.ort_trt_cache_path(opts.engine_cache, sha) and sha[:16] in cache
        assert Path(cache).parent == Path(repo.DEFAULT_ENGINE_CACHE), \
            "the persisted volume; ONNX Runtime creates only the last folder of the cache path"
        inputs = served[name]["inputs"]
        for i, corner in enumerate(("min", "opt", "max")):
            text = params[f"trt_profile_{corner}_shapes"]
            shapes = dict(item.split(":") for item in text.split(","))
            assert list(shapes) == [s["name"] for s in inputs], f"{name}: every input once, in order"
            for s in inputs:
                want = resolve_shape(s["shape"], {"B": profile["B"][i], "C": profile["C"][i]})
                assert tuple(int(d) for d in shapes[s["name"]].split("x")) == want, f"{name}.{s['name']} {corner}"
    caches = {repo.ort_trt_cache_path(opts.engine_cache, placed[n]["onnx_sha256"]) for n in ENGINE_MODELS}
    assert len(caches) == len(ENGINE_MODELS), "one cache folder per ONNX file"
    without = repo.configs(served_records(built, options("gpu-onnxruntime")), options("gpu-onnxruntime"), 8)
    assert not without[RANKER].optimization.HasField("execution_accelerators"), "opt-in only"


def test_place_platform_engines_returns_the_onnx_sha256(built, tmp_path):
    """gpu-onnxruntime: each graph is renamed to model.onnx in its folder (one graph file per model, its external
    data left under the name the graph records) and its artifact follows; its sha256 (the ORT TensorRT cache's
    key) is returned for the configs, not written into the served records."""
    opts = options("gpu-onnxruntime")
    served = served_records(built, opts)
    artifacts = []
    for name, rec in served.items():
        if name in ENGINE_MODELS:
            src = tmp_path / model_path(name, f"{rec['graph']}.onnx")
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_bytes(rec["graph"].encode())
            (src.parent / f"{rec['graph']}.onnx.data").write_bytes(b"weights")
            artifacts.append(Artifact(f"{rec['graph']}_onnx", rec["graph"], "onnx", str(src.relative_to(tmp_path)),
                                      files=[f"{rec['graph']}.onnx.data"]).with_file_info(tmp_path))
    before = json.dumps(served, sort_keys=True)
    placed = repo.place_platform_engines(tmp_path, served, artifacts, opts.target)
    assert json.dumps(served, sort_keys=True) == before
    for name, art in zip([n for n in served if n in ENGINE_MODELS], artifacts):
        folder = tmp_path / model_path(name, "")
        assert sorted(p.name for p in folder.iterdir()) == sorted(["model.onnx", f"{served[name]['graph']}.onnx.data"])
        assert (folder / "model.onnx").read_bytes() == served[name]["graph"].encode()
        assert art.path == model_path(name, "model.onnx") and all((tmp_path / p).is_file() for p in art.all_paths())
        assert placed[name] == {"onnx_sha256": sha256_file(folder / "model.onnx")}


def test_one_plan_per_compute_capability(built, tmp_path):
    """gpu-tensorrt: every plan is renamed model.sm<cc>.plan in its folder and mapped by cc_model_filenames; the
    newest capability's plan is the default file for any other GPU (no copy)."""
    opts = options("gpu-tensorrt")
    served = served_records(built, opts)
    artifacts = []
    for name, rec in served.items():
        if name not in ENGINE_MODELS:
            continue
        for cc in ("8.0", "9.0"):
            path = tmp_path / model_path(name, f"{rec['graph']}.sm{cc.replace('.', '')}.plan")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"{rec['graph']} {cc}".encode())
            artifacts.append(Artifact(f"{rec['graph']}_tensorrt_{cc}", rec["graph"], "tensorrt",
                                      str(path.relative_to(tmp_path)), device="cuda",
                                      info={"compute_capability": cc}))
    placed = repo.place_platform_engines(tmp_path, served, artifacts, opts.target)
    assert placed == PLACED
    for name in ENGINE_MODELS:
        assert sorted(p.name for p in (tmp_path / model_path(name, "")).iterdir()) == sorted(PLANS[name].values())
        for cc, filename in PLANS[name].items():
            assert (tmp_path / model_path(name, filename)).read_bytes() == f"{served[name]['graph']} {cc}".encode()
    cfg = roundtrip(repo.configs(served, opts, 8, placed)[RANKER])
    assert dict(cfg.cc_model_filenames) == {"8.0": "model.sm80.plan", "9.0": "model.sm90.plan"}
    assert cfg.default_model_filename == "model.sm90.plan"
    with pytest.raises(ValueError, match="tensorrt artifact"):
        repo.place_platform_engines(tmp_path, served, [], opts.target)


def test_written_configs_parse_from_disk(built, tmp_path):
    opts = options("gpu-tensorrt")
    cfgs = repo.configs(served_records(built, opts), opts, 8, PLACED)
    arts = repo.write_configs(tmp_path, cfgs)
    assert {a.model for a in arts} == set(cfgs)
    for name in cfgs:
        parsed = text_format.Parse((tmp_path / name / "config.pbtxt").read_text(), mc.ModelConfig())
        assert parsed == cfgs[name]
        assert (tmp_path / name / VERSION).is_dir(), "Triton needs the version folder, ensembles too"
