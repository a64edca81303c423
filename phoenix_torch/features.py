"""A model's inputs, declared once.

Every input of a Phoenix model is a `Feature`: what it is (its kind), whose it is (its side: the user,
each history item, each candidate) and where it enters (concatenated into that side's reduction, or
added to the user token). Everything else is derived from the declaration: the `RecsysBatch` /
`RecsysEmbeddings` fields and their checks, the parameters and the shapes of the reduce projections,
the ONNX inputs, the Triton configs, the client's request builder and the manifest.

Kinds (the value each field holds):

| kind | fields | enters the reduction as | parameters |
|---|---|---|---|
| `hashed` | `<name>` int [side..., H] hash values, 0 = padding | the H looked-up vectors `<..>_embeddings` [side..., H, D], flattened (or summed and added) | none: the hash tables live outside the model, one per `entity` |
| `categorical` | `<name>` int [side...] in [0, vocab) | one row of `table` [vocab, D] | `table` (shared by features that name the same table) |
| `actions` | `history_actions` float [B, S, A] multi-hot over the model's action list | `(2a - 1) @ param`, zero where no action | `param` [A, D] |
| `continuous` | `<name>` float [side..., width] | `gelu(x @ <param>_proj1) @ <param>_proj2`, x = clip(value[column], 0, scale) / scale | `<param>_proj1` [1, hidden], `<param>_proj2` [hidden, D] |
| `time_bucket` | `now_field`, `time_field` int seconds [side...] | one row of `table`: bucket of (now - time) // 60 minutes | `table` [max_age_mins // granularity + 2, D] |

Sides: `user` ([B, ...], one token), `history` ([B, S, ...]) and `candidate` ([B, C, ...]). The
concatenation order of a side's reduction is the declaration order. The first hashed feature of a
side decides validity (hash 0 in its first column = padding), as upstream does with
`user_hashes[:, 0]`, `history_post_hashes[..., 0]` and `candidate_post_hashes[..., 0]`.

A feature of width 0 (a hashed feature with 0 hashes) is the same as no feature: it has no field.
Optional features (the May release's IP hashes, dwell time and timestamps) may be absent from a batch;
an absent optional field is the same as its zero value (hash 0 = padding row; dwell 0 -> the MLP of 0
is 0; timestamp 0 = unknown -> bucket 0), so servers and clients send zeros for them.

This module is plain Python (no torch): the serving side reads the same declaration from the manifest.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

SIDES = ("user", "history", "candidate")
SIDE_DIMS = {"user": ("B",), "history": ("B", "S"), "candidate": ("B", "C")}
REDUCTIONS = {"user": "proj_mat_1", "history": "proj_mat_3", "candidate": "proj_mat_2"}  # upstream names
# The May release's continuous actions (proto ContinuousActionName, column 1 = dwell time): the width of the
# history input and of the continuous head, the hidden width of their MLP, the normalisation scale (seconds).
NUM_CONTINUOUS_ACTIONS = 8
CONTINUOUS_HIDDEN_DIM = 64
CONTINUOUS_NORM_SCALE = 30.0


@dataclass(frozen=True)
class Field:
    """One RecsysBatch field: name, dtype ("int64" | "float32"), symbolic shape, what values are valid."""
    name: str
    dtype: str
    shape: tuple
    check: str           # "hash" [0, vocab of `entity`) | "index" [0, high) | "multi_hot" {0, 1} | "finite" | "time" >= 0
    high: int | None = None
    entity: str | None = None
    optional: bool = False


@dataclass(frozen=True)
class Feature:
    """Base class: a name, a side, where it enters ("concat" | "add") and whether it may be absent."""
    name: str
    side: str
    enters: str = "concat"
    optional: bool = False
    kind: ClassVar[str] = ""

    def __post_init__(self):
        if self.side not in SIDES:
            raise ValueError(f"feature {self.name!r}: side must be one of {SIDES}, got {self.side!r}")
        if self.enters not in ("concat", "add"):
            raise ValueError(f"feature {self.name!r}: enters must be 'concat' or 'add', got {self.enters!r}")
        if self.enters == "add" and (self.kind != "hashed" or self.side != "user"):
            raise ValueError(f"feature {self.name!r}: only hashed user features can be added to the user token")

    @property
    def dims(self) -> tuple:
        return SIDE_DIMS[self.side]

    @property
    def active(self) -> bool:
        return True

    def fields(self, num_actions: int) -> tuple[Field, ...]:
        raise NotImplementedError

    def units(self) -> int:
        """How many D-wide blocks this feature adds to its side's concatenation."""
        return 1 if self.enters == "concat" else 0

    def params(self, emb_size: int, num_actions: int) -> dict[str, tuple[int, ...]]:
        """The model parameters it owns, by upstream (Haiku) name."""
        return {}

    def to_dict(self) -> dict:
        return {"kind": self.kind, **dataclasses.asdict(self)}

    @staticmethod
    def from_dict(d: dict) -> "Feature":
        d = dict(d)
        kind = d.pop("kind", None)
        if kind not in KINDS:
            raise ValueError(f"feature {d.get('name')!r}: unknown kind {kind!r}; kinds are {sorted(KINDS)}")
        cls = KINDS[kind]
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"feature {d.get('name')!r} ({kind}): unknown key(s) {unknown}; keys are {sorted(names)}")
        return cls(**d)


@dataclass(frozen=True)
class HashedFeature(Feature):
    """Hash values of an entity (user, item, author, ip, ...): [side..., num_hashes] indexing `entity`'s table."""
    entity: str = ""
    num_hashes: int = 1
    kind: ClassVar[str] = "hashed"

    def __post_init__(self):
        super().__post_init__()
        if not self.name.endswith("_hashes"):
            raise ValueError(f"hashed feature {self.name!r}: its name must end in '_hashes'")
        if not self.entity or self.num_hashes < 0:
            raise ValueError(f"hashed feature {self.name!r}: needs an entity and num_hashes >= 0")

    @property
    def active(self) -> bool:
        return self.num_hashes > 0

    @property
    def embedding_field(self) -> str:
        """Its RecsysEmbeddings field: `user_hashes` -> `user_embeddings`."""
        return self.name[: -len("_hashes")] + "_embeddings"

    def fields(self, num_actions):
        return (Field(self.name, "int64", (*self.dims, self.num_hashes), "hash", entity=self.entity,
                      optional=self.optional),)

    def units(self):
        return self.num_hashes if self.enters == "concat" else 0


@dataclass(frozen=True)
class CategoricalFeature(Feature):
    """One value in [0, vocab) per row, looked up in `table` [vocab, D] (a one-hot matmul upstream)."""
    vocab: int = 0
    table: str = ""
    kind: ClassVar[str] = "categorical"

    def __post_init__(self):
        super().__post_init__()
        if self.vocab < 1:
            raise ValueError(f"categorical feature {self.name!r}: vocab must be >= 1, got {self.vocab}")

    @property
    def table_name(self) -> str:
        return self.table or f"{self.name}_embedding_table"

    def fields(self, num_actions):
        return (Field(self.name, "int64", self.dims, "index", high=self.vocab, optional=self.optional),)

    def params(self, emb_size, num_actions):
        return {self.table_name: (self.vocab, emb_size)}


@dataclass(frozen=True)
class ActionsFeature(Feature):
    """Multi-hot engagement of each history item over the model's action list (width = number of actions)."""
    param: str = "action_projection"
    kind: ClassVar[str] = "actions"

    def fields(self, num_actions):
        return (Field(self.name, "float32", (*self.dims, num_actions), "multi_hot", optional=self.optional),)

    def params(self, emb_size, num_actions):
        return {self.param: (num_actions, emb_size)}


@dataclass(frozen=True)
class ContinuousFeature(Feature):
    """A real value (column `column` of a [side..., width] input), clipped to [0, scale], divided by scale,
    through a two-layer GELU MLP without biases (the May release's history dwell time)."""
    width: int = 1
    column: int = 0
    scale: float = 30.0
    hidden: int = 64
    param: str = ""
    kind: ClassVar[str] = "continuous"

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.column < self.width:
            raise ValueError(f"continuous feature {self.name!r}: column {self.column} outside width {self.width}")
        if self.scale <= 0 or self.hidden < 1:
            raise ValueError(f"continuous feature {self.name!r}: scale must be > 0 and hidden >= 1")

    @property
    def param_prefix(self) -> str:
        return self.param or self.name

    def fields(self, num_actions):
        return (Field(self.name, "float32", (*self.dims, self.width), "finite", optional=self.optional),)

    def params(self, emb_size, num_actions):
        p = self.param_prefix
        return {f"{p}_proj1": (1, self.hidden), f"{p}_proj2": (self.hidden, emb_size)}


@dataclass(frozen=True)
class TimeBucketFeature(Feature):
    """An age from two timestamps in seconds (`now_field` - `time_field`), in buckets of `granularity_mins`:
    bucket = clip(age_min // g + 1, 0, max_age_mins // g + 1); bucket 0 when the age is negative or either
    timestamp is 0 (unknown). The May release's candidate post age."""
    now_field: str = ""
    time_field: str = ""
    granularity_mins: int = 60
    max_age_mins: int = 4800
    table: str = ""
    kind: ClassVar[str] = "time_bucket"

    def __post_init__(self):
        super().__post_init__()
        if not self.now_field or not self.time_field:
            raise ValueError(f"time_bucket feature {self.name!r}: needs now_field and time_field")
        if self.granularity_mins < 1 or self.max_age_mins < self.granularity_mins:
            raise ValueError(f"time_bucket feature {self.name!r}: needs 1 <= granularity_mins <= max_age_mins")

    @property
    def table_name(self) -> str:
        return self.table or f"{self.name}_embedding_table"

    @property
    def num_buckets(self) -> int:
        """Normal buckets + the overflow bucket + bucket 0 (unknown)."""
        return self.max_age_mins // self.granularity_mins + 2

    def fields(self, num_actions):
        return tuple(Field(n, "int64", self.dims, "time", optional=self.optional)
                     for n in (self.now_field, self.time_field))

    def params(self, emb_size, num_actions):
        return {self.table_name: (self.num_buckets, emb_size)}


KINDS = {c.kind: c for c in (HashedFeature, CategoricalFeature, ActionsFeature, ContinuousFeature, TimeBucketFeature)}


# ------------------------------------------------------------------------------------ declarations

def active(features) -> tuple[Feature, ...]:
    """The features that have fields (a hashed feature with 0 hashes is no feature)."""
    return tuple(f for f in features if f.active)


def batch_fields(features, num_actions: int) -> tuple[Field, ...]:
    """Every RecsysBatch field in declaration order."""
    return tuple(fld for f in active(features) for fld in f.fields(num_actions))


def validity_feature(features, side: str) -> HashedFeature:
    """The hashed feature whose first hash says whether a row of `side` is real (hash 0 = padding)."""
    for f in active(features):
        if f.side == side and isinstance(f, HashedFeature) and f.enters == "concat":
            return f
    raise ValueError(f"the {side} side has no hashed feature to tell real rows from padding")


def reduction_units(features, side: str) -> int:
    """D-wide blocks concatenated into `side`'s reduction (its projection has units * D rows)."""
    return sum(f.units() for f in active(features) if f.side == side)


def model_params(features, emb_size: int, num_actions: int) -> dict[str, tuple[int, ...]]:
    """The feature parameters of a model (shared tables once); a name declared twice with two shapes is an error."""
    out: dict[str, tuple[int, ...]] = {}
    for f in active(features):
        for name, shape in f.params(emb_size, num_actions).items():
            if out.setdefault(name, shape) != shape:
                raise ValueError(f"parameter {name!r} is declared with shapes {out[name]} and {shape}")
    return out


def entities(features) -> dict[str, int]:
    """{entity: hashes per row} of the hashed features (the hash tables a model reads)."""
    out: dict[str, int] = {}
    for f in active(features):
        if isinstance(f, HashedFeature):
            out.setdefault(f.entity, f.num_hashes)
    return out


def check_declaration(features) -> None:
    """Names unique, a validity feature on every side that has features, known kinds."""
    names = [fld.name for f in active(features) for fld in f.fields(1)]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"features declare the field(s) {dup} twice")
    for side in {f.side for f in active(features)}:
        validity_feature(features, side)


def to_dicts(features) -> list[dict]:
    return [f.to_dict() for f in features]


def from_dicts(items) -> tuple[Feature, ...]:
    return tuple(Feature.from_dict(d) for d in items)


# ------------------------------------------------------------------------------------ the releases

def standard_features(num_user_hashes: int = 2, num_item_hashes: int = 2, num_author_hashes: int = 2,
                      product_surface_vocab_size: int = 16) -> tuple[Feature, ...]:
    """The January release's inputs (the order is upstream's concatenation order)."""
    surface = "product_surface_embedding_table"
    return (
        HashedFeature("user_hashes", "user", entity="user", num_hashes=num_user_hashes),
        HashedFeature("history_post_hashes", "history", entity="item", num_hashes=num_item_hashes),
        HashedFeature("history_author_hashes", "history", entity="author", num_hashes=num_author_hashes),
        ActionsFeature("history_actions", "history"),
        CategoricalFeature("history_product_surface", "history", vocab=product_surface_vocab_size, table=surface),
        HashedFeature("candidate_post_hashes", "candidate", entity="item", num_hashes=num_item_hashes),
        HashedFeature("candidate_author_hashes", "candidate", entity="author", num_hashes=num_author_hashes),
        CategoricalFeature("candidate_product_surface", "candidate", vocab=product_surface_vocab_size, table=surface),
    )


def may_features(num_user_hashes: int = 2, num_item_hashes: int = 2, num_author_hashes: int = 2,
                 num_ip_hashes: int = 0, product_surface_vocab_size: int = 16, post_age_granularity_mins: int = 60,
                 num_continuous_actions: int = NUM_CONTINUOUS_ACTIONS,
                 continuous_action_hidden_dim: int = CONTINUOUS_HIDDEN_DIM,
                 continuous_norm_scale: float = CONTINUOUS_NORM_SCALE) -> tuple[Feature, ...]:
    """The May release's ranker inputs: January's plus IP hashes added to the user token, the history dwell
    time (column 1 of `history_continuous_actions`) and the candidate post age."""
    jan = standard_features(num_user_hashes, num_item_hashes, num_author_hashes, product_surface_vocab_size)
    user, history, candidates = jan[:1], jan[1:5], jan[5:]
    ip = HashedFeature("user_ip_hashes", "user", entity="ip", num_hashes=num_ip_hashes, enters="add", optional=True)
    dwell = ContinuousFeature("history_continuous_actions", "history", width=num_continuous_actions, column=1,
                              scale=continuous_norm_scale, hidden=continuous_action_hidden_dim,
                              param="history_dwell_time", optional=True)
    age = TimeBucketFeature("post_age", "candidate", now_field="candidate_impr_ts",
                            time_field="candidate_post_creation_ts", granularity_mins=post_age_granularity_mins,
                            table="post_age_embedding_table", optional=True)
    return (*user, ip, *history, dwell, *candidates, age)


def add_features(features, extra) -> tuple[Feature, ...]:
    """`features` with `extra` appended at the end of their side's group (so each concatenation keeps the
    declared order and new features come last)."""
    out = list(features)
    for f in extra:
        last = max((i for i, g in enumerate(out) if g.side == f.side), default=len(out) - 1)
        out.insert(last + 1, f)
    return tuple(out)


def raw_key(field: Field, side: str) -> str:
    """The key a client uses for a field's raw value: the field name without its side prefix, with hashed
    `<x>_hashes` taking raw ids as `<x>_id` (`history_post_hashes` -> `post_id`, `user_hashes` -> `user_id`,
    `candidate_product_surface` -> `product_surface`, `candidate_impr_ts` -> `impr_ts`)."""
    stem = field.name.removeprefix(side + "_")
    if field.check == "hash":
        return f"{stem.removesuffix('hashes').rstrip('_') or side}_id"
    return stem
