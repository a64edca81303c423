"""The served corpus: its files, the search over it, and what a retrieval answer holds.

    corpus = ServedCorpus.open(root, manifest)                 # phoenix_retrieval's folder and record
    k, mask = corpus.options(arrays, users)                    # the request's top_k and corpus_mask, checked
    out = corpus.retrieve(user_representations, k, mask)       # top_k_indices, _post_ids, _author_ids, _scores, ...

The corpus lives beside phoenix_retrieval's model.py: `corpus.npy` (L2-normalised candidate representations
[N, D], memory-mapped), `corpus_post_ids.npy` / `corpus_author_ids.npy` (uint64), optional `corpus_topics.npy`,
the exact search's scan `corpus_scan.onnx` and, when the build chose one, a FAISS index `corpus.faiss`.
Exact search (topk.PrunedSearch: exact_top_k's answer) unless the manifest's `index` names a FAISS index
(hnsw or ivfpq, searched by phoenix_runtime.ann, masks included; an ivfpq index keeps the float32 corpus out of
memory: corpus.npy is memory-mapped for the rows it rescores, or absent).

Standard library and numpy only (onnxruntime / faiss imported when the corpus opens): part of phoenix_runtime,
which the build copies whole into the repository.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import ann
from .host import resident
from .manifest import RETRIEVAL, VERSION, ManifestError, find_artifact
from .topk import Int8Scan, PrunedSearch, check_mask, check_top_k

# The corpus files beside phoenix_retrieval's model.py (export.corpus writes them)
VECTORS_FILE, POST_IDS_FILE, AUTHOR_IDS_FILE, TOPICS_FILE = (
    "corpus.npy", "corpus_post_ids.npy", "corpus_author_ids.npy", "corpus_topics.npy")
CORPUS_FILES = (VECTORS_FILE, POST_IDS_FILE, AUTHOR_IDS_FILE, TOPICS_FILE)
INDEX_FILE = "corpus.faiss"                # the FAISS index of an hnsw or ivfpq build


def _int8_scan(root: Path, manifest: dict):
    """The build's Int8Scan of this corpus, or None (an older build, or no onnxruntime here: float32 scan)."""
    try:
        art = find_artifact(manifest, RETRIEVAL, "corpus_scan")
        return Int8Scan.open(root / art["path"], art["info"])
    except (ManifestError, ImportError):
        return None


class ServedCorpus:
    def __init__(self, folder: Path, record: dict, search, index=None):
        self.record, self.max_k = record, int(record["top_k"])
        self.post_ids = np.load(folder / POST_IDS_FILE, mmap_mode="r")     # only returned rows are read
        self.author_ids = np.load(folder / AUTHOR_IDS_FILE, mmap_mode="r")
        topics = folder / TOPICS_FILE
        self.topics = np.load(topics) if topics.exists() else None
        self.search, self.index = search, index
        self.rows = len(self.post_ids)

    @classmethod
    def open(cls, root, manifest: dict) -> "ServedCorpus":
        root = Path(root)
        folder = root / RETRIEVAL / VERSION
        record = manifest["served"][RETRIEVAL]
        if ann.canonical_kind(record["index"]) != "exact":
            return cls(folder, record, None, ann.load(folder / INDEX_FILE, record, folder / VECTORS_FILE))
        corpus = resident(np.load(folder / VECTORS_FILE, mmap_mode="r"))    # rescored rows: no page faults
        return cls(folder, record, PrunedSearch(corpus, _int8_scan(root, manifest)))

    def options(self, top_k, corpus_mask, users: int) -> tuple[int, np.ndarray | None]:
        """The request's K (one value per request, default the built maximum) and its corpus mask; ValueError
        naming the input."""
        mask = None
        if corpus_mask is not None:
            mask = check_mask(corpus_mask, users, self.rows)
        k = self.max_k
        if top_k is not None and np.size(top_k):
            ks = np.asarray(top_k).reshape(-1)
            if (ks != ks[0]).any():
                raise ValueError(f"top_k differs between the users of one request ({sorted(set(int(v) for v in ks))}); "
                                 f"send one value per request")
            k = int(ks[0])                                    # int(): exact for any integer dtype
        check_top_k(k, self.rows, self.max_k)
        return k, mask

    def retrieve(self, users: np.ndarray, k: int, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Every retrieval output for user representations [B, D]: top_k_indices (corpus rows), top_k_post_ids,
        top_k_author_ids, top_k_scores (best first), user_representation and, with topics, top_k_topics."""
        users = np.ascontiguousarray(users, dtype=np.float32)
        if self.index is not None:
            idx, scores = self.index.search(users, k, mask)
        else:
            idx, scores = self.search(users, k, mask)
        out = {"top_k_indices": idx.astype(np.int64), "top_k_post_ids": np.asarray(self.post_ids[idx]),
               "top_k_author_ids": np.asarray(self.author_ids[idx]), "top_k_scores": scores.astype(np.float32),
               "user_representation": users}
        if self.topics is not None:
            out["top_k_topics"] = np.array([[str(t).encode() for t in row] for row in self.topics[idx]],
                                           dtype=np.object_)
        return out
