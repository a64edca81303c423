"""The serving graphs as export-backend-neutral specs: a torch module plus its named inputs/outputs.

`serving_graphs(ranker, tables, retrieval, retrieval_tables)` returns one `GraphSpec` per served model:

| name | inputs | outputs |
|---|---|---|
| ranker | the 8 RecsysBatch fields (hashes in, tables inside) | logits [B, C, A] f32, input_error [B] i32 |
| ranker_embeddings | RecsysEmbeddings fields + validity hashes, actions, surfaces | logits, input_error |
| user_tower | user + history RecsysBatch fields | user_representation [B, D] f32, input_error |
| candidate_tower | candidate_post_hashes [B, Hi], candidate_author_hashes [B, Ha] (B = rows) | candidate_representation [B, D] f32, input_error |

Out-of-range contract (docs/design.md): bit i of `input_error` is set for a user (a row) when RecsysBatch
field i holds a value outside its table: [0, vocab) for hashes, [0, 16) for surfaces, {0, 1} for
actions. Such values are replaced by 0 before any gather, so no engine ever reads another row. The towers
use the same bit numbers (user tower bits 0-4, candidate tower bits 5-6).

Every module takes its inputs positionally in `GraphSpec.inputs` order and returns a tuple in
`GraphSpec.outputs` order. Dims named "B" and "C" are dynamic; every other dim is fixed by the preset.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from phoenix_torch import BATCH_FIELDS as PT_BATCH_FIELDS
from phoenix_torch import (HashEmbeddingTables, HashedPhoenixModel, PhoenixModel, PhoenixModelConfig,
                           PhoenixRetrievalModel, PhoenixRetrievalModelConfig, RecsysBatch, RecsysEmbeddings,
                           init_seeded, load_tables, load_upstream_params)

DYNAMIC_DIMS = ("B", "C")
SURFACE_VOCAB = 16
BATCH_FIELDS = tuple(PT_BATCH_FIELDS)  # RecsysBatch order: bit i of input_error = field i
BIT = {name: i for i, name in enumerate(BATCH_FIELDS)}
EXPORT_DIMS = {"B": 3, "C": 5}  # example sizes (>= 2: exporters silently fix dims seen as 1)


@dataclass
class TensorSpec:
    name: str
    dtype: str                  # numpy dtype name: "int32" | "float32"
    shape: tuple                # ints and symbolic dim names, e.g. ("B", "C", 2)
    low: int | None = None      # valid values [low, high) for integer inputs; actions are {0, 1}
    high: int | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    def resolve(self, dims: dict[str, int]) -> tuple[int, ...]:
        return tuple(int(dims[d]) if isinstance(d, str) else int(d) for d in self.shape)


@dataclass
class GraphSpec:
    name: str                                   # "ranker", "ranker_embeddings", "user_tower", "candidate_tower"
    module: nn.Module                           # forward(*inputs in order) -> tuple of outputs in order
    example_inputs: dict[str, torch.Tensor]     # ordered like `inputs`, B and C >= 2
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    precision: str = "fp32"                     # "fp32" | "bf16" (the model's forward dtype)
    dynamic: tuple[str, ...] = DYNAMIC_DIMS     # symbolic dim names that vary at run time

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """{tensor name: {axis: dim name}} for every input and output with a dynamic dim."""
        out = {}
        for t in [*self.inputs, *self.outputs]:
            axes = {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            if axes:
                out[t.name] = axes
        return out

    def torch_dynamic_shapes(self, max_sizes: dict[str, int] | None = None) -> tuple[dict, ...]:
        """dynamic_shapes for torch.export / torch.onnx.export(dynamo=True), positional like the inputs:
        one `torch.export.Dim` per symbolic name (min 1, max `max_sizes[name]` or 65536)."""
        max_sizes = max_sizes or {}
        dims = {d: torch.export.Dim(d, min=1, max=max_sizes.get(d, 1 << 16)) for d in self.dynamic}
        return tuple({i: dims[d] for i, d in enumerate(t.shape) if isinstance(d, str)} for t in self.inputs)

    def random_inputs(self, dims: dict[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
        """Valid random inputs at the given dim sizes: hashes in [1, vocab), every user and candidate valid,
        each history packed at the front with a random number (>= 1) of valid items, padding (hash 0, no
        action) at the tail."""
        g = torch.Generator().manual_seed(seed)
        out = {}
        for t in self.inputs:
            shape = t.resolve(dims)
            if t.dtype == "float32" and t.high is None:           # embeddings
                out[t.name] = torch.randn(shape, generator=g)
            elif t.dtype == "float32":                             # multi-hot actions
                out[t.name] = (torch.rand(shape, generator=g) < 0.3).float()
            else:
                lo = max(t.low or 0, 1) if t.name.endswith("hashes") else (t.low or 0)
                out[t.name] = torch.randint(lo, t.high, shape, generator=g, dtype=torch.int32)
        if "history_post_hashes" in out:
            b, s = out["history_post_hashes"].shape[:2]
            pad = torch.arange(s)[None, :] >= torch.randint(1, s + 1, (b,), generator=g)[:, None]
            for name in ("history_post_hashes", "history_author_hashes", "history_actions"):
                if name in out:
                    out[name][pad] = 0
        return out

    def __call__(self, feed: dict) -> dict[str, torch.Tensor]:
        """Run the torch module on a {name: tensor} feed (the reference for parity checks)."""
        with torch.no_grad():
            outs = self.module(*(torch.as_tensor(np.asarray(feed[n]) if not isinstance(feed[n], torch.Tensor)
                                                 else feed[n]) for n in self.input_names))
        return dict(zip(self.output_names, outs))


# ---------------------------------------------------------------------------------------------
# the out-of-range contract, in graph ops every backend supports (compare, Where, ReduceMax on float)

def check_and_clamp(values: dict[str, torch.Tensor], bounds: dict[str, int | None]):
    """Return (clamped values, input_error int32 [B]). bounds[name] = vocab (None: {0, 1} actions)."""
    clamped, error = {}, None
    for name, x in values.items():
        if name not in bounds:
            clamped[name] = x
            continue
        bound = bounds[name]
        bad = (x != 0) & (x != 1) if bound is None else (x < 0) | (x >= bound)
        clamped[name] = torch.where(bad, torch.zeros_like(x), x)
        flag = bad.flatten(1).to(torch.float32).amax(dim=1) * float(1 << BIT[name])
        error = flag if error is None else error + flag
    return clamped, error.to(torch.int32)


def table_vocabs(tables) -> dict[str, int]:
    """{"user": N, "post": N, "author": N} of a HashEmbeddingTables."""
    return {e: int(n) for e, n in ((k.removesuffix("_vocab"), v) for k, v in tables.vocab_sizes.items())}


def batch_bounds(tables) -> dict[str, int | None]:
    v = table_vocabs(tables)
    return {"user_hashes": v["user"], "history_post_hashes": v["post"], "history_author_hashes": v["author"],
            "history_actions": None, "history_product_surface": SURFACE_VOCAB,
            "candidate_post_hashes": v["post"], "candidate_author_hashes": v["author"],
            "candidate_product_surface": SURFACE_VOCAB}


# ---------------------------------------------------------------------------------------------
# modules

class HashesRanker(nn.Module):
    """RecsysBatch fields -> (logits, input_error): hash tables inside, out-of-range values clamped."""

    def __init__(self, model, tables):
        super().__init__()
        self.hashed = HashedPhoenixModel(model, tables)
        self.bounds = batch_bounds(tables)

    def forward(self, user_hashes, history_post_hashes, history_author_hashes, history_actions,
                history_product_surface, candidate_post_hashes, candidate_author_hashes, candidate_product_surface):
        fields = (user_hashes, history_post_hashes, history_author_hashes, history_actions, history_product_surface,
                  candidate_post_hashes, candidate_author_hashes, candidate_product_surface)
        values, error = check_and_clamp(dict(zip(BATCH_FIELDS, fields)), self.bounds)
        logits = self.hashed(*values.values())
        return logits.float(), error


EMB_FIELDS = ("user_embeddings", "history_post_embeddings", "candidate_post_embeddings",
              "history_author_embeddings", "candidate_author_embeddings")
EMB_BATCH_FIELDS = ("user_hashes", "history_post_hashes", "history_actions", "history_product_surface",
                    "candidate_post_hashes", "candidate_product_surface")


class EmbeddingsRanker(nn.Module):
    """RecsysEmbeddings fields + validity hashes, actions, surfaces -> (logits, input_error)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.bounds = {"history_actions": None, "history_product_surface": SURFACE_VOCAB,
                       "candidate_product_surface": SURFACE_VOCAB}

    def forward(self, user_embeddings, history_post_embeddings, candidate_post_embeddings,
                history_author_embeddings, candidate_author_embeddings, user_hashes, history_post_hashes,
                history_actions, history_product_surface, candidate_post_hashes, candidate_product_surface):
        emb = RecsysEmbeddings(user_embeddings=user_embeddings, history_post_embeddings=history_post_embeddings,
                               candidate_post_embeddings=candidate_post_embeddings,
                               history_author_embeddings=history_author_embeddings,
                               candidate_author_embeddings=candidate_author_embeddings)
        values, error = check_and_clamp(dict(zip(EMB_BATCH_FIELDS, (
            user_hashes, history_post_hashes, history_actions, history_product_surface, candidate_post_hashes,
            candidate_product_surface))), self.bounds)
        # author hashes are not read by the model (validity comes from the first post/user hash)
        values["history_author_hashes"] = torch.zeros_like(values["history_post_hashes"])
        values["candidate_author_hashes"] = torch.zeros_like(values["candidate_post_hashes"])
        batch = RecsysBatch(**{n: values[n] for n in BATCH_FIELDS})
        logits = self.model(batch, emb)
        return logits.float(), error


USER_FIELDS = BATCH_FIELDS[:5]
CANDIDATE_FIELDS = ("candidate_post_hashes", "candidate_author_hashes")


def _lookup(tables, field: str, hashes: torch.Tensor) -> torch.Tensor:
    """hashes [...] of a RecsysBatch hash field -> rows [..., D] of its table."""
    return tables.table_for(field)[hashes.long()]


class UserTower(nn.Module):
    """user + history fields -> (user_representation [B, D], input_error)."""

    def __init__(self, retrieval, tables):
        super().__init__()
        self.retrieval, self.tables = retrieval, tables
        self.bounds = {k: v for k, v in batch_bounds(tables).items() if k in USER_FIELDS}

    def forward(self, user_hashes, history_post_hashes, history_author_hashes, history_actions,
                history_product_surface):
        fields = (user_hashes, history_post_hashes, history_author_hashes, history_actions, history_product_surface)
        v, error = check_and_clamp(dict(zip(USER_FIELDS, fields)), self.bounds)
        b = v["user_hashes"].shape[0]
        hi, ha = v["history_post_hashes"].shape[-1], v["history_author_hashes"].shape[-1]
        # one padded candidate (hash 0): the user tower reads only the user and history
        dev = user_hashes.device
        cand_post = torch.zeros((b, 1, hi), dtype=torch.int32, device=dev)
        cand_author = torch.zeros((b, 1, ha), dtype=torch.int32, device=dev)
        cand_surface = torch.zeros((b, 1), dtype=torch.int32, device=dev)
        batch = RecsysBatch(**v, candidate_post_hashes=cand_post, candidate_author_hashes=cand_author,
                            candidate_product_surface=cand_surface)
        emb = self.tables.lookup(batch)
        rep = self.retrieval.user_representation(batch, emb)
        return rep.float(), error


class CandidateTower(nn.Module):
    """candidate post/author hashes [B, H] (B = rows) -> (candidate_representation [B, D], input_error)."""

    def __init__(self, retrieval, tables):
        super().__init__()
        self.retrieval, self.tables = retrieval, tables
        self.bounds = {k: v for k, v in batch_bounds(tables).items() if k in CANDIDATE_FIELDS}

    def forward(self, post_hashes, author_hashes):
        v, error = check_and_clamp(dict(zip(CANDIDATE_FIELDS, (post_hashes, author_hashes))), self.bounds)
        post = _lookup(self.tables, "candidate_post_hashes", v["candidate_post_hashes"])        # [B, Hi, D]
        author = _lookup(self.tables, "candidate_author_hashes", v["candidate_author_hashes"])  # [B, Ha, D]
        x = torch.cat([post, author], dim=1).flatten(1)                        # [B, (Hi+Ha)*D]
        return self.retrieval.candidate_tower(x).float(), error


# ---------------------------------------------------------------------------------------------
# specs

def _precision(cfg) -> str:
    return "bf16" if str(getattr(cfg, "fprop_dtype", "float32")) in ("bfloat16", "torch.bfloat16") else "fp32"


def batch_specs(cfg, tables, fields=BATCH_FIELDS) -> list[TensorSpec]:
    h, s, a = cfg.hash_config, cfg.history_seq_len, cfg.num_actions
    v = table_vocabs(tables)
    all_specs = {
        "user_hashes": TensorSpec("user_hashes", "int32", ("B", h.num_user_hashes), 0, v["user"]),
        "history_post_hashes": TensorSpec("history_post_hashes", "int32", ("B", s, h.num_item_hashes), 0, v["post"]),
        "history_author_hashes": TensorSpec("history_author_hashes", "int32", ("B", s, h.num_author_hashes), 0,
                                            v["author"]),
        "history_actions": TensorSpec("history_actions", "float32", ("B", s, a), 0, 2),
        "history_product_surface": TensorSpec("history_product_surface", "int32", ("B", s), 0, SURFACE_VOCAB),
        "candidate_post_hashes": TensorSpec("candidate_post_hashes", "int32", ("B", "C", h.num_item_hashes), 0,
                                            v["post"]),
        "candidate_author_hashes": TensorSpec("candidate_author_hashes", "int32", ("B", "C", h.num_author_hashes),
                                              0, v["author"]),
        "candidate_product_surface": TensorSpec("candidate_product_surface", "int32", ("B", "C"), 0, SURFACE_VOCAB),
    }
    return [all_specs[f] for f in fields]


def embedding_specs(cfg) -> list[TensorSpec]:
    h, s, d = cfg.hash_config, cfg.history_seq_len, cfg.emb_size
    shapes = {"user_embeddings": ("B", h.num_user_hashes, d),
              "history_post_embeddings": ("B", s, h.num_item_hashes, d),
              "candidate_post_embeddings": ("B", "C", h.num_item_hashes, d),
              "history_author_embeddings": ("B", s, h.num_author_hashes, d),
              "candidate_author_embeddings": ("B", "C", h.num_author_hashes, d)}
    return [TensorSpec(n, "float32", shapes[n]) for n in EMB_FIELDS]


def _error_spec(rows: str = "B") -> TensorSpec:
    return TensorSpec("input_error", "int32", (rows,))


def _finish(name, module, inputs, outputs, precision) -> GraphSpec:
    module.eval()
    spec = GraphSpec(name, module, {}, inputs, outputs, precision)
    spec.example_inputs = spec.random_inputs(EXPORT_DIMS, seed=0)
    return spec


def ranker_graph(ranker, tables) -> GraphSpec:
    cfg = ranker.config
    logits = TensorSpec("logits", "float32", ("B", "C", cfg.num_actions))
    return _finish("ranker", HashesRanker(ranker, tables), batch_specs(cfg, tables),
                   [logits, _error_spec()], _precision(cfg))


def ranker_embeddings_graph(ranker, tables) -> GraphSpec:
    cfg = ranker.config
    logits = TensorSpec("logits", "float32", ("B", "C", cfg.num_actions))
    inputs = embedding_specs(cfg) + batch_specs(cfg, tables, EMB_BATCH_FIELDS)
    return _finish("ranker_embeddings", EmbeddingsRanker(ranker), inputs, [logits, _error_spec()],
                   _precision(cfg))


def user_tower_graph(retrieval, tables) -> GraphSpec:
    cfg = retrieval.config
    rep = TensorSpec("user_representation", "float32", ("B", cfg.emb_size))
    return _finish("user_tower", UserTower(retrieval, tables), batch_specs(cfg, tables, USER_FIELDS),
                   [rep, _error_spec()], _precision(cfg))


def candidate_tower_graph(retrieval, tables) -> GraphSpec:
    cfg = retrieval.config
    v, h = table_vocabs(tables), cfg.hash_config
    inputs = [TensorSpec("candidate_post_hashes", "int32", ("B", h.num_item_hashes), 0, v["post"]),
              TensorSpec("candidate_author_hashes", "int32", ("B", h.num_author_hashes), 0, v["author"])]
    rep = TensorSpec("candidate_representation", "float32", ("B", cfg.emb_size))
    return _finish("candidate_tower", CandidateTower(retrieval, tables), inputs, [rep, _error_spec()],
                   _precision(cfg))


def serving_graphs(ranker, tables, retrieval=None, retrieval_tables=None) -> dict[str, GraphSpec]:
    """Every served graph: ranker, ranker_embeddings and (given a retrieval model) the two towers."""
    graphs = {"ranker": ranker_graph(ranker, tables), "ranker_embeddings": ranker_embeddings_graph(ranker, tables)}
    if retrieval is not None:
        rt = retrieval_tables if retrieval_tables is not None else tables
        graphs["user_tower"] = user_tower_graph(retrieval, rt)
        graphs["candidate_tower"] = candidate_tower_graph(retrieval, rt)
    return graphs


# ---------------------------------------------------------------------------------------------
# models for the graphs (the build makes them from options, the torch engine from a manifest)

def make_tables(emb_size: int, vocab: int, seed: int, tables_file=None) -> HashEmbeddingTables:
    if tables_file:
        tables = load_tables(tables_file)
        if tables.emb_size != emb_size:
            raise ValueError(f"--tables {tables_file}: tables have D={tables.emb_size}, the model has D={emb_size}")
        return tables
    return init_seeded(HashEmbeddingTables(emb_size, vocab, vocab, vocab), seed)


def build_models(cfg: PhoenixModelConfig, retrieval_cfg: PhoenixRetrievalModelConfig | None, vocab: int = 10_000,
                 seed: int = 0, checkpoint=None, retrieval_checkpoint=None, tables_file=None):
    """(ranker, tables, retrieval or None, retrieval tables or None): upstream checkpoints or seeded init."""
    ranker = PhoenixModel(cfg)
    load_upstream_params(ranker, checkpoint) if checkpoint else init_seeded(ranker, seed)
    tables = make_tables(cfg.emb_size, vocab, seed + 1, tables_file)
    retrieval = rtables = None
    if retrieval_cfg is not None:
        retrieval = PhoenixRetrievalModel(retrieval_cfg)
        load_upstream_params(retrieval, retrieval_checkpoint) if retrieval_checkpoint else init_seeded(retrieval, seed + 2)
        rtables = tables if retrieval_cfg.emb_size == cfg.emb_size else make_tables(
            retrieval_cfg.emb_size, vocab, seed + 3)
    return ranker.eval(), tables.eval(), retrieval.eval() if retrieval else None, rtables


def graphs_from_manifest(manifest: dict, models=None) -> dict[str, GraphSpec]:
    """Graph specs with the manifest's configs and zero-size-free placeholder weights (load a state dict next)."""
    cfg = PhoenixModelConfig.from_dict(manifest["model_config"])
    t = manifest["tables"]
    tables = HashEmbeddingTables(cfg.emb_size, t["user_vocab"], t["post_vocab"], t["author_vocab"])
    retrieval = rtables = None
    if manifest.get("retrieval_config") and (models is None or set(models) & {"user_tower", "candidate_tower"}):
        rcfg = PhoenixRetrievalModelConfig.from_dict(manifest["retrieval_config"])
        retrieval = PhoenixRetrievalModel(rcfg).eval()
        rt = manifest.get("retrieval_tables") or t
        rtables = HashEmbeddingTables(rcfg.emb_size, rt["user_vocab"], rt["post_vocab"], rt["author_vocab"])
    graphs = serving_graphs(PhoenixModel(cfg).eval(), tables, retrieval, rtables)
    return {k: v for k, v in graphs.items() if models is None or k in models}
