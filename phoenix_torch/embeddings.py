"""Hash embedding tables: one table per entity type (user, post, author), row 0 = padding.

Every hash function's value indexes the same entity table. Raw ids become hashes with the May
release's scheme: h_j = ((id * scale_j + bias_j) mod modulus) mod (vocab - 1) + 1, id 0 -> 0.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import HashConfig
from .inputs import RecsysBatch, RecsysEmbeddings

# (scale_j, bias_j) per hash function and the modulus (a Mersenne prime). Our own constants: they are
# recorded in every build manifest so clients hash ids exactly as the tables were built.
HASH_MODULUS = 2**61 - 1
HASH_PARAMS: tuple[tuple[int, int], ...] = (
    (0x2545F4914F6CDD1D, 0x1B873593), (0x9E3779B97F4A7C15 >> 1, 0x5BD1E995), (0x7FEB352D, 0x846CA68B),
    (0x27D4EB2F165667C5, 0x165667B1), (0x94D049BB133111EB >> 1, 0x61C88647),
)


def hash_ids(ids, num_hashes: int, vocab: int, params=HASH_PARAMS, modulus: int = HASH_MODULUS) -> torch.Tensor:
    """Raw int64 ids [...] -> hashes [..., num_hashes] in [1, vocab) (id 0 -> 0, padding)."""
    if num_hashes > len(params):
        raise ValueError(f"num_hashes={num_hashes} but only {len(params)} hash functions are defined")
    if vocab < 2:
        raise ValueError(f"vocab must be >= 2 (row 0 is padding), got {vocab}")
    ids = torch.as_tensor(ids, dtype=torch.int64)
    out = []
    for scale, bias in params[:num_hashes]:
        h = (ids * scale + bias) % modulus  # int64 wrapping multiply, as upstream
        out.append(h % (vocab - 1) + 1)
    return torch.where(ids[..., None] == 0, 0, torch.stack(out, dim=-1))


class HashEmbeddingTables(nn.Module):
    """user / post / author tables of shape [vocab, D]; lookup(batch) -> RecsysEmbeddings."""

    def __init__(self, emb_size: int, user_vocab: int, post_vocab: int, author_vocab: int):
        super().__init__()
        self.emb_size = emb_size
        self.user_table = nn.Parameter(torch.zeros(user_vocab, emb_size))
        self.post_table = nn.Parameter(torch.zeros(post_vocab, emb_size))
        self.author_table = nn.Parameter(torch.zeros(author_vocab, emb_size))

    @property
    def vocab_sizes(self) -> dict[str, int]:
        return {"user_vocab": self.user_table.shape[0], "post_vocab": self.post_table.shape[0],
                "author_vocab": self.author_table.shape[0]}

    def table_for(self, field: str) -> nn.Parameter:
        """The table a RecsysBatch hash field indexes."""
        if field == "user_hashes":
            return self.user_table
        if field.endswith("post_hashes"):
            return self.post_table
        if field.endswith("author_hashes"):
            return self.author_table
        raise KeyError(f"{field} is not a hash field")

    def check_range(self, batch: RecsysBatch) -> None:
        """Raises a clear error naming the field whose hashes fall outside its table."""
        for field in ("user_hashes", "history_post_hashes", "history_author_hashes",
                      "candidate_post_hashes", "candidate_author_hashes"):
            t = getattr(batch, field)
            vocab = self.table_for(field).shape[0]
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= vocab):
                raise ValueError(f"{field}: hash values must be in [0, {vocab}), found range "
                                 f"[{int(t.min())}, {int(t.max())}]")

    def forward(self, batch: RecsysBatch) -> RecsysEmbeddings:
        """Gathers every hash's row. Callers that skip check_range must keep hashes in range themselves."""
        def look(field):
            return self.table_for(field)[getattr(batch, field).long()]
        return RecsysEmbeddings(
            user_embeddings=look("user_hashes"),
            history_post_embeddings=look("history_post_hashes"),
            candidate_post_embeddings=look("candidate_post_hashes"),
            history_author_embeddings=look("history_author_hashes"),
            candidate_author_embeddings=look("candidate_author_hashes"),
        )

    lookup = forward
