"""The Grok-1 style transformer of Phoenix, with candidate-isolation attention.

Sequence layout: [user (1) | history (S) | candidates (C)]; the first P = 1 + S positions are the
"prefix". Candidate isolation: a candidate attends to the prefix and to itself, never to another
candidate; nothing in the prefix attends to a candidate.

Two attention implementations compute the same thing:
- `dense`: the T x T mask, as upstream (cost grows with C^2);
- `isolated`: prefix queries attend over prefix keys, each candidate attends over prefix keys plus
  its own key; the C x C block is never built (cost grows linearly with C).
Weights are stored in Haiku layout ([in, out], y = x @ w) so upstream parameters load as they are.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import TransformerConfig

MASK_VALUE = -1e30   # upstream's value for masked attention logits
LOGIT_CAP = 30.0     # soft cap: 30 * tanh(x / 30)


def linear_param(fan_in: int, fan_out: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros(fan_in, fan_out))


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * scale, computed in float32, returned in the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.scale.float()).to(x.dtype)


def rope_tables(positions: torch.Tensor, key_size: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary phases, [B, T, 1, K] float32, for positions [B, T]. Computed once per
    forward: every layer and both queries and keys use the same tables."""
    inv_freq = 1.0 / base ** (torch.arange(0, key_size, 2, dtype=torch.float32, device=positions.device) / key_size)
    phase = positions.float()[..., None] * inv_freq              # [B, T, K/2]
    phase = torch.cat([phase, phase], dim=-1)[:, :, None, :]     # [B, T, 1, K]
    return phase.cos(), phase.sin()


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, half-split ("rotate_half"). x [B, T, H, K]; cos, sin from rope_tables (float32 math)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated * sin).to(x.dtype)


def prefix_mask(prefix_len: int, causal: bool, device=None) -> torch.Tensor:
    """[P, P] bool: who in the user+history block may attend to whom."""
    ones = torch.ones(prefix_len, prefix_len, dtype=torch.bool, device=device)
    return torch.tril(ones) if causal else ones


def isolation_mask(prefix_len: int, num_candidates: int, causal: bool = True, device=None) -> torch.Tensor:
    """[T, T] bool (True = may attend), before the key-padding mask. For [u, h1, h2, c1, c2, c3]
    (causal): u=100000, h1=110000, h2=111000, c1=111100, c2=111010, c3=111001."""
    t = prefix_len + num_candidates
    mask = torch.zeros(t, t, dtype=torch.bool, device=device)
    mask[:prefix_len, :prefix_len] = prefix_mask(prefix_len, causal, device)
    mask[prefix_len:, :prefix_len] = True
    idx = torch.arange(prefix_len, t, device=device)
    mask[idx, idx] = True
    return mask


def _capped(logits: torch.Tensor, multiplier: float) -> torch.Tensor:
    logits = logits.float() * multiplier
    return LOGIT_CAP * torch.tanh(logits / LOGIT_CAP)


class Masks(NamedTuple):
    """Where attention is blocked (True), shaped to broadcast over [B, Hkv, G, queries, keys]; built once per
    forward. dense: `full` [B, 1, 1, T, T]. isolated: `prefix` [B, 1, 1, P, P] (prefix queries over prefix
    keys), `to_prefix` [B, 1, 1, 1, P] (candidate queries over prefix keys), `to_self` [B, 1, 1, C, 1]."""
    full: torch.Tensor | None = None
    prefix: torch.Tensor | None = None
    to_prefix: torch.Tensor | None = None
    to_self: torch.Tensor | None = None


def attention_masks(key_valid: torch.Tensor, prefix_len: int, causal: bool, impl: str) -> Masks:
    """key_valid [B, T] (padding keys are never attended to) -> the Masks of the `impl` attention."""
    t, p = key_valid.shape[1], prefix_len
    if impl == "dense" or t == p:
        allowed = isolation_mask(p, t - p, causal, key_valid.device)[None] & key_valid[:, None, :]
        return Masks(full=~allowed[:, None, None])
    valid_p, valid_c = key_valid[:, :p], key_valid[:, p:]
    allowed_p = prefix_mask(p, causal, key_valid.device)[None] & valid_p[:, None, :]
    return Masks(prefix=~allowed_p[:, None, None], to_prefix=~valid_p[:, None, None, None, :],
                 to_self=~valid_c[:, None, None, :, None])


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d, k = cfg.emb_size, cfg.key_size
        self.num_q_heads, self.num_kv_heads, self.key_size = cfg.num_q_heads, cfg.num_kv_heads, k
        self.multiplier = cfg.attn_output_multiplier
        self.query = linear_param(d, cfg.num_q_heads * k)
        self.key = linear_param(d, cfg.num_kv_heads * k)
        self.value = linear_param(d, cfg.num_kv_heads * k)
        self.linear = linear_param(cfg.num_q_heads * k, d)

    def forward(self, x: torch.Tensor, rope_cs: tuple[torch.Tensor, torch.Tensor], masks: Masks, prefix_len: int,
                candidates_only: bool = False) -> torch.Tensor:
        """x [B, T, D] -> [B, T, D], or [B, C, D] (the candidate rows) when candidates_only (isolated only):
        keys and values still come from every position, queries only from the candidates."""
        b, t, _ = x.shape
        hkv, g, k = self.num_kv_heads, self.num_q_heads // self.num_kv_heads, self.key_size
        dt = x.dtype
        first_query = prefix_len if candidates_only else 0
        tq = t - first_query
        cos, sin = rope_cs
        q = rope((x[:, first_query:] @ self.query.to(dt)).view(b, tq, self.num_q_heads, k),
                 cos[:, first_query:], sin[:, first_query:])
        kk = rope((x @ self.key.to(dt)).view(b, t, hkv, k), cos, sin)
        v = (x @ self.value.to(dt)).view(b, t, hkv, k)
        # query head h uses kv head h // g: group the q heads as [hkv, g]
        q = q.view(b, tq, hkv, g, k).permute(0, 2, 3, 1, 4)    # [B, Hkv, G, Tq, K]
        kk = kk.permute(0, 2, 1, 3)[:, :, None]                 # [B, Hkv, 1, T, K]
        v = v.permute(0, 2, 1, 3)[:, :, None]                   # [B, Hkv, 1, T, K]
        if masks.full is not None:
            if candidates_only:
                raise ValueError("candidates_only needs the isolated attention and at least one candidate")
            out = self._dense(q, kk, v, masks)
        else:
            out = self._isolated(q, kk, v, masks, prefix_len)
        out = out.permute(0, 3, 1, 2, 4).reshape(b, tq, self.num_q_heads * k)
        return out @ self.linear.to(dt)

    def _dense(self, q, k, v, masks: Masks):
        logits = _capped(q @ k.transpose(-1, -2), self.multiplier)           # [B, Hkv, G, T, T]
        logits = logits.masked_fill(masks.full, MASK_VALUE)
        return torch.softmax(logits, dim=-1).to(v.dtype) @ v

    def _isolated(self, q, k, v, masks: Masks, prefix_len: int):
        """q holds every position's queries, or only the candidates' (then only their rows come back)."""
        p = prefix_len
        with_prefix = q.shape[-2] == k.shape[-2]
        qc = q[..., p:, :] if with_prefix else q
        kp, kc = k[..., :p, :], k[..., p:, :]
        vp, vc = v[..., :p, :], v[..., p:, :]
        # candidate queries over [prefix keys | own key]
        to_prefix = _capped(qc @ kp.transpose(-1, -2), self.multiplier)      # [B, Hkv, G, C, P]
        to_prefix = to_prefix.masked_fill(masks.to_prefix, MASK_VALUE)
        to_self = _capped((qc * kc).sum(-1, keepdim=True), self.multiplier)  # [B, Hkv, G, C, 1]
        to_self = to_self.masked_fill(masks.to_self, MASK_VALUE)
        w = torch.softmax(torch.cat([to_prefix, to_self], dim=-1), dim=-1).to(v.dtype)
        out_c = w[..., :p] @ vp + w[..., p:] * vc
        if not with_prefix:
            return out_c
        # prefix queries over prefix keys
        logits = _capped(q[..., :p, :] @ kp.transpose(-1, -2), self.multiplier)
        logits = logits.masked_fill(masks.prefix, MASK_VALUE)
        out_p = torch.softmax(logits, dim=-1).to(v.dtype) @ vp
        return torch.cat([out_p, out_c], dim=-2)


class FeedForward(nn.Module):
    """linear_1(gelu_tanh(x @ linear) * (x @ linear_v))."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d, f = cfg.emb_size, cfg.ffn_size
        self.linear = linear_param(d, f)
        self.linear_v = linear_param(d, f)
        self.linear_1 = linear_param(f, d)

    def forward(self, x):
        dt = x.dtype
        gate = F.gelu(x @ self.linear.to(dt), approximate="tanh")
        return (gate * (x @ self.linear_v.to(dt))) @ self.linear_1.to(dt)


class DecoderLayer(nn.Module):
    """h += norm_1(attn(norm(h))); h += norm_3(ffn(norm_2(h)))."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d = cfg.emb_size
        self.rms_norm, self.rms_norm_1 = RMSNorm(d), RMSNorm(d)
        self.rms_norm_2, self.rms_norm_3 = RMSNorm(d), RMSNorm(d)
        self.attn = Attention(cfg)
        self.ffn = FeedForward(cfg)

    def forward(self, h, rope_cs, masks: Masks, prefix_len: int, candidates_only: bool = False):
        a = self.attn(self.rms_norm(h), rope_cs, masks, prefix_len, candidates_only)
        h = (h[:, prefix_len:] if candidates_only else h) + self.rms_norm_1(a)
        return h + self.rms_norm_3(self.ffn(self.rms_norm_2(h)))


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.key_size = cfg.key_size
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))

    def forward(self, h: torch.Tensor, positions: torch.Tensor, key_valid: torch.Tensor, prefix_len: int,
                causal: bool = True, impl: str = "isolated", candidates_only: bool = False) -> torch.Tensor:
        """h [B, T, D] in the forward dtype; positions [B, T]; key_valid [B, T] bool; the first
        prefix_len positions are user+history, the rest candidates. candidates_only: return the
        candidate rows [B, C, D]; with the isolated attention the last layer then computes queries,
        attention and FFN for those rows alone (nothing reads the prefix rows' last outputs)."""
        last = len(self.layers) - 1
        skip_prefix = candidates_only and impl == "isolated" and h.shape[1] > prefix_len
        rope_cs = rope_tables(positions, self.key_size)
        masks = attention_masks(key_valid, prefix_len, causal, impl)
        for i, layer in enumerate(self.layers):
            h = layer(h, rope_cs, masks, prefix_len, candidates_only=skip_prefix and i == last)
        return h[:, prefix_len:] if candidates_only and not skip_prefix else h


def default_positions(batch_size: int, length: int, device=None) -> torch.Tensor:
    return torch.arange(length, device=device).expand(batch_size, length)


def slot_positions(batch_size: int, prefix_len: int, num_candidates: int, candidate_seq_len: int,
                   device=None) -> torch.Tensor:
    """[B, P + C]: prefix slot i at position i, candidate slot j at P + (j mod candidate_seq_len).

    Up to candidate_seq_len candidates this is the slot index, as upstream. Beyond it, each candidate gets
    the position upstream's scoring in chunks of candidate_seq_len gives it, so one pass over any number of
    candidates equals the chunked run (candidates never see each other)."""
    prefix = torch.arange(prefix_len, device=device)
    cand = prefix_len + torch.arange(num_candidates, device=device) % candidate_seq_len
    return torch.cat([prefix, cand]).expand(batch_size, prefix_len + num_candidates)


def right_anchored_positions(history_valid: torch.Tensor, candidate_valid: torch.Tensor) -> torch.Tensor:
    """[B, 1+S+C]: user at 0, each valid history item at S - (number of valid items after it) (the newest
    at S), every valid candidate at 1+S, padded history and padded candidates at 0."""
    b, s = history_valid.shape
    valid = history_valid.long()
    after = valid.flip(-1).cumsum(-1).flip(-1) - valid            # valid items after each position
    hist = torch.where(history_valid, s - after, torch.zeros_like(after))
    user = torch.zeros(b, 1, dtype=hist.dtype, device=hist.device)
    cand = torch.where(candidate_valid, s + 1, 0).to(hist.dtype)
    return torch.cat([user, hist, cand], dim=1)


def init_normal_(param: torch.Tensor, generator: torch.Generator, fan_in: int | None = None, scale: float = 1.0):
    """Seeded truncated-free normal init with std scale/sqrt(fan_in) (demo weights, not upstream's zeros)."""
    fan_in = fan_in or param.shape[0]
    with torch.no_grad():
        param.copy_(torch.randn(param.shape, generator=generator) * (scale / math.sqrt(fan_in)))
