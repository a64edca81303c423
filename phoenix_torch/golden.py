"""Check the port against upstream JAX outputs stored in golden .npz files (January and May releases).

    python -m phoenix_torch.golden FILE.npz [FILE.npz ...]

Each file holds `config_json`, `param/<haiku key>`, `batch/<RecsysBatch field>`, `emb/<RecsysEmbeddings
field>` and `out/<name>`. The model is built from the config, loaded with the params, run on batch/emb
with both attention implementations, and every stored output is compared (logits, probs and, May,
continuous_preds; retrieval: user_representation, top-k indices and scores, candidate_representation).
Exit status 1 when any output is off by more than the precision's tolerance (parity.TOLERANCE:
float32 1e-4, bfloat16 1e-1, absolute) or a file cannot be run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from .config import (ATTENTION_IMPLS, JANUARY_ACTIONS, MAY_ACTIONS, HashConfig, PhoenixModelConfig,
                     PhoenixRetrievalModelConfig, TransformerConfig, release_features)
from .features import CONTINUOUS_HIDDEN_DIM, CONTINUOUS_NORM_SCALE, NUM_CONTINUOUS_ACTIONS
from .inputs import RecsysBatch, RecsysEmbeddings
from .parity import TOLERANCE, max_abs_err, precision_of
from .ranker import PhoenixModel
from .retrieval import PhoenixRetrievalModel
from .weights import load_upstream_params

RELEASED_CONTINUOUS = (NUM_CONTINUOUS_ACTIONS, CONTINUOUS_HIDDEN_DIM, CONTINUOUS_NORM_SCALE, False)


def config_from_json(cfg: dict, attention_impl: str = "isolated"):
    """A golden file's `config_json` (January or May, `release` key) -> PhoenixModelConfig or
    PhoenixRetrievalModelConfig."""
    release = cfg.get("release", "january")
    retrieval = cfg["kind"] == "retrieval"
    hc = HashConfig(cfg["num_user_hashes"], cfg["num_item_hashes"], cfg["num_author_hashes"],
                    cfg.get("num_ip_hashes", 0))
    features = release_features(release, retrieval, hc, cfg["product_surface_vocab_size"],
                                cfg.get("post_age_granularity_mins", 60))
    if release == "may" and not retrieval:
        if (cfg["num_continuous_actions"], cfg["continuous_action_hidden_dim"], cfg["continuous_norm_scale"],
                cfg["continuous_use_log"]) != RELEASED_CONTINUOUS:
            raise ValueError(f"config_json: only the released continuous-action settings {RELEASED_CONTINUOUS} "
                             f"(actions, hidden width, scale, log) are known")
    actions = MAY_ACTIONS if release == "may" else JANUARY_ACTIONS
    if cfg["num_actions"] != len(actions):
        raise ValueError(f"config_json: num_actions {cfg['num_actions']} but the {release} list has {len(actions)}")
    common = dict(
        transformer=TransformerConfig(
            emb_size=cfg["emb_size"], num_layers=cfg["num_layers"], num_q_heads=cfg["num_q_heads"],
            num_kv_heads=cfg["num_kv_heads"], key_size=cfg["key_size"], widening_factor=cfg["widening_factor"],
            attn_output_multiplier=cfg["attn_output_multiplier"]),
        features=features, actions=actions, history_seq_len=cfg["history_seq_len"],
        fprop_dtype=cfg["fprop_dtype"], attention_impl=attention_impl,
        history_attention=cfg.get("history_attention", "causal"))
    if retrieval:
        return PhoenixRetrievalModelConfig(top_k=cfg["top_k"], enable_linear_proj=cfg.get("enable_linear_proj", True),
                                           **common)
    return PhoenixModelConfig(candidate_seq_len=cfg["candidate_seq_len"],
                              right_anchored_rope=cfg.get("right_anchored_rope", False),
                              num_continuous_actions=cfg.get("num_continuous_actions", 0) if release == "may" else 0,
                              **common)


def _group(z: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1:]: torch.from_numpy(np.asarray(v)) for k, v in z.items() if k.startswith(prefix + "/")}


def run_case(path, device: str = "cpu") -> list[tuple[str, str, float, float]]:
    """-> rows (attention impl, output name, max abs error, tolerance) for one golden file."""
    with np.load(path, allow_pickle=False) as npz:
        z = {k: npz[k] for k in npz.files}
    if "config_json" not in z:
        raise KeyError("missing config_json")
    cfg_json = json.loads(str(z["config_json"]))
    batch_arrays, emb_arrays = _group(z, "batch"), _group(z, "emb")
    corpus, corpus_mask = batch_arrays.pop("corpus", None), batch_arrays.pop("corpus_mask", None)
    batch = RecsysBatch(**{k: v.to(device) for k, v in batch_arrays.items()})
    emb = RecsysEmbeddings(**{k: v.to(device) for k, v in emb_arrays.items()})
    if not emb_arrays:
        raise KeyError("missing emb/ entries (the looked-up embeddings)")
    rows = []
    for impl in ATTENTION_IMPLS:
        cfg = config_from_json(cfg_json, impl)
        tol = TOLERANCE[precision_of(cfg.fprop_dtype)]
        model_cls = PhoenixModel if cfg_json["kind"] == "ranker" else PhoenixRetrievalModel
        model = load_upstream_params(model_cls(cfg), z).to(device).eval()
        with torch.no_grad():
            if cfg_json["kind"] == "ranker":
                out = model(batch, emb)
                outs = {"logits": out.logits, "probs": torch.sigmoid(out.logits)}
                if out.continuous_preds is not None:
                    outs["continuous_preds"] = out.continuous_preds
            else:
                mask = corpus_mask.to(device) if corpus_mask is not None else None
                user, idx, scores = model(batch, emb, corpus.to(device), cfg.top_k, mask)
                outs = {"user_representation": user, "top_k_indices": idx.float(), "top_k_scores": scores,
                        "candidate_representation": model.candidate_representation(emb)}
        for name, got in outs.items():
            if f"out/{name}" in z:
                err = max_abs_err({name: got}, {name: z[f"out/{name}"].astype(np.float32)}, [name])
                rows.append((impl, name, err, tol))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m phoenix_torch.golden", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path,
                        help="golden .npz files (config_json, param/, batch/, emb/, out/), e.g. tests/golden/*.npz "
                             "tests/golden/may/*.npz")
    parser.add_argument("--device", default="cpu", help="torch device to run on, e.g. cpu or cuda (default: cpu)")
    args = parser.parse_args(argv)
    failed = 0
    print(f"{'file':<36} {'attention':<9} {'output':<26} {'max abs err':>12} {'tolerance':>10}  result")
    for path in args.files:
        try:
            rows = run_case(path, args.device)
        except Exception as e:  # a broken file is a failed case, reported with its reason
            print(f"{path.name:<36} ERROR: {type(e).__name__}: {e}")
            failed += 1
            continue
        for impl, name, err, tol in rows:
            ok = err <= tol
            failed += not ok
            print(f"{path.name:<36} {impl:<9} {name:<26} {err:>12.3e} {tol:>10.0e}  {'ok' if ok else 'FAIL'}")
    print(f"golden: {'all ok' if not failed else f'{failed} failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
