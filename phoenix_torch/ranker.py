"""The Phoenix ranker: reductions -> transformer with candidate isolation -> logits [B, C, A].

Reductions and the unembedding run in float32 (no biases anywhere); the transformer runs in the
config's forward dtype.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import PhoenixModelConfig
from .embeddings import HashEmbeddingTables
from .inputs import RecsysBatch, RecsysEmbeddings, should_check_inputs, validate_batch, validate_embeddings
from .transformer import RMSNorm, Transformer, default_positions, linear_param, right_anchored_positions


def _flat(x: torch.Tensor) -> torch.Tensor:
    """[..., H, D] -> [..., H*D] in float32."""
    return x.float().flatten(-2)


def block_user_reduce(user_hashes, user_embeddings, proj_mat_1):
    """[B, Hu, D] -> ([B, 1, D], valid [B, 1]); valid = user_hashes[:, 0] != 0."""
    user = _flat(user_embeddings)[:, None, :] @ proj_mat_1.float()
    return user, (user_hashes[:, :1] != 0)


def action_embeddings(history_actions, action_projection):
    """(2 * actions - 1) @ action_projection; positions with no action at all get the zero vector."""
    a = history_actions.float()
    e = (2.0 * a - 1.0) @ action_projection.float()
    return e * (a.sum(-1, keepdim=True) > 0)


def surface_embeddings(product_surface, table):
    """one_hot(surface, 16) @ table, computed as the equivalent row gather."""
    return table.float()[product_surface.long()]


def block_history_reduce(history_post_hashes, history_post_embeddings, history_author_embeddings,
                         history_product_surface_embeddings, history_actions_embeddings, proj_mat_3):
    """concat [post (Hi*D), author (Ha*D), action (D), surface (D)] @ proj_mat_3 -> ([B, S, D], valid [B, S])."""
    x = torch.cat([_flat(history_post_embeddings), _flat(history_author_embeddings),
                   history_actions_embeddings.float(), history_product_surface_embeddings.float()], dim=-1)
    return x @ proj_mat_3.float(), (history_post_hashes[..., 0] != 0)


def block_candidate_reduce(candidate_post_hashes, candidate_post_embeddings, candidate_author_embeddings,
                           candidate_product_surface_embeddings, proj_mat_2):
    """concat [post (Hi*D), author (Ha*D), surface (D)] @ proj_mat_2 -> ([B, C, D], valid [B, C])."""
    x = torch.cat([_flat(candidate_post_embeddings), _flat(candidate_author_embeddings),
                   candidate_product_surface_embeddings.float()], dim=-1)
    return x @ proj_mat_2.float(), (candidate_post_hashes[..., 0] != 0)


class UserHistoryEncoder(nn.Module):
    """What the ranker and the retrieval user tower share: the user and history reductions (with their
    action and product-surface embeddings) and the transformer."""

    def __init__(self, config):
        super().__init__()
        self.config = cfg = config
        d, hc = cfg.emb_size, cfg.hash_config
        self.product_surface_embedding_table = linear_param(cfg.product_surface_vocab_size, d)
        self.action_projection = linear_param(cfg.num_actions, d)
        self.proj_mat_1 = linear_param(hc.num_user_hashes * d, d)
        self.proj_mat_3 = linear_param((hc.num_item_hashes + hc.num_author_hashes + 2) * d, d)
        self.transformer = Transformer(cfg.transformer)

    @property
    def fprop_dtype(self) -> torch.dtype:
        return getattr(torch, self.config.fprop_dtype)

    def validate(self, batch: RecsysBatch, embeddings: RecsysEmbeddings) -> None:
        cfg = self.config
        dims = validate_batch(batch, cfg.hash_config, cfg.num_actions, cfg.history_seq_len,
                              cfg.product_surface_vocab_size)
        validate_embeddings(embeddings, cfg.hash_config, cfg.emb_size, dims)

    def user_and_history(self, batch: RecsysBatch, embeddings: RecsysEmbeddings):
        """-> (user [B, 1, D], user_valid [B, 1], history [B, S, D], history_valid [B, S]), float32."""
        user, user_valid = block_user_reduce(batch.user_hashes, embeddings.user_embeddings, self.proj_mat_1)
        history, history_valid = block_history_reduce(
            batch.history_post_hashes, embeddings.history_post_embeddings, embeddings.history_author_embeddings,
            surface_embeddings(batch.history_product_surface, self.product_surface_embedding_table),
            action_embeddings(batch.history_actions, self.action_projection), self.proj_mat_3)
        return user, user_valid, history, history_valid


class PhoenixModel(UserHistoryEncoder):
    """The ranker. forward(batch, embeddings) -> logits float32 [B, C, num_actions]."""

    def __init__(self, config: PhoenixModelConfig):
        super().__init__(config)
        d, hc = config.emb_size, config.hash_config
        self.proj_mat_2 = linear_param((hc.num_item_hashes + hc.num_author_hashes + 1) * d, d)
        self.rms_norm = RMSNorm(d)
        self.unembeddings = linear_param(d, config.num_actions)

    def forward(self, batch: RecsysBatch, embeddings: RecsysEmbeddings) -> torch.Tensor:
        if should_check_inputs():
            self.validate(batch, embeddings)
        cfg = self.config
        user, user_valid, history, history_valid = self.user_and_history(batch, embeddings)
        candidates, candidate_valid = block_candidate_reduce(
            batch.candidate_post_hashes, embeddings.candidate_post_embeddings,
            embeddings.candidate_author_embeddings,
            surface_embeddings(batch.candidate_product_surface, self.product_surface_embedding_table), self.proj_mat_2)

        h = torch.cat([user, history, candidates], dim=1).to(self.fprop_dtype)
        valid = torch.cat([user_valid, history_valid, candidate_valid], dim=1)
        prefix_len = 1 + history.shape[1]
        if cfg.right_anchored_rope:
            positions = right_anchored_positions(history_valid, candidate_valid)
        else:
            positions = default_positions(h.shape[0], h.shape[1], h.device)
        h = self.transformer(h, positions, valid, prefix_len, causal=cfg.history_attention == "causal",
                             impl=cfg.attention_impl, candidates_only=True)
        h = self.rms_norm(h)
        return h.float() @ self.unembeddings.float()


class HashedPhoenixModel(nn.Module):
    """"Hashes in": the hash tables and the ranker in one module. Arguments are the RecsysBatch fields,
    positional, in RecsysBatch order; returns logits [B, C, A]."""

    def __init__(self, model: PhoenixModel, tables: HashEmbeddingTables):
        super().__init__()
        if tables.emb_size != model.config.emb_size:
            raise ValueError(f"tables have emb_size {tables.emb_size}, model has {model.config.emb_size}")
        self.model, self.tables = model, tables

    def forward(self, *fields: torch.Tensor) -> torch.Tensor:
        batch = fields[0] if len(fields) == 1 and isinstance(fields[0], RecsysBatch) else RecsysBatch(*fields)
        if should_check_inputs():
            cfg = self.model.config
            validate_batch(batch, cfg.hash_config, cfg.num_actions, cfg.history_seq_len, cfg.product_surface_vocab_size)
            self.tables.check_range(batch)
        return self.model(batch, self.tables(batch))
