"""The retrieval corpus of a repository: its files, an optional FAISS index, and swapping it without a rebuild.

    python -m export.corpus --repository REPO --corpus FILE.npz [--index exact|faiss]

A corpus is `post_ids`, `author_ids` (uint64), `candidate_representations` [N, D] (the candidate tower's
L2-normalised outputs) and optional `topics`, the layout of the release's `sports_corpus.npz`. Swapping
writes the new files beside phoenix_retrieval's model.py (and a new FAISS index when the repository uses
one, or `--index` asks for one), updates the manifest last and atomically, and leaves the rest of the
repository as it is; reload `phoenix_retrieval` (or restart the server) to serve it.

`--retrieval-index faiss` (export.build) adds an approximate index: FAISS HNSW over inner products
(`faiss-cpu`, `pip install ".[ann]"`); its recall@K against exact search is measured by
`python -m benchmarks.release`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from export.artifacts import ArtifactsError, Corpus, read_corpus
from phoenix_runtime.manifest import RETRIEVAL, Artifact, ManifestError, model_path, read_manifest, write_manifest
from phoenix_runtime.topk import quantize_corpus

HNSW_NEIGHBOURS = 32        # graph degree M: recall vs memory
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 400        # search breadth at serve time: recall vs latency (K = 200 needs ef >= K)
FILES = ("corpus.npy", "corpus_post_ids.npy", "corpus_author_ids.npy", "corpus_topics.npy")
SCAN_FILE = "corpus_scan.onnx"
SCAN_OPSET = 17


def write_faiss_index(representations: np.ndarray, path: Path, root: Path) -> Artifact:
    try:
        import faiss
    except ImportError:
        raise RuntimeError("--retrieval-index faiss needs faiss-cpu: pip install faiss-cpu (or .[ann])") from None
    index = faiss.IndexHNSWFlat(representations.shape[1], HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(np.ascontiguousarray(representations, dtype=np.float32))
    index.hnsw.efSearch = HNSW_EF_SEARCH
    faiss.write_index(index, str(path))
    return Artifact("retrieval_corpus_faiss", RETRIEVAL, "corpus", str(path.relative_to(root)),
                      info={"index": "faiss_hnsw", "M": HNSW_NEIGHBOURS, "ef_search": HNSW_EF_SEARCH}).with_file_info(root)


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


def write_corpus(corpus: Corpus, root: Path, index: str) -> list[Artifact]:
    """The corpus files beside phoenix_retrieval's model.py (+ the FAISS index); their artifacts."""
    arrays = dict(zip(FILES, (corpus.representations, corpus.post_ids, corpus.author_ids, corpus.topics)))
    arts = []
    for name, array in arrays.items():
        rel = model_path(RETRIEVAL, name)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if array is None:
            (root / rel).unlink(missing_ok=True)
            continue
        np.save(root / rel, array)
        arts.append(Artifact(f"retrieval_{name.removesuffix('.npy')}", RETRIEVAL, "corpus", rel).with_file_info(root))
    arts.append(write_corpus_scan(corpus.representations, root / model_path(RETRIEVAL, SCAN_FILE), root))
    if index == "faiss":
        arts.append(write_faiss_index(corpus.representations, root / model_path(RETRIEVAL, "corpus.faiss"), root))
    return arts


def swap(repository: Path, corpus_file: Path, index: str | None = None) -> dict:
    """Serve another corpus from `repository` (same D), with `index` ("exact" | "faiss"; None keeps the built
    one); returns the updated manifest."""
    manifest = read_manifest(repository)
    rec = manifest["served"].get(RETRIEVAL)
    if rec is None:
        raise ArtifactsError(f"{repository}: no {RETRIEVAL} in this build (built with --no-towers)")
    corpus = read_corpus(corpus_file, manifest["retrieval_config"]["transformer"]["emb_size"])
    if (corpus.topics is not None) != any(o["name"] == "top_k_topics" for o in rec["outputs"]):
        raise ArtifactsError(f"{corpus_file}: topics must be present exactly when the built corpus had them "
                             f"(the served outputs are fixed by the build)")
    rec["index"] = index or rec["index"]
    (repository / model_path(RETRIEVAL, "corpus.faiss")).unlink(missing_ok=True)
    arts = write_corpus(corpus, repository, rec["index"])
    rec["corpus_rows"] = len(corpus.post_ids)
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
    ap.add_argument("--index", choices=("exact", "faiss"), default=None,
                    help="exact top-k or a FAISS HNSW index (default: what the repository was built with)")
    args = ap.parse_args(argv)
    try:
        manifest = swap(Path(args.repository), Path(args.corpus), args.index)
    except (ArtifactsError, ManifestError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.repository}: now serves {manifest['served'][RETRIEVAL]['corpus_rows']} posts; reload "
          f"{RETRIEVAL} as the operator (POST /v2/repository/models/{RETRIEVAL}/load with the admin key: "
          f"README, Security)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
