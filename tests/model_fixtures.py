"""Small seeded models for property tests (shared by the model, export and engine tests)."""
from __future__ import annotations

import torch

from phoenix_torch import (HashEmbeddingTables, HashedPhoenixModel, PhoenixModel, TransformerConfig, get_preset,
                           init_seeded, random_batch)

SMALL_VOCAB = 97


def small_config(**overrides):
    """D=32, 2 layers, GQA 4 q / 2 kv heads: fast, and exercises every code path."""
    base = dict(transformer=TransformerConfig(emb_size=32, num_layers=2, num_q_heads=4, num_kv_heads=2, key_size=16),
                history_seq_len=6, candidate_seq_len=5)
    base.update(overrides)
    return get_preset("demo", **base)


def small_ranker(seed=0, **overrides) -> HashedPhoenixModel:
    cfg = small_config(**overrides)
    model = init_seeded(PhoenixModel(cfg), seed).eval()
    tables = init_seeded(HashEmbeddingTables(cfg.emb_size, SMALL_VOCAB, SMALL_VOCAB, SMALL_VOCAB), seed + 1)
    return HashedPhoenixModel(model, tables).eval()


def batch_for(ranker: HashedPhoenixModel, batch_size: int, num_candidates: int, seed: int = 0):
    cfg = ranker.model.config
    return random_batch(cfg.hash_config, batch_size, cfg.history_seq_len, num_candidates, SMALL_VOCAB, seed=seed)


@torch.no_grad()
def logits(ranker, batch):
    return ranker(batch)
