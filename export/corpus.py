"""The retrieval corpus of a repository: its files, an optional FAISS index, and swapping it without a rebuild.

    python -m export.corpus --repository REPO --corpus FILE.npz [--index exact|hnsw|ivfpq] [--index-param K=V ...]

A corpus is `post_ids`, `author_ids` (uint64), `candidate_representations` [N, D] (the candidate tower's
L2-normalised outputs) and optional `topics`, the layout of the release's `sports_corpus.npz`. Swapping
writes the new files beside phoenix_retrieval's model.py (and a new index of the repository's kind, or of
the kind `--index` asks for), updates the manifest last and atomically, and leaves the rest of the
repository as it is; reload `phoenix_retrieval` (or restart the server) to serve it.

Index kinds (`export.build --retrieval-index`; faiss-cpu, `pip install ".[ann]"`, for the last two):
- `exact` (default): a dot product with every post; the float32 corpus (N x D x 4 bytes) in memory.
- `hnsw` (`faiss` is its old name): FAISS HNSW over inner products; the float32 vectors plus a graph.
- `ivfpq`: FAISS IVF-PQ over inner products: `m` bytes of codes and an 8-byte id per post, so the float32
  corpus need not be in memory. Parameters, derived from N unless set with `--index-param KEY=VALUE`:
  nlist (lists: about sqrt(N)), m (bytes per post: D / 4), nbits (8), nprobe (lists searched per user),
  rescore (R: the exact scores of R x K candidates, read from corpus.npy memory-mapped; 0 = no corpus.npy).
  Measured at 10M posts by `python -m benchmarks.ann` (benchmarks/results/ann/).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

from export.artifacts import ArtifactsError, Corpus, read_corpus
from phoenix_runtime import ann
from phoenix_runtime.manifest import RETRIEVAL, Artifact, ManifestError, model_path, read_manifest, write_manifest
from phoenix_runtime.retrieval import CORPUS_FILES, INDEX_FILE
from phoenix_runtime.topk import quantize_corpus

HNSW_NEIGHBOURS = 32        # graph degree M: recall vs memory
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 400        # search breadth at serve time: recall vs latency (K = 200 needs ef >= K)
INDEX_CHOICES = (*ann.KINDS, *ann.ALIASES)
SCAN_FILE = "corpus_scan.onnx"
SCAN_OPSET = 17

# IVF-PQ: the parameters a user may set (--index-param KEY=VALUE), each derived from N and D otherwise.
IVFPQ_PARAMS = {
    "nlist": "inverted lists (k-means centroids); default: the power of 2 nearest sqrt(N), at most N / 39",
    "m": "sub-quantisers = code bytes per post with 8-bit codes; must divide D; default D / 4",
    "nbits": "bits per sub-quantiser code (4..8); default 8 (4 below 9984 posts, too few to train 256 centroids)",
    "nprobe": "lists searched per user (recall vs latency); default nlist / 16, at least 1",
    "rescore": "R: rescore R x K candidates exactly from corpus.npy (memory-mapped); 0 = approximate scores and "
               "no corpus.npy; default 4",
}
INDEX_PARAMS = {"exact": {}, "hnsw": {}, "ivfpq": IVFPQ_PARAMS}
IVFPQ_MIN_ROWS = 1000       # below that, exact search is cheaper than training an index
TRAIN_PER_LIST = 64         # k-means training points per list (FAISS wants at least 39)
PQ_TRAIN = 65536            # FAISS trains 256 centroids per sub-quantiser on at most 256 x 256 points
ADD_CHUNK = 1 << 18         # rows added per call (bounded memory for a memory-mapped corpus)


class IndexParamError(ValueError):
    """A retrieval index option that cannot be used (the message names it); exit 2 at the command line."""


def _faiss():
    try:
        import faiss
    except ImportError:
        raise RuntimeError("an approximate retrieval index needs faiss-cpu: pip install faiss-cpu (or .[ann])") from None
    return faiss


def parse_index_params(kind: str, items) -> dict[str, int]:
    """`KEY=VALUE` strings -> {key: int} for index `kind`; IndexParamError naming the bad item."""
    options = {}
    for item in items:
        key, eq, value = str(item).partition("=")
        if not eq:
            raise IndexParamError(f"--index-param {item!r}: expected KEY=VALUE, e.g. nprobe=64")
        options[key.strip()] = value
    return check_index_options(kind, options)


def check_index_options(kind: str, options: dict) -> dict[str, int]:
    """{key: int} of index `kind`'s options (values int or their text); IndexParamError naming a key the kind
    does not take, or a value that is no integer or out of range."""
    try:
        kind = ann.canonical_kind(kind)
    except ValueError as e:
        raise IndexParamError(str(e)) from None
    allowed, out = INDEX_PARAMS[kind], {}
    for key, value in options.items():
        if key not in allowed:
            raise IndexParamError(f"--index-param {key!r}: the {kind} index takes "
                                  f"{', '.join(allowed) if allowed else 'no parameters'}")
        try:
            out[key] = int(value)
        except ValueError:
            raise IndexParamError(f"--index-param {key}={value!r}: expected an integer") from None
        if out[key] < (0 if key == "rescore" else 1):
            raise IndexParamError(f"--index-param {key}={out[key]}: must be {'>= 0' if key == 'rescore' else '>= 1'}")
    return out


def ivfpq_params(n: int, d: int, options: dict | None = None) -> dict[str, int]:
    """The IVF-PQ parameters for N posts of dimension D: `options` where given, else derived from N and D."""
    options = dict(options or {})
    if n < IVFPQ_MIN_ROWS:
        raise IndexParamError(f"an ivfpq index needs at least {IVFPQ_MIN_ROWS} posts (the corpus has {n}); "
                              f"use exact search")
    nlist = options.get("nlist", max(1, min(2 ** round(math.log2(math.sqrt(n))), n // 39)))
    p = {"nlist": nlist, "m": options.get("m", max(1, d // 4)),
         "nbits": options.get("nbits", 8 if n >= 39 * 256 else 4),
         "nprobe": options.get("nprobe", max(1, nlist // 16)), "rescore": options.get("rescore", 4)}
    if p["nlist"] > n // 39:
        raise IndexParamError(f"--index-param nlist={p['nlist']}: at most N / 39 = {n // 39} for {n} posts "
                              f"(k-means needs 39 points per list)")
    if d % p["m"]:
        raise IndexParamError(f"--index-param m={p['m']}: must divide the representation size D = {d}")
    if not 4 <= p["nbits"] <= 8 or n < 2 ** p["nbits"] * 4:
        raise IndexParamError(f"--index-param nbits={p['nbits']}: must be in 4..8 with at least 4 x 2^nbits posts")
    if p["nprobe"] > p["nlist"]:
        raise IndexParamError(f"--index-param nprobe={p['nprobe']}: at most nlist = {p['nlist']}")
    return p


def build_ivfpq(rows, params: dict, seed: int = 0, progress=None):
    """Train an IndexIVFPQ (inner product) on a sample of `rows` [N, D] (an array or a memory-mapped .npy),
    add every row in chunks (row i gets id i), set nprobe. `progress(stage, done, total)` is told as it goes."""
    faiss = _faiss()
    n, d = rows.shape
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, params["nlist"], params["m"], params["nbits"],
                             faiss.METRIC_INNER_PRODUCT)
    index.do_polysemous_training = False   # only for Hamming pre-filtering, which IP search does not use; 5x slower
    size = min(n, max(TRAIN_PER_LIST * params["nlist"], PQ_TRAIN))
    sample = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    if progress:
        progress("train", 0, size)
    index.train(np.ascontiguousarray(rows[sample], dtype=np.float32))
    for start in range(0, n, ADD_CHUNK):
        if progress:
            progress("add", start, n)
        index.add(np.ascontiguousarray(rows[start:start + ADD_CHUNK], dtype=np.float32))
    if progress:
        progress("add", n, n)
    index.nprobe = params["nprobe"]
    return index


def build_hnsw(rows):
    faiss = _faiss()
    index = faiss.IndexHNSWFlat(rows.shape[1], HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(np.ascontiguousarray(rows, dtype=np.float32))
    index.hnsw.efSearch = HNSW_EF_SEARCH
    return index


def index_params(kind: str, n: int, d: int, options: dict | None = None) -> dict:
    """The effective parameters of an index of `kind` over N x D (what the manifest records)."""
    if kind == "ivfpq":
        return ivfpq_params(n, d, options)
    if kind == "hnsw":
        return {"M": HNSW_NEIGHBOURS, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": HNSW_EF_SEARCH}
    return {}


def write_corpus_scan(representations: np.ndarray, path: Path, root: Path) -> Artifact:
    """The exact search's approximate scan (phoenix_runtime.topk.Int8Scan): an ONNX graph multiplying the users'
    7-bit parts [2B, D] uint8 by the corpus quantised to int8 (an initializer [D, N]) in exact integers.
    The quantisation's scale and the bound's constants go into the artifact's `info`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    q, meta = quantize_corpus(representations)
    d = representations.shape[1]
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["users", "corpus"], ["approx"])], "corpus_scan",
        [helper.make_tensor_value_info("users", TensorProto.UINT8, ["users2", d])],
        [helper.make_tensor_value_info("approx", TensorProto.INT32, ["users2", len(q)])],
        [numpy_helper.from_array(np.ascontiguousarray(q.T), "corpus")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", SCAN_OPSET)])
    onnx.save_model(model, str(path))
    return Artifact("retrieval_corpus_scan", RETRIEVAL, "corpus_scan", str(path.relative_to(root)),
                    info=meta).with_file_info(root)


def write_corpus(corpus: Corpus, root: Path, index: str, options: dict | None = None) -> tuple[list[Artifact], dict]:
    """The corpus files beside phoenix_retrieval's model.py (+ the FAISS index); their artifacts and the
    retrieval record's index fields (`index`, `index_params`, `index_options`)."""
    options = check_index_options(index, options or {})                        # a kind's own keys only
    kind = ann.canonical_kind(index)
    n, d = corpus.representations.shape
    params = index_params(kind, n, d, options)                                  # checked before any file is written
    if kind != "exact":
        _faiss()
    keep_floats = kind != "ivfpq" or params["rescore"] > 0
    arrays = dict(zip(CORPUS_FILES, (corpus.representations if keep_floats else None, corpus.post_ids,
                              corpus.author_ids, corpus.topics)))
    arts = []
    for name, array in arrays.items():
        rel = model_path(RETRIEVAL, name)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if array is None:
            (root / rel).unlink(missing_ok=True)
            continue
        np.save(root / rel, array)
        arts.append(Artifact(f"retrieval_{name.removesuffix('.npy')}", RETRIEVAL, "corpus", rel).with_file_info(root))
    scan = root / model_path(RETRIEVAL, SCAN_FILE)
    scan.unlink(missing_ok=True)
    if kind == "exact":                  # the exact search's int8 scan; an index searches by itself
        arts.append(write_corpus_scan(corpus.representations, scan, root))
    path = root / model_path(RETRIEVAL, INDEX_FILE)
    path.unlink(missing_ok=True)
    if kind != "exact":
        t0 = time.perf_counter()
        built = build_ivfpq(corpus.representations, params) if kind == "ivfpq" else build_hnsw(corpus.representations)
        _faiss().write_index(built, str(path))
        arts.append(Artifact("retrieval_corpus_faiss", RETRIEVAL, "corpus", str(path.relative_to(root)),
                               info={"index": kind, "build_s": round(time.perf_counter() - t0, 1)}
                               ).with_file_info(root))
    return arts, {"index": kind, "index_params": params, "index_options": options}


def swap(repository: Path, corpus_file: Path, index: str | None = None, options: dict | None = None) -> dict:
    """Serve another corpus from `repository` (same D) with an index of kind `index` (None: the repository's)
    and `options` (index parameters; with the repository's kind, they update the options it was built with,
    and the rest is derived again from the new N); returns the updated manifest."""
    manifest = read_manifest(repository)
    rec = manifest["served"].get(RETRIEVAL)
    if rec is None:
        raise ArtifactsError(f"{repository}: no {RETRIEVAL} in this build (built with --no-towers)")
    corpus = read_corpus(corpus_file, manifest["retrieval_config"]["transformer"]["emb_size"])
    if (corpus.topics is not None) != any(o["name"] == "top_k_topics" for o in rec["outputs"]):
        raise ArtifactsError(f"{corpus_file}: topics must be present exactly when the built corpus had them "
                             f"(the served outputs are fixed by the build)")
    built = ann.canonical_kind(rec["index"])
    kind = ann.canonical_kind(index) if index else built
    options = {**(rec.get("index_options", {}) if kind == built else {}), **(options or {})}
    arts, fields = write_corpus(corpus, repository, kind, options)
    rec.update(fields, corpus_rows=len(corpus.post_ids))
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["kind"] not in ("corpus", "corpus_scan")] + \
                            [a.to_dict() for a in arts]
    write_manifest(repository, manifest)
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.corpus", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", required=True, help="a repository built by python -m export.build")
    ap.add_argument("--corpus", required=True, help=".npz with post_ids, author_ids, candidate_representations "
                                                   "[N, D] and optional topics (the release's sports_corpus.npz)")
    ap.add_argument("--index", choices=INDEX_CHOICES, default=None,
                    help="exact top-k, a FAISS HNSW index (hnsw; faiss is its old name) or a compressed FAISS IVF-PQ "
                         "index (ivfpq) (default: the kind the repository was built with)")
    ap.add_argument("--index-param", action="append", default=[], metavar="KEY=VALUE",
                    help="an ivfpq parameter (repeatable): " + "; ".join(f"{key}: {h}" for key, h in IVFPQ_PARAMS.items())
                         + ". Default: the repository's own settings, the rest derived from N")
    args = ap.parse_args(argv)
    try:
        manifest = read_manifest(Path(args.repository))
        kind = args.index or manifest["served"].get(RETRIEVAL, {}).get("index", "exact")
        options = parse_index_params(kind, args.index_param)
        manifest = swap(Path(args.repository), Path(args.corpus), args.index, options)
    except IndexParamError as e:
        ap.error(str(e))
    except (ArtifactsError, ManifestError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rec = manifest["served"][RETRIEVAL]
    print(f"{args.repository}: now serves {rec['corpus_rows']} posts ({rec['index']} {rec['index_params']}); "
          f"reload {RETRIEVAL} as the operator (POST /v2/repository/models/{RETRIEVAL}/load with the admin key: "
          f"README, Security)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
