"""The May release's artifacts folder (`oss-phoenix-artifacts`), read with errors that name the file and key.

    ARTIFACTS/
      retrieval/  model_params.npz  embedding_tables.npz  config.json
      ranker/     model_params.npz  embedding_tables.npz  config.json
      sports_corpus.npz        post_ids, author_ids (uint64), candidate_representations [N, D], topics
      example_sequence.json    {"user_id", "history": [{"post_id", "author_id", "actions": {"<ActionName>": v}}]}

`config.json` gives the sizes (`emb_size`, `history_seq_len`, `candidate_seq_len`, `num_*_hashes`,
`key_size`, `num_heads` (q = kv), `num_layers`, `num_actions`, `post_age_granularity_mins`,
`<entity>_vocab_size`) and `hash_params` (`<entity>_hash_scales`, `<entity>_biases`, `<entity>_modulus` for
user, item, author); unknown keys are ignored, a missing key is named. The release's widening factor and
attention multiplier are not in the file: 2 and 0.125. The retrieval model's candidate tower is the MLP
when its parameters are in model_params.npz, else the mean pool.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phoenix_runtime.hashing import EntityHash
from phoenix_torch import (MAY_ACTIONS, HashConfig, PhoenixModelConfig, PhoenixRetrievalModelConfig, TransformerConfig,
                           release_features)
from phoenix_torch.features import NUM_CONTINUOUS_ACTIONS
from phoenix_torch.parity import PRECISIONS

ENTITIES = ("user", "item", "author")
REQUIRED = ("emb_size", "history_seq_len", "candidate_seq_len", "num_user_hashes", "num_item_hashes",
            "num_author_hashes", "key_size", "num_heads", "num_layers", "num_actions", "user_vocab_size",
            "item_vocab_size", "author_vocab_size", "hash_params")
CANDIDATE_TOWER_KEY = "phoenix_retrieval_model/~build_candidate_representation/candidate_tower/candidate_tower_projection_1"
CORPUS_KEYS = ("post_ids", "author_ids", "candidate_representations")


class ArtifactsError(ValueError):
    """A problem with the artifacts folder; the message names the file and the key."""


@dataclass
class ReleaseModel:
    config: object                        # PhoenixModelConfig or PhoenixRetrievalModelConfig
    params: Path                          # model_params.npz (Haiku `module/name` keys)
    tables: Path                          # embedding_tables.npz (`<entity>_embeddings`)
    hashing: dict[str, EntityHash]
    vocab: dict[str, int]


@dataclass
class Release:
    folder: Path
    ranker: ReleaseModel
    retrieval: ReleaseModel
    corpus: Path
    sequence: Path | None


def _file(folder: Path, rel: str) -> Path:
    path = folder / rel
    if not path.is_file():
        raise ArtifactsError(f"{path}: missing (an artifacts folder holds retrieval/ and ranker/ with "
                             f"model_params.npz, embedding_tables.npz and config.json, plus sports_corpus.npz)")
    return path


def read_json_config(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactsError(f"{path}: not valid JSON ({e})") from None
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise ArtifactsError(f"{path}: missing key(s) {missing}")
    return cfg


def hashing_from(cfg: dict, path: Path) -> dict[str, EntityHash]:
    """Per-entity hash constants of `hash_params`, with the entity's vocab size."""
    hp = cfg["hash_params"]
    out = {}
    for e in ENTITIES:
        keys = (f"{e}_hash_scales", f"{e}_biases", f"{e}_modulus")
        missing = [k for k in keys if k not in hp]
        if missing:
            raise ArtifactsError(f"{path}: hash_params lacks {missing}")
        n = cfg[f"num_{e}_hashes"]
        if len(hp[keys[0]]) != n or len(hp[keys[1]]) != n:
            raise ArtifactsError(f"{path}: hash_params.{keys[0]} / {keys[1]} need num_{e}_hashes = {n} values")
        try:
            out[e] = EntityHash(hp[keys[0]], hp[keys[1]], int(hp[keys[2]]), int(cfg[f"{e}_vocab_size"]))
        except (TypeError, ValueError) as err:
            raise ArtifactsError(f"{path}: hash_params for {e}: {err}") from None
    return out


def model_config(cfg: dict, path: Path, retrieval: bool, precision: str, enable_linear_proj: bool = True):
    """A release config.json -> PhoenixModelConfig (May ranker) or PhoenixRetrievalModelConfig."""
    if cfg["num_actions"] != len(MAY_ACTIONS):
        raise ArtifactsError(f"{path}: num_actions is {cfg['num_actions']}; the release's action list (proto "
                             f"ActionName 0..{len(MAY_ACTIONS) - 1}) has {len(MAY_ACTIONS)}")
    hc = HashConfig(cfg["num_user_hashes"], cfg["num_item_hashes"], cfg["num_author_hashes"])
    try:
        transformer = TransformerConfig(emb_size=cfg["emb_size"], num_layers=cfg["num_layers"],
                                        num_q_heads=cfg["num_heads"], num_kv_heads=cfg["num_heads"],
                                        key_size=cfg["key_size"], widening_factor=2.0, attn_output_multiplier=0.125)
        features = release_features("may", retrieval, hc, cfg.get("product_surface_vocab_size", 16),
                                    cfg.get("post_age_granularity_mins", 60))
    except (TypeError, ValueError) as e:
        raise ArtifactsError(f"{path}: {e}") from None
    common = dict(transformer=transformer, features=features, actions=MAY_ACTIONS,
                  history_seq_len=cfg["history_seq_len"], fprop_dtype=PRECISIONS[precision])
    if retrieval:
        return PhoenixRetrievalModelConfig(enable_linear_proj=enable_linear_proj, **common)
    return PhoenixModelConfig(candidate_seq_len=cfg["candidate_seq_len"], num_continuous_actions=NUM_CONTINUOUS_ACTIONS, **common)


def _has_key(npz: Path, key: str) -> bool:
    try:
        with np.load(npz, allow_pickle=False) as z:
            return key in z.files
    except (OSError, ValueError) as e:
        raise ArtifactsError(f"{npz}: not a readable .npz ({e})") from None


def read_release(folder, precision: str = "fp32") -> Release:
    """The two models, the corpus and the example sequence of an artifacts folder (nothing loaded yet)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactsError(f"--artifacts {folder}: no such folder")
    models = {}
    for kind in ("ranker", "retrieval"):
        cfg_path = _file(folder, f"{kind}/config.json")
        cfg = read_json_config(cfg_path)
        params, tables = _file(folder, f"{kind}/model_params.npz"), _file(folder, f"{kind}/embedding_tables.npz")
        retrieval = kind == "retrieval"
        linear = _has_key(params, CANDIDATE_TOWER_KEY) if retrieval else True
        models[kind] = ReleaseModel(model_config(cfg, cfg_path, retrieval, precision, linear), params, tables,
                                    hashing_from(cfg, cfg_path), {e: int(cfg[f"{e}_vocab_size"]) for e in ENTITIES})
    seq = folder / "example_sequence.json"
    return Release(folder, models["ranker"], models["retrieval"], _file(folder, "sports_corpus.npz"),
                   seq if seq.is_file() else None)


def check_tables(tables: dict[str, np.ndarray], model: ReleaseModel) -> None:
    """Each table must have the config's vocab rows and the model's D."""
    d = model.config.emb_size
    for e, a in tables.items():
        if a.shape != (model.vocab[e], d):
            raise ArtifactsError(f"{model.tables}: {e}_embeddings has shape {a.shape}, but config.json says "
                                 f"{e}_vocab_size = {model.vocab[e]} and emb_size = {d}")


@dataclass
class Corpus:
    """Candidate representations [N, D] of the posts `post_ids` (by `author_ids`), with their topics."""
    representations: np.ndarray
    post_ids: np.ndarray
    author_ids: np.ndarray
    topics: np.ndarray | None = None


def read_corpus(path, emb_size: int) -> Corpus:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in CORPUS_KEYS if k not in z.files]
            if missing:
                raise ArtifactsError(f"{path}: missing key(s) {missing}; found {sorted(z.files)}")
            reps = np.asarray(z["candidate_representations"], dtype=np.float32)
            posts, authors = np.asarray(z["post_ids"]), np.asarray(z["author_ids"])
            topics = np.asarray(z["topics"]).astype(str) if "topics" in z.files else None
    except (OSError, ValueError) as e:
        if isinstance(e, ArtifactsError):
            raise
        raise ArtifactsError(f"{path}: not a readable .npz ({e})") from None
    n = len(posts)
    if reps.shape != (n, emb_size) or authors.shape != (n,) or (topics is not None and topics.shape != (n,)):
        raise ArtifactsError(f"{path}: candidate_representations {reps.shape}, author_ids {authors.shape} and "
                             f"topics must describe the {n} post_ids with D = {emb_size}")
    if posts.dtype.kind not in "iu" or authors.dtype.kind not in "iu":
        raise ArtifactsError(f"{path}: post_ids and author_ids must be integers, got {posts.dtype}, {authors.dtype}")
    return Corpus(reps, posts.astype(np.uint64), authors.astype(np.uint64), topics)
