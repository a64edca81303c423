"""phoenix_torch: a faithful PyTorch port of X's Phoenix ranker and two-tower retrieval model.

    from phoenix_torch import get_preset, PhoenixModel, HashEmbeddingTables, HashedPhoenixModel
    cfg = get_preset("demo")
    model = init_seeded(PhoenixModel(cfg))
"""
from .config import (ACTIONS, PRESETS, SCORE_NAMES, HashConfig, PhoenixModelConfig, PhoenixRetrievalModelConfig,
                     TransformerConfig, get_preset)
from .embeddings import HASH_MODULUS, HASH_PARAMS, HashEmbeddingTables, hash_ids
from .inputs import BATCH_FIELDS, EMBEDDING_FIELDS, RecsysBatch, RecsysEmbeddings, random_batch, skip_input_checks
from .ranker import (HashedPhoenixModel, PhoenixModel, block_candidate_reduce, block_history_reduce,
                     block_user_reduce)
from .retrieval import CandidateTower, PhoenixRetrievalModel, l2_normalize, retrieve_top_k
from .transformer import isolation_mask
from .weights import (export_upstream_params, init_seeded, load_tables, load_upstream_params, load_weights,
                      save_weights)

__all__ = [
    "ACTIONS", "PRESETS", "SCORE_NAMES", "HashConfig", "PhoenixModelConfig", "PhoenixRetrievalModelConfig",
    "TransformerConfig", "get_preset", "HASH_MODULUS", "HASH_PARAMS", "HashEmbeddingTables", "hash_ids",
    "BATCH_FIELDS", "EMBEDDING_FIELDS", "RecsysBatch", "RecsysEmbeddings", "random_batch", "skip_input_checks", "HashedPhoenixModel",
    "PhoenixModel", "block_candidate_reduce", "block_history_reduce", "block_user_reduce", "CandidateTower",
    "PhoenixRetrievalModel", "l2_normalize", "retrieve_top_k", "isolation_mask", "export_upstream_params",
    "init_seeded", "load_tables", "load_upstream_params", "load_weights", "save_weights",
]
