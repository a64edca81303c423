"""The models a build serves: from the May release's artifacts folder, from upstream checkpoints, or seeded.

`load_models(source)` returns the ranker and (unless `towers` is off) the retrieval model with their hash
tables (numpy, row 0 = the zero padding row), their per-entity hash constants and, for an artifacts
folder, its precomputed corpus.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from export.artifacts import Corpus, check_tables, read_corpus, read_release
from export.keys import check_keys, unknown_key
from phoenix_runtime.hashing import EntityHash, seeded_hash_params
from phoenix_torch import (HashEmbeddingTables, PhoenixModel, PhoenixRetrievalModel, get_preset, init_seeded,
                           load_upstream_params, read_tables)
from phoenix_torch.features import KINDS, Feature, entities
from phoenix_torch.parity import PRECISIONS


@dataclass(frozen=True)
class ModelSource:
    """Where the models come from (resolved once from the command line)."""
    preset: str = "demo"
    release: str = "january"
    precision: str = "fp32"
    artifacts: str | None = None          # the release's artifacts folder (overrides preset/release)
    checkpoint: str | None = None         # ranker params, upstream Haiku layout
    retrieval_checkpoint: str | None = None
    tables: str | None = None             # `<entity>_embeddings` .npz (both models)
    vocab: int = 10_000                   # rows of each seeded table
    seed: int = 0
    history_attention: str = "causal"
    right_anchored_rope: bool = False
    extra_features: tuple = ()            # features added by configuration (features.Feature)
    towers: bool = True                   # build the retrieval model


@dataclass
class Models:
    release: str
    ranker: PhoenixModel
    ranker_tables: dict[str, np.ndarray]
    ranker_hashing: dict[str, EntityHash]
    retrieval: PhoenixRetrievalModel | None = None
    retrieval_tables: dict[str, np.ndarray] | None = None
    retrieval_hashing: dict[str, EntityHash] | None = None
    corpus: Corpus | None = None
    source: dict = field(default_factory=dict)


def torch_tables(tables: dict[str, np.ndarray]) -> HashEmbeddingTables:
    """HashEmbeddingTables sharing the numpy arrays' memory (no copy)."""
    d = next(iter(tables.values())).shape[1]
    out = HashEmbeddingTables(d, {e: 2 for e in tables})
    for e, a in tables.items():
        out.tables[e] = torch.nn.Parameter(torch.from_numpy(a), requires_grad=False)
    return out


def load_models(source: ModelSource) -> Models:
    if source.artifacts:
        return _from_release(source)
    return _from_preset(source)


def _from_release(source: ModelSource) -> Models:
    rel = read_release(source.artifacts, source.precision)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ranker = load_upstream_params(PhoenixModel(rel.ranker.config), rel.ranker.params).eval()
        retrieval = load_upstream_params(PhoenixRetrievalModel(rel.retrieval.config), rel.retrieval.params).eval()
    notes = sorted({str(w.message) for w in caught})
    ranker_tables = read_tables(rel.ranker.tables, rel.ranker.vocab)
    check_tables(ranker_tables, rel.ranker)
    retrieval_tables = read_tables(rel.retrieval.tables, rel.retrieval.vocab)
    check_tables(retrieval_tables, rel.retrieval)
    corpus = read_corpus(rel.corpus, rel.retrieval.config.emb_size)
    return Models("may", ranker, ranker_tables, rel.ranker.hashing, retrieval, retrieval_tables,
                  rel.retrieval.hashing, corpus,
                  {"artifacts": Path(source.artifacts).resolve().name, "notes": notes})


def seeded_tables(config, vocab: int, seed: int) -> dict[str, np.ndarray]:
    t = init_seeded(HashEmbeddingTables(config.emb_size, {e: vocab for e in entities(config.features)}), seed)
    return {e: p.detach().numpy() for e, p in t.tables.items()}


def _from_preset(source: ModelSource) -> Models:
    common = dict(fprop_dtype=PRECISIONS[source.precision], history_attention=source.history_attention)
    cfg = get_preset(source.preset, release=source.release, extra_features=source.extra_features,
                     right_anchored_rope=source.right_anchored_rope, **common)
    ranker = PhoenixModel(cfg)
    load_upstream_params(ranker, source.checkpoint) if source.checkpoint else init_seeded(ranker, source.seed)
    ranker_tables = (read_tables(source.tables, sorted(entities(cfg.features))) if source.tables
                     else seeded_tables(cfg, source.vocab, source.seed + 1))
    _check_width(ranker_tables, cfg, source.tables)
    hashing = seeded_hash_params({e: len(t) for e, t in ranker_tables.items()}, entities(cfg.features), source.seed)
    models = Models(source.release, ranker.eval(), ranker_tables, hashing,
                    source={"preset": source.preset, "seed": source.seed,   # file names only: no build-host paths
                            **{k: Path(v).name for k, v in (("checkpoint", source.checkpoint),
                                                            ("tables", source.tables)) if v}})
    if source.towers:
        rcfg = get_preset(source.preset, retrieval=True, release=source.release, **common)
        retrieval = PhoenixRetrievalModel(rcfg)
        if source.retrieval_checkpoint:
            load_upstream_params(retrieval, source.retrieval_checkpoint)
        else:
            init_seeded(retrieval, source.seed + 2)
        models.retrieval = retrieval.eval()
        models.retrieval_tables = {e: ranker_tables[e] for e in entities(rcfg.features)}   # one store, both models
        models.retrieval_hashing = {e: hashing[e] for e in models.retrieval_tables}
    return models


def _check_width(tables: dict[str, np.ndarray], cfg, path) -> None:
    widths = {e: a.shape[1] for e, a in tables.items()}
    if set(widths.values()) != {cfg.emb_size}:
        raise ValueError(f"--tables {path}: tables have D = {widths}, the model has D = {cfg.emb_size}")


def features_from_json(items, where: str = "--extra-features") -> tuple:
    """Features added by configuration, from a JSON list of feature dicts (features.Feature.to_dict). Strict:
    an unknown kind or key (a typo such as `num_hash` or `sides`) raises ValueError naming the item, the key,
    its closest allowed key and the keys its kind takes, instead of being dropped or half-read."""
    if not isinstance(items, list):
        raise ValueError(f"{where}: expected a JSON list of feature declarations, got a {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        at = f"{where} item [{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{at}: expected a feature declaration (a JSON object), got {item!r:.80}")
        kind = item.get("kind")
        if kind not in KINDS:
            raise ValueError(unknown_key(kind, KINDS, at, what="kind") if kind is not None else
                             f"{at}: no 'kind'; kinds are {sorted(KINDS)}")
        keys = ["kind", *(f.name for f in dataclasses.fields(KINDS[kind]))]
        check_keys(item, keys, f"{at} ({kind} feature {item.get('name')!r})")
        try:
            out.append(Feature.from_dict(item))
        except (TypeError, ValueError) as e:     # a missing key (TypeError from the dataclass) or a bad value
            raise ValueError(f"{at}: {e}") from None
    return tuple(out)
