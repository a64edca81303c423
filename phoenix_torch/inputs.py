"""Model inputs: RecsysBatch (hash values and raw features) and RecsysEmbeddings (looked-up vectors).

Both hold one tensor per declared field, by name, as upstream's containers do:
`RecsysBatch(user_hashes=..., history_post_hashes=..., ...)`. Which fields a model reads, their shapes,
dtypes and valid values come from its config's feature declaration (features.py), and `validate_batch`
checks them, naming the field. Optional fields (May: IP hashes, dwell, timestamps) may be left out.
Hash value 0 is padding.
"""
from __future__ import annotations

import contextlib

import torch

from phoenix_runtime.request import value_problem

from .features import Field, HashedFeature, active, batch_fields


class _Named:
    """Tensors by name, in the order given; attribute access; `get(name)` is None for a field not given."""

    def __init__(self, **tensors):
        self.__dict__.update(tensors)

    @property
    def _fields(self) -> tuple[str, ...]:
        return tuple(self.__dict__)

    def get(self, name: str):
        return self.__dict__.get(name)

    def _asdict(self) -> dict:
        return dict(self.__dict__)

    def _replace(self, **changes):
        return type(self)(**{**self.__dict__, **changes})

    def map(self, fn):
        """A copy with fn applied to every tensor (e.g. `.map(lambda t: t.to("cuda"))`)."""
        return type(self)(**{k: fn(v) for k, v in self.__dict__.items()})

    def __repr__(self):
        shapes = ", ".join(f"{k}={tuple(v.shape) if hasattr(v, 'shape') else v!r}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({shapes})"


class RecsysBatch(_Named):
    """Hash values and raw features, one field per declared input: user_hashes [B, Hu], history_post_hashes
    [B, S, Hi], history_author_hashes [B, S, Ha], history_actions [B, S, A], history_product_surface [B, S],
    candidate_post_hashes [B, C, Hi], candidate_author_hashes [B, C, Ha], candidate_product_surface [B, C];
    May: user_ip_hashes [B, Hip], history_continuous_actions [B, S, 8], candidate_impr_ts and
    candidate_post_creation_ts [B, C] (seconds); plus any feature added by configuration."""


class RecsysEmbeddings(_Named):
    """The looked-up hash vectors, one field per hashed feature: `<x>_hashes` [..., H] -> `<x>_embeddings`
    [..., H, D] (user_embeddings, history_post_embeddings, candidate_post_embeddings,
    history_author_embeddings, candidate_author_embeddings; May: user_ip_embeddings)."""


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


def _check_values(f: Field, t: torch.Tensor, vocab: dict[str, int] | None) -> None:
    """The value rule of the field's check kind (phoenix_runtime.request.value_problem, the served check)."""
    if f.dtype == "int64" and (t.is_floating_point() or t.dtype == torch.bool or t.is_complex()):
        raise TypeError(f"{f.name}: expected an integer tensor, got {t.dtype}")
    if f.dtype == "float32" and not t.is_floating_point():
        raise TypeError(f"{f.name}: expected a floating-point tensor, got {t.dtype}")
    high = vocab.get(f.entity) if (f.check == "hash" and vocab) else f.high
    problem = value_problem(f.check, t.detach(), high, f.entity)
    if problem:
        raise ValueError(f"{f.name}: {problem}")


def validate_batch(batch: RecsysBatch, config, vocab: dict[str, int] | None = None, features=None) -> dict[str, int]:
    """Checks every declared field of `batch` (of `features`, default the config's): present unless optional;
    shape; dtype; values: hashes in [0, vocab) of their entity when `vocab` is given, categories in range,
    actions 0/1, continuous values finite, timestamps >= 0. Returns the dims {"B", "S", "C"}. Errors name
    the field."""
    dims: dict[str, int] = {"S": config.history_seq_len}
    for f in batch_fields(config.features if features is None else features, config.num_actions):
        t = batch.get(f.name)
        if t is None:
            if f.optional:
                continue
            raise ValueError(f"{f.name}: missing; the model declares it (a {f.check} input of shape {f.shape})")
        _check_shape(f.name, t, f.shape, dims)
        _check_values(f, t, vocab)
    return dims


def validate_embeddings(emb: RecsysEmbeddings, config, dims: dict[str, int], features=None) -> None:
    """Checks the RecsysEmbeddings field of every hashed feature against the batch dims (B, S, C) and D."""
    for f in active(config.features if features is None else features):
        if not isinstance(f, HashedFeature):
            continue
        t = emb.get(f.embedding_field)
        if t is None:
            if f.optional:
                continue
            raise ValueError(f"{f.embedding_field}: missing; the model declares {f.name}")
        _check_shape(f.embedding_field, t, (*f.dims, f.num_hashes, config.emb_size), dims)
        if not t.is_floating_point():
            raise TypeError(f"{f.embedding_field}: expected a floating-point tensor, got {t.dtype}")


def random_batch(config, batch_size: int, num_candidates: int, vocab: int | dict[str, int], seed: int = 0,
                 pad_history: bool = True) -> RecsysBatch:
    """A valid random RecsysBatch for `config`: hashes in [1, vocab), histories packed at the front with a
    random number of valid items (padding at the tail), sparse multi-hot actions, small non-negative
    continuous values, timestamps with ages of a few hours."""
    g = torch.Generator().manual_seed(seed)
    dims = {"B": batch_size, "S": config.history_seq_len, "C": num_candidates}
    now = 1_750_000_000  # timestamps: one "now", creation times up to ~3 days before it
    out = {}
    for feature in active(config.features):
        for f in feature.fields(config.num_actions):
            shape = tuple(dims[d] if isinstance(d, str) else d for d in f.shape)
            if f.check == "hash":
                v = vocab if isinstance(vocab, int) else vocab[f.entity]
                out[f.name] = torch.randint(1, v, shape, generator=g)
            elif f.check == "index":
                out[f.name] = torch.randint(0, f.high, shape, generator=g)
            elif f.check == "multi_hot":
                out[f.name] = (torch.rand(shape, generator=g) < 0.15).float()
            elif f.check == "finite":
                out[f.name] = torch.rand(shape, generator=g) * 40.0
            elif f.name == feature.now_field:
                out[f.name] = torch.full(shape, now)
            else:
                out[f.name] = now - torch.randint(0, 3 * 86400, shape, generator=g)
    S = dims["S"]
    if pad_history and S > 1:
        lengths = torch.randint(1, S + 1, (batch_size,), generator=g)
        pad = torch.arange(S)[None, :] >= lengths[:, None]
        for f in config.batch_fields:
            if f.shape[:2] == ("B", "S") and f.check in ("hash", "multi_hot", "finite"):
                out[f.name][pad] = 0
    return RecsysBatch(**out)
