"""The build contract: every fact the build, the server, the client and the benchmarks share.

- where things are: the served model names, the version folder, artifact paths, `manifest.json`;
- what a build wrote: the manifest (written last, atomically) and its artifact records, found one way
  (`find_artifact`), with one sha256;
- what the served models accept: each served model's input specs (derived at build time from the
  model's feature declaration) and the limits (users per request, candidates per user, history
  length, request bytes, the candidate sizes a client pads to);
- how raw ids become hashes (`hash_ids`, per entity: the May release's scheme);
- what a client needs (`client_config`).

Plain Python and numpy only: the build copies this file into the model repository (as
`phoenix_export/contract.py`), where the Triton models read it without this project installed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
FORMAT = 2
VERSION = "1"                      # the one version folder of every served model

# Served models (Triton model folder names).
RANKER = "phoenix_ranker"                            # hashes in -> logits (+ continuous_preds), input_error
RANKER_EMBEDDINGS = "phoenix_ranker_embeddings"      # RecsysEmbeddings in (bring your own embeddings)
POSTPROCESS = "phoenix_postprocess"                  # logits -> named scores, weighted/final score, ranking
ENSEMBLE = "phoenix"                                 # phoenix_ranker -> phoenix_postprocess
ENSEMBLE_EMBEDDINGS = "phoenix_embeddings"           # phoenix_ranker_embeddings -> phoenix_postprocess
USER_TOWER = "phoenix_user_tower"                    # user + history -> user_representation
CANDIDATE_TOWER = "phoenix_candidate_tower"          # candidate hashes -> candidate_representation
RETRIEVAL = "phoenix_retrieval"                      # user tower + top-k over the corpus
ENGINE_MODELS = (RANKER, RANKER_EMBEDDINGS, USER_TOWER, CANDIDATE_TOWER)
# The Python packages the build copies next to each Python-backend model.py (nothing else is imported there).
SERVING_PACKAGES = {"phoenix_export": ("contract.py", "runtime.py"), "phoenix_serving": ("batching.py", "scoring.py")}

DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_CANDIDATES = 1024
DEFAULT_MAX_REQUEST_BYTES = 64 << 20


class ManifestError(RuntimeError):
    """A missing, unreadable or inconsistent manifest (the message says which and what to do)."""


class RequestError(ValueError):
    """A request the served model refuses: the message names the input or the limit."""


def model_path(model: str, filename: str) -> str:
    """`<model>/1/<filename>`: where a served model's files live, relative to the repository."""
    return f"{model}/{VERSION}/{filename}"


# ------------------------------------------------------------------------------------------ artifacts

def sha256_file(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Artifact:
    """One file (plus companion files) a build wrote: a graph, an engine, a table, a corpus, a config."""
    name: str
    model: str                      # the graph it serves (ranker, user_tower, ...) or the served model it belongs to
    kind: str                       # onnx, torch_export, aoti, tensorrt, table, corpus, triton_config, python_source
    path: str                       # relative to the repository root
    precision: str | None = None
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    device: str | None = None       # engines compiled for one device type (aoti, tensorrt)
    files: list = field(default_factory=list)    # companion files (ONNX external data, plan metadata), same folder
    sha256: str | None = None
    bytes: int | None = None
    info: dict = field(default_factory=dict)     # anything else (parity error, build time, TensorRT version, ...)

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, [], {})}

    @classmethod
    def from_dict(cls, d: dict) -> "Artifact":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def all_paths(self) -> list[str]:
        folder = str(Path(self.path).parent)
        return [self.path, *(f"{folder}/{f}" for f in self.files)]

    def with_file_info(self, root) -> "Artifact":
        """Fill sha256 and bytes from the file under `root` (companion files count in `bytes`)."""
        root = Path(root)
        self.sha256 = sha256_file(root / self.path)
        self.bytes = sum((root / p).stat().st_size for p in self.all_paths())
        return self


def find_artifact(manifest: dict, model: str, kind: str, device: str | None = None) -> dict:
    """The `kind` artifact of `model`. Engines built for one device type (aoti, tensorrt record `device`)
    must match `device`'s type ("cuda:1" matches "cuda"); others match any device."""
    found = [a for a in manifest.get("artifacts", []) if a.get("model") == model and a.get("kind") == kind]
    want = device.split(":")[0] if device else None
    for a in found:
        if want is None or a.get("device") in (None, want):
            return a
    if found:
        raise ManifestError(f"the manifest's {kind!r} artifacts for {model!r} were built for "
                            f"{sorted({a.get('device') for a in found})}, not {device!r}; rebuild on a {want} host")
    have = sorted({a.get("kind") for a in manifest.get("artifacts", []) if a.get("model") == model})
    raise ManifestError(f"the manifest has no {kind!r} artifact for {model!r} (it has {have or 'none'}); rebuild "
                        f"with `python -m export.build` and the engines you need (see --engines)")


def artifact_files(manifest: dict) -> set[str]:
    """Every file the manifest's artifacts consist of (paths relative to the repository)."""
    return {p for a in manifest.get("artifacts", []) for p in Artifact.from_dict(a).all_paths()}


# ------------------------------------------------------------------------------------------ manifest

def write_manifest(root, manifest: dict) -> Path:
    """Write `<root>/manifest.json` atomically (temp file + rename); return its path."""
    root = Path(root)
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=root)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return root / MANIFEST


def read_manifest(root) -> dict:
    """Read `<root>/manifest.json` (root may also be the file itself) and check it is complete."""
    path = Path(root)
    if path.is_dir():
        path = path / MANIFEST
    if not path.exists():
        raise ManifestError(f"no {MANIFEST} in {path.parent}: the build did not complete there "
                            f"(run `python -m export.build --output {path.parent}`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from None
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{path} has format {manifest.get('format')!r}; this code reads format {FORMAT} "
                            f"(rebuild with this version of `python -m export.build`)")
    missing = [k for k in ("served", "limits", "artifacts", "model_config") if k not in manifest]
    if missing:
        raise ManifestError(f"{path} lacks {missing}: an incomplete build")
    return manifest


def verify(root, manifest: dict | None = None) -> list[str]:
    """Problems with the files the manifest lists (missing, size or sha256 mismatch); [] when all match."""
    root = Path(root)
    manifest = manifest if manifest is not None else read_manifest(root)
    problems = []
    for d in manifest.get("artifacts", []):
        a = Artifact.from_dict(d)
        missing = [p for p in a.all_paths() if not (root / p).exists()]
        if missing:
            problems.append(f"{a.name}: {missing} missing")
        elif a.bytes is not None and sum((root / p).stat().st_size for p in a.all_paths()) != a.bytes:
            problems.append(f"{a.name}: {a.path} has another size than the manifest says")
        elif a.sha256 and sha256_file(root / a.path) != a.sha256:
            problems.append(f"{a.name}: {a.path} sha256 differs from the manifest")
    return problems


# ------------------------------------------------------------------------------------------ limits

@dataclass(frozen=True)
class Limits:
    """What a served model accepts, enforced by the server before any work (and checked by the client)."""
    max_batch_size: int          # users per request (Triton max_batch_size)
    max_candidates: int          # candidates per user
    history_len: int             # S, fixed by the graphs
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    candidate_sizes: tuple = ()  # C values a client pads to so native backends batch requests together; () = any

    def __post_init__(self):
        object.__setattr__(self, "candidate_sizes", tuple(sorted(int(c) for c in self.candidate_sizes)))
        if min(self.max_batch_size, self.max_candidates, self.history_len, self.max_request_bytes) < 1:
            raise ValueError(f"limits must be >= 1: {self}")
        if self.candidate_sizes and (self.candidate_sizes[0] < 1 or self.candidate_sizes[-1] != self.max_candidates):
            raise ValueError(f"candidate sizes {self.candidate_sizes} must be >= 1 and end at max_candidates "
                             f"{self.max_candidates}")

    def padded_candidates(self, c: int) -> int:
        """The candidate count a request of c candidates is padded to (c itself without fixed sizes)."""
        if c > self.max_candidates:
            raise RequestError(f"{c} candidates: the served model accepts at most {self.max_candidates} per user "
                               f"(limit max_candidates)")
        return next((s for s in self.candidate_sizes if s >= c), c)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "candidate_sizes": list(self.candidate_sizes)}

    @classmethod
    def from_dict(cls, d: dict) -> "Limits":
        return cls(**d)


# ------------------------------------------------------------------------------------------ inputs

def resolve_shape(shape, dims: dict) -> tuple:
    """["B", "C", 2] with {"B": 3, "C": 5} -> (3, 5, 2)."""
    return tuple(int(dims[d]) if isinstance(d, str) else int(d) for d in shape)


def check_request(specs: list[dict], arrays: dict, limits: Limits, model: str) -> dict[str, int]:
    """Check one request's arrays against the served model's input specs and limits before any work;
    return its dims {"B", "C", ...}. Raises RequestError naming the input or the limit:
    a missing input, a wrong dtype or fixed dim, B or C of 0, inputs that disagree on B or C (ragged
    candidate inputs name both), too many candidates or bytes, and values outside their range
    (hashes outside their table, categories outside their vocabulary, actions not 0/1, non-finite floats,
    negative timestamps)."""
    total = sum(int(np.asarray(a).nbytes) for a in arrays.values())
    if total > limits.max_request_bytes:
        raise RequestError(f"{model}: the request holds {total} bytes of inputs, above the limit max_request_bytes "
                           f"= {limits.max_request_bytes}")
    dims: dict[str, tuple[int, str]] = {}
    for spec in specs:
        name = spec["name"]
        if name not in arrays:
            raise RequestError(f"{model}: missing input {name!r}")
        a = arrays[name]
        if str(a.dtype) != spec["dtype"]:
            raise RequestError(f"{model}: input {name!r} has dtype {a.dtype}, expected {spec['dtype']}")
        if a.ndim != len(spec["shape"]):
            raise RequestError(f"{model}: input {name!r} has shape {list(a.shape)}, expected {spec['shape']}")
        for axis, (n, want) in enumerate(zip(a.shape, spec["shape"])):
            if isinstance(want, str):
                if n < 1:
                    raise RequestError(f"{model}: input {name!r} has {want} = 0 (axis {axis}); it needs at least one "
                                       f"{'user' if want == 'B' else 'candidate' if want == 'C' else 'row'}")
                if want in dims and dims[want][0] != n:
                    other = dims[want][1]
                    raise RequestError(f"{model}: inputs {other!r} and {name!r} disagree on {want}: "
                                       f"{dims[want][0]} vs {n}")
                dims.setdefault(want, (n, name))
            elif n != want:
                raise RequestError(f"{model}: input {name!r} has shape {list(a.shape)}, expected {spec['shape']} "
                                   f"(axis {axis} must be {want})")
    if "C" in dims and dims["C"][0] > limits.max_candidates:
        raise RequestError(f"{model}: {dims['C'][0]} candidates per user; the limit max_candidates is "
                           f"{limits.max_candidates}")
    if "B" in dims and dims["B"][0] > limits.max_batch_size:
        raise RequestError(f"{model}: {dims['B'][0]} users; the limit max_batch_size is {limits.max_batch_size}")
    for spec in specs:
        problem = value_problem(spec, arrays[spec["name"]])
        if problem:
            raise RequestError(f"{model}: input {spec['name']!r} {problem}")
    return {k: v[0] for k, v in dims.items()}


def value_problem(spec: dict, a) -> str | None:
    """Why the values of `a` are outside the spec's range (None when they are fine)."""
    check = spec.get("check")
    a = np.asarray(a)
    if not a.size or check is None:
        return None
    if check in ("hash", "index"):
        lo, hi, high = int(a.min()), int(a.max()), spec.get("high")
        if lo < 0 or (high is not None and hi >= high):
            what = f"the {spec.get('entity')} table" if check == "hash" else "its vocabulary"
            return f"holds {lo if lo < 0 else hi}, outside [0, {high if high is not None else 'inf'}) ({what})"
    elif check == "multi_hot":
        if not np.isin(a, (0.0, 1.0)).all():
            return "must be multi-hot 0/1"
    elif check == "finite":
        if not np.isfinite(a).all():
            return "holds a NaN or infinite value"
    elif check == "time":
        if int(a.min()) < 0:
            return f"holds {int(a.min())}: timestamps are seconds >= 0 (0 = unknown)"
    return None


def describe_input_error(mask: int, inputs: list[dict]) -> str:
    """A graph's `input_error` bitmask (bit i = input i held a value outside its range) -> a sentence."""
    bad = [spec for i, spec in enumerate(inputs) if int(mask) >> i & 1]
    return "; ".join(f"{s['name']} holds a value outside its range" for s in bad) or "no input error"


# ------------------------------------------------------------------------------------------ hashing

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
            raise ValueError(f"hash params: vocab must be >= 2 and modulus in (0, 2^63), got {self.vocab}, {self.modulus}")

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


# ------------------------------------------------------------------------------------------ served scores

# home-mixer's PhoenixScores, in the struct's order (candidate_pipeline/candidate.rs:30-51), and the column each
# field reads (scorers/phoenix_scorer.rs:129-151, extract_phoenix_scores): the January action name, or the proto
# ActionName (lower case) of May-style models. dwell_time reads ContinuousActionName DWELL_TIME (1).
PHOENIX_SCORES = {
    "favorite_score": ("favorite", "server_tweet_fav"),
    "reply_score": ("reply", "server_tweet_reply"),
    "retweet_score": ("repost", "server_tweet_retweet"),
    "photo_expand_score": ("photo_expand", "client_tweet_photo_expand"),
    "click_score": ("click", "client_tweet_click"),
    "profile_click_score": ("profile_click", "client_tweet_click_profile"),
    "vqv_score": ("vqv", "client_tweet_video_quality_view"),
    "share_score": ("share", "client_tweet_share"),
    "share_via_dm_score": ("share_via_dm", "client_tweet_click_send_via_direct_message"),
    "share_via_copy_link_score": ("share_via_copy_link", "client_tweet_share_via_copy_link"),
    "dwell_score": ("dwell", "client_tweet_recap_dwelled"),
    "quote_score": ("quote", "server_tweet_quote"),
    "quoted_click_score": ("quoted_click", "client_quoted_tweet_click"),
    "follow_author_score": ("follow_author", "client_tweet_follow_author"),
    "not_interested_score": ("not_interested", "client_tweet_not_interested_in"),
    "block_author_score": ("block_author", "client_tweet_block_author"),
    "mute_author_score": ("mute_author", "client_tweet_mute_author"),
    "report_score": ("report", "client_tweet_report"),
    "dwell_time": ("dwell_time", None),
}
DWELL_TIME = "dwell_time"
DWELL_TIME_CONTINUOUS = 1      # ContinuousActionName::DwellTime
RESULT_NAMES = ("weighted_score", "final_score", "ranking", "probs")
WEIGHT_NAMES = tuple(n.removesuffix("_score") for n in PHOENIX_SCORES)   # `weight.<name>` scoring parameters
# Published defaults (the August release's home-mixer; the docs' table in README "Served scores").
DEFAULT_WEIGHTS = {
    "favorite": 0.5, "reply": 5.0, "retweet": 1.0, "photo_expand": 0.05, "click": 0.4, "profile_click": 0.0,
    "vqv": 0.05, "share": 2.0, "share_via_dm": 5.0, "share_via_copy_link": 20.0, "dwell": 0.0, "quote": 5.0,
    "quoted_click": 0.05, "follow_author": 4.0, "not_interested": -43.2, "block_author": -31.2,
    "mute_author": -58.8, "report": -234.0, "dwell_time": 0.004,
}
NEGATIVE_WEIGHTS = ("not_interested", "block_author", "mute_author", "report")   # ranking_scorer.rs:127
CONTINUOUS_WEIGHTS = ("dwell_time",)        # a value, not a positive action: outside the weight sums
# The order weighted_scorer.rs:49-67 adds the terms in (dwell_time before follow_author): float sums depend on it.
WEIGHTED_ORDER = (*WEIGHT_NAMES[:13], "dwell_time", *WEIGHT_NAMES[13:18])
SCALAR_DEFAULTS = {"negative_scores_offset": 0.001, "author_diversity_decay": 0.5, "author_diversity_floor": 0.25,
                   "oon_factor": 0.75, "min_video_duration_ms": 10000}
SCALAR_PARAMS = tuple(SCALAR_DEFAULTS)


def score_sources(actions, num_continuous: int) -> dict:
    """{"fields": {PhoenixScores field: ["column", i] | ["continuous", j] | None (the model cannot produce
    it)}, "columns": {name: i} for every column no field reads (served under its own name), "num_actions"}. A field reads
    the first column named its January name or its ActionName; dwell_time reads continuous_preds[..., 1]
    when the model has a continuous head (a `dwell_time` column is then superseded and not served)."""
    actions = list(actions)
    dupes = sorted({a for a in actions if actions.count(a) > 1})
    clash = [a for a in actions if a != DWELL_TIME and a in (*PHOENIX_SCORES, *RESULT_NAMES)]
    if dupes or clash:
        raise ValueError(f"actions: duplicate column names {dupes} / names that clash with served outputs {clash}")
    fields: dict[str, list | None] = {}
    for name, (january, action_name) in PHOENIX_SCORES.items():
        if name == DWELL_TIME and num_continuous > DWELL_TIME_CONTINUOUS:
            fields[name] = ["continuous", DWELL_TIME_CONTINUOUS]
            continue
        col = next((i for i, a in enumerate(actions) if a in (january, action_name)), None)
        fields[name] = None if col is None else ["column", col]
    read = {src[1] for src in fields.values() if src and src[0] == "column"}
    columns = {a: i for i, a in enumerate(actions) if i not in read and a != DWELL_TIME}
    return {"fields": fields, "columns": columns, "num_actions": len(actions)}


def served_score_names(sources: dict) -> list[str]:
    """What a postprocessor serves: the 19 fields, the unread columns, weighted/final score, ranking, probs."""
    return [*sources["fields"], *sources["columns"], *RESULT_NAMES]


def scoring_params(overrides: dict) -> dict:
    """The complete scoring parameters (defaults + `weight.<name>` / scalar overrides given as strings), as
    the manifest records them; an unknown name or a value that is not a finite number raises ValueError
    naming the key."""
    weights, scalars = dict(DEFAULT_WEIGHTS), dict(SCALAR_DEFAULTS)
    for key, value in overrides.items():
        name = key.removeprefix("weight.")
        target = weights if key.startswith("weight.") else scalars
        if name not in target:
            raise ValueError(f"scoring parameter {key!r}: unknown; weights are {list(WEIGHT_NAMES)}, scalars "
                             f"{list(SCALAR_PARAMS)}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if not np.isfinite(number):
            raise ValueError(f"scoring parameter {key!r} must be a finite number, got {value!r}")
        target[name] = number
    if scalars["min_video_duration_ms"] != int(scalars["min_video_duration_ms"]):
        raise ValueError("scoring parameter 'min_video_duration_ms' must be a whole number of milliseconds")
    return {"weights": weights, "order": list(WEIGHTED_ORDER), "negative": list(NEGATIVE_WEIGHTS),
            "continuous": list(CONTINUOUS_WEIGHTS), **scalars}


# ------------------------------------------------------------------------------------------ client

def client_config(manifest: dict) -> dict:
    """Everything a client needs to build requests: the ranker's input specs (with each field's raw key),
    the action list and served score names, the limits, the hash parameters per entity (ranker and
    retrieval), the user-tower inputs. Served as a config parameter of phoenix_postprocess."""
    served = manifest["served"]
    return {"release": manifest.get("release"), "preset": manifest.get("preset"),
            "precision": manifest.get("precision"), "actions": manifest["model_config"]["actions"],
            "score_names": [o["name"] for o in served[POSTPROCESS]["outputs"]],
            "score_sources": served[POSTPROCESS]["sources"], "limits": manifest["limits"],
            "ranker_inputs": served[RANKER]["inputs"], "hashing": manifest["hashing"],
            "retrieval_inputs": served.get(RETRIEVAL, {}).get("inputs"),
            "retrieval_hashing": manifest.get("retrieval_hashing"),
            "postprocess_inputs": served[POSTPROCESS]["request_inputs"]}
