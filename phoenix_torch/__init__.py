"""phoenix_torch: a faithful PyTorch port of X's Phoenix ranker and two-tower retrieval model
(January and May 2026 releases).

    from phoenix_torch import get_preset, PhoenixModel, init_seeded
    cfg = get_preset("mini", release="may")
    model = init_seeded(PhoenixModel(cfg))
"""
from .config import (ACTIONS, JANUARY_ACTIONS, MAY_ACTIONS, PRESETS, RELEASES, HashConfig, PhoenixModelConfig,
                     PhoenixRetrievalModelConfig, TransformerConfig, get_preset, release_features)
from .embeddings import HashEmbeddingTables
from .features import (ActionsFeature, CategoricalFeature, ContinuousFeature, Feature, Field, HashedFeature,
                       TimeBucketFeature, may_features, standard_features)
from .inputs import RecsysBatch, RecsysEmbeddings, random_batch, skip_input_checks, validate_batch
from .ranker import (HashedPhoenixModel, PhoenixModel, RecsysModelOutput, block_candidate_reduce,
                     block_history_reduce, block_user_reduce)
from .retrieval import CandidateTower, PhoenixRetrievalModel, RetrievalOutput, l2_normalize, retrieve_top_k
from .transformer import isolation_mask
from .weights import (export_upstream_params, init_seeded, load_tables, load_upstream_params, load_weights,
                      read_tables, save_tables, save_weights)

__all__ = [
    "ACTIONS", "JANUARY_ACTIONS", "MAY_ACTIONS", "PRESETS", "RELEASES", "HashConfig", "PhoenixModelConfig",
    "PhoenixRetrievalModelConfig", "TransformerConfig", "get_preset", "release_features", "HashEmbeddingTables",
    "ActionsFeature", "CategoricalFeature", "ContinuousFeature", "Feature", "Field", "HashedFeature",
    "TimeBucketFeature", "may_features", "standard_features", "RecsysBatch", "RecsysEmbeddings", "random_batch",
    "skip_input_checks", "validate_batch", "HashedPhoenixModel", "PhoenixModel", "RecsysModelOutput",
    "block_candidate_reduce", "block_history_reduce", "block_user_reduce", "CandidateTower",
    "PhoenixRetrievalModel", "RetrievalOutput", "l2_normalize", "retrieve_top_k", "isolation_mask",
    "export_upstream_params", "init_seeded", "load_tables", "load_upstream_params", "load_weights", "read_tables",
    "save_tables", "save_weights",
]
