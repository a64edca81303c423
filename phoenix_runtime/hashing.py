"""Raw ids -> hash values, per entity (the May release's scheme, upstream's run_pipeline.py).

`hash_ids(ids, EntityHash(...))` gives the [..., H] hashes of raw ids; the constants come from the release's
config.json (`hash_params_from`) or, for builds without one, from a seed (`seeded_hash_params`). The build
records them per entity in the manifest; the client hashes with them.

Standard library and numpy only: part of phoenix_runtime, which the build copies whole into the repository.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EntityHash:
    """The hash functions of one entity: h_j = ((id * scale_j + bias_j) mod modulus) mod (vocab - 1) + 1."""
    scales: tuple
    biases: tuple
    modulus: int
    vocab: int

    def __post_init__(self):
        object.__setattr__(self, "scales", tuple(int(s) for s in self.scales))
        object.__setattr__(self, "biases", tuple(int(b) for b in self.biases))
        if len(self.scales) != len(self.biases) or not self.scales:
            raise ValueError("hash params need as many scales as biases (at least one)")
        if self.vocab < 2 or not 0 < self.modulus < 2 ** 63:
            raise ValueError(f"hash params: vocab must be >= 2 and modulus in (0, 2^63), got {self.vocab}, "
                             f"{self.modulus}")

    def to_dict(self) -> dict:
        return {"scales": list(self.scales), "biases": list(self.biases), "modulus": self.modulus, "vocab": self.vocab}


def hash_ids(ids, params: EntityHash) -> np.ndarray:
    """Raw ids [...] (unsigned or signed 64-bit) -> int64 hashes [..., H] in [1, vocab), id 0 -> 0.

    As upstream's run_pipeline.py: the id is reinterpreted as int64, `id * scale + bias` wraps around in
    two's complement, then `mod modulus` and `mod (vocab - 1)` are floor modulo (non-negative), plus 1."""
    raw = np.asarray(ids)
    if raw.dtype.kind not in "iu":
        raise ValueError(f"ids must be integers, got {raw.dtype}")
    x = raw.astype(np.uint64).view(np.int64)[..., None]             # two's-complement reinterpretation
    scales, biases = np.asarray(params.scales, np.int64), np.asarray(params.biases, np.int64)
    with np.errstate(over="ignore"):
        h = (x * scales + biases) % np.int64(params.modulus)        # int64 wrap-around, floor modulo
    h = h % np.int64(params.vocab - 1) + 1
    return np.where(x == 0, np.int64(0), h)


def seeded_hash_params(vocab: dict[str, int], num_hashes: dict[str, int], seed: int = 0) -> dict[str, EntityHash]:
    """Hash constants for a build without the release's config.json: per entity, `num_hashes` scales and
    biases drawn from a seeded generator, modulus 2^61 - 1 (a Mersenne prime)."""
    rng = np.random.default_rng(seed)
    out = {}
    for entity in sorted(vocab):
        n = num_hashes.get(entity, 1)
        scales = rng.integers(1 << 20, 1 << 31, n).tolist()
        biases = rng.integers(1 << 20, 1 << 31, n).tolist()
        out[entity] = EntityHash(scales, biases, (1 << 61) - 1, vocab[entity])
    return out


def hash_params_from(config: dict) -> dict[str, EntityHash]:
    return {e: EntityHash(**p) for e, p in config.items()}
