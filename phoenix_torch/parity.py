"""One tolerance table and one parity check, for every comparison the project makes: the port against
upstream's golden files, an exported graph or compiled engine against torch, two engines against each
other. Precision names are the build's: "fp32" and "bf16" (PRECISIONS maps them to forward dtypes)."""
from __future__ import annotations

import numpy as np
import torch

PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}   # precision name -> the config's fprop_dtype
TOLERANCE = {"fp32": 1e-4, "bf16": 1e-1}             # max abs error of float outputs


class ParityError(RuntimeError):
    """Two implementations disagree beyond the precision's tolerance (the message says where and by how much)."""


def precision_of(fprop_dtype: str) -> str:
    """"float32" -> "fp32", "bfloat16" -> "bf16"."""
    for name, dtype in PRECISIONS.items():
        if str(fprop_dtype).removeprefix("torch.") == dtype:
            return name
    raise ValueError(f"unknown forward dtype {fprop_dtype!r}; known: {list(PRECISIONS.values())}")


def to_numpy(value) -> np.ndarray:
    """numpy array of a numpy array, torch tensor (any device, bf16 as float32) or sequence."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return np.asarray(value)


def max_abs_err(got: dict, want: dict, names) -> float:
    """Largest |got - want| over the outputs `names`: float outputs by value, integer outputs must be equal
    (else inf); a shape mismatch is inf."""
    worst = 0.0
    for n in names:
        g, w = to_numpy(got[n]), to_numpy(want[n])
        if g.shape != w.shape:
            return float("inf")
        if np.issubdtype(w.dtype, np.floating) or np.issubdtype(g.dtype, np.floating):
            if g.size:
                worst = max(worst, float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64)))))
        elif not np.array_equal(g, w):
            return float("inf")
    return worst


def check_parity(got: dict, want: dict, names, precision: str, what: str) -> float:
    """max_abs_err of `got` vs `want`; raises ParityError naming `what` past the precision's tolerance."""
    err = max_abs_err(got, want, names)
    if not err <= TOLERANCE[precision]:
        raise ParityError(f"{what}: max abs err {err:.3g} > {TOLERANCE[precision]} ({precision})")
    return err
