"""What a served model accepts, and THE check of a request: every place that validates inputs calls this module.

- `Limits`: users per request, candidates per user, history length, request bytes, the candidate sizes a
  client pads to (one value each, recorded in the manifest);
- `check_shapes`: names, dtypes, ranks, fixed dims, B / C >= 1, symbolic dims that agree between inputs
  (the engines' feed check, `engines.Engine.validate`, is this);
- `check_request`: `check_shapes` plus the limits and the values (the engine hosts, the postprocess,
  retrieval and the client run it before any work);
- `out_of_range` / `value_problem`: the value rule of each check kind a feature declares
  (`phoenix_torch.features.Field.check`): "hash" in [0, vocab of its entity), "index" in [0, high),
  "multi_hot" 0 or 1, "finite", "time" >= 0 (0 = unknown). `out_of_range` uses only comparisons, so the same
  code runs on numpy arrays and torch tensors: the torch model's input checks and the checks exported inside
  the ONNX graphs use it too.

Standard library and numpy only: part of phoenix_runtime, which the build copies whole into the repository.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_CANDIDATES = 1024
DEFAULT_MAX_REQUEST_BYTES = 64 << 20
DEFAULT_TOP_K = 200                # posts phoenix_retrieval returns at most (upstream's pipeline retrieves 200)
CHECKS = ("hash", "index", "multi_hot", "finite", "time")


class RequestError(ValueError):
    """A request (or an engine feed) that is refused: the message names the input or the limit."""


@dataclass(frozen=True)
class Limits:
    """What a served model accepts, enforced by the server before any work (and checked by the client)."""
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE    # users per request (Triton max_batch_size)
    max_candidates: int = DEFAULT_MAX_CANDIDATES    # candidates per user
    history_len: int | None = None                  # S, fixed by the model (None in build options: the model's)
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    candidate_sizes: tuple = ()  # C values a client pads to so native backends batch requests together; () = any

    def __post_init__(self):
        object.__setattr__(self, "candidate_sizes", tuple(sorted(int(c) for c in self.candidate_sizes)))
        if min(self.max_batch_size, self.max_candidates, self.history_len or 1, self.max_request_bytes) < 1:
            raise ValueError(f"limits must be >= 1: {self}")
        if self.candidate_sizes and (self.candidate_sizes[0] < 1 or self.candidate_sizes[-1] != self.max_candidates):
            raise ValueError(f"candidate sizes {self.candidate_sizes} must be >= 1 and end at max_candidates "
                             f"{self.max_candidates}")

    def with_history(self, history_len: int) -> "Limits":
        """These limits for a model that reads `history_len` history items."""
        return dataclasses.replace(self, history_len=int(history_len))

    def check_candidates(self, c: int, where: str) -> None:
        """RequestError when c candidates per user are more than the limit (the one wording of that error)."""
        if c > self.max_candidates:
            raise RequestError(f"{where}: {c} candidates per user; the limit max_candidates is {self.max_candidates}")

    def check_users(self, b: int, where: str) -> None:
        if b > self.max_batch_size:
            raise RequestError(f"{where}: {b} users; the limit max_batch_size is {self.max_batch_size}")

    def padded_candidates(self, c: int) -> int:
        """The candidate count a request of c candidates is padded to (c itself without fixed sizes)."""
        self.check_candidates(c, "candidates")
        return next((s for s in self.candidate_sizes if s >= c), c)

    def to_dict(self) -> dict:
        if self.history_len is None:
            raise ValueError("limits without history_len are build options, not a served model's limits")
        return {**dataclasses.asdict(self), "candidate_sizes": list(self.candidate_sizes)}

    @classmethod
    def from_dict(cls, d: dict) -> "Limits":
        return cls(**d)


def resolve_shape(shape, dims: dict) -> tuple:
    """["B", "C", 2] with {"B": 3, "C": 5} -> (3, 5, 2)."""
    return tuple(int(dims[d]) if isinstance(d, str) else int(d) for d in shape)


def dtype_name(value) -> str:
    """"float32" for a numpy array or a torch tensor of that dtype."""
    return str(value.dtype).removeprefix("torch.")


def check_shapes(specs: list[dict], arrays: dict, where: str, exact: bool = False) -> dict[str, int]:
    """Names, dtypes, ranks and dims of `arrays` (numpy arrays or torch tensors) against input specs
    {"name", "dtype", "shape": ["B", "C", 2], "optional": bool}; returns the symbolic dims {"B": .., "C": ..}.
    Raises RequestError naming the input: a missing one (an optional one may be absent, unless `exact`: an
    engine feed, which must hold exactly the specs), with `exact` one no spec names, a wrong dtype, rank or
    fixed dim, a symbolic dim of 0, inputs that disagree on a symbolic dim (both named)."""
    if not exact:
        specs = [s for s in specs if s["name"] in arrays or not s.get("optional")]
    missing = [s["name"] for s in specs if s["name"] not in arrays]
    extra = [n for n in arrays if n not in {s["name"] for s in specs}] if exact else []
    if missing or extra:
        what = [f"{word} input{'s' if len(names) > 1 else ''} {', '.join(map(repr, names))}"
                for word, names in (("missing", missing), ("unexpected", extra)) if names]
        raise RequestError(f"{where}: {' and '.join(what)}; expected {[s['name'] for s in specs]}")
    dims: dict[str, tuple[int, str]] = {}
    for spec in specs:
        name, a = spec["name"], arrays[spec["name"]]
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise RequestError(f"{where}: input {name!r} must be an array, got {type(a).__name__}")
        if dtype_name(a) != spec["dtype"]:
            raise RequestError(f"{where}: input {name!r} has dtype {dtype_name(a)}, expected {spec['dtype']}")
        shape = tuple(a.shape)
        if len(shape) != len(spec["shape"]):
            raise RequestError(f"{where}: input {name!r} has shape {list(shape)}, expected {spec['shape']}")
        for axis, (n, want) in enumerate(zip(shape, spec["shape"])):
            if not isinstance(want, str):
                if n != want:
                    raise RequestError(f"{where}: input {name!r} has shape {list(shape)}, expected {spec['shape']} "
                                       f"(axis {axis} must be {want})")
                continue
            if n < 1:
                raise RequestError(f"{where}: input {name!r} has {want} = 0 (axis {axis}); it needs at least one "
                                   f"{'user' if want == 'B' else 'candidate' if want == 'C' else 'row'}")
            if want in dims and dims[want][0] != n:
                raise RequestError(f"{where}: inputs {dims[want][1]!r} and {name!r} disagree on {want}: "
                                   f"{dims[want][0]} vs {n}")
            dims.setdefault(want, (n, name))
    return {k: v[0] for k, v in dims.items()}


def check_request(specs: list[dict], arrays: dict, limits: Limits, model: str) -> dict[str, int]:
    """Check one request's arrays against the served model's input specs and limits before any work (optional
    inputs may be absent); return its dims {"B", "C", ...}. Raises RequestError naming the input or the limit:
    too many bytes, everything `check_shapes` checks, too many candidates or users, and values outside their
    range (`value_problem`: hashes outside their table, categories outside their vocabulary, actions not 0/1,
    non-finite floats, negative timestamps)."""
    total = sum(int(np.asarray(a).nbytes) for a in arrays.values())
    if total > limits.max_request_bytes:
        raise RequestError(f"{model}: the request holds {total} bytes of inputs, above the limit max_request_bytes "
                           f"= {limits.max_request_bytes}")
    dims = check_shapes(specs, arrays, model)
    specs = [s for s in specs if s["name"] in arrays]           # the optional inputs absent are fine
    if "C" in dims:
        limits.check_candidates(dims["C"], model)
    if "B" in dims:
        limits.check_users(dims["B"], model)
    for spec in specs:
        problem = value_problem(spec.get("check"), arrays[spec["name"]], spec.get("high"), spec.get("entity"))
        if problem:
            raise RequestError(f"{model}: input {spec['name']!r} {problem}")
    return dims


def out_of_range(check: str | None, values, high: int | None = None):
    """Element-wise bool mask of the values that break `check` (None for no check). Comparisons only, so
    `values` may be a numpy array or a torch tensor, also while a graph is being exported."""
    if check in ("hash", "index"):
        return (values < 0) | (values >= high) if high is not None else values < 0
    if check == "multi_hot":
        return (values != 0) & (values != 1)
    if check == "finite":
        return (values != values) | (abs(values) == float("inf"))
    if check == "time":
        return values < 0
    if check is None:
        return None
    raise ValueError(f"unknown check {check!r}; checks are {CHECKS}")


def value_problem(check: str | None, values, high: int | None = None, entity: str | None = None) -> str | None:
    """Why `values` (numpy array or torch tensor) break `check`, in words (None when they are fine)."""
    if check is None or not np.prod(tuple(values.shape)):
        return None
    if isinstance(values, np.ndarray) and _fine(check, values, high):   # one pass, no mask: the served hot path
        return None
    bad = out_of_range(check, values, high)
    if not bad.any():
        return None
    first = values[bad][0].item()
    if check in ("hash", "index"):
        what = f"the {entity} table" if check == "hash" else "its vocabulary"
        return f"holds {first}, outside [0, {high if high is not None else 'inf'}) ({what})"
    if check == "multi_hot":
        return f"must be multi-hot 0/1, holds {first}"
    if check == "finite":
        return "holds a NaN or infinite value"
    return f"holds {first}: timestamps are seconds >= 0 (0 = unknown)"


def _fine(check: str, values: np.ndarray, high: int | None) -> bool:
    if check in ("hash", "index", "time"):
        return values.min() >= 0 and (check == "time" or high is None or values.max() < high)
    if check == "finite":
        return bool(np.isfinite(values).all())
    return False


def describe_input_error(mask: int, inputs: list[dict]) -> str:
    """A graph's `input_error` bitmask (bit i = input i held a value outside its range) -> a sentence."""
    bad = [spec for i, spec in enumerate(inputs) if int(mask) >> i & 1]
    return "; ".join(f"{s['name']} holds a value outside its range" for s in bad) or "no input error"
