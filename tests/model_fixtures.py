"""Small seeded models for property tests (shared by the model, export and engine tests)."""
from __future__ import annotations

import torch

from phoenix_torch import (CategoricalFeature, HashEmbeddingTables, HashedFeature, HashedPhoenixModel, PhoenixModel,
                           RecsysBatch, TransformerConfig, get_preset, init_seeded, random_batch)
from phoenix_torch.features import entities

SMALL_VOCAB = 97
# The seed guide's two example features, added by configuration only.
LANGUAGE = HashedFeature("user_language_hashes", "user", entity="language", num_hashes=1)
MEDIA_CATEGORY = CategoricalFeature("candidate_media_category", "candidate", vocab=8)
EXTRA_FEATURES = (LANGUAGE, MEDIA_CATEGORY)
# (release, extra features): January, May, May + the two example features
VARIANTS = {"january": ("january", ()), "may": ("may", ()), "may+extras": ("may", EXTRA_FEATURES)}


def small_config(variant: str = "january", **overrides):
    """D=32, 2 layers, GQA 4 q / 2 kv heads: fast, and exercises every code path."""
    release, extra = VARIANTS[variant]
    base = dict(transformer=TransformerConfig(emb_size=32, num_layers=2, num_q_heads=4, num_kv_heads=2, key_size=16),
                history_seq_len=6, candidate_seq_len=5)
    base.update(overrides)
    return get_preset("demo", release=release, extra_features=extra, **base)


def small_tables(cfg, seed=1) -> HashEmbeddingTables:
    return init_seeded(HashEmbeddingTables(cfg.emb_size, {e: SMALL_VOCAB for e in entities(cfg.features)}), seed)


def small_ranker(seed=0, variant: str = "january", **overrides) -> HashedPhoenixModel:
    cfg = small_config(variant, **overrides)
    model = init_seeded(PhoenixModel(cfg), seed).eval()
    return HashedPhoenixModel(model, small_tables(cfg, seed + 1)).eval()


def batch_for(ranker: HashedPhoenixModel, batch_size: int, num_candidates: int, seed: int = 0) -> RecsysBatch:
    return random_batch(ranker.model.config, batch_size, num_candidates, SMALL_VOCAB, seed=seed)


def candidate_fields(ranker) -> list[str]:
    return [f.name for f in ranker.model.config.batch_fields if f.shape[:2] == ("B", "C")]


@torch.no_grad()
def logits(ranker, batch):
    return ranker(batch).logits
