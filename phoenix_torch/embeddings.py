"""Hash embedding tables: one [vocab, D] table per entity (user, item, author, ...), row 0 = padding.

Every hash function's value of an entity indexes that entity's table. Row 0 is the zero vector: upstream
stacks its tables as [65 zero rows | user | item | author] and sends hash 0 to row 0, while a hash h >= 1
reads `<entity>_embeddings[h]`; a per-entity table with a zero row 0 gives the same lookups.
"""
from __future__ import annotations

import torch
from torch import nn

from .features import HashedFeature, active
from .inputs import RecsysBatch, RecsysEmbeddings


class HashEmbeddingTables(nn.Module):
    """`tables[entity]` [vocab, D]; `lookup(batch, features)` -> RecsysEmbeddings."""

    def __init__(self, emb_size: int, vocab: dict[str, int]):
        super().__init__()
        self.emb_size = emb_size
        bad = {e: v for e, v in vocab.items() if v < 2}
        if bad:
            raise ValueError(f"tables need at least 2 rows (row 0 is padding): {bad}")
        self.tables = nn.ParameterDict({e: nn.Parameter(torch.zeros(v, emb_size)) for e, v in vocab.items()})

    @property
    def vocab_sizes(self) -> dict[str, int]:
        return {e: int(t.shape[0]) for e, t in self.tables.items()}

    def _hashed(self, features):
        out = [f for f in active(features) if isinstance(f, HashedFeature)]
        missing = sorted({f.entity for f in out} - set(self.tables))
        if missing:
            raise ValueError(f"no hash table for entity {missing}; the tables have {sorted(self.tables)}")
        return out

    def check_range(self, batch: RecsysBatch, features) -> None:
        """Raises a clear error naming the field whose hashes fall outside its entity's table."""
        for f in self._hashed(features):
            t = batch.get(f.name)
            vocab = self.tables[f.entity].shape[0]
            if t is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= vocab):
                raise ValueError(f"{f.name}: hash values must be in [0, {vocab}) (the {f.entity} table), found "
                                 f"range [{int(t.min())}, {int(t.max())}]")

    def lookup(self, batch: RecsysBatch, features) -> RecsysEmbeddings:
        """Gathers every hash's row. Callers that skip check_range must keep hashes in range themselves."""
        return RecsysEmbeddings(**{f.embedding_field: self.tables[f.entity][batch.get(f.name).long()]
                                   for f in self._hashed(features) if batch.get(f.name) is not None})

    forward = lookup
