"""Two-tower retrieval: a user tower (the Phoenix transformer over [user | history], masked mean, L2
normalised) and a CandidateTower (a two-layer MLP over the candidate's hash vectors, or, with
`enable_linear_proj=False` (May), their mean; L2 normalised)."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from phoenix_runtime.topk import exact_top_k

from .config import PhoenixRetrievalModelConfig
from .features import HashedFeature, active
from .inputs import RecsysBatch, RecsysEmbeddings, should_check_inputs
from .ranker import UserHistoryEncoder, flat
from .transformer import default_positions, linear_param


class RetrievalOutput(NamedTuple):
    user_representation: torch.Tensor   # [B, D]
    top_k_indices: torch.Tensor         # [B, K] int64
    top_k_scores: torch.Tensor          # [B, K]


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / sqrt(max(|x|^2, 1e-12))."""
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True).clamp_min(1e-12))


class CandidateTower(nn.Module):
    """[..., H, D] hash vectors of a candidate (post and author hashes) -> L2-normalised [..., D]:
    silu(x @ p1 [H*D, 2D]) @ p2 [2D, D] on the flattened vectors, or (enable_linear_proj=False) their mean."""

    def __init__(self, emb_size: int, num_hashes: int = 4, enable_linear_proj: bool = True):
        super().__init__()
        self.enable_linear_proj = enable_linear_proj
        if enable_linear_proj:
            self.candidate_tower_projection_1 = linear_param(num_hashes * emb_size, 2 * emb_size)
            self.candidate_tower_projection_2 = linear_param(2 * emb_size, emb_size)

    def forward(self, hash_vectors: torch.Tensor) -> torch.Tensor:
        if not self.enable_linear_proj:
            return l2_normalize(hash_vectors.float().mean(-2))
        x = F.silu(flat(hash_vectors) @ self.candidate_tower_projection_1.float())
        return l2_normalize(x @ self.candidate_tower_projection_2.float())


class PhoenixRetrievalModel(UserHistoryEncoder):
    def __init__(self, config: PhoenixRetrievalModelConfig):
        super().__init__(config, sides=("user", "history"))
        self.candidate_features = [f for f in active(config.features)
                                   if f.side == "candidate" and isinstance(f, HashedFeature)]
        num_hashes = sum(f.num_hashes for f in self.candidate_features)
        self.candidate_tower = CandidateTower(config.emb_size, num_hashes, config.enable_linear_proj)

    def user_representation(self, batch: RecsysBatch, embeddings: RecsysEmbeddings) -> torch.Tensor:
        """[user | history] -> transformer (causal x key padding, no final norm) -> masked mean -> L2 [B, D].
        Candidate fields of the batch are not read."""
        if should_check_inputs():
            self.validate(batch, embeddings, ("user", "history"))
        user, user_valid = self.encoder.side("user", batch, embeddings)
        history, history_valid = self.encoder.side("history", batch, embeddings)
        h = torch.cat([user, history], dim=1).to(self.fprop_dtype)
        valid = torch.cat([user_valid, history_valid], dim=1)
        positions = default_positions(h.shape[0], h.shape[1], h.device)
        h = self.transformer(h, positions, valid, prefix_len=h.shape[1],
                             causal=self.config.history_attention == "causal").float()
        w = valid.float()[..., None]
        mean = (h * w).sum(1) / w.sum(1).clamp_min(1.0)
        return l2_normalize(mean)

    def candidate_representation(self, embeddings: RecsysEmbeddings) -> torch.Tensor:
        """The candidate tower over the candidates' hash vectors [..., H, D] (post hashes, then author hashes)."""
        vectors = torch.cat([embeddings.get(f.embedding_field) for f in self.candidate_features], dim=-2)
        return self.candidate_tower(vectors)

    def forward(self, batch: RecsysBatch, embeddings: RecsysEmbeddings, corpus: torch.Tensor,
                top_k: int | None = None, corpus_mask: torch.Tensor | None = None) -> RetrievalOutput:
        user = self.user_representation(batch, embeddings)
        return RetrievalOutput(user, *retrieve_top_k(user, corpus, top_k or self.config.top_k, corpus_mask))


def retrieve_top_k(user_representation: torch.Tensor, corpus: torch.Tensor, top_k: int,
                   corpus_mask: torch.Tensor | None = None):
    """Exact top-k of user @ corpus.T, best first -> (indices, scores); rows outside corpus_mask [N] (bool)
    score MASKED_SCORE. The served retrieval's own search (phoenix_runtime.topk), on the host."""
    if corpus_mask is not None and (corpus_mask.shape != (corpus.shape[0],) or corpus_mask.dtype != torch.bool):
        raise ValueError(f"corpus_mask: expected bool [{corpus.shape[0]}], got {corpus_mask.dtype} "
                         f"{tuple(corpus_mask.shape)}")
    idx, scores = exact_top_k(user_representation.detach().float().cpu().numpy(),
                              corpus.detach().float().cpu().numpy(), top_k,
                              None if corpus_mask is None else corpus_mask.cpu().numpy())
    device = user_representation.device
    return torch.from_numpy(idx).to(device), torch.from_numpy(scores).to(device)
