"""Parameters: upstream Haiku-layout loading, PyTorch save/load, seeded demo initialisation.

Upstream keys are `module/name` (optionally prefixed `param/`), e.g.
`transformer/decoder_layer_0/multi_head_attention/query/w` or `phoenix_model/proj_mat_1`. Our weights
keep Haiku's [in, out] layout, so loading is a renaming plus a shape check.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .embeddings import HashEmbeddingTables
from .ranker import PhoenixModel
from .retrieval import PhoenixRetrievalModel

_LAYER = re.compile(r"^transformer\.layers\.(\d+)\.(.+)$")


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
    return f"{root}/{torch_name}"


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
    root = _root(model)
    expected = {_haiku_key(name, root): (name, p) for name, p in model.named_parameters()}
    missing = sorted(set(expected) - set(params))
    unexpected = sorted(set(params) - set(expected))
    misshaped = [f"{k}: checkpoint {tuple(params[k].shape)} vs model {tuple(p.shape)}"
                 for k, (_, p) in expected.items() if k in params and tuple(params[k].shape) != tuple(p.shape)]
    if missing or unexpected or misshaped:
        lines = ([f"missing key: {k}" for k in missing] + [f"unexpected key: {k}" for k in unexpected]
                 + [f"mis-shaped key: {s}" for s in misshaped])
        raise ValueError(f"checkpoint does not fit {type(model).__name__}:\n  " + "\n  ".join(lines))
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


def load_tables(path) -> HashEmbeddingTables:
    """Hash tables from an .npz with `user_table`, `post_table`, `author_table` ([vocab, D] each)."""
    with np.load(path, allow_pickle=False) as z:
        names = ("user_table", "post_table", "author_table")
        missing = [n for n in names if n not in z.files]
        if missing:
            raise ValueError(f"{path}: missing table(s) {missing}; found {sorted(z.files)}")
        arrays = [np.asarray(z[n], dtype=np.float32) for n in names]
    dims = {a.shape[1] for a in arrays if a.ndim == 2}
    if any(a.ndim != 2 for a in arrays) or len(dims) != 1:
        raise ValueError(f"{path}: tables must be 2-D [vocab, D] with one D, got {[a.shape for a in arrays]}")
    tables = HashEmbeddingTables(dims.pop(), *(a.shape[0] for a in arrays))
    with torch.no_grad():
        for n, a in zip(names, arrays):
            getattr(tables, n).copy_(torch.from_numpy(a))
    return tables


def init_seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded non-zero init for demos (upstream initialises to zero: every probability 0.5).
    Matrices ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1^2), hash tables ~ N(0, 1) with row 0 zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if name.endswith("scale"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("_table") and isinstance(module, HashEmbeddingTables):
                p.copy_(torch.randn(p.shape, generator=g))
                p[0].zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[0] ** 0.5)
    return module
