"""A built repository's manifest: where things are, what the build wrote, what a client needs.

- the served model names and the one version folder (`model_path`);
- the artifact records (`Artifact`: a graph, an engine, a table, a corpus, a config), found one way
  (`find_artifact`), with one sha256;
- `manifest.json`: written last and atomically by the build (`write_manifest`), read and checked by every
  reader (`read_manifest`), its files verified (`verify`);
- `client_config`: what a client needs to build requests, served as a parameter of phoenix_postprocess.

Standard library only: part of phoenix_runtime, which the build copies whole into the model repository.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

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
PIPELINE = "phoenix_pipeline"                        # raw ids -> retrieval -> ranking -> named scores, in one request
ENGINE_MODELS = (RANKER, RANKER_EMBEDDINGS, USER_TOWER, CANDIDATE_TOWER)
SERVED_MODELS = (ENSEMBLE, ENSEMBLE_EMBEDDINGS, PIPELINE, RANKER, RANKER_EMBEDDINGS, POSTPROCESS, USER_TOWER,
                 CANDIDATE_TOWER, RETRIEVAL)       # every model a build may serve


class ManifestError(RuntimeError):
    """A missing, unreadable or inconsistent manifest (the message says which and what to do)."""


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


# ------------------------------------------------------------------------------------------ client

def client_config(manifest: dict) -> dict:
    """Everything a client needs to build requests: the ranker's input specs (with each field's raw key),
    the action list and served score names, the limits, the hash parameters per entity (ranker and
    retrieval), the user-tower inputs, the pipeline's inputs. Served as a config parameter of phoenix_postprocess."""
    served = manifest["served"]
    return {"release": manifest.get("release"), "preset": manifest.get("preset"),
            "precision": manifest.get("precision"), "actions": manifest["model_config"]["actions"],
            "score_names": [o["name"] for o in served[POSTPROCESS]["outputs"]],
            "score_sources": served[POSTPROCESS]["sources"], "limits": manifest["limits"],
            "ranker_inputs": served[RANKER]["inputs"], "hashing": manifest["hashing"],
            "retrieval_inputs": served.get(RETRIEVAL, {}).get("inputs"),
            "retrieval_hashing": manifest.get("retrieval_hashing"),
            "postprocess_inputs": served[POSTPROCESS]["request_inputs"],
            "pipeline_inputs": (served[PIPELINE]["inputs"] + served[PIPELINE]["request_inputs"]
                                if PIPELINE in served else None)}

