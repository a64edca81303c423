"""Configs and named presets of the Phoenix ranker and retrieval model (PHOENIX_SPEC.md)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# The 19 engagement actions, upstream order (index = logit column).
ACTIONS: tuple[str, ...] = (
    "favorite", "reply", "repost", "photo_expand", "click", "profile_click", "vqv", "share",
    "share_via_dm", "share_via_copy_link", "dwell", "quote", "quoted_click", "follow_author",
    "not_interested", "block_author", "mute_author", "report", "dwell_time",
)
# Serving names: `<name>_score`, except dwell_time which keeps its name.
SCORE_NAMES: tuple[str, ...] = tuple(a if a == "dwell_time" else f"{a}_score" for a in ACTIONS)

HISTORY_ATTENTION = ("causal", "bidirectional")
ATTENTION_IMPLS = ("dense", "isolated")
FPROP_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class HashConfig:
    num_user_hashes: int = 2
    num_item_hashes: int = 2
    num_author_hashes: int = 2


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
    hash_config: HashConfig = field(default_factory=HashConfig)
    history_seq_len: int = 32
    num_actions: int = len(ACTIONS)
    product_surface_vocab_size: int = 16
    fprop_dtype: str = "float32"
    history_attention: str = "causal"  # "causal" (January code, default) or "bidirectional" (production)
    attention_impl: str = "isolated"   # "isolated" (linear in C) or "dense" (T x T mask, as upstream)

    @property
    def emb_size(self) -> int:
        return self.transformer.emb_size

    def __post_init__(self):
        for name, allowed in (("fprop_dtype", FPROP_DTYPES), ("history_attention", HISTORY_ATTENTION),
                              ("attention_impl", ATTENTION_IMPLS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        d = dict(d)
        d["transformer"] = TransformerConfig(**d["transformer"])
        d["hash_config"] = HashConfig(**d["hash_config"])
        return cls(**d)


@dataclass(frozen=True)
class PhoenixModelConfig(_CommonConfig):
    candidate_seq_len: int = 8
    # May release: prefix token i at position i, newest valid history item at S, every candidate at
    # 1+S, padding at 0 -> scores independent of candidate order and of C.
    right_anchored_rope: bool = False


@dataclass(frozen=True)
class PhoenixRetrievalModelConfig(_CommonConfig):
    top_k: int = 10


# name: (D, layers, Hq, Hkv, K, widening, S, C), from PHOENIX_SPEC.md "Published sizes".
_PRESET_SIZES = {
    "demo": (128, 2, 2, 2, 64, 2, 32, 8),
    "mini": (128, 4, 4, 4, 32, 2, 127, 64),
    "nano": (512, 4, 4, 2, 128, 2, 1022, 64),
    "prod": (2560, 8, 20, 4, 128, 2, 1022, 64),
}
PRESETS: tuple[str, ...] = tuple(_PRESET_SIZES)


def get_preset(name: str, retrieval: bool = False, **overrides):
    """A PhoenixModelConfig (or PhoenixRetrievalModelConfig) of a published size; overrides replace fields."""
    if name not in _PRESET_SIZES:
        raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS}")
    d, layers, hq, hkv, k, widening, s, c = _PRESET_SIZES[name]
    tcfg = TransformerConfig(emb_size=d, num_layers=layers, num_q_heads=hq, num_kv_heads=hkv, key_size=k,
                             widening_factor=widening)
    if retrieval:
        return PhoenixRetrievalModelConfig(transformer=tcfg, history_seq_len=s).replace(**overrides)
    return PhoenixModelConfig(transformer=tcfg, history_seq_len=s, candidate_seq_len=c).replace(**overrides)
