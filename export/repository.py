"""Write the Triton model repository for a build target.

`write_repository(manifest, stage_dir, args)` runs after the engines are in `stage_dir` (listed in
`manifest["artifacts"]`) and writes, for the chosen `--target`:

| model | cpu / gpu-python | gpu-onnxruntime | gpu-tensorrt |
|---|---|---|---|
| phoenix_ranker | python (engine host, export.runtime) | onnxruntime_onnx (+ optional TensorRT EP) | tensorrt_plan |
| phoenix_user_tower, phoenix_candidate_tower | python (same host) | onnxruntime_onnx | tensorrt_plan |
| phoenix_postprocess, phoenix_retrieval | python (CPU) | python (CPU) | python (CPU) |
| phoenix | ensemble ranker -> postprocess | same | same |

Every config is built as a `model_config_pb2.ModelConfig` message and written with protobuf's
text_format, so it parses by construction; `configs_for_target` is pure (no files) so tests check
every target here. Engines get dynamic batching with a queue delay (`--queue-delay-us`; the default
was chosen by measurement, see triton_repo/README.md), warm-up requests (`model_warmup`, so a model is
READY only once warm), instance groups (KIND_CPU for cpu, KIND_GPU for the GPU targets) and a
`latest 1` version policy; everything lives in version folder `1/`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SOURCES = PROJECT_ROOT / "triton_repo"
TARGETS = ("cpu", "gpu-tensorrt", "gpu-onnxruntime", "gpu-python", "auto")
MODELS = ("phoenix_ranker", "phoenix_postprocess", "phoenix", "phoenix_user_tower",
          "phoenix_candidate_tower", "phoenix_retrieval")
ENGINE_MODELS = {"phoenix_ranker": "ranker", "phoenix_user_tower": "user_tower",
                 "phoenix_candidate_tower": "candidate_tower"}
DEFAULT_QUEUE_DELAY_US = 0  # measured: triton_repo/README.md "Queue delay"
VERSION = "1"

_DTYPES = {"int32": mc.TYPE_INT32, "int64": mc.TYPE_INT64, "float32": mc.TYPE_FP32,
           "float16": mc.TYPE_FP16, "bfloat16": mc.TYPE_BF16, "bool": mc.TYPE_BOOL, "uint8": mc.TYPE_UINT8}


def add_arguments(parser: argparse.ArgumentParser):
    g = parser.add_argument_group("Triton model repository")
    g.add_argument("--target", choices=TARGETS, default="cpu",
                   help="serving target: cpu (Python backend hosting ONNX Runtime, KIND_CPU), gpu-tensorrt "
                        "(tensorrt_plan), gpu-onnxruntime (onnxruntime_onnx on GPU), gpu-python (Python backend "
                        "hosting the best GPU engine), auto (gpu-tensorrt if a TensorRT engine was built, else "
                        "gpu-python if CUDA is available, else cpu). Default: cpu")
    g.add_argument("--max-batch-size", type=int, default=64,
                   help="Triton max_batch_size (users per batch) of every model (default: 64)")
    g.add_argument("--queue-delay-us", type=int, default=DEFAULT_QUEUE_DELAY_US,
                   help=f"dynamic batching max_queue_delay_microseconds of the engines and postprocess "
                        f"(default: {DEFAULT_QUEUE_DELAY_US}, measured; 0 = no waiting)")
    g.add_argument("--instances", type=int, default=1,
                   help="instances of each engine model (instance_group count; default: 1)")
    g.add_argument("--python-engine", default=None,
                   choices=("onnxruntime", "torch", "torch_compile", "aoti", "tensorrt"),
                   help="engine kind the Python-backend host loads (cpu / gpu-python targets); default: "
                        "onnxruntime for cpu; tensorrt, aoti, torch, onnxruntime (first built) for gpu-python")
    g.add_argument("--ort-tensorrt", action="store_true",
                   help="gpu-onnxruntime: enable ONNX Runtime's TensorRT execution accelerator")
    g.add_argument("--corpus", type=int, default=1000,
                   help="synthetic retrieval corpus size: post ids 1..N (default: 1000)")
    g.add_argument("--corpus-file", default=None,
                   help="retrieval corpus from a file instead: .npy int array of post ids [N] or post "
                        "hashes [N, Hi] (+ author hashes [N, Ha] as a second array in an .npz: "
                        "keys post_hashes, author_hashes), or a text file of post ids, one per line")
    g.add_argument("--top-k", type=int, default=10, help="posts returned by phoenix_retrieval (default: 10)")
    g.add_argument("--weight", action="append", default=[], metavar="ACTION=VALUE",
                   help="override a home-mixer weight in phoenix_postprocess, e.g. --weight report=-300 "
                        "(repeatable; stored as config parameters `weight.<action>`)")


# ---------------------------------------------------------------- IO specs from the manifest

def _artifact(manifest: dict, model: str, kinds: tuple[str, ...]) -> dict | None:
    for kind in kinds:
        for a in manifest.get("artifacts", []):
            if a.get("model") == model and a.get("kind") == kind:
                return a
    return None


def _io_source(manifest: dict, model: str) -> dict:
    """Any artifact of `model` that lists its inputs and outputs (ONNX first)."""
    for kind in ("onnx", "tensorrt", "aoti", "torch"):
        a = _artifact(manifest, model, (kind,))
        if a and a.get("inputs") and a.get("outputs"):
            return a
    raise ValueError(f"manifest has no artifact for model {model!r} with inputs/outputs")


def _tensor(spec: dict, cls, platform_backend: bool):
    """ModelInput/ModelOutput from {"name", "dtype", "shape": ["B", ...]} (batch dim dropped)."""
    dims = [-1 if isinstance(d, str) or d is None or d < 0 else int(d) for d in spec["shape"][1:]]
    t = cls(name=spec["name"], data_type=_DTYPES[spec["dtype"]], dims=dims or [1])
    if not dims and platform_backend:  # a [B] tensor: Triton needs dims [1]; the engine sees [B]
        t.reshape.shape[:] = []
        t.reshape.SetInParent()
    return t


def _warmup(inputs, max_candidates: int) -> mc.ModelWarmup:
    w = mc.ModelWarmup(name="zeros", batch_size=1)
    for i in inputs:
        w.inputs[i.name].data_type = i.data_type
        w.inputs[i.name].dims[:] = [max_candidates if d == -1 else d for d in i.dims]
        w.inputs[i.name].zero_data = True
    return w


def _python_params(cfg: mc.ModelConfig, **params):
    for k, v in {"project_root": str(PROJECT_ROOT), **params}.items():
        cfg.parameters[k].string_value = str(v)


# ---------------------------------------------------------------- configs (pure)

def resolve_target(target: str, manifest: dict) -> str:
    if target != "auto":
        return target
    if _artifact(manifest, "ranker", ("tensorrt",)):
        return "gpu-tensorrt"
    try:
        import torch
        return "gpu-python" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def python_engine_kind(target: str, manifest: dict, requested: str | None) -> str:
    if requested:
        return requested
    if target == "cpu":
        return "onnxruntime"
    for kind, art in (("tensorrt", "tensorrt"), ("aoti", "aoti"), ("torch", "torch"), ("onnxruntime", "onnx")):
        if _artifact(manifest, "ranker", (art,)):
            return kind
    return "onnxruntime"


def max_candidates(manifest: dict) -> int:
    mcfg = manifest.get("model_config", {})
    return int(manifest.get("max_candidates") or mcfg.get("candidate_seq_len") or 8)


def client_config(manifest: dict) -> dict:
    """What serving.client needs (S, candidate limit, hashes per entity, tables and hash params).

    Stored as the `client_config` parameter of phoenix_postprocess so a client needs only the URL.
    """
    mcfg = manifest.get("model_config", {})
    hc = mcfg.get("hash_config", {})
    return {"history_len": int(mcfg["history_seq_len"]), "max_candidates": max_candidates(manifest),
            **{f"num_{k}_hashes": int(hc.get(f"num_{k}_hashes", 2)) for k in ("user", "item", "author")},
            "tables": manifest.get("tables", {}), "preset": manifest.get("preset"),
            "precision": manifest.get("precision")}


def engine_config(name: str, manifest: dict, target: str, opts) -> mc.ModelConfig:
    """phoenix_ranker / phoenix_user_tower / phoenix_candidate_tower for a target."""
    model = ENGINE_MODELS[name]
    io = _io_source(manifest, model)
    gpu = target != "cpu"
    cfg = mc.ModelConfig(name=name, max_batch_size=opts.max_batch_size)
    platform_backend = target in ("gpu-tensorrt", "gpu-onnxruntime")
    if target == "gpu-tensorrt":
        cfg.platform = "tensorrt_plan"
        cfg.default_model_filename = "model.plan"
    elif target == "gpu-onnxruntime":
        cfg.platform = "onnxruntime_onnx"
        cfg.default_model_filename = "model.onnx"
        if opts.ort_tensorrt:
            acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
            acc.parameters["precision_mode"] = "FP16" if manifest.get("precision") == "fp16" else "FP32"
            acc.parameters["max_workspace_size_bytes"] = str(1 << 30)
    else:
        cfg.backend = "python"
        _python_params(cfg, engine_model=model, manifest_dir=".",
                       engine_kind=python_engine_kind(target, manifest, opts.python_engine))
    cfg.input.extend(_tensor(s, mc.ModelInput, platform_backend) for s in io["inputs"])
    cfg.output.extend(_tensor(s, mc.ModelOutput, platform_backend) for s in io["outputs"])
    cfg.instance_group.add(count=opts.instances, kind=mc.ModelInstanceGroup.KIND_GPU if gpu
                           else mc.ModelInstanceGroup.KIND_CPU)
    cfg.dynamic_batching.max_queue_delay_microseconds = opts.queue_delay_us
    cfg.version_policy.latest.num_versions = 1
    cfg.model_warmup.append(_warmup(cfg.input, max_candidates(manifest)))
    return cfg


def postprocess_config(manifest: dict, ranker: mc.ModelConfig, opts) -> mc.ModelConfig:
    from serving import scoring  # names and parameter parsing live there

    cfg = mc.ModelConfig(name="phoenix_postprocess", backend="python", max_batch_size=opts.max_batch_size)
    by_name = {t.name: t for t in [*ranker.input, *ranker.output]}
    for n in ("logits", "input_error", "candidate_post_hashes", "candidate_author_hashes"):
        src = by_name[n]
        cfg.input.add(name=n, data_type=src.data_type, dims=src.dims)
    for n in scoring.OUTPUT_NAMES:
        cfg.output.add(name=n, data_type=mc.TYPE_INT32 if n == "ranking" else mc.TYPE_FP32, dims=[-1])
    overrides = {}
    for item in opts.weight:
        action, _, value = item.partition("=")
        overrides[f"weight.{action.strip()}"] = value.strip()
    scoring.params_from_strings(overrides)  # fail at build time on a bad --weight
    tables = manifest.get("tables", {})
    _python_params(cfg, client_config=json.dumps(client_config(manifest)), **overrides, **{k: tables[k] for k in ("user_vocab", "post_vocab", "author_vocab")
                                        if k in tables})
    cfg.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    cfg.dynamic_batching.max_queue_delay_microseconds = 0
    cfg.version_policy.latest.num_versions = 1
    cfg.model_warmup.append(_warmup(cfg.input, max_candidates(manifest)))
    return cfg


def ensemble_config(ranker: mc.ModelConfig, post: mc.ModelConfig) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name="phoenix", platform="ensemble", max_batch_size=ranker.max_batch_size)
    for i in ranker.input:
        cfg.input.add(name=i.name, data_type=i.data_type, dims=i.dims)
    for o in post.output:
        cfg.output.add(name=o.name, data_type=o.data_type, dims=o.dims)
    s1 = cfg.ensemble_scheduling.step.add(model_name=ranker.name, model_version=-1)
    for i in ranker.input:
        s1.input_map[i.name] = i.name
    for o in ranker.output:
        s1.output_map[o.name] = f"ranker_{o.name}"
    s2 = cfg.ensemble_scheduling.step.add(model_name=post.name, model_version=-1)
    produced = {o.name for o in ranker.output}
    for i in post.input:
        s2.input_map[i.name] = f"ranker_{i.name}" if i.name in produced else i.name
    for o in post.output:
        s2.output_map[o.name] = o.name
    return cfg


def retrieval_config(user_tower: mc.ModelConfig, manifest: dict, opts, embedding_dim: int,
                     num_item_hashes: int) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name="phoenix_retrieval", backend="python", max_batch_size=opts.max_batch_size)
    for i in user_tower.input:
        cfg.input.add(name=i.name, data_type=i.data_type, dims=i.dims)
    k = opts.top_k
    cfg.output.add(name="top_k_indices", data_type=mc.TYPE_INT32, dims=[k])
    cfg.output.add(name="top_k_post_hashes", data_type=mc.TYPE_INT32, dims=[k, num_item_hashes])
    cfg.output.add(name="top_k_scores", data_type=mc.TYPE_FP32, dims=[k])
    cfg.output.add(name="user_representation", data_type=mc.TYPE_FP32, dims=[embedding_dim])
    tower_out = next(o.name for o in user_tower.output if o.data_type == mc.TYPE_FP32)
    tables = manifest.get("tables", {})
    _python_params(cfg, top_k=k, user_tower_model=user_tower.name, user_tower_output=tower_out,
                   **{v: tables[v] for v in ("user_vocab", "post_vocab", "author_vocab") if v in tables})
    cfg.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    cfg.version_policy.latest.num_versions = 1
    return cfg


def configs_for_target(manifest: dict, target: str, opts) -> dict[str, mc.ModelConfig]:
    """Every model's ModelConfig for a target (no files written)."""
    target = resolve_target(target, manifest)
    ranker = engine_config("phoenix_ranker", manifest, target, opts)
    post = postprocess_config(manifest, ranker, opts)
    configs = {"phoenix_ranker": ranker, "phoenix_postprocess": post, "phoenix": ensemble_config(ranker, post)}
    if _has_model(manifest, "user_tower") and _has_model(manifest, "candidate_tower"):
        user = engine_config("phoenix_user_tower", manifest, target, opts)
        cand = engine_config("phoenix_candidate_tower", manifest, target, opts)
        rep = next(o for o in user.output if o.data_type == mc.TYPE_FP32)
        hi = next(i for i in cand.input if "post" in i.name).dims[-1]
        configs.update(phoenix_user_tower=user, phoenix_candidate_tower=cand,
                       phoenix_retrieval=retrieval_config(user, manifest, opts, rep.dims[-1], hi))
    return configs


def _has_model(manifest, model):
    return any(a.get("model") == model for a in manifest.get("artifacts", []))


# ---------------------------------------------------------------- files

def _file_artifact(stage_dir: Path, rel: str, name: str, model: str, kind: str) -> dict:
    data = (stage_dir / rel).read_bytes()
    return {"name": name, "model": model, "kind": kind, "path": rel,
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _place_engine(manifest: dict, stage_dir: Path, name: str, target: str):
    """Platform backends read `<model>/1/model.onnx|.plan`: copy the engine there if built elsewhere."""
    kind, filename = {"gpu-tensorrt": ("tensorrt", "model.plan"),
                      "gpu-onnxruntime": ("onnx", "model.onnx")}[target]
    a = _artifact(manifest, ENGINE_MODELS[name], (kind,))
    if a is None:
        raise ValueError(f"target {target} needs a {kind} artifact for {ENGINE_MODELS[name]}; "
                         "it was not built (see `python -m export.build --help`)")
    src, dst = stage_dir / a["path"], stage_dir / name / VERSION / filename
    if src.resolve() != dst.resolve():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        for extra in src.parent.glob(src.name + "*.data"):  # ONNX external data
            shutil.copy2(extra, dst.parent / extra.name)


def write_repository(manifest: dict, stage_dir: Path, args) -> list[dict]:
    """Write every config.pbtxt, the Python sources and the retrieval corpus into stage_dir."""
    stage_dir = Path(stage_dir)
    target = resolve_target(args.target, manifest)
    manifest["target"] = target
    configs = configs_for_target(manifest, target, args)
    written = []
    for name, cfg in configs.items():
        (stage_dir / name / VERSION).mkdir(parents=True, exist_ok=True)
        (stage_dir / name / "config.pbtxt").write_text(text_format.MessageToString(cfg))
        written.append(_file_artifact(stage_dir, f"{name}/config.pbtxt", f"{name}_config", name, "triton_config"))
        if cfg.backend == "python":
            src = SOURCES / ("phoenix_ranker" if name in ENGINE_MODELS else name) / VERSION / "model.py"
            dst = stage_dir / name / VERSION / "model.py"
            if src.resolve() != dst.resolve():
                shutil.copy2(src, dst)
            written.append(_file_artifact(stage_dir, f"{name}/{VERSION}/model.py", f"{name}_model_py", name,
                                          "python_model"))
        elif name in ENGINE_MODELS:
            _place_engine(manifest, stage_dir, name, target)
        else:  # the ensemble: Triton needs its version folder, and a build copies files, not folders
            (stage_dir / name / VERSION / ".ensemble").write_text("version 1 of the phoenix ensemble\n")
    if "phoenix_retrieval" in configs:
        written += write_corpus(manifest, stage_dir, args)
    return written


# ---------------------------------------------------------------- retrieval corpus

def corpus_hashes(manifest: dict, args) -> tuple[np.ndarray, np.ndarray]:
    """Post and author hashes [N, Hi], [N, Ha] of the corpus: synthetic ids 1..N or --corpus-file."""
    from serving.client import hash_entity

    cfg = client_config(manifest)
    author_hashes = None
    if args.corpus_file:
        path = Path(args.corpus_file)
        if path.suffix == ".npz":
            z = np.load(path)
            post, author_hashes = z["post_hashes"], z.get("author_hashes")
        elif path.suffix == ".npy":
            post = np.load(path)
        else:
            post = np.array([int(x) for x in path.read_text().split()], dtype=np.int64)
        if post.ndim == 1:  # raw post ids -> hashes; authors unknown (hash 0)
            post = hash_entity(post, "post", cfg)
    else:
        ids = np.arange(1, args.corpus + 1, dtype=np.int64)
        post = hash_entity(ids, "post", cfg)
        author_hashes = hash_entity(1 + ids % max(1, args.corpus // 10), "author", cfg)
    if author_hashes is None:
        author_hashes = np.zeros((len(post), cfg["num_author_hashes"]), dtype=np.int32)
    return np.asarray(post).astype(np.int32), np.asarray(author_hashes).astype(np.int32)


def write_corpus(manifest: dict, stage_dir: Path, args) -> list[dict]:
    """Run the candidate tower over the corpus and save the index next to phoenix_retrieval's model.py."""
    from export.manifest import find_artifact
    from export.runtime import OnnxRuntimeEngine

    post, author = corpus_hashes(manifest, args)
    # the manifest is not on disk yet (it is written last), so load the engine from its artifact
    engine = OnnxRuntimeEngine.from_artifact(find_artifact(manifest, "candidate_tower", "onnx"), stage_dir)
    names = engine.input_names
    chunks = []
    for s in range(0, len(post), 4096):
        feed = {n: (post if "post" in n else author)[s:s + 4096] for n in names}
        out = engine(feed)
        bad = np.flatnonzero(np.asarray(out.get("input_error", 0)).reshape(-1))
        if bad.size:
            raise ValueError(f"retrieval corpus: post {s + int(bad[0])} has a hash outside the post/author tables")
        chunks.append(np.asarray(out[engine.output_names[0]], dtype=np.float32))
    emb = np.concatenate(chunks).reshape(len(post), -1)
    d = stage_dir / "phoenix_retrieval" / VERSION
    np.save(d / "corpus.npy", emb)
    np.save(d / "corpus_post_hashes.npy", post)
    np.save(d / "corpus_author_hashes.npy", author)
    return [_file_artifact(stage_dir, f"phoenix_retrieval/{VERSION}/{f}.npy", f"retrieval_{f}", "phoenix_retrieval",
                           "corpus") for f in ("corpus", "corpus_post_hashes", "corpus_author_hashes")]
