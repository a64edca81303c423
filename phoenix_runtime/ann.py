"""Top-k over the retrieval corpus through a FAISS index, at serve time (phoenix_retrieval's model.py).

Index kinds (the manifest's `served.phoenix_retrieval.index`):
- `exact`: no index; the model scans `corpus.npy` (float32 [N, D]) itself.
- `hnsw` (old name `faiss`): `IndexHNSWFlat`, a graph over the float32 vectors, held in memory.
- `ivfpq`: `IndexIVFPQ`, an inverted file of product-quantised codes (`m` bytes per post with 8-bit codes,
  plus its 8-byte id): the float32 corpus is not needed in memory. With `rescore` R > 0 the index returns
  R x K candidates and their exact scores are computed from `corpus.npy`, memory-mapped (only those rows are
  read); with R = 0 the scores are the index's approximate inner products and `corpus.npy` is not needed.

FAISS writes its own search parameters with the index (`nprobe` of an IVF index, `efSearch` of HNSW) and
`faiss.read_index` restores them; the build records them in the manifest (`index_params`) too.

`corpus_mask` [B, N] (False = never return that row) goes into FAISS as an `IDSelectorBitmap` per user, so
masks work without the float32 corpus. An IVF search under a mask that keeps a share f of the rows probes
nprobe / f lists (so it sees about as many allowed rows as an unmasked search); when those lists still hold
fewer than K allowed rows it probes more (x4 each time, up to all of them), so it returns K allowed rows
whenever the mask allows K. When it allows fewer, the remaining slots hold masked rows with the score
MASKED_SCORE, as exact search does.

Standard library and numpy (faiss imported where an index is loaded): part of phoenix_runtime, which the build
copies whole into the repository; phoenix_runtime.retrieval.ServedCorpus searches through it.
"""
from __future__ import annotations

import numpy as np

from .topk import MASKED_SCORE, exact_scores

KINDS = ("exact", "hnsw", "ivfpq")
ALIASES = {"faiss": "hnsw"}                # `faiss` named the HNSW index before ivfpq existed
WIDEN = 4                                  # an IVF search that found too few rows probes WIDEN x more lists


def canonical_kind(name: str) -> str:
    """The index kind `name` stands for ("faiss" is "hnsw"); ValueError naming it when unknown."""
    kind = ALIASES.get(name, name)
    if kind not in KINDS:
        raise ValueError(f"unknown retrieval index {name!r}: choose from {', '.join(KINDS)} "
                         f"(faiss = hnsw, its old name)")
    return kind


def load(index_path, record: dict, vectors_path) -> "IndexSearch":
    """The index at `index_path` of phoenix_retrieval's `record` (the manifest's), with the float32 corpus at
    `vectors_path` (memory-mapped) when it rescores."""
    import faiss

    index = faiss.read_index(str(index_path))
    if int(index.ntotal) != int(record["corpus_rows"]):
        raise ValueError(f"{index_path} holds {index.ntotal} rows, the manifest says {record['corpus_rows']}: "
                         f"rebuild, or swap the corpus with export.corpus")
    rescore = record.get("index_params", {}).get("rescore", 0)
    return IndexSearch(index, record["index"], MappedRows(vectors_path) if rescore else None, rescore)


class MappedRows:
    """A .npy [N, D] memory-mapped for random row reads: `read(rows)` first tells the kernel which pages it
    will touch (madvise WILLNEED: the disk reads go out together, not one page fault at a time), and the
    mapping is advised RANDOM (no read-ahead window around each row)."""

    def __init__(self, path):
        import mmap

        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = header(f)
            self.offset = f.tell()
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if fortran or len(shape) != 2:
            raise ValueError(f"{path}: expected a C-ordered [N, D] array, got shape {shape}")
        if hasattr(mmap, "MADV_RANDOM"):
            self.map.madvise(mmap.MADV_RANDOM)
        self.array = np.frombuffer(self.map, dtype=dtype, count=shape[0] * shape[1], offset=self.offset).reshape(shape)
        self.shape, self.row_bytes = shape, shape[1] * dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), D] of the (sorted) `rows`."""
        import mmap

        if hasattr(mmap, "MADV_WILLNEED"):
            for r in rows.tolist():
                start = self.offset + r * self.row_bytes
                page = start - start % mmap.PAGESIZE
                self.map.madvise(mmap.MADV_WILLNEED, page, start + self.row_bytes - page)
        return np.asarray(self.array[rows], dtype=np.float32)


class IndexSearch:
    """A FAISS index of the corpus (row i = corpus row i) and the top-k search phoenix_retrieval runs over it:
    `kind` hnsw or ivfpq; `corpus` (MappedRows or an array [N, D]) and `rescore` R > 0: exact scores of R x K
    candidates."""

    def __init__(self, index, kind: str, corpus: np.ndarray | None = None, rescore: int = 0):
        import faiss

        self.kind = canonical_kind(kind)
        if self.kind == "exact":
            raise ValueError("IndexSearch needs an index kind (hnsw, ivfpq); exact search scans corpus.npy")
        self.index, self.rows = index, int(index.ntotal)
        self.rescore = int(rescore) if self.kind == "ivfpq" and corpus is not None else 0
        self.corpus = corpus if self.rescore else None
        self.ivf = faiss.extract_index_ivf(index) if self.kind == "ivfpq" else None

    def search(self, users: np.ndarray, k: int, mask: np.ndarray | None = None):
        """Top `k` rows per user of `users` [B, D] (float32), best first, and their scores: (idx int64 [B, k],
        scores float32 [B, k]). `mask` [B, N] bool: False rows are never returned while k allowed rows exist."""
        users = np.ascontiguousarray(users, dtype=np.float32)
        want = min(self.rows, k * self.rescore) if self.rescore else k     # candidates asked of the index
        if mask is None:
            scores, idx = self.index.search(users, want)                   # the batch at once (FAISS's threads)
            redo = np.flatnonzero((idx >= 0).sum(axis=1) < k)              # lists too short: probe more
        else:
            scores = np.full((len(users), want), -np.inf, np.float32)
            idx = np.full((len(users), want), -1, np.int64)
            redo = range(len(users))
        for b in redo:
            scores[b], idx[b] = self._one(users[b:b + 1], want, k, None if mask is None else mask[b])
        if self.rescore:
            scores, idx = self._rescore(users, idx, k)
        return self._fill(idx, scores, k)

    def _one(self, user: np.ndarray, want: int, need: int, mask: np.ndarray | None):
        """One user's `want` best rows through an IDSelectorBitmap of `mask`; an IVF search probes more lists
        until it found `need` rows (or probed them all)."""
        import faiss

        sel = None
        if mask is not None:
            bits = np.packbits(np.ascontiguousarray(mask, dtype=bool), bitorder="little")   # bit i = row i
            sel = faiss.IDSelectorBitmap(self.rows, faiss.swig_ptr(bits))  # reads `bits` (alive until return)
        if self.ivf is None:                 # hnsw: with a mask, exact over the index's own float32 vectors
            if sel is None:
                scores, idx = self.index.search(user, want)
                if (idx >= 0).sum() >= need:
                    return scores[0], idx[0]
            storage = faiss.downcast_index(self.index.storage)
            scores, idx = storage.search(user, want, params=faiss.SearchParameters(sel=sel))
            return scores[0], idx[0]
        nprobe = self.ivf.nprobe
        if mask is not None:                 # it keeps a share f of the rows: nprobe / f lists hold about as
            share = max(np.count_nonzero(mask) / self.rows, 1 / self.ivf.nlist)      # many allowed rows as nprobe
            nprobe = min(self.ivf.nlist, int(np.ceil(nprobe / share)))
        while True:
            params = faiss.SearchParametersIVF(nprobe=nprobe)
            if sel is not None:
                params.sel = sel
            scores, idx = self.index.search(user, want, params=params)
            if (idx >= 0).sum() >= need or nprobe >= self.ivf.nlist:
                return scores[0], idx[0]
            nprobe = min(self.ivf.nlist, nprobe * WIDEN)

    def _rescore(self, users: np.ndarray, idx: np.ndarray, k: int):
        """Exact dot products of each user's candidates (rows read from the memory-mapped corpus), top k."""
        found = idx >= 0
        safe = np.where(found, idx, 0)
        rows = np.unique(safe)                                        # sorted: the file is read in order
        vectors = (self.corpus.read(rows) if isinstance(self.corpus, MappedRows) else
                   np.asarray(self.corpus[rows], dtype=np.float32))[np.searchsorted(rows, safe)]      # [B, R*k, D]
        scored = np.stack([exact_scores(users[b:b + 1], vectors[b])[0] for b in range(len(users))])
        exact = np.where(found, scored, -np.inf).astype(np.float32)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(exact, order, 1), np.take_along_axis(idx, order, 1)

    def _fill(self, idx: np.ndarray, scores: np.ndarray, k: int):
        """[B, k]: the search's rows; slots it could not fill (the mask allows fewer than k rows) get the lowest
        rows not already there, with MASKED_SCORE, as exact search returns masked rows last."""
        idx, scores = idx[:, :k].astype(np.int64), scores[:, :k].astype(np.float32)
        for b in np.flatnonzero((idx < 0).any(axis=1)):
            missing = idx[b] < 0
            taken = set(idx[b][~missing].tolist())
            spare = (r for r in range(self.rows) if r not in taken)
            idx[b][missing] = [next(spare) for _ in range(int(missing.sum()))]
            scores[b][missing] = np.float32(MASKED_SCORE)
        return idx, scores
