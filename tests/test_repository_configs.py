"""Every generated config.pbtxt of every target parses with tritonclient's model_config_pb2, and the
ensemble's maps cover every input and output with matching dtypes and dims.

The GPU targets cannot be loaded here (no TensorRT / ONNX Runtime backends in the bundled server):
this check is what catches their mistakes. The manifest is made from the real serving graph specs
(export.graphs) of the demo preset, without exporting anything, so this file runs in seconds.
"""
from __future__ import annotations

import argparse

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export import repository

GPU_TARGETS = ("gpu-tensorrt", "gpu-onnxruntime", "gpu-python")
ALL_TARGETS = ("cpu", *GPU_TARGETS)


def options(*extra):
    ap = argparse.ArgumentParser()
    repository.add_arguments(ap)
    return ap.parse_args(list(extra))


@pytest.fixture(scope="module")
def manifest():
    """A demo manifest whose artifacts list the real graphs' inputs/outputs for every engine kind."""
    from export.graphs import graphs_from_manifest
    from phoenix_torch import get_preset

    header = {"format": 1, "preset": "demo", "precision": "fp32", "target": "cpu",
              "model_config": get_preset("demo").to_dict(),
              "retrieval_config": get_preset("demo", retrieval=True).to_dict(),
              "tables": {"user_vocab": 1000, "post_vocab": 1000, "author_vocab": 1000}, "max_candidates": 8}
    graphs = graphs_from_manifest(header)
    artifacts = []
    for name, g in graphs.items():
        for kind, ext in (("onnx", "onnx"), ("tensorrt", "plan"), ("torch", "pt")):
            artifacts.append({"name": f"{name}_{kind}", "model": name, "kind": kind,
                              "path": f"engines/{name}.{ext}", "precision": "fp32",
                              "inputs": [t.to_dict() for t in g.inputs],
                              "outputs": [t.to_dict() for t in g.outputs]})
    return {**header, "artifacts": artifacts}


def roundtrip(cfg: mc.ModelConfig) -> mc.ModelConfig:
    """Write as the repository writer does, parse back with the protobuf text parser."""
    return text_format.Parse(text_format.MessageToString(cfg), mc.ModelConfig())


def check_ensemble(configs: dict[str, mc.ModelConfig], name: str = "phoenix"):
    """Every ensemble input is consumed, every step input is fed by an ensemble input or an earlier step
    output of the same dtype and dims, every ensemble output is produced, and dims/dtypes agree."""
    ens = configs[name]
    tensors = {i.name: (i.data_type, list(i.dims)) for i in ens.input}
    consumed = set()
    for step in ens.ensemble_scheduling.step:
        model = configs[step.model_name]
        assert model.max_batch_size == ens.max_batch_size, step.model_name
        model_inputs = {i.name: (i.data_type, list(i.dims)) for i in model.input}
        assert set(step.input_map) == set(model_inputs), \
            f"{step.model_name}: input_map {sorted(step.input_map)} != model inputs {sorted(model_inputs)}"
        for key, value in step.input_map.items():
            assert value in tensors, f"{step.model_name}.{key} <- {value}: nothing produces {value}"
            assert tensors[value] == model_inputs[key], \
                f"{step.model_name}.{key}: {model_inputs[key]} fed by {value} {tensors[value]}"
            consumed.add(value)
        model_outputs = {o.name: (o.data_type, list(o.dims)) for o in model.output}
        for key, value in step.output_map.items():
            assert key in model_outputs, f"{step.model_name} has no output {key}"
            assert value not in tensors, f"{value} produced twice"
            tensors[value] = model_outputs[key]
    unused = [i.name for i in ens.input if i.name not in consumed]
    assert not unused, f"ensemble inputs never used: {unused}"
    for o in ens.output:
        assert o.name in tensors, f"ensemble output {o.name} produced by no step"
        assert tensors[o.name] == (o.data_type, list(o.dims)), o.name


@pytest.mark.parametrize("target", ALL_TARGETS)
def test_every_config_parses_and_ensemble_is_consistent(manifest, target):
    configs = {n: roundtrip(c) for n, c in repository.configs_for_target(manifest, target, options()).items()}
    assert set(configs) == set(repository.MODELS)
    for name, cfg in configs.items():
        assert cfg.name == name
        assert cfg.version_policy.HasField("latest") or cfg.platform == "ensemble"
    check_ensemble(configs)
    ranker = configs["phoenix_ranker"]
    kind = mc.ModelInstanceGroup.KIND_CPU if target == "cpu" else mc.ModelInstanceGroup.KIND_GPU
    for engine in ("phoenix_ranker", "phoenix_user_tower", "phoenix_candidate_tower"):
        cfg = configs[engine]
        assert [g.kind for g in cfg.instance_group] == [kind], engine
        assert cfg.dynamic_batching.max_queue_delay_microseconds == repository.DEFAULT_QUEUE_DELAY_US
        assert len(cfg.model_warmup) == 1
        assert set(cfg.model_warmup[0].inputs) == {i.name for i in cfg.input}, "warm-up must feed every input"
        for i in cfg.input:
            assert all(d > 0 for d in cfg.model_warmup[0].inputs[i.name].dims), "warm-up dims must be concrete"
    expected = {"cpu": ("", "python"), "gpu-python": ("", "python"),
                "gpu-tensorrt": ("tensorrt_plan", ""), "gpu-onnxruntime": ("onnxruntime_onnx", "")}[target]
    assert (ranker.platform, ranker.backend) == expected
    if target in ("gpu-tensorrt", "gpu-onnxruntime"):
        err = next(o for o in ranker.output if o.name == "input_error")
        assert list(err.dims) == [1] and err.HasField("reshape") and list(err.reshape.shape) == [], \
            "a [B] engine output must be dims [1] reshaped to []"
    # the retrieval model reads the user tower's inputs unchanged
    user = {i.name: (i.data_type, list(i.dims)) for i in configs["phoenix_user_tower"].input}
    assert {i.name: (i.data_type, list(i.dims)) for i in configs["phoenix_retrieval"].input} == user


def test_options_reach_the_configs(manifest):
    opts = options("--max-batch-size", "8", "--queue-delay-us", "123", "--instances", "3", "--top-k", "5",
                   "--weight", "report=-300", "--ort-tensorrt")
    configs = repository.configs_for_target(manifest, "gpu-onnxruntime", opts)
    assert all(c.max_batch_size == 8 for c in configs.values())
    assert configs["phoenix_ranker"].dynamic_batching.max_queue_delay_microseconds == 123
    assert configs["phoenix_ranker"].instance_group[0].count == 3
    accs = configs["phoenix_ranker"].optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in accs] == ["tensorrt"]
    assert configs["phoenix_postprocess"].parameters["weight.report"].string_value == "-300"
    assert [list(o.dims) for o in configs["phoenix_retrieval"].output if o.name == "top_k_indices"] == [[5]]


def test_bad_weight_override_fails_at_build_time(manifest):
    with pytest.raises(ValueError, match="unknown action 'likes'"):
        repository.configs_for_target(manifest, "cpu", options("--weight", "likes=3"))


def test_check_ensemble_catches_a_dtype_mismatch(manifest):
    """The checker itself must fail on a broken map (so a passing check means something)."""
    configs = {n: roundtrip(c) for n, c in repository.configs_for_target(manifest, "gpu-tensorrt", options()).items()}
    configs["phoenix_postprocess"].input[0].data_type = mc.TYPE_FP16
    with pytest.raises(AssertionError):
        check_ensemble(configs)


def test_written_repository_configs_parse(tmp_path, manifest):
    """The files write_repository puts on disk (cpu target, no engines needed for the configs) parse."""
    configs = repository.configs_for_target(manifest, "cpu", options())
    for name, cfg in configs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.pbtxt").write_text(text_format.MessageToString(cfg))
    for path in tmp_path.glob("*/config.pbtxt"):
        parsed = text_format.Parse(path.read_text(), mc.ModelConfig())
        assert parsed.name == path.parent.name
