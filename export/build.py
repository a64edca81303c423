"""`python -m export.build`: models -> ONNX graphs (+ compiled engines) -> a complete Triton repository.

Steps: the models (the release's artifacts folder, upstream checkpoints, or a seeded init) -> the serving
graphs of the target (export.graphs), each exported to ONNX and checked against torch with ONNX Runtime
(phoenix_torch.parity) -> compiled engines (export.engines) -> the hash tables as memory-mappable .npy files
(engine-host targets) -> the retrieval corpus -> every served model's record, its Triton config and its
Python sources (export.repository) -> `manifest.json` (phoenix_runtime.manifest), written last.

The whole repository is built in a staging folder next to the output and swapped in at the end in one
atomic step: a folder holds the old complete build or the new one, never a mix. A failed, interrupted
(SIGINT, SIGTERM) or killed build leaves the output untouched and removes its staging folder (a killed
one's is removed by the next build).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from export import repository as repo, tensorrt
from export.artifacts import ArtifactsError, Corpus
from export.corpus import INDEX_CHOICES, IVFPQ_PARAMS, IndexParamError, parse_index_params, write_corpus
from export.engines import (CHOICE_DIMS, KINDS as ENGINE_KINDS, EngineOptions, TensorRTOptions, build_engines,
                            fastest_cpu_engine, resolve_kinds)
from export.graphs import GRAPH_BUILDERS, GraphSpec, hashes_in
from export.models import Models, ModelSource, features_from_json, load_models, torch_tables
from export.onnx_export import OPSET, export_onnx, write_cpu_bf16
from phoenix_runtime.engines import ARTIFACT_KIND, KINDS as RUNTIME_KINDS, EngineUnavailable, OnnxRuntimeEngine
from phoenix_runtime.hashing import hash_ids
from phoenix_runtime.manifest import (ENSEMBLE, ENSEMBLE_EMBEDDINGS, FORMAT, MANIFEST, PIPELINE, POSTPROCESS, RANKER,
                                      RANKER_EMBEDDINGS, RETRIEVAL, USER_TOWER, VERSION, Artifact, model_path,
                                      write_manifest)
from phoenix_runtime.request import (DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_CANDIDATES, DEFAULT_MAX_REQUEST_BYTES,
                                     DEFAULT_TOP_K, Limits)
from phoenix_runtime.scoring import SCALAR_PARAMS, scoring_params
from phoenix_torch import PRESETS, RELEASES, RecsysEmbeddings
from phoenix_torch.config import HISTORY_ATTENTION
from phoenix_torch.parity import PRECISIONS, ParityError, check_parity

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = PROJECT_ROOT / "triton_repo"
PARITY_POINTS = ({"B": 1, "C": 1}, {"B": 3, "C": None})   # C None -> the model's candidate_seq_len
console = Console(stderr=True)


class BuildError(RuntimeError):
    """A build step failed; the message says which and why."""


@dataclass(frozen=True)
class BuildOptions:
    output: Path = DEFAULT_OUTPUT
    opset: int = OPSET


# ---------------------------------------------------------------------------------------------- graphs

def graph_specs(models: Models, names: set[str], checked: bool = True) -> dict[str, GraphSpec]:
    """The serving graphs `names` of the models (hashes-in graphs get the tables, sharing their memory);
    `checked=False`: embeddings-in graphs without the in-graph input checks (the Python engine host checks)."""
    out = {}
    for name in sorted(names):
        base = name.removesuffix("_embeddings")
        model = models.ranker if base == "ranker" else models.retrieval
        tables = None
        if not name.endswith("_embeddings"):
            tables = torch_tables(models.ranker_tables if base == "ranker" else models.retrieval_tables)
        out[name] = GRAPH_BUILDERS[base](model, tables, checked)
    return out


def check_onnx(spec: GraphSpec, artifact: Artifact, stage: Path, candidates: int) -> float:
    """Max abs err of ONNX Runtime vs the torch module at PARITY_POINTS; ParityError past tolerance."""
    engine = OnnxRuntimeEngine(stage / artifact.path, artifact.inputs, artifact.outputs, "cpu", spec.precision,
                               spec.name)
    worst = 0.0
    for i, point in enumerate(PARITY_POINTS):
        dims = {"B": point["B"], "C": point["C"] or candidates}
        feed = spec.random_inputs(dims, seed=1000 + i)
        got = engine({n: v.numpy() for n, v in feed.items()})
        worst = max(worst, check_parity(got, spec(feed), spec.output_names, spec.precision,
                                        f"{spec.name}: ONNX Runtime vs torch at {dims}"))
    return worst


def export_graphs(specs: dict[str, GraphSpec], folders: dict[str, str], stage: Path, opset: int, candidates: int,
                  rows: list) -> dict[str, Artifact]:
    """ONNX file of every graph (+ the bf16-emulating CPU copy of a bf16 graph), each parity-checked."""
    out = {}
    for name, spec in specs.items():
        t = time.perf_counter()
        with console.status(f"exporting {name} to ONNX (opset {opset})"):
            art = export_onnx(spec, stage / folders[name] / f"{name}.onnx", opset=opset, root=stage)
        served = write_cpu_bf16(art, stage) if spec.precision == "bf16" else art
        with console.status(f"checking {name}: ONNX Runtime vs torch"):
            served.info["parity_max_abs_err"] = check_onnx(spec, served, stage, candidates)
        out[name] = art.with_file_info(stage)
        if served is not art:
            out[name + "#cpu"] = served.with_file_info(stage)
        rows.append((art.path, art.bytes, served.info["parity_max_abs_err"], time.perf_counter() - t))
        console.print(f"[green]✓[/] {name}: {art.path} ({art.bytes / 1e6:.1f} MB), parity "
                      f"{served.info['parity_max_abs_err']:.2e}, {time.perf_counter() - t:.1f} s")
    return out


# ---------------------------------------------------------------------------------------------- data files

def write_tables(tables: dict[str, np.ndarray], stage: Path, model: str, family: str) -> tuple[dict, list[Artifact]]:
    """Each entity's table as `<model>/1/tables/<entity>.npy` (memory-mapped by the engine hosts)."""
    info, arts = {}, []
    for entity, array in tables.items():
        rel = model_path(model, f"tables/{entity}.npy")
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(stage / rel, np.ascontiguousarray(array, dtype=np.float32))
        info[entity] = {"path": rel, "vocab": int(array.shape[0]), "emb_size": int(array.shape[1])}
        arts.append(Artifact(f"{family}_table_{entity}", family, "table", rel).with_file_info(stage))
    return info, arts


def synthetic_corpus(models: Models, size: int, corpus_file: str | None) -> Corpus:
    """The corpus of a build without a precomputed one: posts 1..size (authors 1 + id % (size // 10)), or the
    ids of --corpus-file, through the candidate tower."""
    if corpus_file:
        with np.load(corpus_file, allow_pickle=False) as z:
            if "post_ids" not in z.files or "author_ids" not in z.files:
                raise BuildError(f"--corpus-file {corpus_file}: needs post_ids and author_ids, found {sorted(z.files)}")
            posts, authors = z["post_ids"].astype(np.uint64), z["author_ids"].astype(np.uint64)
            topics = z["topics"].astype(str) if "topics" in z.files else None
            reps = z["candidate_representations"].astype(np.float32) if "candidate_representations" in z.files else None
        if reps is not None:
            return Corpus(reps, posts, authors, topics)
    else:
        posts = np.arange(1, size + 1, dtype=np.uint64)
        authors = 1 + posts % np.uint64(max(1, size // 10))
        topics = None
    retrieval, hashing = models.retrieval, models.retrieval_hashing
    emb = {}
    for f in retrieval.candidate_features:
        ids = posts if f.entity == "item" else authors
        hashes = hash_ids(ids, hashing[f.entity])
        emb[f.embedding_field] = torch.from_numpy(models.retrieval_tables[f.entity][hashes])
    with torch.no_grad():
        reps = retrieval.candidate_representation(RecsysEmbeddings(**emb)).numpy()
    return Corpus(reps.astype(np.float32), posts, authors, topics)


# ---------------------------------------------------------------------------------------------- the build

def served_records(models: Models, specs: dict[str, GraphSpec], opts: repo.RepositoryOptions, engine: str,
                   corpus: Corpus | None, index: dict | None) -> dict[str, dict]:
    """The manifest's `served` section: one record per Triton model, in the target's layout (`index`: the corpus
    search's fields, from write_corpus)."""
    host = opts.target in repo.HOST_TARGETS
    served = {}
    for model, graph in repo.graph_names(opts.target, models.retrieval is not None).items():
        family = "ranker" if graph.startswith("ranker") else "retrieval"
        base, tables = ((models.ranker, models.ranker_tables) if family == "ranker"
                        else (models.retrieval, models.retrieval_tables))
        if model == RANKER_EMBEDDINGS:
            inputs, lookups = [t.to_dict() for t in specs[graph].inputs], {}
        else:
            specs_in, lookups = hashes_in(graph, base, {e: len(t) for e, t in tables.items()})
            inputs = [t.to_dict() for t in specs_in]
        served[model] = repo.engine_record(specs[graph], inputs, lookups if host else {}, family, opts.target, engine)
    served[POSTPROCESS] = repo.postprocess_record(models.ranker.config, scoring_params(opts.weights),
                                                    served[RANKER]["inputs"])
    if host:      # named scores in the engine's process: one hop (GPU platform targets: the ensembles)
        served[ENSEMBLE] = repo.scored_record(RANKER, served[RANKER], served[POSTPROCESS])
        served[ENSEMBLE_EMBEDDINGS] = repo.scored_record(RANKER_EMBEDDINGS, served[RANKER_EMBEDDINGS],
                                                         served[POSTPROCESS])
    if corpus is not None:
        served[RETRIEVAL] = repo.retrieval_record(served[USER_TOWER]["inputs"], models.retrieval.config.emb_size,
                                                    opts.top_k, index, len(corpus.post_ids),
                                                    corpus.topics is not None)
        if repo.pipeline_scores(served[POSTPROCESS]):
            served[PIPELINE] = repo.pipeline_record(served[USER_TOWER], served[RANKER], served[POSTPROCESS],
                                                    served[RETRIEVAL])
        else:
            console.print(f"[yellow]no {PIPELINE}: the ranker lacks a column of the pipeline's score[/]")
    return served


def build(source: ModelSource, opts: repo.RepositoryOptions, engines: EngineOptions,
          build_opts: BuildOptions = BuildOptions()) -> dict:
    output = Path(build_opts.output)
    check_output(output)
    remove_dead_stages(output)
    stage = Path(tempfile.mkdtemp(prefix=f".build-{os.getpid()}-", dir=output.parent))
    try:
        manifest = _build_into(stage, source, opts, engines, build_opts)
        swap_into(stage, output)
        console.print(f"[green]✓[/] repository complete: {output}")
        return manifest
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _build_into(stage: Path, source: ModelSource, opts: repo.RepositoryOptions, engines: EngineOptions,
                build_opts: BuildOptions) -> dict:
    t0, rows = time.perf_counter(), []
    with console.status("loading the models and hash tables"):
        models = load_models(source)
    for note in models.source.get("notes", []):
        console.print(f"[yellow]{note}[/]", soft_wrap=True)
    cfg = models.ranker.config
    console.print(f"[green]✓[/] models ({models.release}, {source.precision}, tables "
                  f"{ {e: len(t) for e, t in models.ranker_tables.items()} }) in {time.perf_counter() - t0:.1f} s")
    limits = opts.limits.with_history(cfg.history_seq_len)
    names = repo.graph_names(opts.target, models.retrieval is not None)
    specs = graph_specs(models, set(names.values()), checked=opts.target not in repo.HOST_TARGETS)
    folders = {g: next(m for m, name in names.items() if name == g) for g in specs}
    folders = {g: f"{m}/{VERSION}" for g, m in folders.items()}
    onnx = export_graphs(specs, folders, stage, build_opts.opset, cfg.candidate_seq_len, rows)
    artifacts = list(onnx.values())
    kinds = resolve_kinds(engines.kinds) if engines.kinds else []
    if opts.target == "gpu-tensorrt" and "tensorrt" not in kinds:
        raise BuildError("--target gpu-tensorrt needs TensorRT plans: add --engines tensorrt")
    if kinds:
        t = time.perf_counter()
        artifacts += build_engines(kinds, specs, folders, onnx, stage, engines, limits)
        console.print(f"[green]✓[/] compiled engines {kinds} in {time.perf_counter() - t:.1f} s")

    host = opts.target in repo.HOST_TARGETS
    tables_info = {}
    if host:
        with console.status("writing the hash tables"):
            tables_info["ranker"], arts = write_tables(models.ranker_tables, stage, RANKER, "ranker")
            artifacts += arts
            if models.retrieval is not None:
                tables_info["retrieval"], arts = write_tables(models.retrieval_tables, stage, USER_TOWER, "retrieval")
                artifacts += arts
    built = {a.kind for a in artifacts}
    engine, timings = repo.python_engine_kind(opts.target, built, opts.python_engine), {}
    if opts.target == "cpu" and not opts.python_engine:     # the fastest of the engines built, measured here
        ranker = names[RANKER]
        engine, timings = fastest_cpu_engine(specs[ranker], artifacts, stage)
    corpus, index = None, None
    if models.retrieval is not None:
        with console.status("computing the retrieval corpus"):
            corpus = models.corpus or synthetic_corpus(models, opts.corpus_size, opts.corpus_file)
        with console.status(f"writing the retrieval corpus ({opts.retrieval_index} search)"):
            arts, index = write_corpus(corpus, stage, opts.retrieval_index, opts.index_params)
            artifacts += arts
    served = served_records(models, specs, opts, engine, corpus, index)
    placed = repo.place_platform_engines(stage, served, artifacts, opts.target)
    manifest = {
        "format": FORMAT, "release": models.release, "preset": None if source.artifacts else source.preset,
        "precision": source.precision, "target": opts.target, "source": models.source, "limits": limits.to_dict(),
        "model_config": cfg.to_dict(),
        "retrieval_config": models.retrieval.config.to_dict() if models.retrieval is not None else None,
        "hashing": {e: h.to_dict() for e, h in models.ranker_hashing.items()},
        "retrieval_hashing": ({e: h.to_dict() for e, h in models.retrieval_hashing.items()}
                              if models.retrieval_hashing else None),
        "tables": tables_info, "served": served, "opset": build_opts.opset, "torch_version": torch.__version__,
        "engine_choice": {"engine": engine, "p50_ms": timings, "dims": CHOICE_DIMS} if timings else None,
        "artifacts": [],
    }
    cfgs = repo.configs(served, opts, cfg.candidate_seq_len, placed)
    repo.client_parameter(cfgs[POSTPROCESS], manifest)
    artifacts += repo.write_configs(stage, cfgs)
    artifacts += repo.write_python_models(stage, served)
    manifest["artifacts"] = [a.to_dict() for a in artifacts]
    copy_repository_readme(stage)
    write_manifest(stage, manifest)
    summary(rows, stage, time.perf_counter() - t0)
    return manifest


def copy_repository_readme(stage: Path) -> None:
    readme = repo.SOURCES / "README.md"
    if readme.exists():
        shutil.copy2(readme, stage / "README.md")


# ---------------------------------------------------------------------------------------------- output folder

def check_output(output: Path) -> None:
    """Build into an empty or missing folder, a previous build (it has a manifest) or the project's triton_repo;
    never replace a folder of other files."""
    if output.exists() and not output.is_dir():
        raise BuildError(f"--output {output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not (output / MANIFEST).exists() \
            and output.resolve() != DEFAULT_OUTPUT.resolve():
        raise BuildError(f"--output {output} holds files but no {MANIFEST}: not a Phoenix repository; a build "
                         f"replaces its output folder, so choose an empty or new folder")
    output.parent.mkdir(parents=True, exist_ok=True)


def remove_dead_stages(output: Path) -> None:
    """Staging folders of builds that were killed (their process is gone)."""
    for stale in output.parent.glob(".build-*"):
        try:
            pid = int(stale.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)


_RENAME_EXCHANGE = 2


def swap_into(stage: Path, output: Path) -> None:
    """Make `stage` the output in one step: an atomic exchange of the two paths (Linux renameat2), then the
    old build (now at `stage`) is removed by the caller; a missing output is a plain rename."""
    if not output.exists():
        os.rename(stage, output)
        stage.mkdir()   # the caller removes it
        return
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    at_fdcwd = -100
    if renameat2 is not None and renameat2(at_fdcwd, os.fsencode(stage), at_fdcwd, os.fsencode(output),
                                           _RENAME_EXCHANGE) == 0:
        return
    # no renameat2: two renames; between them the old build is complete at `<stage>.old`
    old = stage.with_name(stage.name + ".old")
    os.rename(output, old)
    os.rename(stage, output)
    os.rename(old, stage)


def summary(rows, output: Path, total_s: float):
    table = Table(title=f"export.build ({total_s:.1f} s)")
    for col in ("artifact", "size", "parity max abs err", "time"):
        table.add_column(col, justify="left" if col == "artifact" else "right", overflow="fold")
    for path, size, err, secs in rows:
        table.add_row(path, f"{size / 1e6:.2f} MB" if size is not None else "-",
                      f"{err:.2e}" if err is not None else "-", f"{secs:.1f} s" if secs is not None else "-")
    Console(stderr=True, width=max(console.width, 120)).print(table)


# ---------------------------------------------------------------------------------------------- CLI

ENGINE_CHOICES = ("auto", "none", *ENGINE_KINDS)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.build", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Build a complete Triton model repository for Phoenix: the ranker (hashes in and embeddings "
                    "in), the retrieval towers and corpus, the postprocessor and ensembles, each graph checked "
                    "against torch, and manifest.json (written last; the folder is swapped in atomically).")
    src = p.add_argument_group("models")
    src.add_argument("--artifacts", default=None, metavar="DIR",
                     help="the May release's artifacts folder (retrieval/ and ranker/ with model_params.npz, "
                          "embedding_tables.npz, config.json; sports_corpus.npz): serve those models, their "
                          "tables, hash constants and corpus (overrides --preset/--release/--checkpoint/--tables)")
    src.add_argument("--preset", choices=PRESETS, default="demo",
                     help="model size of a seeded or checkpoint build: demo D128/2 layers/S32/C8, mini D128/4/S127/C64, "
                          "nano D512/4/S1022/C64, prod D2560/8/S1022/C64")
    src.add_argument("--release", choices=RELEASES, default="january",
                     help="inputs and action list: january (19 engagement actions) or may (ActionName columns, IP "
                          "hashes, dwell time, post age, continuous head)")
    src.add_argument("--checkpoint", default=None, metavar="FILE.npz",
                     help="ranker parameters in the upstream Haiku layout (`module/name` keys, optional `param/` "
                          "prefix); default: seeded non-zero init (--seed)")
    src.add_argument("--retrieval-checkpoint", default=None, metavar="FILE.npz",
                     help="retrieval-model parameters in the upstream layout; default: seeded init")
    src.add_argument("--tables", default=None, metavar="FILE.npz",
                     help="hash tables in the release's layout (`<entity>_embeddings` [vocab, D] float32: user, "
                          "item, author, ...); default: seeded tables of --vocab rows")
    src.add_argument("--extra-features", default=None, metavar="FILE.json",
                     help="features added by configuration: a JSON list of feature declarations (see README, "
                          "'Add a feature'), e.g. [{\"kind\": \"categorical\", \"name\": \"candidate_media_category\", "
                          "\"side\": \"candidate\", \"vocab\": 8}]")
    src.add_argument("--vocab", type=int, default=10_000, help="rows of each seeded hash table; row 0 is padding")
    src.add_argument("--seed", type=int, default=0, help="seed of the init of weights, tables and hash constants")
    src.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32",
                     help="forward dtype of the graphs (bf16 keeps softmax, RMSNorm, reductions and logits float32)")
    src.add_argument("--history-attention", choices=HISTORY_ATTENTION, default=HISTORY_ATTENTION[0],
                     help="mask over user+history: causal (January code) or bidirectional (production release)")
    src.add_argument("--right-anchored-rope", action="store_true",
                     help="May-release positions: scores independent of candidate order and of C")
    src.add_argument("--no-towers", action="store_true", help="skip the retrieval model (ranker only)")

    eng = p.add_argument_group("graphs and engines")
    eng.add_argument("--opset", type=int, choices=(18, 19, 20), default=OPSET,
                     help="ONNX opset of the graphs (the exporter writes >= 18; TensorRT 10 parses up to 20)")
    eng.add_argument("--engines", default="none",
                     help="comma list of engines besides ONNX (always built): torch (a torch.export program for the "
                          "torch / torch_compile hosts), aoti, tensorrt, auto (every one that can be built here; what "
                          "cannot is skipped with a one-line notice), none")
    eng.add_argument("--aoti-device", choices=("cpu", "cuda", "auto"), default="auto",
                     help="device the AOTInductor packages are compiled for (auto: cuda if available)")
    eng.add_argument("--trt-profile", default=None, metavar="B=MIN:OPT:MAX,C=MIN:OPT:MAX",
                     help="TensorRT optimization profile of the dynamic dims; dims not named keep B=1:8:"
                          "<--max-batch-size>, C=1:<first --candidate-sizes or 64>:<--max-candidates>; the max "
                          "must cover the limits")
    eng.add_argument("--trt-workspace-gb", type=float, default=None,
                     help="TensorRT workspace memory pool limit in GiB (default: TensorRT's)")
    eng.add_argument("--trt-timing-cache", default=TensorRTOptions().timing_cache, metavar="PATH",
                     help="TensorRT timing cache, read before and written after each build (kept outside the repository)")
    eng.add_argument("--trt-version-compatible", action="store_true",
                     help="version-compatible plans (loadable by newer TensorRT; serve them with "
                          "`--backend-config=tensorrt,version-compatible=true`, see deploy/README.md)")
    eng.add_argument("--trt-hardware-compatible", action="store_true",
                     help="plans that run on every Ampere-or-newer GPU (slower than plans for one GPU)")

    rep = p.add_argument_group("Triton repository")
    rep.add_argument("--target", choices=repo.TARGETS, default="cpu",
                     help="cpu (Python engine host, ONNX Runtime, KIND_CPU), gpu-python (Python host on the GPU: "
                          "tensorrt > aoti > torch > onnxruntime, the first built), gpu-onnxruntime (onnxruntime_onnx), "
                          "gpu-tensorrt (tensorrt_plan; needs --engines tensorrt)")
    rep.add_argument("--python-engine", default=None, choices=RUNTIME_KINDS,
                     help="engine kind of the Python host (cpu / gpu-python targets). Default: cpu: the fastest of "
                          "the engines built (--engines), timed here at B=1, C=64 and recorded in the manifest "
                          "(engine_choice); gpu-python: tensorrt > aoti > torch > onnxruntime")
    rep.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE,
                     help="users per request (Triton max_batch_size of every model)")
    rep.add_argument("--max-candidates", type=int, default=DEFAULT_MAX_CANDIDATES,
                     help="candidates per user the server accepts (enforced before any work)")
    rep.add_argument("--candidate-sizes", default="", metavar="C,C,...",
                     help="fixed candidate counts the client pads to (hash-0 candidates, exact), so native backends "
                          "batch requests of different C; the last must equal --max-candidates. Default: any C on "
                          "cpu; 64, 128, ... up to --max-candidates on GPU targets")
    rep.add_argument("--max-request-mb", type=float, default=DEFAULT_MAX_REQUEST_BYTES / (1 << 20),
                     help="largest request (sum of input bytes) the engine hosts accept, in MiB")
    rep.add_argument("--queue-delay-us", type=int, default=repo.DEFAULT_QUEUE_DELAY_US,
                     help="dynamic batching max_queue_delay_microseconds (0 = no waiting; measured, see "
                          "triton_repo/README.md)")
    rep.add_argument("--instances", type=int, default=None,
                     help="instances of each engine model (instance_group count; per GPU on GPU targets). Default: 1 "
                          "on cpu; 2 on GPU targets, so one instance's copies overlap the other's compute")
    rep.add_argument("--python-instances", type=int, default=None,
                     help="instances of each CPU Python model (phoenix_postprocess, phoenix_retrieval, and the GPU "
                          "targets' phoenix_pipeline): each handles one execution at a time. Default: --instances")
    rep.add_argument("--engine-cache", default=repo.DEFAULT_ENGINE_CACHE, metavar="DIR",
                     help="gpu-onnxruntime --ort-tensorrt: the folder ONNX Runtime keeps its TensorRT engines in, in the "
                          "serving container (must exist and be writable there; deploy/kubernetes mounts a volume)")
    rep.add_argument("--ort-tensorrt", action="store_true",
                     help="gpu-onnxruntime: ONNX Runtime's TensorRT accelerator, with profiles from the limits and an "
                          "engine cache")
    rep.add_argument("--corpus", type=int, default=1000,
                     help="synthetic retrieval corpus (seeded builds): posts 1..N through the candidate tower")
    rep.add_argument("--corpus-file", default=None, metavar="FILE.npz",
                     help="retrieval corpus: .npz with post_ids, author_ids and optional candidate_representations "
                          "[N, D] (else computed by the candidate tower) and topics")
    rep.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="largest number of posts phoenix_retrieval returns")
    rep.add_argument("--retrieval-index", choices=INDEX_CHOICES, default="exact",
                     help="exact top-k (default; the float32 corpus in memory), a FAISS HNSW index (hnsw; faiss is "
                          "its old name) or a compressed FAISS IVF-PQ index (ivfpq: tens of bytes per post, the "
                          "float32 corpus not in memory); faiss-cpu; recall measured by python -m benchmarks.ann")
    rep.add_argument("--index-param", action="append", default=[], metavar="KEY=VALUE",
                     help="an ivfpq parameter (repeatable; the rest derived from the corpus size N): "
                          + "; ".join(f"{key}: {h}" for key, h in IVFPQ_PARAMS.items()))
    rep.add_argument("--weight", action="append", default=[], metavar="NAME=VALUE",
                     help="home-mixer scoring parameter of phoenix_postprocess, e.g. --weight report=-300, "
                          "--weight oon_factor=0.5 (repeatable; recorded in the manifest)")
    p.add_argument("--output", default=str(DEFAULT_OUTPUT),
                   help="repository folder to write (replaced atomically; must be new, empty or a previous build)")
    return p


def options_from(args, p) -> tuple[ModelSource, repo.RepositoryOptions, EngineOptions, BuildOptions]:
    """The command line -> the plain option records the library functions take (checked here, once)."""
    if args.vocab < 2:
        p.error(f"--vocab must be at least 2 (row 0 is padding), got {args.vocab}")
    for opt in ("instances", "python_instances"):
        if getattr(args, opt) is not None and getattr(args, opt) < 1:
            p.error(f"--{opt.replace('_', '-')} must be at least 1, got {getattr(args, opt)}")
    for opt in ("checkpoint", "retrieval_checkpoint", "tables", "extra_features", "corpus_file"):
        value = getattr(args, opt)
        if value and not Path(value).is_file():
            p.error(f"--{opt.replace('_', '-')} {value}: no such file")
    kinds = tuple(x.strip() for x in args.engines.split(",") if x.strip() and x.strip() != "none")
    unknown = [x for x in kinds if x not in ENGINE_CHOICES]
    if unknown:
        p.error(f"--engines: unknown engine(s) {unknown}; choose from {', '.join(ENGINE_CHOICES)} (comma list)")
    try:
        sizes = tuple(int(x) for x in args.candidate_sizes.split(",") if x.strip()) or \
            repo.default_candidate_sizes(args.target, args.max_candidates)
        repo.check_image(args.target, args.retrieval_index)
        if args.target == "gpu-python" and "auto" not in kinds:     # the image runs the engine it will serve
            repo.python_engine_kind(args.target, {"onnx", *(ARTIFACT_KIND[k] for k in kinds)}, args.python_engine)
        extra = features_from_json(json.loads(Path(args.extra_features).read_text())) if args.extra_features else ()
        weights = {}
        for item in args.weight:
            name, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"--weight {item!r}: expected NAME=VALUE, e.g. report=-300")
            name = name.strip()
            weights[name if name in SCALAR_PARAMS else f"weight.{name}"] = value.strip()
        scoring_params(weights)            # unknown names and non-numbers fail here, in seconds
        index_params = parse_index_params(args.retrieval_index, args.index_param)
        limits = Limits(args.max_batch_size, args.max_candidates, None, int(args.max_request_mb * (1 << 20)), sizes)
        if args.trt_profile:             # a profile narrower than the limits fails now, not after the export
            tensorrt.check_against_limits(tensorrt.parse_profile(args.trt_profile, tensorrt.default_profile(limits)),
                                          limits)
    except (ValueError, json.JSONDecodeError, tensorrt.ProfileError) as e:
        p.error(str(e))
    source = ModelSource(args.preset, args.release, args.precision, args.artifacts, args.checkpoint,
                         args.retrieval_checkpoint, args.tables, args.vocab, args.seed, args.history_attention,
                         args.right_anchored_rope, extra, not args.no_towers)
    instances = args.instances if args.instances is not None else 1 if args.target == "cpu" else 2
    opts = repo.RepositoryOptions(
        target=args.target, limits=limits, queue_delay_us=args.queue_delay_us, instances=instances,
        python_instances=args.python_instances if args.python_instances is not None else instances,
        engine_cache=args.engine_cache,
        python_engine=args.python_engine, ort_tensorrt=args.ort_tensorrt, corpus_size=args.corpus,
        corpus_file=args.corpus_file, top_k=args.top_k, retrieval_index=args.retrieval_index,
        index_params=index_params, weights=weights)
    trt = TensorRTOptions(args.trt_profile, args.trt_workspace_gb, args.trt_timing_cache, args.trt_version_compatible,
                          args.trt_hardware_compatible)
    return source, opts, EngineOptions(kinds, args.aoti_device, trt), BuildOptions(Path(args.output), args.opset)


def _interrupted(e: BaseException | None) -> bool:
    while e is not None:
        if isinstance(e, KeyboardInterrupt):
            return True
        e = e.__cause__ or e.__context__
    return False


def _stop(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    source, opts, engines, build_opts = options_from(args, p)
    old = signal.signal(signal.SIGTERM, _stop)   # SIGTERM unwinds like Ctrl-C: the staging folder is removed
    try:
        if engines.kinds:
            resolve_kinds([x for x in engines.kinds if x != "auto"])   # fail in seconds, not after the export
        build(source, opts, engines, build_opts)
    except KeyboardInterrupt:
        console.print(f"[red]build interrupted: {build_opts.output} was left as it was[/]", soft_wrap=True)
        return 130
    except IndexParamError as e:    # an index option the corpus cannot take (known once N and D are): a usage error
        console.print(f"[bold red]build failed:[/] {e}; {build_opts.output} was left as it was", soft_wrap=True)
        return 2
    except Exception as e:  # every failure ends the same way: a message, the output untouched, exit 1
        if _interrupted(e):   # a library (the ONNX exporter) wrapped the interrupt in its own error
            console.print(f"[red]build interrupted: {build_opts.output} was left as it was[/]", soft_wrap=True)
            return 130
        if not isinstance(e, (BuildError, ParityError, EngineUnavailable, ArtifactsError, ValueError, KeyError,
                              OSError)):
            console.print_exception(max_frames=8)
        console.print(f"[bold red]build failed:[/] {type(e).__name__}: {e}", soft_wrap=True)
        console.print(f"[red]{build_opts.output} was left as it was (no partial build)[/]", soft_wrap=True)
        return 1
    finally:
        signal.signal(signal.SIGTERM, old)
    return 0


if __name__ == "__main__":
    sys.exit(main())
