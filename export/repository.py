"""The Triton model repository of a build: what each served model is (its manifest record) and its config.

| served model | cpu / gpu-python | gpu-onnxruntime | gpu-tensorrt |
|---|---|---|---|
| phoenix_ranker | Python engine host: gathers the hash rows from the memory-mapped tables, runs `ranker_embeddings` | `onnxruntime_onnx`, `ranker` (tables inside) | `tensorrt_plan`, `ranker` |
| phoenix_ranker_embeddings | Python engine host, `ranker_embeddings` | `onnxruntime_onnx` | `tensorrt_plan` |
| phoenix_user_tower, phoenix_candidate_tower | Python engine host (tables, `*_tower_embeddings`) | `onnxruntime_onnx`, hashes in | `tensorrt_plan`, hashes in |
| phoenix_postprocess, phoenix_retrieval | Python, CPU | same | same |
| phoenix, phoenix_embeddings | Python: the ranker's engine host and the postprocess's scoring in one process | ensembles: ranker -> postprocess | same |
| phoenix_pipeline | Python: hashing, the user tower, the corpus search, the ranker and the scoring in one process | Python, the engines called through Triton | same |

Each served model's record in the manifest (`served`) holds its graph, engine, input specs (what a request
must hold: names, dtypes, shapes, value ranges), outputs and, for engine hosts, the tables to gather from;
the Python-backend models read their record at start-up. `configs(served, ...)` turns records into
`model_config_pb2.ModelConfig` messages, written with protobuf's text_format (they parse by
construction); it is pure, so tests check every target's configs here. Configs hold no paths: a
repository serves from any folder.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import phoenix_runtime
from export.tensorrt import default_profile
from phoenix_runtime.ann import canonical_kind
from phoenix_runtime.engines import ARTIFACT_KIND, PACKAGE
from phoenix_runtime.manifest import (CANDIDATE_TOWER, ENGINE_MODELS, ENSEMBLE, ENSEMBLE_EMBEDDINGS, PIPELINE,
                                      POSTPROCESS, RANKER, RANKER_EMBEDDINGS, RETRIEVAL, USER_TOWER, VERSION, Artifact,
                                      client_config, model_path, sha256_file)
from phoenix_runtime.pipeline import PIPELINE_WEIGHTS, RETRIEVAL_OUTPUTS, raw_inputs
from phoenix_runtime.request import DEFAULT_TOP_K, Limits, resolve_shape
from phoenix_runtime.scoring import score_sources, served_score_names

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SOURCES = PROJECT_ROOT / "triton_repo"          # the committed Python-backend model.py files
RUNTIME = Path(phoenix_runtime.__file__).parent  # the package they import, copied whole beside each
TARGETS = ("cpu", "gpu-tensorrt", "gpu-onnxruntime", "gpu-python")
HOST_TARGETS = ("cpu", "gpu-python")            # a Python engine host gathers the hash rows itself
PLATFORMS = {"gpu-tensorrt": ("tensorrt_plan", "tensorrt", "model.plan"),
             "gpu-onnxruntime": ("onnxruntime_onnx", "onnx", "model.onnx")}
# The Python packages deploy/Dockerfile's image installs beside Triton's own (ENGINE_HOST=1: the engine host's
# torch and tensorrt): what a GPU repository's Python models may import there. tests/test_deploy.py checks that the
# Dockerfile installs exactly these.
IMAGE_PACKAGES = frozenset({"numpy", "torch", "tensorrt"})
# Where ONNX Runtime's TensorRT provider keeps its engines (the writable volume deploy/kubernetes mounts there,
# PHOENIX_ENGINE_CACHE): a restarted server reuses them instead of rebuilding every profile at warm-up.
DEFAULT_ENGINE_CACHE = "/var/cache/phoenix"
PYTHON_SOURCE = {RANKER: "phoenix_ranker", RANKER_EMBEDDINGS: "phoenix_ranker", USER_TOWER: "phoenix_ranker",
                 CANDIDATE_TOWER: "phoenix_ranker", POSTPROCESS: "phoenix_postprocess", ENSEMBLE: "phoenix",
                 ENSEMBLE_EMBEDDINGS: "phoenix", PIPELINE: "phoenix_pipeline",
                 RETRIEVAL: "phoenix_retrieval"}
DEFAULT_QUEUE_DELAY_US = 0  # measured: triton_repo/README.md "Queue delay"
_DTYPES = {"int32": mc.TYPE_INT32, "int64": mc.TYPE_INT64, "float32": mc.TYPE_FP32, "uint64": mc.TYPE_UINT64,
           "bool": mc.TYPE_BOOL, "bytes": mc.TYPE_STRING}


@dataclass(frozen=True)
class RepositoryOptions:
    target: str = "cpu"
    limits: Limits = Limits()             # users, candidates, bytes, candidate sizes (history_len: the model's)
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instances: int = 1                    # of each engine model (on GPU targets: per GPU)
    python_instances: int = 1             # of each CPU Python model: postprocess, retrieval, the GPU pipeline
    engine_cache: str = DEFAULT_ENGINE_CACHE   # the ORT TensorRT engine cache folder in the serving container
    python_engine: str | None = None      # engine kind of the Python host (default per target)
    ort_tensorrt: bool = False
    corpus_size: int = 1000               # synthetic corpus (seeded builds)
    corpus_file: str | None = None
    top_k: int = DEFAULT_TOP_K
    retrieval_index: str = "exact"        # or "hnsw" ("faiss"), "ivfpq": approximate, faiss-cpu (export.corpus)
    index_params: dict = field(default_factory=dict)   # the index parameters the user set (export.corpus)
    weights: dict = field(default_factory=dict)   # scoring parameter strings (`weight.<name>` ...)


def graph_names(target: str, towers: bool) -> dict[str, str]:
    """{served engine model: the graph it runs}."""
    host = target in HOST_TARGETS
    out = {RANKER: "ranker_embeddings" if host else "ranker", RANKER_EMBEDDINGS: "ranker_embeddings"}
    if towers:
        out[USER_TOWER] = "user_tower_embeddings" if host else "user_tower"
        out[CANDIDATE_TOWER] = "candidate_tower_embeddings" if host else "candidate_tower"
    return out


def python_engine_kind(target: str, built: set[str], requested: str | None) -> str:
    """The engine the Python host runs: as requested, else ONNX Runtime on CPU (export.build times the engines
    built for the cpu target and serves the fastest), else the best built GPU engine the deploy image can run
    (tensorrt > aoti > torch); a gpu-python build with none of them is refused, naming the fix."""
    if requested:
        kind = requested
    elif target == "cpu":
        kind = "onnxruntime"
    else:
        kind = next((k for k in ("tensorrt", "aoti", "torch") if ARTIFACT_KIND[k] in built), "onnxruntime")
    if target == "gpu-python" and PACKAGE[kind] not in IMAGE_PACKAGES:
        raise ValueError(f"--target gpu-python would serve the {kind} engine, whose package ({PACKAGE[kind]}) "
                         f"deploy/Dockerfile's image does not install (it has {sorted(IMAGE_PACKAGES)}): build an "
                         f"engine it runs (--engines tensorrt, aoti or torch), or serve ONNX with --target "
                         f"gpu-onnxruntime (Triton's own ONNX Runtime backend)")
    return kind


def check_image(target: str, retrieval_index: str) -> None:
    """A GPU repository must load in deploy/Dockerfile's image: ValueError naming what it lacks."""
    if target != "cpu" and canonical_kind(retrieval_index) != "exact" and "faiss" not in IMAGE_PACKAGES:
        raise ValueError(f"--retrieval-index {retrieval_index} on a GPU target needs faiss in the server image, which "
                         "deploy/Dockerfile does not install: add faiss-cpu to its EXTRA_PIP_PACKAGES and to "
                         "export.repository.IMAGE_PACKAGES, or keep the exact search")


def default_candidate_sizes(target: str, max_candidates: int) -> tuple:
    """The candidate counts a client pads to when the build names none: none on the cpu target (the Python engine
    host batches any C); on GPU targets powers of two from 64 up to the limit, so that Triton's native backends
    batch requests of different C (the padding is exact: hash-0 candidates)."""
    if target == "cpu":
        return ()
    sizes, c = [], 64
    while c < max_candidates:
        sizes.append(c)
        c *= 2
    return (*sizes, max_candidates)


# ---------------------------------------------------------------- records (the manifest's `served`)

def engine_record(graph, inputs: list[dict], lookups: dict, tables: str | None, target: str, engine: str) -> dict:
    host = target in HOST_TARGETS
    rec = {"graph": graph.name, "backend": "python" if host else PLATFORMS[target][0], "inputs": inputs,
           "outputs": [t.to_dict() for t in graph.outputs],
           "input_checks": "graph" if graph.checked else "host"}   # where the out-of-range contract runs
    if host:
        rec["engine"] = engine
        if lookups:
            rec["lookups"] = {emb: list(src) for emb, src in lookups.items()}
            rec["tables"] = tables
    return rec


def postprocess_record(ranker_config, params: dict, ranker_inputs: list[dict]) -> dict:
    """Inputs: the ranker's outputs, the candidates' validity and author hashes, and home-mixer's optional
    per-candidate facts; outputs: the PhoenixScores fields, the columns no field reads, the weighted and
    final scores, the ranking and every probability (phoenix_runtime.scoring.score_sources says which column
    feeds what). `params`: the complete scoring parameters (phoenix_runtime.scoring.scoring_params), recorded
    as used."""
    cont = ranker_config.num_continuous_actions
    by_name = {s["name"]: s for s in ranker_inputs}
    inputs = [{"name": "logits", "dtype": "float32", "shape": ["B", "C", ranker_config.num_actions]}]
    if cont:
        inputs.append({"name": "continuous_preds", "dtype": "float32", "shape": ["B", "C", cont]})
    inputs.append({"name": "input_error", "dtype": "int32", "shape": ["B"]})
    inputs.append(by_name["candidate_post_hashes"])
    author = by_name.get("candidate_author_hashes") or {"name": "candidate_author_hashes", "dtype": "int64",
                                                        "shape": ["B", "C", 1]}
    inputs.append({**author, "optional": True})
    request = [{"name": "candidate_author_ids", "dtype": "int64", "shape": ["B", "C"], "optional": True,
                "key": "author_id"},
               {"name": "candidate_video_duration_ms", "dtype": "int64", "shape": ["B", "C"], "optional": True,
                "key": "video_duration_ms"},
               {"name": "candidate_in_network", "dtype": "bool", "shape": ["B", "C"], "optional": True,
                "key": "in_network"}]
    sources = score_sources(ranker_config.actions, cont)
    special = {"ranking": ("int32", ["B", "C"]), "probs": ("float32", ["B", "C", ranker_config.num_actions])}
    outputs = [{"name": n, "dtype": special.get(n, ("float32",))[0], "shape": special.get(n, (None, ["B", "C"]))[1]}
               for n in served_score_names(sources)]
    return {"backend": "python", "inputs": inputs + request, "request_inputs": request, "outputs": outputs,
            "sources": sources, "actions": list(ranker_config.actions), "params": dict(params)}


def scored_record(engine_model: str, engine: dict, post: dict) -> dict:
    """`phoenix` / `phoenix_embeddings` on the Python-host targets: the engine model's record run in-process,
    then the postprocess's scoring (inputs: the engine's and home-mixer's facts; outputs: the postprocess's)."""
    return {"backend": "python", "engine_model": engine_model, "inputs": engine["inputs"] + post["request_inputs"],
            "outputs": post["outputs"]}


def pipeline_scores(post: dict) -> bool:
    """Whether the model has every field the pipeline's own score reads."""
    return all(post["sources"]["fields"].get(f) for f in PIPELINE_WEIGHTS)


def pipeline_record(tower: dict, ranker: dict, post: dict, retrieval: dict) -> dict:
    """phoenix_pipeline: raw ids of the user and history in (pipeline.raw_inputs), retrieval's top K, their named
    scores and the pipeline's score and order out."""
    ret = {o["name"]: o for o in retrieval["outputs"]}
    outputs = [{**ret[n], "shape": ["B", "K"]} for n in RETRIEVAL_OUTPUTS if n in ret]
    outputs += [{**o, "shape": ["B", "K", *o["shape"][2:]]} for o in post["outputs"]]
    outputs += [{"name": "pipeline_score", "dtype": "float32", "shape": ["B", "K"]},
                {"name": "pipeline_ranking", "dtype": "int32", "shape": ["B", "K"]}]
    return {"backend": "python", "inputs": raw_inputs(tower["inputs"], ranker["inputs"]),
            "request_inputs": retrieval["request_inputs"], "outputs": outputs,
            "engines": {"tower": USER_TOWER, "ranker": RANKER}}


def retrieval_record(user_inputs: list[dict], emb_size: int, top_k: int, index: dict, corpus_rows: int,
                     topics: bool) -> dict:
    """phoenix_retrieval's record; `index` holds the corpus search's fields (export.corpus.write_corpus: index,
    index_params, index_options)."""
    topic_out = [{"name": "top_k_topics", "dtype": "bytes", "shape": ["B", "K"]}] if topics else []
    return {"backend": "python", "inputs": user_inputs,
            "request_inputs": [{"name": "corpus_mask", "dtype": "bool", "shape": ["B", "N"], "optional": True},
                               {"name": "top_k", "dtype": "int32", "shape": ["B", 1], "optional": True}],
            "outputs": [{"name": "top_k_indices", "dtype": "int64", "shape": ["B", "K"]},
                        {"name": "top_k_post_ids", "dtype": "uint64", "shape": ["B", "K"]},
                        {"name": "top_k_author_ids", "dtype": "uint64", "shape": ["B", "K"]},
                        {"name": "top_k_scores", "dtype": "float32", "shape": ["B", "K"]},
                        {"name": "user_representation", "dtype": "float32", "shape": ["B", emb_size]}, *topic_out],
            "top_k": top_k, **index, "corpus_rows": corpus_rows}


# ---------------------------------------------------------------- configs (pure)

def _tensor(spec: dict, cls, platform: bool, optional: bool):
    """ModelInput/ModelOutput from a spec {"name", "dtype", "shape": ["B", ...]} (Triton's batch dim dropped)."""
    dims = [-1 if isinstance(d, str) else int(d) for d in spec["shape"][1:]]
    t = cls(name=spec["name"], data_type=_DTYPES[spec["dtype"]], dims=dims or [1])
    if not dims and platform:  # a [B] tensor: Triton needs dims [1]; the engine sees [B]
        t.reshape.shape[:] = []
        t.reshape.SetInParent()
    if cls is mc.ModelInput:
        if optional and spec.get("optional"):
            t.optional = True
        if "C" in spec["shape"]:
            t.allow_ragged_batch = not platform  # Python hosts batch requests of different C (padded, exact)
    return t


def _warmup(inputs, candidates: int) -> mc.ModelWarmup:
    w = mc.ModelWarmup(name="zeros", batch_size=1)
    for i in inputs:
        if i.optional:
            continue
        w.inputs[i.name].data_type = i.data_type
        w.inputs[i.name].dims[:] = [candidates if d == -1 else d for d in i.dims]
        w.inputs[i.name].zero_data = True
    return w


def _base(name: str, rec: dict, opts: RepositoryOptions, warmup_c: int | None, gpu: bool = False,
          engine: bool = False) -> mc.ModelConfig:
    """`gpu`: instances on the GPU(s) (KIND_GPU); `engine`: a model that runs an engine (instances: --instances;
    else --python-instances)."""
    platform = rec["backend"] != "python"
    cfg = mc.ModelConfig(name=name, max_batch_size=opts.limits.max_batch_size)
    if platform:
        cfg.platform = rec["backend"]
    else:
        cfg.backend = "python"
    cfg.input.extend(_tensor(s, mc.ModelInput, platform, not platform) for s in rec["inputs"])
    cfg.output.extend(_tensor(s, mc.ModelOutput, platform, False) for s in rec["outputs"])
    kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    cfg.instance_group.add(count=opts.instances if gpu or engine else opts.python_instances, kind=kind)
    cfg.dynamic_batching.max_queue_delay_microseconds = opts.queue_delay_us
    cfg.version_policy.latest.num_versions = 1
    if warmup_c is not None:
        cfg.model_warmup.append(_warmup(cfg.input, warmup_c))
    return cfg


def engine_config(name: str, rec: dict, opts: RepositoryOptions, warmup_c: int, placed: dict | None = None):
    """`placed`: what place_platform_engines put in the model's folder (TensorRT plans per compute capability,
    the sha256 of model.onnx)."""
    placed = placed or {}
    gpu = opts.target != "cpu"
    cfg = _base(name, rec, opts, warmup_c if rec.get("graph", "").find("candidate_tower") < 0 else 1, gpu, True)
    if rec["backend"] == "tensorrt_plan":
        plans = placed.get("plans", {})
        for cc, filename in sorted(plans.items()):   # one plan per GPU compute capability
            cfg.cc_model_filenames[cc] = filename
        # any other GPU: the newest capability's plan (a plan runs only on the capability it was built for, unless
        # built --trt-hardware-compatible)
        cfg.default_model_filename = plans[max(plans, key=lambda cc: tuple(map(int, cc.split("."))))] if plans \
            else PLATFORMS["gpu-tensorrt"][2]
    elif rec["backend"] == "onnxruntime_onnx":
        cfg.default_model_filename = "model.onnx"
        if opts.ort_tensorrt:
            acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
            acc.parameters["precision_mode"] = "FP32"
            acc.parameters["max_workspace_size_bytes"] = str(1 << 30)
            acc.parameters["trt_engine_cache_enable"] = "1"             # no rebuild per new shape after a restart
            acc.parameters["trt_engine_cache_path"] = ort_trt_cache_path(opts.engine_cache, placed.get("onnx_sha256"))
            profile = default_profile(opts.limits)   # the B and C ranges of our own TensorRT plans (export/tensorrt.py)
            for i, corner in enumerate(("min", "opt", "max")):
                acc.parameters[f"trt_profile_{corner}_shapes"] = _profile(rec["inputs"], profile["B"][i],
                                                                          profile["C"][i])
    return cfg


def ort_trt_cache_path(root: str, sha: str | None) -> str:
    """ONNX Runtime's TensorRT engine cache of one graph file, under `root` (the serving container's writable,
    persisted volume: deploy/kubernetes mounts one at DEFAULT_ENGINE_CACHE). ORT names a cached engine after the
    model's file name and graph structure, not its weights, so a rebuilt `model.onnx` with new weights would load
    the old engine: one folder per ONNX file content (its sha256, from place_platform_engines), one level under
    `root` (ORT creates only the last folder of the path, so `root` must exist). Each model's instances share its
    folder; the volume is per pod (deploy/kubernetes/deployment.yaml says why), so no other server writes there."""
    return f"{root.rstrip('/')}/ort_trt_{sha[:16] if sha else 'graph'}"


def _profile(inputs: list[dict], b: int, c: int) -> str:
    """ONNX Runtime TensorRT provider profile text: name:BxCx..., comma separated."""
    return ",".join(f"{s['name']}:" + "x".join(str(resolve_shape([d], {"B": b, "C": c})[0]) for d in s["shape"])
                    for s in inputs)


def ensemble_config(name: str, engine: mc.ModelConfig, post: mc.ModelConfig) -> mc.ModelConfig:
    """engine -> postprocess; ensemble inputs: the engine's inputs plus the postprocess inputs no step makes.

    Every ensemble input is declared optional: Triton (2.51) checks only the NUMBER of inputs of a model that
    has optional ones, so a request missing a required input but carrying an optional one passed the
    ensemble's check and then deadlocked it ("unexpected deadlock, at least one output is not set"). Each step
    model checks its own inputs and names a missing one (Triton's "missing required input(s) [...]", or the
    Python host's check_request)."""
    cfg = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=engine.max_batch_size)
    inputs = {i.name: i for i in engine.input}
    produced = {o.name for o in engine.output}
    for i in post.input:
        if i.name not in produced:
            inputs.setdefault(i.name, i)
    for i in inputs.values():
        cfg.input.add(name=i.name, data_type=i.data_type, dims=i.dims, optional=True)
    cfg.output.extend(mc.ModelOutput(name=o.name, data_type=o.data_type, dims=o.dims) for o in post.output)
    s1 = cfg.ensemble_scheduling.step.add(model_name=engine.name, model_version=-1)
    for i in engine.input:
        s1.input_map[i.name] = i.name
    for o in engine.output:
        s1.output_map[o.name] = f"engine_{o.name}"
    s2 = cfg.ensemble_scheduling.step.add(model_name=post.name, model_version=-1)
    for i in post.input:
        s2.input_map[i.name] = f"engine_{i.name}" if i.name in produced else i.name
    for o in post.output:
        s2.output_map[o.name] = o.name
    return cfg


def configs(served: dict, opts: RepositoryOptions, warmup_c: int,
            placed: dict | None = None) -> dict[str, mc.ModelConfig]:
    """Every model's ModelConfig from the manifest's `served` records and the engines placed (no files written)."""
    out = {name: engine_config(name, served[name], opts, warmup_c, (placed or {}).get(name))
           for name in ENGINE_MODELS if name in served}
    out[POSTPROCESS] = _base(POSTPROCESS, served[POSTPROCESS], opts, None)
    out[POSTPROCESS].dynamic_batching.max_queue_delay_microseconds = 0
    in_process_gpu = opts.target == "gpu-python"    # models that run their engines in-process, on the GPU there
    for name, engine in ((ENSEMBLE, RANKER), (ENSEMBLE_EMBEDDINGS, RANKER_EMBEDDINGS)):
        if name in served:          # the Python-host targets: engine and scoring in one process
            out[name] = _base(name, served[name], opts, warmup_c, in_process_gpu, True)
        else:
            out[name] = ensemble_config(name, out[engine], out[POSTPROCESS])
    if RETRIEVAL in served:
        rec = served[RETRIEVAL]
        out[RETRIEVAL] = _base(RETRIEVAL, {**rec, "inputs": rec["inputs"] + rec["request_inputs"]}, opts, None)
    if PIPELINE in served:
        rec = served[PIPELINE]
        host = opts.target in HOST_TARGETS          # its engines in-process; else called through Triton (CPU model)
        out[PIPELINE] = _base(PIPELINE, {**rec, "inputs": rec["inputs"] + rec["request_inputs"]}, opts, 1,
                              in_process_gpu, host)
    return out


def client_parameter(cfg: mc.ModelConfig, manifest: dict) -> None:
    """The postprocess carries the client config, so a client needs only the server's URL."""
    import json
    cfg.parameters["client_config"].string_value = json.dumps(client_config(manifest))


# ---------------------------------------------------------------- files

def write_configs(stage: Path, cfgs: dict[str, mc.ModelConfig]) -> list[Artifact]:
    out = []
    for name, cfg in cfgs.items():
        (stage / name / VERSION).mkdir(parents=True, exist_ok=True)
        (stage / name / "config.pbtxt").write_text(text_format.MessageToString(cfg))
        out.append(Artifact(f"{name}_config", name, "triton_config", f"{name}/config.pbtxt").with_file_info(stage))
        if cfg.platform == "ensemble":  # Triton needs the version folder, and a build copies files, not folders
            (stage / name / VERSION / ".ensemble").write_text(f"version {VERSION} of the {name} ensemble\n")
    return out


def write_python_models(stage: Path, served: dict) -> list[Artifact]:
    """Each Python-backend model gets its model.py and, beside it, the runtime package it imports
    (phoenix_runtime, copied whole under its own name): the repository needs nothing else from this project."""
    modules = sorted(p.name for p in RUNTIME.glob("*.py"))
    out = []
    for name, rec in served.items():
        if rec["backend"] != "python":
            continue
        folder = stage / name / VERSION
        (folder / RUNTIME.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(SOURCES / PYTHON_SOURCE[name] / VERSION / "model.py", folder / "model.py")
        for m in modules:
            shutil.copy2(RUNTIME / m, folder / RUNTIME.name / m)
        out.append(Artifact(f"{name}_python", name, "python_source", model_path(name, "model.py"),
                            files=[f"{RUNTIME.name}/{m}" for m in modules]).with_file_info(stage))
    return out


def place_platform_engines(stage: Path, served: dict, artifacts: list[Artifact], target: str) -> dict[str, dict]:
    """Platform backends read `<model>/1/model.onnx` or `model.sm<cc>.plan`: each engine is renamed to that name in
    its model's folder (one file per engine, no copy; an ONNX file's external data keeps its name, which the graph
    records) and its artifact record follows. Returns, per model, what its config needs: {"plans": {compute
    capability: file name}} (cc_model_filenames; the newest is the default file) or {"onnx_sha256": ...} (the ORT
    TensorRT engine cache's key)."""
    if target not in PLATFORMS:
        return {}
    _, kind, filename = PLATFORMS[target]
    placed: dict[str, dict] = {}
    for name, rec in served.items():
        if name not in ENGINE_MODELS:
            continue
        found = [a for a in artifacts if a.model == rec["graph"] and a.kind == kind and a.device in (None, "cuda")]
        if not found:
            raise ValueError(f"target {target} needs a {kind} artifact for {rec['graph']}; it was not built "
                             f"(see --engines)")
        for a in found:
            dst_name = filename if kind == "onnx" else f"model.sm{a.info['compute_capability'].replace('.', '')}.plan"
            dst = model_path(name, dst_name)
            if Path(a.path).parent != Path(dst).parent:
                raise ValueError(f"{a.path}: an engine of {name} must be built in its folder {Path(dst).parent}")
            if a.path != dst:
                (stage / a.path).rename(stage / dst)
                a.path = dst
            if kind == "onnx":
                placed[name] = {"onnx_sha256": a.sha256 or sha256_file(stage / dst)}
            else:
                placed.setdefault(name, {"plans": {}})["plans"][a.info["compute_capability"]] = dst_name
    return placed
