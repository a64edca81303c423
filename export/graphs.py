"""The serving graphs as export-backend-neutral specs: a torch module plus its named inputs/outputs,
all derived from the models' feature declarations.

| graph | inputs | outputs |
|---|---|---|
| `ranker_embeddings` | per declared ranker feature, in order: hashed -> its RecsysEmbeddings field [.., H, D] (validity features also their hashes); others -> their RecsysBatch fields | logits [B, C, A] f32 (+ continuous_preds [B, C, K]), input_error [B] i32 |
| `ranker` | every RecsysBatch field (hashes in, tables inside) | same |
| `user_tower_embeddings` / `user_tower` | the user + history fields of the retrieval model, embeddings in / hashes in | user_representation [B, D], input_error |
| `candidate_tower_embeddings` / `candidate_tower` | the candidate hashed features of one post per row, [B, H, D] / [B, H] | candidate_representation [B, D], input_error |

"Embeddings in" graphs serve where the hash tables live outside the graph (the Python engine host reads
them memory-mapped; a user's own embedding store); "hashes in" graphs hold the tables (platform backends
on GPUs).

Out-of-range contract: bit i of `input_error` is set for a user (a row) when the graph's input i holds a
value outside its range: a hash outside [0, vocab) (or negative, without a table), a category outside its
vocabulary, an action not 0/1, a non-finite float, a negative timestamp. Such values are replaced by 0
before they are used, so no engine ever reads another row. Embeddings-in graphs built with `checked=False`
(those only the Python engine host runs, after phoenix_runtime.request.check_request) skip these checks: input_error 0.
Every module takes its inputs positionally in `GraphSpec.inputs` order and returns a tuple in
`GraphSpec.outputs` order. Dims named "B" and "C" are
dynamic; every other dim is fixed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from phoenix_runtime.request import out_of_range
from phoenix_torch import (HashedFeature, HashEmbeddingTables, PhoenixModel, PhoenixRetrievalModel, RecsysBatch,
                           RecsysEmbeddings, random_batch)
from phoenix_torch.features import Field, active, raw_key, validity_feature
from phoenix_torch.parity import precision_of

DYNAMIC_DIMS = ("B", "C")
EXPORT_DIMS = {"B": 3, "C": 5}  # example sizes (>= 2: exporters silently fix dims seen as 1)


@dataclass
class TensorSpec:
    """A graph input or output: name, dtype, symbolic shape and (inputs) the value check of its field."""
    name: str
    dtype: str                      # numpy dtype name: "int64" | "int32" | "float32"
    shape: tuple                    # ints and symbolic dim names, e.g. ("B", "C", 2)
    check: str | None = None        # hash | index | multi_hot | finite | time (features.Field.check)
    high: int | None = None         # exclusive upper bound of hash / index values
    entity: str | None = None       # the table a hash field indexes
    optional: bool = False          # may be sent as zeros (absent upstream)
    side: str | None = None
    key: str | None = None          # the raw-value key a client uses (features.raw_key)

    def to_dict(self) -> dict:
        d = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        for k in ("check", "high", "entity", "side", "key"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.optional:
            d["optional"] = True
        return d

    @classmethod
    def from_field(cls, f: Field, side: str, high: int | None = None, shape=None) -> "TensorSpec":
        return cls(f.name, f.dtype, tuple(shape or f.shape), f.check, high if high is not None else f.high, f.entity,
                   f.optional, side, raw_key(f, side))

    def resolve(self, dims: dict[str, int]) -> tuple[int, ...]:
        return tuple(int(dims[d]) if isinstance(d, str) else int(d) for d in self.shape)


@dataclass
class GraphSpec:
    name: str                                   # see the table in the module docstring
    module: nn.Module                           # forward(*inputs in order) -> tuple of outputs in order
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    config: object = None                       # the model config (for valid random inputs)
    precision: str = "fp32"
    example_inputs: dict = field(default_factory=dict)
    checked: bool = True                        # False: input_error is always 0 (the engine host checks)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def dynamic(self) -> tuple[str, ...]:
        return tuple(d for d in DYNAMIC_DIMS if any(d in t.shape for t in self.inputs))

    def torch_dynamic_shapes(self, max_sizes: dict[str, int] | None = None) -> dict:
        """dynamic_shapes for torch.export / torch.onnx.export(dynamo=True): the modules take `*inputs`, so
        one entry per input, in order, under that parameter's name."""
        max_sizes = max_sizes or {}
        dims = {d: torch.export.Dim(d, min=1, max=max_sizes.get(d, 1 << 16)) for d in self.dynamic}
        return {"inputs": tuple({i: dims[d] for i, d in enumerate(t.shape) if isinstance(d, str)} for t in self.inputs)}

    def random_inputs(self, dims: dict[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
        """Valid random inputs at the given sizes: a phoenix_torch.random_batch of the model (hashes within
        their tables, histories packed at the front, every candidate valid) plus random embeddings."""
        g = torch.Generator().manual_seed(seed + 1)
        b, c = dims["B"], dims.get("C", 1)
        vocab = {t.entity: t.high for t in self.inputs if t.check == "hash" and t.high} or 1000
        batch = random_batch(self.config, b, c, vocab if isinstance(vocab, int) else
                             {e: vocab.get(e, 1000) for e in _entities(self.config)}, seed=seed)
        out = {}
        for t in self.inputs:
            value = batch.get(t.name)
            if value is None:                                       # an embeddings input
                value = torch.randn(t.resolve({"B": b, "C": c}), generator=g)
            elif len(t.shape) == len(value.shape) - 1:              # a tower's [rows, ...] candidate field
                value = value[:, 0]
            out[t.name] = value.to(getattr(torch, t.dtype))
        return out

    def __call__(self, feed: dict) -> dict[str, torch.Tensor]:
        """Run the torch module on a {name: array or tensor} feed (the reference for parity checks)."""
        with torch.no_grad():
            outs = self.module(*(torch.as_tensor(np.asarray(feed[n])) if not isinstance(feed[n], torch.Tensor)
                                 else feed[n] for n in self.input_names))
        return dict(zip(self.output_names, outs))


def _entities(config) -> set[str]:
    return {f.entity for f in active(config.features) if isinstance(f, HashedFeature)}


# ---------------------------------------------------------------------------------------------
# the out-of-range contract (phoenix_runtime.request.out_of_range), in graph ops every backend supports
# (compare, Abs, Where, ReduceMax on float)

def check_and_clamp(values: list[torch.Tensor], specs: list[TensorSpec], checked: bool = True):
    """(values with out-of-range entries replaced by 0, input_error int32 [B]): bit i = input i. Unchecked
    (a graph behind the Python engine host, which refuses such requests before the engine runs): the values
    as they are and input_error 0, without the ~150 operators the checks cost."""
    if not checked:
        return values, torch.zeros(values[0].shape[0], dtype=torch.int32)
    clamped, error = [], None
    for i, (x, spec) in enumerate(zip(values, specs)):
        bad = out_of_range(spec.check, x, spec.high)      # the served check's own rule, as graph ops
        if bad is None:
            clamped.append(x)
            continue
        clamped.append(torch.where(bad, torch.zeros_like(x), x))
        flag = bad.flatten(1).to(torch.float32).amax(dim=1).to(torch.int32) * (1 << i)   # exact in int32
        error = flag if error is None else error + flag
    if error is None:
        error = torch.zeros(values[0].shape[0], dtype=torch.int32)
    return clamped, error


# ---------------------------------------------------------------------------------------------
# modules: embeddings in

def batch_and_embeddings(inputs, specs: list[TensorSpec], embedding_fields: set[str], checked: bool):
    """Checked (or not) positional inputs -> (RecsysBatch, RecsysEmbeddings, input_error)."""
    values, error = check_and_clamp(list(inputs), specs, checked)
    named = {s.name: v for s, v in zip(specs, values)}
    emb = RecsysEmbeddings(**{k: v for k, v in named.items() if k in embedding_fields})
    batch = RecsysBatch(**{k: v for k, v in named.items() if k not in embedding_fields})
    return batch, emb, error


class RankerFromEmbeddings(nn.Module):
    """Ranker inputs (see embeddings_inputs) -> (logits, [continuous_preds], input_error)."""

    def __init__(self, model: PhoenixModel, specs: list[TensorSpec], embedding_fields: set[str], checked=True):
        super().__init__()
        self.model, self.specs, self.embedding_fields, self.checked = model, specs, embedding_fields, checked

    def forward(self, *inputs):
        batch, emb, error = batch_and_embeddings(inputs, self.specs, self.embedding_fields, self.checked)
        out = self.model(batch, emb)
        extra = (out.continuous_preds.float(),) if out.continuous_preds is not None else ()
        return (out.logits.float(), *extra, error)


class UserTowerFromEmbeddings(nn.Module):
    """User + history inputs -> (user_representation [B, D], input_error)."""

    def __init__(self, retrieval: PhoenixRetrievalModel, specs: list[TensorSpec], embedding_fields: set[str],
                 checked=True):
        super().__init__()
        self.retrieval, self.specs, self.embedding_fields, self.checked = retrieval, specs, embedding_fields, checked

    def forward(self, *inputs):
        batch, emb, error = batch_and_embeddings(inputs, self.specs, self.embedding_fields, self.checked)
        return self.retrieval.user_representation(batch, emb).float(), error


class CandidateTowerFromEmbeddings(nn.Module):
    """The hash vectors of one post per row, [B, H, D] per candidate hashed feature -> (representation, error)."""

    def __init__(self, retrieval: PhoenixRetrievalModel, specs: list[TensorSpec], checked=True):
        super().__init__()
        self.retrieval, self.specs, self.checked = retrieval, specs, checked

    def forward(self, *inputs):
        values, error = check_and_clamp(list(inputs), self.specs, self.checked)
        emb = RecsysEmbeddings(**{s.name: v for s, v in zip(self.specs, values)})
        return self.retrieval.candidate_representation(emb).float(), error


class WithLookup(nn.Module):
    """Hashes in: range-check and clamp every input, gather the hash fields' rows from the tables inside the
    graph, then run the embeddings-in module (its own input_error is then always 0 and is dropped)."""

    def __init__(self, inner: nn.Module, inner_specs: list[TensorSpec], specs: list[TensorSpec],
                 tables: HashEmbeddingTables, lookups: dict[str, tuple[str, str]]):
        super().__init__()
        self.inner, self.inner_specs, self.specs, self.tables = inner, inner_specs, specs, tables
        self.lookups = lookups   # embedding input -> (hash input, entity)

    def forward(self, *inputs):
        values, error = check_and_clamp(list(inputs), self.specs)
        named = {s.name: v for s, v in zip(self.specs, values)}
        for emb_name, (hash_name, entity) in self.lookups.items():
            named[emb_name] = self.tables.tables[entity][named[hash_name]]
        outs = self.inner(*(named[s.name] for s in self.inner_specs))
        return (*outs[:-1], error)


# ---------------------------------------------------------------------------------------------
# specs

def _precision(cfg) -> str:
    return precision_of(cfg.fprop_dtype)


def _fixed(shape, cfg) -> tuple:
    """The history length S is fixed in every graph; B and C stay symbolic."""
    return tuple(cfg.history_seq_len if d == "S" else d for d in shape)


def _field_specs(feature, cfg, vocab: dict | None) -> list[TensorSpec]:
    return [TensorSpec.from_field(f, feature.side, (vocab or {}).get(f.entity) if f.check == "hash" else None,
                                  _fixed(f.shape, cfg)) for f in feature.fields(cfg.num_actions)]


def embedding_spec(f: HashedFeature, cfg, rows_only: bool = False) -> TensorSpec:
    shape = ("B", f.num_hashes, cfg.emb_size) if rows_only else _fixed((*f.dims, f.num_hashes, cfg.emb_size), cfg)
    return TensorSpec(f.embedding_field, "float32", shape, "finite", optional=f.optional, side=f.side,
                      key=f.embedding_field)


def model_inputs(cfg, sides, vocab: dict | None, embeddings: bool) -> tuple[list[TensorSpec], dict]:
    """The graph inputs of the features of `sides`, in declaration order, and {embedding input: (hash input,
    entity)}. Embeddings in: a hashed feature gives its embeddings (and, for the side's validity feature,
    its hashes first); hashes in: every feature gives its RecsysBatch fields."""
    specs, lookups = [], {}
    valid = {validity_feature(cfg.features, s).name for s in sides}
    for f in active(cfg.features):
        if f.side not in sides:
            continue
        if isinstance(f, HashedFeature) and embeddings:
            if f.name in valid:
                specs += _field_specs(f, cfg, vocab)
            specs.append(embedding_spec(f, cfg))
        else:
            specs += _field_specs(f, cfg, vocab)
        if isinstance(f, HashedFeature):
            lookups[f.embedding_field] = (f.name, f.entity)
    return specs, lookups


def _error_spec() -> TensorSpec:
    return TensorSpec("input_error", "int32", ("B",))


def _finish(name, module, inputs, outputs, cfg, checked: bool = True) -> GraphSpec:
    spec = GraphSpec(name, module.eval(), inputs, outputs, cfg, _precision(cfg), checked=checked)
    spec.example_inputs = spec.random_inputs(EXPORT_DIMS, seed=0)
    return spec


def ranker_outputs(cfg) -> list[TensorSpec]:
    out = [TensorSpec("logits", "float32", ("B", "C", cfg.num_actions))]
    if cfg.num_continuous_actions:
        out.append(TensorSpec("continuous_preds", "float32", ("B", "C", cfg.num_continuous_actions)))
    return out + [_error_spec()]


def ranker_graph(ranker: PhoenixModel, tables: HashEmbeddingTables | None = None, checked: bool = True) -> GraphSpec:
    """`ranker_embeddings`, or with `tables` the hashes-in `ranker` (the tables inside the graph). `checked`
    (embeddings in only): the out-of-range contract inside the graph; False for a graph only the Python engine
    host runs, after its own checks (hashes-in graphs are always checked: they index the tables)."""
    cfg, sides = ranker.config, ("user", "history", "candidate")
    inner_specs, lookups = model_inputs(cfg, sides, None, embeddings=True)
    emb_fields = {s.name for s in inner_specs if s.name in lookups}
    inner = RankerFromEmbeddings(ranker, inner_specs, emb_fields, checked or tables is not None)
    if tables is None:
        return _finish("ranker_embeddings", inner, inner_specs, ranker_outputs(cfg), cfg, inner.checked)
    specs, _ = model_inputs(cfg, sides, tables.vocab_sizes, embeddings=False)
    return _finish("ranker", WithLookup(inner, inner_specs, specs, tables, lookups), specs, ranker_outputs(cfg), cfg)


def user_tower_graph(retrieval: PhoenixRetrievalModel, tables: HashEmbeddingTables | None = None,
                     checked: bool = True) -> GraphSpec:
    cfg, sides = retrieval.config, ("user", "history")
    inner_specs, lookups = model_inputs(cfg, sides, None, embeddings=True)
    emb_fields = {s.name for s in inner_specs if s.name in lookups}
    outputs = [TensorSpec("user_representation", "float32", ("B", cfg.emb_size)), _error_spec()]
    inner = UserTowerFromEmbeddings(retrieval, inner_specs, emb_fields, checked or tables is not None)
    if tables is None:
        return _finish("user_tower_embeddings", inner, inner_specs, outputs, cfg, inner.checked)
    specs, _ = model_inputs(cfg, sides, tables.vocab_sizes, embeddings=False)
    return _finish("user_tower", WithLookup(inner, inner_specs, specs, tables, lookups), specs, outputs, cfg)


def candidate_tower_graph(retrieval: PhoenixRetrievalModel, tables: HashEmbeddingTables | None = None,
                          checked: bool = True) -> GraphSpec:
    """One post per row (B = rows), so Triton batching and the TensorRT "B" profile apply to the corpus."""
    cfg = retrieval.config
    feats = retrieval.candidate_features
    inner_specs = [embedding_spec(f, cfg, rows_only=True) for f in feats]
    outputs = [TensorSpec("candidate_representation", "float32", ("B", cfg.emb_size)), _error_spec()]
    inner = CandidateTowerFromEmbeddings(retrieval, inner_specs, checked or tables is not None)
    if tables is None:
        return _finish("candidate_tower_embeddings", inner, inner_specs, outputs, cfg, inner.checked)
    specs, lookups = candidate_hash_specs(retrieval, tables.vocab_sizes)
    return _finish("candidate_tower", WithLookup(inner, inner_specs, specs, tables, lookups), specs, outputs, cfg)


def candidate_hash_specs(retrieval: PhoenixRetrievalModel, vocab: dict) -> tuple[list[TensorSpec], dict]:
    """The candidate tower's hashes-in inputs, one post per row: [B, H] per candidate hashed feature."""
    feats = retrieval.candidate_features
    specs = [TensorSpec(f.name, "int64", ("B", f.num_hashes), "hash", vocab[f.entity], f.entity, side="candidate",
                        key=raw_key(f.fields(1)[0], "candidate")) for f in feats]
    return specs, {f.embedding_field: (f.name, f.entity) for f in feats}


def hashes_in(graph: str, model, vocab: dict) -> tuple[list[TensorSpec], dict]:
    """(the hashes-in inputs of `graph`, {embedding input: (hash input, entity)}): what a served model takes
    when the tables live outside the graph (the engine host gathers the rows)."""
    if graph.startswith("candidate_tower"):
        return candidate_hash_specs(model, vocab)
    sides = ("user", "history") if graph.startswith("user_tower") else ("user", "history", "candidate")
    return model_inputs(model.config, sides, vocab, embeddings=False)


GRAPH_BUILDERS = {"ranker": ranker_graph, "user_tower": user_tower_graph, "candidate_tower": candidate_tower_graph}
