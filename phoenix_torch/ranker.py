"""The Phoenix ranker: declared features -> reductions -> transformer with candidate isolation -> logits.

Each side (user, history, candidates) concatenates its features' vectors in declaration order and
projects them to D with one matrix (proj_mat_1 / proj_mat_3 / proj_mat_2, no biases, float32):

    hashed       the H looked-up hash vectors, flattened  [.., H*D]
    categorical  a row of its table                      [.., D]
    actions      (2a - 1) @ action_projection, 0 where no action
    continuous   gelu(clip(v, 0, s) / s @ proj1) @ proj2
    time_bucket  a row of its table, by age bucket

A hashed user feature declared `enters="add"` (the May IP hashes) is summed over its hashes and added to
the projected user token. The sequence is [user | history | candidates]; the transformer runs in the
config's forward dtype; the final RMSNorm's candidate rows give `logits = x @ unembeddings` and (May)
`continuous_preds = sigmoid(x @ continuous_unembeddings)`, rounded to the forward dtype as upstream.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import PhoenixModelConfig
from .embeddings import HashEmbeddingTables
from .features import (REDUCTIONS, ActionsFeature, CategoricalFeature, ContinuousFeature, HashedFeature,
                       TimeBucketFeature, active, model_params, reduction_units, validity_feature)
from .inputs import RecsysBatch, RecsysEmbeddings, should_check_inputs, validate_batch, validate_embeddings
from .transformer import RMSNorm, Transformer, linear_param, right_anchored_positions, slot_positions


class RecsysModelOutput(NamedTuple):
    logits: torch.Tensor                           # [B, C, A] float32 (values of the forward dtype)
    continuous_preds: torch.Tensor | None = None   # [B, C, K] (May: K = 8, column 1 = dwell time)


def flat(x: torch.Tensor) -> torch.Tensor:
    """[..., H, D] -> [..., H*D] in float32."""
    return x.float().flatten(-2)


def reduce(parts: list[torch.Tensor], proj: torch.Tensor) -> torch.Tensor:
    """concat(parts) @ proj, in float32 (no bias)."""
    return torch.cat([p.float() for p in parts], dim=-1) @ proj.float()


def action_embeddings(history_actions, action_projection):
    """(2 * actions - 1) @ action_projection; positions with no action at all get the zero vector."""
    a = history_actions.float()
    e = (2.0 * a - 1.0) @ action_projection.float()
    return e * (a.sum(-1, keepdim=True) > 0)


def table_rows(index, table):
    """one_hot(index, vocab) @ table, computed as the equivalent row gather."""
    return table.float()[index.long()]


def continuous_embeddings(values, proj1, proj2, scale: float):
    """gelu_tanh(clip(v, 0, scale) / scale @ proj1 [1, H]) @ proj2 [H, D] (no biases)."""
    x = values.float().clamp(0.0, scale)[..., None] / scale
    return F.gelu(x @ proj1.float(), approximate="tanh") @ proj2.float()


def time_buckets(now_s, time_s, granularity_mins: int, max_age_mins: int):
    """clip((now - time) // 60 // g + 1, 0, max // g + 1); 0 when the age is negative or a timestamp is 0."""
    age_min = torch.div(now_s.long() - time_s.long(), 60, rounding_mode="floor")
    bucket = (torch.div(age_min, granularity_mins, rounding_mode="floor") + 1).clamp(0, max_age_mins // granularity_mins + 1)
    unknown = (age_min < 0) | (now_s == 0) | (time_s == 0)
    return torch.where(unknown, torch.zeros_like(bucket), bucket)


def block_user_reduce(user_hashes, user_embeddings, proj_mat_1, user_ip_embeddings=None):
    """[B, Hu, D] -> ([B, 1, D], valid [B, 1]); May: the sum of the IP hash vectors is added after the
    projection. Upstream's name, for the January and May fields."""
    user = reduce([flat(user_embeddings)[:, None, :]], proj_mat_1)
    if user_ip_embeddings is not None:
        user = user + user_ip_embeddings.float().sum(1, keepdim=True)
    return user, (user_hashes[:, :1] != 0)


def block_history_reduce(history_post_hashes, history_post_embeddings, history_author_embeddings,
                         history_product_surface_embeddings, history_actions_embeddings, proj_mat_3,
                         history_continuous_embeddings=None):
    """concat [post, author, action, surface(, dwell)] @ proj_mat_3 -> ([B, S, D], valid [B, S])."""
    parts = [flat(history_post_embeddings), flat(history_author_embeddings), history_actions_embeddings,
             history_product_surface_embeddings]
    if history_continuous_embeddings is not None:
        parts.append(history_continuous_embeddings)
    return reduce(parts, proj_mat_3), (history_post_hashes[..., 0] != 0)


def block_candidate_reduce(candidate_post_hashes, candidate_post_embeddings, candidate_author_embeddings,
                           candidate_product_surface_embeddings, proj_mat_2, candidate_post_age_embeddings=None):
    """concat [post, author, surface(, post age)] @ proj_mat_2 -> ([B, C, D], valid [B, C])."""
    parts = [flat(candidate_post_embeddings), flat(candidate_author_embeddings), candidate_product_surface_embeddings]
    if candidate_post_age_embeddings is not None:
        parts.append(candidate_post_age_embeddings)
    return reduce(parts, proj_mat_2), (candidate_post_hashes[..., 0] != 0)


class FeatureEncoder(nn.Module):
    """The declared features of the given sides -> one float32 [B, rows, D] sequence per side, with its
    validity. Owns the feature parameters and the reduce projections."""

    def __init__(self, config, sides):
        super().__init__()
        self.config, self.sides = config, tuple(sides)
        d = config.emb_size
        self.features = [f for f in active(config.features) if f.side in self.sides]
        for name, shape in model_params(self.features, d, config.num_actions).items():
            self.register_parameter(name, linear_param(*shape))
        for side in self.sides:
            self.register_parameter(REDUCTIONS[side], linear_param(reduction_units(self.features, side) * d, d))

    def fprop_round(self, x: torch.Tensor) -> torch.Tensor:
        """Upstream rounds table, action and continuous embeddings to the forward dtype before the reduction."""
        return x.to(getattr(torch, self.config.fprop_dtype)).float()

    def vectors(self, f, batch: RecsysBatch, embeddings: RecsysEmbeddings, rows: tuple) -> torch.Tensor:
        """One feature's part of its side's concatenation, float32 [*rows, units*D] (its zero value when an
        optional field is absent)."""
        d = self.config.emb_size
        if isinstance(f, HashedFeature):
            e = embeddings.get(f.embedding_field)
            return flat(e) if e is not None else torch.zeros(*rows, f.num_hashes * d)
        if isinstance(f, CategoricalFeature):
            return self.fprop_round(table_rows(batch.get(f.name), getattr(self, f.table_name)))
        if isinstance(f, ActionsFeature):
            return self.fprop_round(action_embeddings(batch.get(f.name), getattr(self, f.param)))
        if isinstance(f, ContinuousFeature):
            v = batch.get(f.name)
            v = v[..., f.column] if v is not None else torch.zeros(rows)
            p = f.param_prefix
            return self.fprop_round(continuous_embeddings(v, getattr(self, f"{p}_proj1"), getattr(self, f"{p}_proj2"),
                                                          f.scale))
        if isinstance(f, TimeBucketFeature):
            now, then = batch.get(f.now_field), batch.get(f.time_field)
            if now is None or then is None:
                bucket = torch.zeros(rows, dtype=torch.long)
            else:
                bucket = time_buckets(now, then, f.granularity_mins, f.max_age_mins)
            return self.fprop_round(table_rows(bucket, getattr(self, f.table_name)))
        raise TypeError(f"unknown feature kind {type(f).__name__}")

    def side(self, side: str, batch: RecsysBatch, embeddings: RecsysEmbeddings):
        """-> (float32 [B, rows, D], valid [B, rows]) for "user" (rows = 1), "history" (S) or "candidate" (C)."""
        valid_f = validity_feature(self.features, side)
        hashes = batch.get(valid_f.name)
        rows = (hashes.shape[0], 1) if side == "user" else tuple(hashes.shape[:2])
        device = hashes.device
        concat = [f for f in self.features if f.side == side and f.enters == "concat"]
        parts = [self.vectors(f, batch, embeddings, rows).to(device) for f in concat]
        if side == "user":
            parts = [p.reshape(rows[0], 1, -1) for p in parts]
        x = reduce(parts, getattr(self, REDUCTIONS[side]))
        for f in self.features:
            if f.side == side and f.enters == "add" and embeddings.get(f.embedding_field) is not None:
                x = x + embeddings.get(f.embedding_field).float().sum(-2, keepdim=True)
        valid = hashes[..., 0] != 0
        return x, valid.reshape(rows)


class UserHistoryEncoder(nn.Module):
    """What the ranker and the retrieval user tower share: the user and history reductions and the transformer."""

    def __init__(self, config, sides=("user", "history")):
        super().__init__()
        self.config = config
        self.encoder = FeatureEncoder(config, sides)
        self.transformer = Transformer(config.transformer)

    @property
    def fprop_dtype(self) -> torch.dtype:
        return getattr(torch, self.config.fprop_dtype)

    def validate(self, batch: RecsysBatch, embeddings: RecsysEmbeddings, sides) -> dict[str, int]:
        """The fields the model reads: the embeddings of hashed features, the hashes of each side's validity
        feature (other hash fields are checked when given) and every other feature's fields."""
        cfg = self.config
        used = [f for f in active(cfg.features) if f.side in sides]
        valid = {validity_feature(used, side).name for side in sides}
        read = [dataclasses.replace(f, optional=True) if isinstance(f, HashedFeature) and f.name not in valid else f
                for f in used]
        dims = validate_batch(batch, cfg, features=read)
        validate_embeddings(embeddings, cfg, dims, features=used)
        return dims


class PhoenixModel(UserHistoryEncoder):
    """The ranker. forward(batch, embeddings) -> RecsysModelOutput(logits [B, C, A], continuous_preds)."""

    def __init__(self, config: PhoenixModelConfig):
        super().__init__(config, sides=("user", "history", "candidate"))
        d = config.emb_size
        self.rms_norm = RMSNorm(d)
        self.unembeddings = linear_param(d, config.num_actions)
        if config.num_continuous_actions:
            self.continuous_unembeddings = linear_param(d, config.num_continuous_actions)

    def forward(self, batch: RecsysBatch, embeddings: RecsysEmbeddings) -> RecsysModelOutput:
        cfg = self.config
        if should_check_inputs():
            self.validate(batch, embeddings, ("user", "history", "candidate"))
        user, user_valid = self.encoder.side("user", batch, embeddings)
        history, history_valid = self.encoder.side("history", batch, embeddings)
        candidates, candidate_valid = self.encoder.side("candidate", batch, embeddings)

        h = torch.cat([user, history, candidates], dim=1).to(self.fprop_dtype)
        valid = torch.cat([user_valid, history_valid, candidate_valid], dim=1)
        prefix_len = 1 + history.shape[1]
        if cfg.right_anchored_rope:
            positions = right_anchored_positions(history_valid, candidate_valid)
        else:
            positions = slot_positions(h.shape[0], prefix_len, candidates.shape[1], cfg.candidate_seq_len, h.device)
        h = self.transformer(h, positions, valid, prefix_len, causal=cfg.history_attention == "causal",
                             impl=cfg.attention_impl, candidates_only=True)
        h = self.rms_norm(h).float()
        logits = (h @ self.unembeddings.float()).to(self.fprop_dtype).float()
        continuous = None
        if cfg.num_continuous_actions:
            continuous = torch.sigmoid(h @ self.continuous_unembeddings.float()).to(self.fprop_dtype).float()
        return RecsysModelOutput(logits, continuous)


class HashedPhoenixModel(nn.Module):
    """"Hashes in": the hash tables and the ranker in one module. forward(batch) -> RecsysModelOutput."""

    def __init__(self, model: PhoenixModel, tables: HashEmbeddingTables):
        super().__init__()
        if tables.emb_size != model.config.emb_size:
            raise ValueError(f"tables have emb_size {tables.emb_size}, model has {model.config.emb_size}")
        self.model, self.tables = model, tables

    def forward(self, batch: RecsysBatch) -> RecsysModelOutput:
        features = self.model.config.features
        if should_check_inputs():
            validate_batch(batch, self.model.config, self.tables.vocab_sizes)
        return self.model(batch, self.tables.lookup(batch, features))
