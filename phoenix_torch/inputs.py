"""Model inputs: RecsysBatch (hash values) and RecsysEmbeddings (looked-up vectors), with validation.

Hash value 0 is padding. Validity comes from the first hash only (user_hashes[:, 0], ...[..., 0]).
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from .config import HashConfig


class RecsysBatch(NamedTuple):
    user_hashes: torch.Tensor              # [B, Hu] int
    history_post_hashes: torch.Tensor      # [B, S, Hi] int
    history_author_hashes: torch.Tensor    # [B, S, Ha] int
    history_actions: torch.Tensor          # [B, S, A] float multi-hot
    history_product_surface: torch.Tensor  # [B, S] int in [0, 16)
    candidate_post_hashes: torch.Tensor    # [B, C, Hi] int
    candidate_author_hashes: torch.Tensor  # [B, C, Ha] int
    candidate_product_surface: torch.Tensor  # [B, C] int in [0, 16)


class RecsysEmbeddings(NamedTuple):
    user_embeddings: torch.Tensor              # [B, Hu, D]
    history_post_embeddings: torch.Tensor      # [B, S, Hi, D]
    candidate_post_embeddings: torch.Tensor    # [B, C, Hi, D]
    history_author_embeddings: torch.Tensor    # [B, S, Ha, D]
    candidate_author_embeddings: torch.Tensor  # [B, C, Ha, D]


_input_checks = True


@contextlib.contextmanager
def skip_input_checks():
    """Inside this block the models skip their host-side input checks (they read tensor values, which
    syncs the device): for CUDA-graph capture of inputs already known to be valid."""
    global _input_checks
    saved, _input_checks = _input_checks, False
    try:
        yield
    finally:
        _input_checks = saved


def should_check_inputs() -> bool:
    """False while tracing/compiling/exporting (graphs carry their own checks) or inside skip_input_checks()."""
    tracing = torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
    return _input_checks and not tracing


BATCH_FIELDS: tuple[str, ...] = RecsysBatch._fields
EMBEDDING_FIELDS: tuple[str, ...] = RecsysEmbeddings._fields


def batch_layout(hc: HashConfig, num_actions: int) -> dict[str, tuple[tuple, str]]:
    """Each RecsysBatch field's symbolic shape and kind ("int" or "float")."""
    return {
        "user_hashes": (("B", hc.num_user_hashes), "int"),
        "history_post_hashes": (("B", "S", hc.num_item_hashes), "int"),
        "history_author_hashes": (("B", "S", hc.num_author_hashes), "int"),
        "history_actions": (("B", "S", num_actions), "float"),
        "history_product_surface": (("B", "S"), "int"),
        "candidate_post_hashes": (("B", "C", hc.num_item_hashes), "int"),
        "candidate_author_hashes": (("B", "C", hc.num_author_hashes), "int"),
        "candidate_product_surface": (("B", "C"), "int"),
    }


def _check_shape(name: str, t, expected: tuple, dims: dict[str, int]) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != len(expected):
        raise ValueError(f"{name}: expected {len(expected)} dims {expected}, got shape {tuple(t.shape)}")
    for axis, (want, got) in enumerate(zip(expected, t.shape)):
        if isinstance(want, str):
            if dims.setdefault(want, got) != got:
                raise ValueError(f"{name}: dim {axis} ({want}) is {got}, but another field has {want}={dims[want]}")
        elif want != got:
            raise ValueError(f"{name}: dim {axis} must be {want}, got shape {tuple(t.shape)}")


def validate_batch(batch: RecsysBatch, hash_config: HashConfig, num_actions: int, history_seq_len: int | None = None,
                   product_surface_vocab_size: int = 16) -> dict[str, int]:
    """Checks shapes, dtypes and value ranges that do not depend on the tables; returns {"B","S","C"}."""
    dims: dict[str, int] = {}
    if history_seq_len is not None:
        dims["S"] = history_seq_len
    for name, (shape, kind) in batch_layout(hash_config, num_actions).items():
        t = getattr(batch, name)
        _check_shape(name, t, shape, dims)
        if kind == "int" and (t.is_floating_point() or t.dtype == torch.bool or t.is_complex()):
            raise TypeError(f"{name}: expected an integer tensor, got {t.dtype}")
        if kind == "float" and not t.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
        if kind == "int" and t.numel() and int(t.min()) < 0:
            raise ValueError(f"{name}: hash/surface values must be >= 0, found {int(t.min())}")
    for name in ("history_product_surface", "candidate_product_surface"):
        t = getattr(batch, name)
        if t.numel() and int(t.max()) >= product_surface_vocab_size:
            raise ValueError(f"{name}: product surface must be in [0, {product_surface_vocab_size}), found {int(t.max())}")
    a = batch.history_actions
    if a.numel() and not bool(((a == 0) | (a == 1)).all()):
        raise ValueError("history_actions: must be multi-hot 0/1")
    return dims


def validate_embeddings(emb: RecsysEmbeddings, hash_config: HashConfig, emb_size: int, dims: dict[str, int]) -> None:
    """Checks RecsysEmbeddings shapes against each other and the batch dims (B, S, C)."""
    hc, d = hash_config, emb_size
    layout = {
        "user_embeddings": ("B", hc.num_user_hashes, d),
        "history_post_embeddings": ("B", "S", hc.num_item_hashes, d),
        "candidate_post_embeddings": ("B", "C", hc.num_item_hashes, d),
        "history_author_embeddings": ("B", "S", hc.num_author_hashes, d),
        "candidate_author_embeddings": ("B", "C", hc.num_author_hashes, d),
    }
    for name, shape in layout.items():
        t = getattr(emb, name)
        _check_shape(name, t, shape, dims)
        if not t.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")


def random_batch(hash_config: HashConfig, batch_size: int, history_len: int, num_candidates: int,
                 vocab: int | tuple[int, int, int], num_actions: int = 19, seed: int = 0,
                 product_surface_vocab_size: int = 16, pad_history: bool = True) -> RecsysBatch:
    """A valid random RecsysBatch: hashes in [1, vocab), histories packed at the front with a random
    number of valid items (padding at the tail), sparse multi-hot actions."""
    g = torch.Generator().manual_seed(seed)
    uv, pv, av = (vocab, vocab, vocab) if isinstance(vocab, int) else vocab
    hc, B, S, C = hash_config, batch_size, history_len, num_candidates

    def hashes(v, *shape):
        return torch.randint(1, v, shape, generator=g, dtype=torch.int32)

    hist_post = hashes(pv, B, S, hc.num_item_hashes)
    hist_author = hashes(av, B, S, hc.num_author_hashes)
    actions = (torch.rand(B, S, num_actions, generator=g) < 0.15).float()
    surface = torch.randint(0, product_surface_vocab_size, (B, S), generator=g, dtype=torch.int32)
    if pad_history and S > 1:
        lengths = torch.randint(1, S + 1, (B,), generator=g)
        pad = torch.arange(S)[None, :] >= lengths[:, None]
        hist_post[pad] = 0
        hist_author[pad] = 0
        actions[pad] = 0
    return RecsysBatch(
        user_hashes=hashes(uv, B, hc.num_user_hashes),
        history_post_hashes=hist_post,
        history_author_hashes=hist_author,
        history_actions=actions,
        history_product_surface=surface,
        candidate_post_hashes=hashes(pv, B, C, hc.num_item_hashes),
        candidate_author_hashes=hashes(av, B, C, hc.num_author_hashes),
        candidate_product_surface=torch.randint(0, product_surface_vocab_size, (B, C), generator=g, dtype=torch.int32),
    )
