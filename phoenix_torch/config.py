"""Configs and named presets of the Phoenix ranker and retrieval model.

A config declares, once, a model's inputs (`features`, see features.py) and its action list (`actions`:
the name of each logit column). Two releases are built in:
- January 2026: `JANUARY_ACTIONS` (19 engagement actions) and `standard_features`;
- May 2026: `MAY_ACTIONS` (the proto `ActionName` enum values 0..18, lower case), `may_features` (IP
  hashes, history dwell time, candidate post age) and a continuous head of 8 outputs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .features import (NUM_CONTINUOUS_ACTIONS, Feature, add_features, batch_fields, check_declaration, entities,
                       from_dicts, may_features, standard_features, to_dicts)

# January release: 19 engagement actions, upstream order (index = logit column).
JANUARY_ACTIONS: tuple[str, ...] = (
    "favorite", "reply", "repost", "photo_expand", "click", "profile_click", "vqv", "share",
    "share_via_dm", "share_via_copy_link", "dwell", "quote", "quoted_click", "follow_author",
    "not_interested", "block_author", "mute_author", "report", "dwell_time",
)
ACTIONS = JANUARY_ACTIONS
# May release: the logit columns index the proto ActionName enum (recsys.proto), values 0..18.
MAY_ACTIONS: tuple[str, ...] = (
    "invalid_name", "server_tweet_fav", "server_tweet_unfav", "server_tweet_create", "server_tweet_reply",
    "server_tweet_quote", "server_tweet_retweet", "server_tweet_unreply", "server_tweet_unquote",
    "server_tweet_unretweet", "server_tweet_report", "client_tweet_recap_dwelled", "client_tweet_recap_not_dwelled",
    "client_tweet_video_quality_view", "client_tweet_photo_expand", "client_tweet_click_mention_screen_name",
    "client_tweet_report", "client_tweet_not_interested_in", "client_tweet_undo_not_interested_in",
)
RELEASES = ("january", "may")
HISTORY_ATTENTION = ("causal", "bidirectional")
ATTENTION_IMPLS = ("dense", "isolated")
FPROP_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class HashConfig:
    """Hash functions per entity (upstream's name). Configs derive it from their features."""
    num_user_hashes: int = 2
    num_item_hashes: int = 2
    num_author_hashes: int = 2
    num_ip_hashes: int = 0


@dataclass(frozen=True)
class TransformerConfig:
    emb_size: int = 128
    num_layers: int = 2
    num_q_heads: int = 2
    num_kv_heads: int = 2
    key_size: int = 64
    widening_factor: float = 2.0
    attn_output_multiplier: float = 0.125

    @property
    def ffn_size(self) -> int:
        """int(widening * D) * 2 // 3, rounded up to a multiple of 8 (D=128, widening 2 -> 176)."""
        f = int(self.widening_factor * self.emb_size) * 2 // 3
        return f + (-f) % 8

    def __post_init__(self):
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError(f"num_q_heads ({self.num_q_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.key_size % 2:
            raise ValueError(f"key_size must be even for RoPE, got {self.key_size}")


@dataclass(frozen=True)
class _CommonConfig:
    """Fields shared by the ranker and the retrieval model."""
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    features: tuple[Feature, ...] = field(default_factory=standard_features)
    actions: tuple[str, ...] = JANUARY_ACTIONS
    history_seq_len: int = 32
    fprop_dtype: str = "float32"
    history_attention: str = "causal"  # "causal" (January code, default) or "bidirectional" (production)
    attention_impl: str = "isolated"   # "isolated" (linear in C) or "dense" (T x T mask, as upstream)

    @property
    def emb_size(self) -> int:
        return self.transformer.emb_size

    @property
    def num_actions(self) -> int:
        return len(self.actions)

    @property
    def hash_config(self) -> HashConfig:
        """Upstream's HashConfig view of the hashed features."""
        e = entities(self.features)
        return HashConfig(e.get("user", 0), e.get("item", 0), e.get("author", 0), e.get("ip", 0))

    @property
    def batch_fields(self):
        """Every RecsysBatch field this model reads (features.Field), in declaration order."""
        return batch_fields(self.features, self.num_actions)

    def __post_init__(self):
        for name, allowed in (("fprop_dtype", FPROP_DTYPES), ("history_attention", HISTORY_ATTENTION),
                              ("attention_impl", ATTENTION_IMPLS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "actions", tuple(self.actions))
        if not self.actions or len(set(self.actions)) != len(self.actions):
            raise ValueError(f"actions must be a non-empty list of distinct names, got {self.actions}")
        check_declaration(self.features)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["transformer"] = dataclasses.asdict(self.transformer)
        d["features"] = to_dicts(self.features)
        d["actions"] = list(self.actions)
        return d

    @classmethod
    def from_dict(cls, d: dict):
        d = dict(d)
        d["transformer"] = TransformerConfig(**d["transformer"])
        d["features"] = from_dicts(d["features"])
        d["actions"] = tuple(d["actions"])
        return cls(**d)


@dataclass(frozen=True)
class PhoenixModelConfig(_CommonConfig):
    candidate_seq_len: int = 8
    # May release: prefix token i at position i, newest valid history item at S, every candidate at
    # 1+S, padding at 0 -> scores independent of candidate order and of C.
    right_anchored_rope: bool = False
    num_continuous_actions: int = 0    # May: 8 (continuous_preds; column 1 = dwell time)


@dataclass(frozen=True)
class PhoenixRetrievalModelConfig(_CommonConfig):
    top_k: int = 10
    enable_linear_proj: bool = True    # May option: False = the parameter-free mean-pool candidate tower


# name: (D, layers, Hq, Hkv, K, widening, S, C), the published sizes.
_PRESET_SIZES = {
    "demo": (128, 2, 2, 2, 64, 2, 32, 8),
    "mini": (128, 4, 4, 4, 32, 2, 127, 64),
    "nano": (512, 4, 4, 2, 128, 2, 1022, 64),
    "prod": (2560, 8, 20, 4, 128, 2, 1022, 64),
}
PRESETS: tuple[str, ...] = tuple(_PRESET_SIZES)


def release_features(release: str, retrieval: bool = False, hash_config: HashConfig | None = None,
                     product_surface_vocab_size: int = 16, post_age_granularity_mins: int = 60) -> tuple[Feature, ...]:
    """The inputs of a release's ranker (or retrieval model: the May retrieval model keeps January's)."""
    hc = hash_config or HashConfig()
    if release not in RELEASES:
        raise ValueError(f"unknown release {release!r}; choose one of {RELEASES}")
    if release == "may" and not retrieval:
        return may_features(hc.num_user_hashes, hc.num_item_hashes, hc.num_author_hashes, hc.num_ip_hashes,
                            product_surface_vocab_size, post_age_granularity_mins)
    if hc.num_ip_hashes:
        raise ValueError(f"num_ip_hashes={hc.num_ip_hashes}: IP hashes exist only in the May ranker")
    return standard_features(hc.num_user_hashes, hc.num_item_hashes, hc.num_author_hashes, product_surface_vocab_size)


def get_preset(name: str, retrieval: bool = False, release: str = "january", hash_config: HashConfig | None = None,
               extra_features=(), **overrides):
    """A PhoenixModelConfig (or PhoenixRetrievalModelConfig) of a published size and release.
    `extra_features` are appended to their side (added by configuration); overrides replace fields."""
    if name not in _PRESET_SIZES:
        raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS}")
    d, layers, hq, hkv, k, widening, s, c = _PRESET_SIZES[name]
    tcfg = TransformerConfig(emb_size=d, num_layers=layers, num_q_heads=hq, num_kv_heads=hkv, key_size=k,
                             widening_factor=widening)
    features = add_features(release_features(release, retrieval, hash_config), extra_features)
    common = dict(transformer=tcfg, history_seq_len=s, features=features,
                  actions=MAY_ACTIONS if release == "may" else JANUARY_ACTIONS)
    if retrieval:
        return PhoenixRetrievalModelConfig(**common).replace(**overrides)
    cont = NUM_CONTINUOUS_ACTIONS if release == "may" else 0
    return PhoenixModelConfig(candidate_seq_len=c, num_continuous_actions=cont, **common).replace(**overrides)
