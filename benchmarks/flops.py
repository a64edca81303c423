"""FLOP count of one Phoenix ranker forward pass (what "achieved TFLOP/s" divides by).

Notation as in PHOENIX_SPEC: B users, S history, C candidates, D model width, L layers, Hq / Hkv
query / key-value heads of size K, A = 19 actions, Hu / Hi / Ha hashes per user / item / author,
f = FFN width (phoenix_torch TransformerConfig.ffn_size), P = 1 + S (user + history),
T = P + C. One multiply-add = 2 FLOPs; a matmul [m, k] x [k, n] = 2 m k n.

Per user:

    reductions   = 2 * (Hu*D) * D                                   user projection
                 + S * 2 * ((Hi+Ha+2)*D * D + A*D + 16*D)           history projection, action and surface embeddings
                 + C * 2 * ((Hi+Ha+1)*D * D + 16*D)                 candidate projection, surface embedding
    per layer    = T * 2 * D * (Hq + 2*Hkv) * K                     Q, K, V projections
                 + T * 2 * (Hq*K) * D                               output projection
                 + 2 * 2 * Hq * K * pairs                           scores q.k and values p.v
                 + T * 2 * 3 * D * f                                FFN (linear, linear_v, linear_1)
    unembedding  = C * 2 * D * A
    total        = B * (reductions + L * per_layer + unembedding)

`pairs` is the number of (query, key) pairs the attention implementation computes:

    dense     pairs = T * T                       (the full matrix, masked afterwards)
    isolated  pairs = P * P + C * P + C           (prefix block, candidates -> prefix, each candidate -> itself)

The causal prefix block is counted in full (the kernels compute it and mask). Not counted: RMSNorm,
RoPE, soft-cap, softmax, GELU, masking, gathers (each a few FLOPs per element, negligible next to the
matmuls). Check against the upstream figure: prod (S=1022, C=64) with dense attention counts
911 GFLOP per user; the upstream row "prod, H100, B=32, 116 ms, 251 TFLOP/s" in shared/ENVIRONMENT.md
implies 251e12 * 0.116 / 32 = 910 GFLOP per user, so both count the same work.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

NUM_SURFACES = 16


def _get(cfg, *names, default=None):
    """Read a field from a config object or dict, trying a few names (nested `model`/`hash_config`)."""
    for src in (cfg, getattr(cfg, "model", None), getattr(cfg, "hash_config", None),
                getattr(cfg, "transformer", None)):
        if src is None:
            continue
        for n in names:
            v = src.get(n) if isinstance(src, dict) else getattr(src, n, None)
            if v is not None:
                return v
    if default is not None:
        return default
    raise KeyError(f"config has none of {names}")


@dataclass(frozen=True)
class Shape:
    """The numbers the FLOP count needs (read from a PhoenixModelConfig with `Shape.of`)."""
    D: int
    L: int
    Hq: int
    Hkv: int
    K: int
    f: int
    S: int
    A: int = 19
    Hu: int = 2
    Hi: int = 2
    Ha: int = 2

    @staticmethod
    def of(cfg) -> "Shape":
        D = int(_get(cfg, "emb_size", "model_size", "d_model"))
        f = _get(cfg, "ffn_size")          # phoenix_torch's TransformerConfig.ffn_size: the one formula
        return Shape(D=D, L=int(_get(cfg, "num_layers")), Hq=int(_get(cfg, "num_q_heads")),
                     Hkv=int(_get(cfg, "num_kv_heads")), K=int(_get(cfg, "key_size")),
                     f=int(f), S=int(_get(cfg, "history_seq_len")),
                     A=int(_get(cfg, "num_actions", default=19)),
                     Hu=int(_get(cfg, "num_user_hashes", default=2)),
                     Hi=int(_get(cfg, "num_item_hashes", default=2)),
                     Ha=int(_get(cfg, "num_author_hashes", default=2)))


def attention_pairs(S: int, C: int, attention: str) -> int:
    P, T = 1 + S, 1 + S + C
    if attention == "dense":
        return T * T
    if attention == "isolated":
        return P * P + C * P + C
    raise ValueError(f"attention: expected 'dense' or 'isolated', got {attention!r}")


def flops_breakdown(cfg, C: int, attention: str = "isolated", B: int = 1) -> dict[str, int]:
    """FLOPs of one forward of B users x C candidates, by part (see the module docstring)."""
    s = cfg if isinstance(cfg, Shape) else Shape.of(cfg)
    if C < 1 or B < 1:
        raise ValueError(f"B and C must be >= 1, got B={B}, C={C}")
    D, S, T = s.D, s.S, 1 + s.S + C
    parts = {
        "reductions": 2 * s.Hu * D * D + S * 2 * ((s.Hi + s.Ha + 2) * D * D + s.A * D + NUM_SURFACES * D)
        + C * 2 * ((s.Hi + s.Ha + 1) * D * D + NUM_SURFACES * D),
        "qkv_out_projections": s.L * (T * 2 * D * (s.Hq + 2 * s.Hkv) * s.K + T * 2 * s.Hq * s.K * D),
        "attention": s.L * 4 * s.Hq * s.K * attention_pairs(S, C, attention),
        "ffn": s.L * T * 6 * D * s.f,
        "unembedding": C * 2 * D * s.A,
    }
    parts = {k: B * v for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def forward_flops(cfg, B: int, C: int, attention: str = "isolated") -> int:
    return flops_breakdown(cfg, C, attention, B)["total"]


def shape_dict(cfg) -> dict:
    return asdict(cfg if isinstance(cfg, Shape) else Shape.of(cfg))
