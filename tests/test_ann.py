"""The compressed retrieval index (`--retrieval-index ivfpq`, phoenix_runtime/ann.py): recall against exact
search on a structured corpus, masks through FAISS's ID selector, a demo build served by the real
tritonserver, a corpus swap that keeps the index kind, and bad options named (exit 2)."""
from __future__ import annotations

import shutil
from pathlib import Path

import faiss  # the approximate path is tested, never skipped (faiss-cpu is in the `test` extra)
import numpy as np
import pytest

from benchmarks.ann import synthesize, user_queries
from conftest import DEMO_BUILD
from export import build
from export import corpus as corpus_cli
from export.artifacts import Corpus
from phoenix_runtime import ann
from phoenix_runtime.manifest import MANIFEST, RETRIEVAL, model_path, read_manifest, verify
from phoenix_runtime.retrieval import INDEX_FILE, VECTORS_FILE
from serving.client import PhoenixClient
from serving.server import TritonServer


POSTS, ROWS, D, K = 10_000, 10_000, 128, 200
# recall@200 of the default ivfpq parameters (nlist 128, nprobe 8, m 32, rescore 4) on this corpus, 100 users:
# measured 0.84 with rescoring and 0.76 from the codes alone, 0.90 under a mask hiding 70% of the rows and each
# user's top 200. The bounds leave room for FAISS's thread scheduling and fail on a real regression (a wrong
# metric, ids, mask or nprobe give < 0.3). At 10M posts: benchmarks/results/ann/.
RECALL_RESCORED, RECALL_CODES = 0.75, 0.65


def structured(path: Path, n: int, seed: int) -> Corpus:
    """benchmarks.ann's corpus (posts by authors, authors by topic) at test size, as a corpus .npz."""
    made = synthesize(path.with_suffix(".npy"), n, topics=50, seed=seed, rows=ROWS)
    reps = np.load(path.with_suffix(".npy"))
    corpus = Corpus(reps, np.arange(1, n + 1, dtype=np.uint64) * 7919, made["author_of"].astype(np.uint64) + 1)
    np.savez(path, post_ids=corpus.post_ids, author_ids=corpus.author_ids, candidate_representations=reps)
    return corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("ann") / "corpus.npz"
    return path, structured(path, POSTS, seed=0)


def exact(users, reps, k=K, mask=None):
    scores = users @ reps.T
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall(found, truth) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / truth.shape[1] for f, t in zip(found, truth)]))


@pytest.fixture(scope="module")
def repo(tmp_path_factory, demo_repo, corpus):
    """The session's demo build (towers, cpu target), copied, serving the structured corpus through the default
    ivfpq index: written by export.corpus, as export.build writes it (both call export.corpus.write_corpus)."""
    path, _ = corpus
    repo = tmp_path_factory.mktemp("ivfpq") / "repo"
    shutil.copytree(demo_repo, repo)
    assert corpus_cli.main(["--repository", str(repo), "--corpus", str(path), "--index", "ivfpq"]) == 0
    return repo


def test_the_build_takes_the_index_options():
    """export.build hands --retrieval-index / --index-param to write_corpus through its RepositoryOptions."""
    _, opts, _, _ = build.options_from(build.parser().parse_args(
        [*DEMO_BUILD, "--retrieval-index", "ivfpq", "--index-param", "nprobe=32", "--index-param", "rescore=0"]),
        build.parser())
    assert (opts.retrieval_index, opts.index_params) == ("ivfpq", {"nprobe": 32, "rescore": 0})


@pytest.fixture(scope="module")
def search(repo):
    """The build's index, loaded as phoenix_retrieval loads it (rescore 4 from the memory-mapped corpus.npy)."""
    return ann.load(repo / model_path(RETRIEVAL, INDEX_FILE), read_manifest(repo)["served"][RETRIEVAL],
                    repo / model_path(RETRIEVAL, VECTORS_FILE))


def test_recall_against_exact_on_a_structured_corpus(search, corpus):
    _, c = corpus
    users = user_queries(c.representations, c.author_ids.astype(np.int64) - 1, 100)
    truth = exact(users, c.representations)
    idx, scores = search.search(users, K)
    assert recall(idx, truth) >= RECALL_RESCORED, recall(idx, truth)
    np.testing.assert_allclose(scores, np.take_along_axis(users @ c.representations.T, idx, 1), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()
    idx, _ = ann.IndexSearch(search.index, "ivfpq").search(users, K)     # the codes alone (rescore 0)
    assert recall(idx, truth) >= RECALL_CODES, recall(idx, truth)


def test_masked_rows_are_never_returned(search, corpus):
    _, c = corpus
    users = user_queries(c.representations, c.author_ids.astype(np.int64) - 1, 8, seed=3)
    first, _ = search.search(users, K)
    rng = np.random.default_rng(0)
    mask = rng.random((len(users), POSTS)) < 0.3                   # 70% of the corpus hidden...
    np.put_along_axis(mask, first, False, axis=1)                  # ...and every user's unmasked top 200
    idx, scores = search.search(users, K, mask)
    assert np.take_along_axis(mask, idx, 1).all() and (scores > ann.MASKED_SCORE).all()
    assert recall(idx, exact(users, c.representations, mask=mask)) >= RECALL_RESCORED
    few = np.zeros((2, POSTS), bool)                               # fewer allowed rows than K: all of them
    few[0, rng.choice(POSTS, 50, replace=False)] = True           # first, then masked rows at MASKED_SCORE
    few[1, rng.choice(POSTS, 150, replace=False)] = True
    idx, scores = search.search(users[:2], K, few)
    for b, allowed in enumerate((50, 150)):
        assert set(idx[b, :allowed].tolist()) == set(np.flatnonzero(few[b]).tolist())
        assert (scores[b, allowed:] == ann.MASKED_SCORE).all() and not few[b, idx[b, allowed:]].any()
        assert len(set(idx[b].tolist())) == K


# ---------------------------------------------------------------------------------------------- served

@pytest.fixture(scope="module")
def server(repo):
    with TritonServer(repo) as s:
        yield s


def test_the_index_written_is_the_one_the_manifest_names(repo):
    m = read_manifest(repo)
    rec = m["served"][RETRIEVAL]
    assert (rec["index"], rec["corpus_rows"], rec["index_options"]) == ("ivfpq", POSTS, {})
    folder = repo / model_path(RETRIEVAL, "")
    index = faiss.read_index(str(folder / INDEX_FILE))
    assert rec["index_params"] == {"nlist": 128, "m": 32, "nbits": 8, "nprobe": 8, "rescore": 4}   # derived from N
    assert (index.nlist, index.pq.M, index.nprobe, index.ntotal) == (128, 32, 8, POSTS)   # nprobe kept in the file
    assert verify(repo) == [] and (folder / "phoenix_runtime" / "ann.py").exists()


def test_served_ivfpq_retrieval_equals_the_index_and_honours_masks(server, repo, corpus):
    _, c = corpus
    rec = read_manifest(repo)["served"][RETRIEVAL]
    local = ann.load(repo / model_path(RETRIEVAL, INDEX_FILE), rec, repo / model_path(RETRIEVAL, VECTORS_FILE))
    with PhoenixClient(server.grpc_url) as client:
        got = client.retrieve(user_id=42, history=[(5, 1, ["favorite"], 2), (9, 3, ["reply"], 0)])
        user = got["user_representation"][None]
        idx, scores = local.search(user, K)     # what the server must answer (recall: the tests above; the demo
                                                # tower's random weights make no user of this corpus)
        np.testing.assert_array_equal(got["top_k_indices"], idx[0])
        np.testing.assert_allclose(got["top_k_scores"], scores[0], atol=1e-5)
        np.testing.assert_array_equal(got["top_k_post_ids"], c.post_ids[idx[0]])
        mask = np.ones(POSTS, bool)
        mask[got["top_k_indices"]] = False                             # hide the first answer
        again = client.retrieve(user_id=42, history=[(5, 1, ["favorite"], 2), (9, 3, ["reply"], 0)],
                                corpus_mask=mask, top_k=50)
        assert len(again["top_k_indices"]) == 50 and mask[again["top_k_indices"]].all()


def test_swapping_the_corpus_keeps_the_index_kind(server, repo, tmp_path):
    """export.corpus without --index keeps ivfpq (parameters derived again for the new N); a set option is
    kept too; the swapped corpus is what the reloaded model serves."""
    half = tmp_path / "half.npz"
    c = structured(half, 5000, seed=1)
    assert corpus_cli.main(["--repository", str(repo), "--corpus", str(half), "--index-param", "rescore=0"]) == 0
    rec = read_manifest(repo)["served"][RETRIEVAL]
    assert (rec["index"], rec["corpus_rows"], rec["index_options"]) == ("ivfpq", 5000, {"rescore": 0})
    assert rec["index_params"]["nlist"] == 64 and verify(repo) == []
    assert not (repo / model_path(RETRIEVAL, VECTORS_FILE)).exists()   # never read now
    assert corpus_cli.main(["--repository", str(repo), "--corpus", str(half)]) == 0
    assert read_manifest(repo)["served"][RETRIEVAL]["index_options"] == {"rescore": 0}
    with PhoenixClient(server.grpc_url) as client:
        client.triton.load_model(RETRIEVAL, headers=server.admin_headers(client.protocol))
        got = client.retrieve(user_id=7, top_k=20)
    assert set(got["top_k_post_ids"].tolist()) <= set(c.post_ids.tolist()) and len(got["top_k_post_ids"]) == 20


@pytest.mark.parametrize("argv, named", [
    (["--retrieval-index", "ivf"], "invalid choice: 'ivf'"),
    (["--retrieval-index", "ivfpq", "--index-param", "nlist=many"], "nlist='many'"),
    (["--retrieval-index", "ivfpq", "--index-param", "nprobes=8"], "'nprobes'"),
    (["--retrieval-index", "exact", "--index-param", "nprobe=8"], "exact index takes no parameters"),
    (["--retrieval-index", "ivfpq", "--index-param", "rescore=-1"], "rescore=-1"),
])
def test_a_bad_index_option_is_named_with_exit_2(tmp_path, capsys, argv, named):
    with pytest.raises(SystemExit) as e:
        build.main([*DEMO_BUILD, *argv, "--output", str(tmp_path / "r")])
    assert e.value.code == 2 and named in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_export_corpus_names_a_bad_index_option_with_exit_2(repo, corpus, tmp_path, capsys):
    path, _ = corpus
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    before = (copy / MANIFEST).read_bytes()
    for argv, named in ((["--index-param", "m=7"], "m=7: must divide the representation size D = 128"),
                        (["--index", "hnsw", "--index-param", "nprobe=4"], "hnsw index takes no parameters"),
                        (["--index", "annoy"], "invalid choice: 'annoy'")):
        with pytest.raises(SystemExit) as e:
            corpus_cli.main(["--repository", str(copy), "--corpus", str(path), *argv])
        assert e.value.code == 2 and named in capsys.readouterr().err
    assert (copy / MANIFEST).read_bytes() == before and verify(copy) == []
