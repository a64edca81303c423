"""Candidate isolation properties, on random shapes, for both attention implementations."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from phoenix_torch import RecsysBatch

from model_fixtures import SMALL_VOCAB, batch_for, logits, small_ranker

IMPLS = ["dense", "isolated"]
ATOL = 1e-5
shapes = st.tuples(st.integers(1, 3), st.integers(1, 8), st.integers(1, 12), st.integers(0, 10_000))
prop = settings(max_examples=12, deadline=None)


def candidates(batch, idx):
    """Keep candidate positions `idx` (a list or slice) of every candidate field."""
    d = batch._asdict()
    for k in ("candidate_post_hashes", "candidate_author_hashes", "candidate_product_surface"):
        d[k] = d[k][:, idx]
    return RecsysBatch(**d)


def ranker_for(impl, s, **kw):
    return small_ranker(attention_impl=impl, history_seq_len=s, **kw)


@pytest.mark.parametrize("impl", IMPLS)
@prop
@given(shapes)
def test_changing_one_candidate_changes_no_other(impl, shape):
    b, s, c, seed = shape
    r = ranker_for(impl, s)
    batch = batch_for(r, b, c, seed)
    j = seed % c
    d = batch._asdict()
    post = d["candidate_post_hashes"].clone()
    post[:, j] = (post[:, j] % (SMALL_VOCAB - 1)) + 1 if c == 1 else post[:, (j + 1) % c]
    post[:, j, 1] = (post[:, j, 1] + 7) % (SMALL_VOCAB - 1) + 1
    d["candidate_post_hashes"] = post
    before, after = logits(r, batch), logits(r, RecsysBatch(**d))
    others = [i for i in range(c) if i != j]
    torch.testing.assert_close(after[:, others], before[:, others], atol=ATOL, rtol=0)
    assert not torch.allclose(after[:, j], before[:, j], atol=1e-4)   # the changed one did change


@pytest.mark.parametrize("impl", IMPLS)
@prop
@given(shapes)
def test_scoring_a_prefix_subset_gives_the_same_logits(impl, shape):
    b, s, c, seed = shape
    r = ranker_for(impl, s)
    batch = batch_for(r, b, c, seed)
    k = 1 + seed % c
    torch.testing.assert_close(logits(r, candidates(batch, slice(0, k))), logits(r, batch)[:, :k], atol=ATOL, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
@prop
@given(shapes)
def test_hash0_candidate_padding_changes_nothing(impl, shape):
    b, s, c, seed = shape
    r = ranker_for(impl, s)
    batch = batch_for(r, b, c, seed)
    pad = 1 + seed % 5
    d = batch._asdict()
    for k in ("candidate_post_hashes", "candidate_author_hashes", "candidate_product_surface"):
        t = d[k]
        d[k] = torch.cat([t, torch.zeros((b, pad) + tuple(t.shape[2:]), dtype=t.dtype)], dim=1)
    torch.testing.assert_close(logits(r, RecsysBatch(**d))[:, :c], logits(r, batch), atol=ATOL, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
@prop
@given(shapes)
def test_users_in_a_batch_do_not_affect_each_other(impl, shape):
    b, s, c, seed = shape
    r = ranker_for(impl, s)
    batch = batch_for(r, b + 1, c, seed)
    together = logits(r, batch)
    for i in range(b + 1):
        alone = logits(r, RecsysBatch(*(t[i:i + 1] for t in batch)))
        torch.testing.assert_close(alone[0], together[i], atol=ATOL, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
@prop
@given(shapes)
def test_right_anchored_rope_is_permutation_equivariant_and_independent_of_c(impl, shape):
    b, s, c, seed = shape
    r = ranker_for(impl, s, right_anchored_rope=True)
    batch = batch_for(r, b, c, seed)
    perm = torch.randperm(c, generator=torch.Generator().manual_seed(seed)).tolist()
    full = logits(r, batch)
    torch.testing.assert_close(logits(r, candidates(batch, perm)), full[:, perm], atol=ATOL, rtol=0)
    subset = sorted(set(perm[: 1 + seed % c]))[::-1]           # any subset, any order, smaller C
    torch.testing.assert_close(logits(r, candidates(batch, subset)), full[:, subset], atol=ATOL, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_without_right_anchored_rope_candidate_order_matters(impl):
    """Documents upstream's January behaviour: slot positions go through RoPE, so a candidate's
    score depends on its slot (permuting candidates changes their scores)."""
    r = ranker_for(impl, 6)
    batch = batch_for(r, 2, 6, seed=3)
    perm = [5, 4, 3, 2, 1, 0]
    diff = (logits(r, candidates(batch, perm)) - logits(r, batch)[:, perm]).abs().max()
    assert diff > 1e-3


def test_dense_and_isolated_agree_at_1000_candidates():
    torch.manual_seed(0)
    dense, iso = ranker_for("dense", 16), ranker_for("isolated", 16)
    for c in (1, 7, 64, 1000):
        batch = batch_for(dense, 2, c, seed=c)
        torch.testing.assert_close(logits(iso, batch), logits(dense, batch), atol=1e-5, rtol=0)


def test_dense_and_isolated_agree_in_bf16():
    dense = ranker_for("dense", 8, fprop_dtype="bfloat16")
    iso = ranker_for("isolated", 8, fprop_dtype="bfloat16")
    batch = batch_for(dense, 2, 33, seed=1)
    assert (logits(iso, batch) - logits(dense, batch)).abs().max() < 0.1
