"""Bad input gets a clear error naming the field, never a silently wrong answer."""
import pytest
import torch

from phoenix_torch import RecsysBatch, RecsysEmbeddings, hash_ids

from model_fixtures import SMALL_VOCAB, batch_for, small_ranker


@pytest.fixture(scope="module")
def ranker():
    return small_ranker()


def with_field(batch, **changes):
    return RecsysBatch(**{**batch._asdict(), **changes})


def check(ranker, batch, field, match):
    with pytest.raises((ValueError, TypeError), match=match) as e:
        ranker(batch)
    assert field in str(e.value)


def test_wrong_rank(ranker):
    b = batch_for(ranker, 2, 3)
    check(ranker, with_field(b, user_hashes=b.user_hashes[:, :, None]), "user_hashes", "dims")


def test_wrong_hash_count(ranker):
    b = batch_for(ranker, 2, 3)
    check(ranker, with_field(b, candidate_post_hashes=b.candidate_post_hashes[..., :1]), "candidate_post_hashes", "must be 2")


def test_wrong_history_length(ranker):
    b = batch_for(ranker, 2, 3)
    fields = {k: v[:, :-1] for k, v in b._asdict().items() if k.startswith("history")}
    check(ranker, with_field(b, **fields), "history_post_hashes", "S")


def test_mismatched_batch_size(ranker):
    b = batch_for(ranker, 2, 3)
    check(ranker, with_field(b, candidate_product_surface=b.candidate_product_surface[:1]), "candidate_product_surface", "B")


def test_mismatched_candidate_count(ranker):
    b = batch_for(ranker, 2, 3)
    check(ranker, with_field(b, candidate_author_hashes=b.candidate_author_hashes[:, :2]), "candidate_author_hashes", "C")


def test_float_hashes(ranker):
    b = batch_for(ranker, 2, 3)
    check(ranker, with_field(b, history_post_hashes=b.history_post_hashes.float()), "history_post_hashes", "integer")


def test_integer_actions(ranker):
    b = batch_for(ranker, 2, 3)
    check(ranker, with_field(b, history_actions=b.history_actions.long()), "history_actions", "floating")


def test_non_binary_actions(ranker):
    b = batch_for(ranker, 2, 3)
    check(ranker, with_field(b, history_actions=b.history_actions * 2 + 0.5), "history_actions", "0/1")


@pytest.mark.parametrize("field", ["user_hashes", "history_post_hashes", "history_author_hashes",
                                   "candidate_post_hashes", "candidate_author_hashes"])
def test_hash_outside_table(ranker, field):
    b = batch_for(ranker, 2, 3)
    t = getattr(b, field).clone()
    t.view(-1)[-1] = SMALL_VOCAB
    check(ranker, with_field(b, **{field: t}), field, r"\[0, 97\)")


@pytest.mark.parametrize("field", ["history_product_surface", "candidate_product_surface"])
def test_surface_outside_table(ranker, field):
    b = batch_for(ranker, 2, 3)
    t = getattr(b, field).clone()
    t.view(-1)[0] = 16
    check(ranker, with_field(b, **{field: t}), field, r"\[0, 16\)")


def test_negative_hash(ranker):
    b = batch_for(ranker, 2, 3)
    t = b.user_hashes.clone()
    t[0, 0] = -5
    check(ranker, with_field(b, user_hashes=t), "user_hashes", ">= 0")


def test_embeddings_mismatched_with_batch(ranker):
    b = batch_for(ranker, 2, 3)
    emb = ranker.tables(b)
    emb = RecsysEmbeddings(**{**emb._asdict(), "candidate_post_embeddings": emb.candidate_post_embeddings[:, :2]})
    with pytest.raises(ValueError, match="candidate_post_embeddings"):
        ranker.model(b, emb)


def test_hash_ids_range_padding_and_determinism():
    ids = torch.tensor([[0, 1, 2, 123456789012345, -7, 2**62]])
    h = hash_ids(ids, num_hashes=2, vocab=1000)
    assert h.shape == (1, 6, 2) and h.dtype == torch.int64
    assert (h[0, 0] == 0).all()                       # id 0 -> padding
    assert ((h[0, 1:] >= 1) & (h[0, 1:] < 1000)).all()
    assert not torch.equal(h[..., 0], h[..., 1])      # two different hash functions
    assert torch.equal(h, hash_ids(ids, 2, 1000))
    with pytest.raises(ValueError, match="vocab"):
        hash_ids(ids, 2, 1)
