"""Two-tower retrieval: a user tower (the Phoenix transformer over [user | history], masked mean, L2
normalised) and a CandidateTower (two-layer MLP over post+author hash vectors, L2 normalised)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import PhoenixRetrievalModelConfig
from .inputs import RecsysBatch, RecsysEmbeddings, should_check_inputs
from .ranker import UserHistoryEncoder, _flat
from .transformer import default_positions, linear_param


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / sqrt(max(|x|^2, 1e-12))."""
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True).clamp_min(1e-12))


class CandidateTower(nn.Module):
    """[..., (Hi+Ha)*D] -> silu(x @ p1 [(Hi+Ha)*D, 2D]) @ p2 [2D, D] -> L2 normalised [..., D]."""

    def __init__(self, emb_size: int, num_item_hashes: int = 2, num_author_hashes: int = 2):
        super().__init__()
        self.candidate_tower_projection_1 = linear_param((num_item_hashes + num_author_hashes) * emb_size, 2 * emb_size)
        self.candidate_tower_projection_2 = linear_param(2 * emb_size, emb_size)

    def forward(self, concatenated_embeddings: torch.Tensor) -> torch.Tensor:
        x = concatenated_embeddings.float()
        x = F.silu(x @ self.candidate_tower_projection_1.float()) @ self.candidate_tower_projection_2.float()
        return l2_normalize(x)

    def from_hash_embeddings(self, post_embeddings: torch.Tensor, author_embeddings: torch.Tensor) -> torch.Tensor:
        """post [..., Hi, D] and author [..., Ha, D] vectors -> [..., D]."""
        return self(torch.cat([_flat(post_embeddings), _flat(author_embeddings)], dim=-1))


class PhoenixRetrievalModel(UserHistoryEncoder):
    def __init__(self, config: PhoenixRetrievalModelConfig):
        super().__init__(config)
        hc = config.hash_config
        self.candidate_tower = CandidateTower(config.emb_size, hc.num_item_hashes, hc.num_author_hashes)

    def user_representation(self, batch: RecsysBatch, embeddings: RecsysEmbeddings) -> torch.Tensor:
        """[user | history] -> transformer (causal x key padding, no final norm) -> masked mean -> L2 [B, D].
        Candidate fields of the batch are not read (they may have C = 0)."""
        if should_check_inputs():
            self.validate(batch, embeddings)
        user, user_valid, history, history_valid = self.user_and_history(batch, embeddings)
        h = torch.cat([user, history], dim=1).to(self.fprop_dtype)
        valid = torch.cat([user_valid, history_valid], dim=1)
        positions = default_positions(h.shape[0], h.shape[1], h.device)
        h = self.transformer(h, positions, valid, prefix_len=h.shape[1],
                             causal=self.config.history_attention == "causal").float()
        w = valid.float()[..., None]
        mean = (h * w).sum(1) / w.sum(1).clamp_min(1.0)
        return l2_normalize(mean)

    def candidate_representation(self, embeddings: RecsysEmbeddings) -> torch.Tensor:
        return self.candidate_tower.from_hash_embeddings(embeddings.candidate_post_embeddings,
                                                         embeddings.candidate_author_embeddings)

    def forward(self, batch: RecsysBatch, embeddings: RecsysEmbeddings, corpus: torch.Tensor, top_k: int | None = None):
        """-> (user_representation [B, D], top_k_indices [B, k] int64, top_k_scores [B, k])."""
        user = self.user_representation(batch, embeddings)
        return (user, *retrieve_top_k(user, corpus, top_k or self.config.top_k))


def retrieve_top_k(user_representation: torch.Tensor, corpus: torch.Tensor, top_k: int):
    """Exact top-k of user @ corpus.T, best first -> (indices, scores)."""
    if corpus.dim() != 2 or corpus.shape[1] != user_representation.shape[-1]:
        raise ValueError(f"corpus: expected [N, {user_representation.shape[-1]}], got {tuple(corpus.shape)}")
    if not 0 < top_k <= corpus.shape[0]:
        raise ValueError(f"top_k must be in [1, {corpus.shape[0]}] (corpus size), got {top_k}")
    scores = user_representation.float() @ corpus.float().T
    top = torch.topk(scores, top_k, dim=-1, sorted=True)
    return top.indices, top.values
