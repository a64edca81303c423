"""Parameters: upstream Haiku-layout loading, PyTorch save/load, seeded demo initialisation.

Upstream keys are `module/name` (optionally prefixed `param/`), e.g.
`transformer/decoder_layer_0/multi_head_attention/query/w` or `phoenix_model/proj_mat_1`. Our weights
keep Haiku's [in, out] layout, so loading is a renaming plus a shape check.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .embeddings import HashEmbeddingTables
from .ranker import PhoenixModel
from .retrieval import PhoenixRetrievalModel

_LAYER = re.compile(r"^transformer\.layers\.(\d+)\.(.+)$")
# Keys upstream checkpoints hold that no forward pass reads: the retrieval model's training temperature.
IGNORED_KEYS = ("~/log_temperature",)


def _haiku_key(torch_name: str, root: str) -> str:
    """Our parameter name -> the upstream Haiku key."""
    m = _LAYER.match(torch_name)
    if m:
        i, rest = m.groups()
        layer = f"transformer/decoder_layer_{i}"
        if rest.startswith("attn."):
            return f"{layer}/multi_head_attention/{rest.split('.')[1]}/w"
        if rest.startswith("ffn."):
            return f"{layer}/{rest.split('.')[1]}/w"
        return f"{layer}/{rest.replace('.scale', '/scale')}"          # rms_norm*.scale
    if torch_name == "rms_norm.scale":
        return f"{root}/rms_norm/scale"
    if torch_name.startswith("candidate_tower."):
        return f"{root}/~build_candidate_representation/candidate_tower/{torch_name.split('.')[1]}"
    return f"{root}/{torch_name.removeprefix('encoder.')}"   # reductions, feature tables and projections


def _root(model: nn.Module) -> str:
    if isinstance(model, PhoenixModel):
        return "phoenix_model"
    if isinstance(model, PhoenixRetrievalModel):
        return "phoenix_retrieval_model"
    raise TypeError(f"no upstream layout for {type(model).__name__}")


def read_params(source) -> dict[str, np.ndarray]:
    """An .npz path or a dict -> {haiku key without the `param/` prefix: array}. Non-parameter entries of
    golden files (config_json, batch/, emb/, out/) are dropped."""
    if isinstance(source, (str, Path)):
        with np.load(source, allow_pickle=False) as z:
            source = {k: z[k] for k in z.files}
    if any(k.startswith("param/") for k in source):
        return {k[len("param/"):]: v for k, v in source.items() if k.startswith("param/")}
    return {k: v for k, v in source.items() if "/" in k and not k.split("/")[0] in ("batch", "emb", "out")}


def load_upstream_params(model: nn.Module, source) -> nn.Module:
    """Loads upstream Haiku-layout parameters (an .npz path or a dict) into `model`, in place.
    Raises one error listing every missing, unexpected or mis-shaped key."""
    params = read_params(source)
    unused = sorted(k for k in params if k in IGNORED_KEYS)
    if unused:
        # a UserWarning: Python's default filter prints it once per process; export.build records it per build
        warnings.warn(f"ignoring {unused}: upstream stores it, its forward pass never reads it", stacklevel=2)
        params = {k: v for k, v in params.items() if k not in IGNORED_KEYS}
    root = _root(model)
    expected = {_haiku_key(name, root): (name, p) for name, p in model.named_parameters()}
    missing = sorted(set(expected) - set(params))
    unexpected = sorted(set(params) - set(expected))
    misshaped = [f"{k}: checkpoint {tuple(params[k].shape)} vs model {tuple(p.shape)}"
                 for k, (_, p) in expected.items() if k in params and tuple(params[k].shape) != tuple(p.shape)]
    if missing or unexpected or misshaped:
        lines = ([f"missing key: {k}" for k in missing] + [f"unexpected key: {k}" for k in unexpected]
                 + [f"mis-shaped key: {s}" for s in misshaped])
        where = f"{source}" if isinstance(source, (str, Path)) else "checkpoint"
        raise ValueError(f"{where} does not fit {type(model).__name__}:\n  " + "\n  ".join(lines))
    with torch.no_grad():
        for key, (_, p) in expected.items():
            p.copy_(torch.from_numpy(np.asarray(params[key], dtype=np.float32)))
    return model


def export_upstream_params(model: nn.Module) -> dict[str, np.ndarray]:
    """Our parameters as upstream `module/name` keys (the inverse of load_upstream_params)."""
    root = _root(model)
    return {_haiku_key(n, root): p.detach().float().cpu().numpy() for n, p in model.named_parameters()}


def save_weights(module: nn.Module, path) -> Path:
    """Saves the state dict, with the model config when the module has one."""
    path = Path(path)
    cfg = getattr(module, "config", None)
    torch.save({"config": cfg.to_dict() if cfg is not None else None,
                "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()}}, path)
    return path


def load_weights(module: nn.Module, path) -> nn.Module:
    """Loads a file written by save_weights into `module` (strict), in place."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    module.load_state_dict(blob["state_dict"], strict=True)
    return module


def read_tables(path, entities=None) -> dict[str, np.ndarray]:
    """{entity: float32 [vocab, D]} from an .npz in the release's layout (`user_embeddings`,
    `item_embeddings`, `author_embeddings`, ... one `<entity>_embeddings` array per entity). Row 0 is set to
    zero: upstream sends hash 0 (padding) to a zero row of its unified table and never reads row 0 of an
    entity's table. `entities` restricts (and requires) the entities read; errors name the file and key."""
    with np.load(path, allow_pickle=False) as z:
        have = {k.removesuffix("_embeddings"): k for k in z.files if k.endswith("_embeddings")}
        wanted = list(entities) if entities is not None else sorted(have)
        missing = [f"{e}_embeddings" for e in wanted if e not in have]
        if missing or not wanted:
            raise ValueError(f"{path}: missing table(s) {missing or ['<entity>_embeddings']}; found {sorted(z.files)}")
        out = {}
        for e in wanted:
            a = np.asarray(z[have[e]], dtype=np.float32)
            if a.ndim != 2 or a.shape[0] < 2:
                raise ValueError(f"{path}: {have[e]} must be [vocab >= 2, D], got shape {a.shape}")
            a[0] = 0.0
            out[e] = a
    widths = {e: a.shape[1] for e, a in out.items()}
    common = max(set(widths.values()), key=list(widths.values()).count)
    odd = [f"{e}_embeddings has D = {d}" for e, d in widths.items() if d != common]
    if odd:
        raise ValueError(f"{path}: {', '.join(odd)}, the other tables D = {common}")
    return out


def load_tables(path, entities=None) -> HashEmbeddingTables:
    """HashEmbeddingTables from an .npz in the release's layout (see read_tables)."""
    arrays = read_tables(path, entities)
    tables = HashEmbeddingTables(next(iter(arrays.values())).shape[1], {e: a.shape[0] for e, a in arrays.items()})
    with torch.no_grad():
        for e, a in arrays.items():
            tables.tables[e].copy_(torch.from_numpy(a))
    return tables


def save_tables(tables: HashEmbeddingTables, path) -> Path:
    """The inverse of load_tables: `<entity>_embeddings` arrays in an .npz."""
    np.savez(path, **{f"{e}_embeddings": t.detach().float().cpu().numpy() for e, t in tables.tables.items()})
    return Path(path)


def init_seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded non-zero init for demos (upstream initialises to zero: every probability 0.5).
    Matrices ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1^2), hash tables ~ N(0, 1) with row 0 zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if name.endswith("scale"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif isinstance(module, HashEmbeddingTables):
                p.copy_(torch.randn(p.shape, generator=g))
                p[0].zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[0] ** 0.5)
    return module
