"""Check the port against upstream JAX outputs stored in golden .npz files.

    python -m phoenix_torch.golden FILE.npz [FILE.npz ...]

Each file holds `config_json`, `param/<haiku key>`, `batch/<RecsysBatch field>`, `emb/<RecsysEmbeddings
field>` and `out/<name>`. The model is built from the config, loaded with the params, run on batch/emb
with both attention implementations, and every stored output is compared. Exit status 1 when a float32
case is off by more than 1e-4 or a bfloat16 case by more than 1e-1 (absolute).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from .config import ATTENTION_IMPLS, HashConfig, PhoenixModelConfig, PhoenixRetrievalModelConfig, TransformerConfig
from .inputs import RecsysBatch, RecsysEmbeddings
from .ranker import PhoenixModel
from .retrieval import PhoenixRetrievalModel
from .weights import load_upstream_params

TOLERANCE = {"float32": 1e-4, "bfloat16": 1e-1}


def config_from_json(cfg: dict, attention_impl: str = "isolated"):
    """A golden file's `config_json` -> PhoenixModelConfig or PhoenixRetrievalModelConfig."""
    common = dict(
        transformer=TransformerConfig(
            emb_size=cfg["emb_size"], num_layers=cfg["num_layers"], num_q_heads=cfg["num_q_heads"],
            num_kv_heads=cfg["num_kv_heads"], key_size=cfg["key_size"], widening_factor=cfg["widening_factor"],
            attn_output_multiplier=cfg["attn_output_multiplier"]),
        hash_config=HashConfig(cfg["num_user_hashes"], cfg["num_item_hashes"], cfg["num_author_hashes"]),
        history_seq_len=cfg["history_seq_len"], num_actions=cfg["num_actions"],
        product_surface_vocab_size=cfg["product_surface_vocab_size"], fprop_dtype=cfg["fprop_dtype"],
        attention_impl=attention_impl,
    )
    if cfg["kind"] == "ranker":
        return PhoenixModelConfig(candidate_seq_len=cfg["candidate_seq_len"], **common)
    if cfg["kind"] == "retrieval":
        return PhoenixRetrievalModelConfig(top_k=cfg["top_k"], **common)
    raise ValueError(f"unknown kind {cfg['kind']!r} in config_json")


def _tensors(z, prefix: str, fields) -> dict[str, torch.Tensor]:
    missing = [f for f in fields if f"{prefix}/{f}" not in z]
    if missing:
        raise KeyError(f"missing {prefix}/ entries: {missing}")
    return {f: torch.from_numpy(np.asarray(z[f"{prefix}/{f}"])) for f in fields}


def run_case(path, device: str = "cpu") -> list[tuple[str, str, float, float]]:
    """-> rows (attention impl, output name, max abs error, tolerance) for one golden file."""
    with np.load(path, allow_pickle=False) as npz:
        z = {k: npz[k] for k in npz.files}
    cfg_json = json.loads(str(z["config_json"]))
    tol = TOLERANCE[cfg_json["fprop_dtype"]]
    batch = RecsysBatch(**{k: v.to(device) for k, v in _tensors(z, "batch", RecsysBatch._fields).items()})
    emb = RecsysEmbeddings(**{k: v.to(device) for k, v in _tensors(z, "emb", RecsysEmbeddings._fields).items()})
    rows = []
    for impl in ATTENTION_IMPLS:
        cfg = config_from_json(cfg_json, impl)
        model_cls = PhoenixModel if cfg_json["kind"] == "ranker" else PhoenixRetrievalModel
        model = load_upstream_params(model_cls(cfg), z).to(device).eval()
        with torch.no_grad():
            if cfg_json["kind"] == "ranker":
                logits = model(batch, emb)
                outs = {"logits": logits, "probs": torch.sigmoid(logits)}
            else:
                user, idx, scores = model(batch, emb, torch.from_numpy(z["batch/corpus"]).to(device), cfg.top_k)
                outs = {"user_representation": user, "top_k_indices": idx.float(), "top_k_scores": scores,
                        "candidate_representation": model.candidate_representation(emb)}
        for name, got in outs.items():
            if f"out/{name}" in z:
                want = torch.from_numpy(z[f"out/{name}"]).float().to(device)
                if tuple(want.shape) != tuple(got.shape):
                    rows.append((impl, name, float("inf"), tol))
                    continue
                # indices must match exactly; everything else within the dtype's tolerance
                rows.append((impl, name, float((got.float() - want).abs().max()), 0.0 if name.endswith("indices") else tol))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m phoenix_torch.golden", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="golden .npz files (config_json, param/, batch/, emb/, out/)")
    parser.add_argument("--device", default="cpu", help="torch device to run on, e.g. cpu or cuda (default: cpu)")
    args = parser.parse_args(argv)
    failed = 0
    print(f"{'file':<32} {'attention':<9} {'output':<26} {'max abs err':>12} {'tolerance':>10}  result")
    for path in args.files:
        try:
            rows = run_case(path, args.device)
        except Exception as e:  # a broken file is a failed case, reported with its reason
            print(f"{path.name:<32} ERROR: {type(e).__name__}: {e}")
            failed += 1
            continue
        for impl, name, err, tol in rows:
            ok = err <= tol
            failed += not ok
            print(f"{path.name:<32} {impl:<9} {name:<26} {err:>12.3e} {tol:>10.0e}  {'ok' if ok else 'FAIL'}")
    print(f"golden: {'all ok' if not failed else f'{failed} failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
