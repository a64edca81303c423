"""`python -m export.build`: model -> ONNX graphs (+ torch state, compiled engines) -> Triton repository.

Steps: build the ranker, the retrieval model and their hash tables (upstream checkpoint or seeded
init) -> the serving graphs (export.graphs) -> one ONNX file per graph, each checked against torch with
ONNX Runtime (fp32 1e-4, bf16 1e-1, input_error exactly) -> torch state dicts -> compiled engines
(export.engines) -> Triton configs (export.repository) -> manifest.json.

Everything is staged in a temporary folder next to the output and moved in at the end; the output's old
manifest.json is deleted when the build starts and the new one is written last, so a folder with a
manifest always holds a complete build. Committed sources (triton_repo/*/1/model.py) are never replaced.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from export.graphs import build_models, serving_graphs
from export.manifest import MANIFEST, ManifestError, add_file_info, new_manifest, read_manifest, write_manifest
from export.onnx_export import OPSET, export_onnx
from export.runtime import TOLERANCE, EngineUnavailable, OnnxRuntimeEngine, ParityError, max_abs_err

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = PROJECT_ROOT / "triton_repo"
PRESETS = ("demo", "mini", "nano", "prod")
ONNX_PATHS = {"ranker": "phoenix_ranker/1/model.onnx",
              "ranker_embeddings": "phoenix_ranker/1/ranker_embeddings.onnx",   # not a Triton model file
              "user_tower": "phoenix_user_tower/1/model.onnx",
              "candidate_tower": "phoenix_candidate_tower/1/model.onnx"}
TORCH_PATHS = {m: p.replace(".onnx", ".pt").replace("model.pt", "model_state.pt") for m, p in ONNX_PATHS.items()}
PARITY_POINTS = ({"B": 1, "C": 1}, {"B": 3, "C": None})   # C None -> the preset's candidates

console = Console(stderr=True)


class BuildError(RuntimeError):
    """A build step failed; the message says which and why."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.build", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Build the Phoenix serving artifacts: ONNX graphs of the ranker (hashes in and embeddings "
                    "in), the user tower and the candidate tower, torch state dicts, optional compiled engines, "
                    "the Triton model repository and manifest.json (written last).")
    p.add_argument("--preset", choices=PRESETS, default="demo",
                   help="model size (PHOENIX_SPEC.md): demo D128/2 layers/S32/C8, mini D128/4/S127/C64, "
                        "nano D512/4/S1022/C64, prod D2560/8/S1022/C64")
    p.add_argument("--checkpoint", default=None, metavar="FILE.npz",
                   help="ranker parameters in the upstream Haiku layout (`param/<module>/<name>` keys, as the "
                        "golden files and the May checkpoint); default: seeded non-zero init (--seed)")
    p.add_argument("--retrieval-checkpoint", default=None, metavar="FILE.npz",
                   help="retrieval-model parameters in the upstream layout; default: seeded init (--seed)")
    p.add_argument("--tables", default=None, metavar="FILE.npz",
                   help="hash embedding tables (.npz with user_table, post_table, author_table: [vocab, D] "
                        "float32, row 0 = padding); default: seeded tables of --vocab rows")
    p.add_argument("--vocab", type=int, default=10_000,
                   help="rows of each seeded hash table (user, post, author); row 0 is padding")
    p.add_argument("--seed", type=int, default=0, help="seed of the init of weights and tables")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="forward dtype written into the graphs (bf16 keeps softmax, RMSNorm and logits float32)")
    p.add_argument("--history-attention", choices=("causal", "bidirectional"), default="causal",
                   help="mask over user+history: causal (January code) or bidirectional (production release)")
    p.add_argument("--right-anchored-rope", action="store_true",
                   help="May-release positions: scores independent of candidate order and of C")
    p.add_argument("--opset", type=int, choices=(18, 19, 20), default=OPSET,
                   help="ONNX opset of the graphs (the exporter writes >= 18; TensorRT 10 parses up to 20)")
    p.add_argument("--no-towers", action="store_true", help="skip the retrieval towers (ranker graphs only)")
    p.add_argument("--engines", default="auto",
                   help="comma list of compiled engines besides ONNX and torch (always built): aoti, tensorrt, "
                        "auto (every engine that can be built here: AOTInductor on CPU and CUDA, TensorRT where it "
                        "is installed; what cannot be built is skipped with a one-line notice), none")
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="model repository folder to write")
    try:
        from export import engines
        engines.add_arguments(p)
    except ImportError as e:  # the compiled-engine builders are a separate part of the build
        p.set_defaults(engines_missing=f"export.engines cannot be imported ({e})")
    from export import repository
    repository.add_arguments(p)
    return p


# ---------------------------------------------------------------------------------------------- steps

def model_configs(args):
    from phoenix_torch import get_preset

    common = dict(fprop_dtype="bfloat16" if args.precision == "bf16" else "float32",
                  history_attention=args.history_attention)
    cfg = get_preset(args.preset, right_anchored_rope=args.right_anchored_rope, **common)
    rcfg = None if args.no_towers else get_preset(args.preset, retrieval=True, **common)
    return cfg, rcfg


def check_parity(spec, path: Path, dims_list) -> float:
    """Max abs err of ONNX Runtime vs the torch module over `dims_list`; raises ParityError past tolerance."""
    engine = OnnxRuntimeEngine(path, [t.to_dict() for t in spec.inputs], [t.to_dict() for t in spec.outputs],
                               precision=spec.precision, model=spec.name)
    tol = TOLERANCE[spec.precision]
    worst = 0.0
    for i, dims in enumerate(dims_list):
        feed = spec.random_inputs(dims, seed=1000 + i)
        want = {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in spec(feed).items()}
        got = engine({k: v.numpy() for k, v in feed.items()})
        err = max_abs_err(got, want, spec.output_names)
        if not err <= tol:
            raise ParityError(f"{spec.name}: ONNX Runtime differs from torch at {dims}: max abs err {err:.3g} "
                              f"> {tol} ({spec.precision})")
        worst = max(worst, err)
    return worst


def parity_dims(spec, candidates: int):
    uses_c = any("C" in t.shape for t in spec.inputs)
    return [{"B": p["B"], "C": p["C"] or candidates} if uses_c else {"B": p["B"]} for p in PARITY_POINTS]


def save_state(spec, path: Path, root: Path) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(spec.module.state_dict(), path)
    return {"name": f"{spec.name}_torch", "model": spec.name, "kind": "torch", "path": str(path.relative_to(root)),
            "precision": spec.precision, "inputs": [t.to_dict() for t in spec.inputs],
            "outputs": [t.to_dict() for t in spec.outputs]}


def committed_sources(output: Path) -> set[Path]:
    """Files in `output` that are committed sources (only when output is the project's triton_repo): the
    `*/1/model.py` that git does not ignore (.gitignore ignores the build's copies); every `*/1/model.py`
    when git cannot tell (not a checkout)."""
    if output.resolve() != DEFAULT_OUTPUT.resolve():
        return set()
    files = sorted(p.resolve() for p in DEFAULT_OUTPUT.glob("*/1/model.py"))
    try:
        res = subprocess.run(["git", "check-ignore", *map(str, files)], cwd=DEFAULT_OUTPUT, capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return set(files)
    if res.returncode not in (0, 1):  # 128: not a git checkout
        return set(files)
    ignored = {Path(line).resolve() for line in res.stdout.splitlines() if line.strip()}
    return set(files) - ignored


def move_into(stage: Path, output: Path):
    """Move every staged file into `output` (replacing build outputs, never committed sources)."""
    keep = committed_sources(output)
    for src in sorted(stage.rglob("*")):
        if src.is_dir() or src.name == MANIFEST:
            continue
        dst = output / src.relative_to(stage)
        if dst.resolve() in keep:
            if dst.read_bytes() != src.read_bytes():
                console.print(f"[yellow]kept the committed {dst} (the staged copy differs)[/]")
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dst))


def previous_build_files(output: Path) -> set[str]:
    """Paths (relative to output) that the output's current manifest lists, if it has a readable one."""
    try:
        return artifact_files(read_manifest(output))
    except ManifestError:
        return set()


def artifact_files(manifest: dict) -> set[str]:
    """Every file a manifest's artifacts consist of (paths relative to its folder)."""
    paths = set()
    for a in manifest.get("artifacts", []):
        paths.add(a["path"])
        for extra in (a.get("external_data"), a.get("metadata")):
            if extra:
                paths.add(extra if "/" in extra else str(Path(a["path"]).parent / extra))
    return paths


def remove_stale(output: Path, paths: set[str]):
    """Delete files of the previous build that this build did not write (never committed sources)."""
    keep = committed_sources(output)
    for rel in paths:
        path = output / rel
        if path.is_file() and path.resolve() not in keep and output.resolve() in path.resolve().parents:
            path.unlink()


# ---------------------------------------------------------------------------------------------- main

def build(args) -> dict:
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise BuildError(f"--output {output} exists and is not a folder")
    output.mkdir(parents=True, exist_ok=True)
    old_paths = previous_build_files(output)
    (output / MANIFEST).unlink(missing_ok=True)  # from now on the folder does not look like a complete build
    stage = Path(tempfile.mkdtemp(prefix=".build-", dir=output.parent))
    rows = []
    try:
        t0 = time.perf_counter()
        cfg, rcfg = model_configs(args)
        with console.status("building the models and hash tables"):
            ranker, tables, retrieval, rtables = build_models(
                cfg, rcfg, vocab=args.vocab, seed=args.seed, checkpoint=args.checkpoint,
                retrieval_checkpoint=args.retrieval_checkpoint, tables_file=args.tables)
            graphs = serving_graphs(ranker, tables, retrieval, rtables)
        console.print(f"[green]✓[/] models ({args.preset}, {args.precision}, vocab {tables.vocab_sizes['user_vocab']}) "
                      f"in {time.perf_counter() - t0:.1f} s")

        artifacts, onnx_artifacts = [], []
        for name, spec in graphs.items():
            t = time.perf_counter()
            with console.status(f"exporting {name} to ONNX (opset {args.opset})"):
                art = export_onnx(spec, stage / ONNX_PATHS[name], opset=args.opset, root=stage)
            with console.status(f"checking {name}: ONNX Runtime vs torch"):
                art["parity_max_abs_err"] = check_parity(spec, stage / art["path"],
                                                         parity_dims(spec, cfg.candidate_seq_len))
                art["parity_reference"] = "torch"
            add_file_info(stage, art)
            onnx_artifacts.append(art)
            rows.append((art["path"], art["bytes"], art["parity_max_abs_err"], time.perf_counter() - t))
            console.print(f"[green]✓[/] {name}: {art['path']} ({art['bytes'] / 1e6:.1f} MB), parity "
                          f"{art['parity_max_abs_err']:.2e}, {time.perf_counter() - t:.1f} s")
        artifacts += onnx_artifacts

        t = time.perf_counter()
        for name, spec in graphs.items():
            art = add_file_info(stage, save_state(spec, stage / TORCH_PATHS[name], stage))
            artifacts.append(art)
            rows.append((art["path"], art["bytes"], None, None))
        console.print(f"[green]✓[/] torch state dicts in {time.perf_counter() - t:.1f} s")

        artifacts += compiled_engines(args, graphs, onnx_artifacts, stage, rows)

        manifest = new_manifest(
            preset=args.preset, precision=args.precision, target=args.target, model_config=cfg.to_dict(),
            retrieval_config=rcfg.to_dict() if rcfg else None, tables=tables_info(tables),
            retrieval_tables=tables_info(rtables) if rtables is not None else None,
            max_candidates=cfg.candidate_seq_len, opset=args.opset, seed=args.seed,
            checkpoint=args.checkpoint, torch_version=torch.__version__, artifacts=artifacts)
        write_manifest(stage, manifest)   # lets the repository step load engines from the stage
        t = time.perf_counter()
        with console.status(f"writing the Triton repository (target {args.target})"):
            from export import repository
            written = repository.write_repository(manifest, stage, args)
        manifest["artifacts"] += written
        console.print(f"[green]✓[/] Triton repository (target {manifest['target']}): {len(written)} files "
                      f"in {time.perf_counter() - t:.1f} s")

        move_into(stage, output)
        remove_stale(output, old_paths - artifact_files(manifest))
        write_manifest(output, manifest)
        summary(rows, output, time.perf_counter() - t0)
        return manifest
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def compiled_engines(args, graphs, onnx_artifacts, stage: Path, rows) -> list[dict]:
    kinds = [k.strip() for k in args.engines.split(",") if k.strip()]
    if kinds in (["none"], []):
        return []
    if getattr(args, "engines_missing", None):
        raise BuildError(f"--engines {args.engines}: {args.engines_missing}")
    from export import engines
    t = time.perf_counter()
    arts = engines.build_engines(kinds, graphs, onnx_artifacts, stage, args)
    for a in arts:
        rows.append((a["path"], a.get("bytes"), a.get("parity_max_abs_err"), None))
    if arts:
        console.print(f"[green]✓[/] compiled engines {sorted({a['kind'] for a in arts})} in "
                      f"{time.perf_counter() - t:.1f} s")
    return arts


def check_requested_engines(args) -> None:
    """An engine named explicitly in --engines that cannot be built here stops the build before any work."""
    named = [k.strip() for k in args.engines.split(",") if k.strip() not in ("", "auto", "none")]
    if not named:
        return
    if getattr(args, "engines_missing", None):
        raise BuildError(f"--engines {args.engines}: {args.engines_missing}")
    from export import engines
    engines.resolve_kinds(named)


def tables_info(tables) -> dict:
    """Vocab sizes and the hash parameters (the `params` and `modulus` keyword arguments of
    phoenix_torch.hash_ids, shared by every entity) that raw ids must be hashed with."""
    from phoenix_torch import HASH_MODULUS, HASH_PARAMS

    return {**{k: int(v) for k, v in tables.vocab_sizes.items()}, "emb_size": int(tables.emb_size),
            "hash_params": {"params": [list(p) for p in HASH_PARAMS], "modulus": HASH_MODULUS}}


def summary(rows, output: Path, total_s: float):
    table = Table(title=f"export.build -> {output} ({total_s:.1f} s)")
    for col in ("artifact", "size", "parity max abs err", "time"):
        table.add_column(col, justify="left" if col == "artifact" else "right", overflow="fold")
    for path, size, err, secs in rows:
        table.add_row(path, f"{size / 1e6:.2f} MB" if size is not None else "-",
                      f"{err:.2e}" if err is not None else "-", f"{secs:.1f} s" if secs is not None else "-")
    Console(stderr=True, width=max(console.width, 120)).print(table)  # full paths, also in logs


ENGINE_CHOICES = ("auto", "none", "aoti", "tensorrt")


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.vocab < 2:
        p.error(f"--vocab must be at least 2 (row 0 is padding), got {args.vocab}")
    unknown = [k for k in args.engines.split(",") if k.strip() and k.strip() not in ENGINE_CHOICES]
    if unknown:
        p.error(f"--engines: unknown engine(s) {unknown}; choose from {', '.join(ENGINE_CHOICES)} (comma list)")
    for opt in ("checkpoint", "retrieval_checkpoint", "tables"):
        value = getattr(args, opt)
        if value and not Path(value).is_file():
            p.error(f"--{opt.replace('_', '-')} {value}: no such file")
    try:
        check_requested_engines(args)  # fail in seconds, not after the ONNX export
        build(args)
    except Exception as e:  # every failure ends the same way: a message, no manifest, exit 1
        if not isinstance(e, (BuildError, ParityError, EngineUnavailable, ValueError, KeyError, OSError)):
            console.print_exception(max_frames=8)
        console.print(f"[bold red]build failed:[/] {type(e).__name__}: {e}", soft_wrap=True)
        console.print(f"[red]no manifest.json was written to {args.output}[/]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
