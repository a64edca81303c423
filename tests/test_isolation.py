"""Candidate isolation properties, on random shapes, for both attention implementations and for the
January inputs, the May inputs and the May inputs plus two features added by configuration."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from model_fixtures import SMALL_VOCAB, VARIANTS, batch_for, candidate_fields, logits, small_ranker

IMPLS = ["dense", "isolated"]
ATOL = 1e-5
shapes = st.tuples(st.integers(1, 3), st.integers(1, 8), st.integers(1, 12), st.integers(0, 10_000))
prop = settings(max_examples=8, deadline=None)
CASES = [(impl, v) for impl in IMPLS for v in VARIANTS]


def candidates(ranker, batch, idx):
    """Keep candidate positions `idx` (a list or slice) of every candidate field."""
    return batch._replace(**{k: batch.get(k)[:, idx] for k in candidate_fields(ranker)})


def ranker_for(impl, variant, s, **kw):
    return small_ranker(attention_impl=impl, variant=variant, history_seq_len=s, **kw)


@pytest.mark.parametrize("impl,variant", CASES)
@prop
@given(shapes)
def test_changing_one_candidate_changes_no_other(impl, variant, shape):
    b, s, c, seed = shape
    r = ranker_for(impl, variant, s)
    batch = batch_for(r, b, c, seed)
    j = seed % c
    post = batch.candidate_post_hashes.clone()
    post[:, j] = (post[:, j] % (SMALL_VOCAB - 1)) + 1 if c == 1 else post[:, (j + 1) % c]
    post[:, j, 1] = (post[:, j, 1] + 7) % (SMALL_VOCAB - 1) + 1
    before, after = logits(r, batch), logits(r, batch._replace(candidate_post_hashes=post))
    others = [i for i in range(c) if i != j]
    torch.testing.assert_close(after[:, others], before[:, others], atol=ATOL, rtol=0)
    assert not torch.allclose(after[:, j], before[:, j], atol=1e-4)   # the changed one did change


@pytest.mark.parametrize("impl", IMPLS)
def test_changing_one_candidates_post_age_changes_only_that_candidate(impl):
    r = ranker_for(impl, "may", 6)
    batch = batch_for(r, 2, 7, seed=4)
    created = batch.candidate_post_creation_ts.clone()
    created[:, 3] -= 26 * 3600                               # a day older: another age bucket
    before, after = logits(r, batch), logits(r, batch._replace(candidate_post_creation_ts=created))
    others = [i for i in range(7) if i != 3]
    torch.testing.assert_close(after[:, others], before[:, others], atol=ATOL, rtol=0)
    assert not torch.allclose(after[:, 3], before[:, 3], atol=1e-4)


@pytest.mark.parametrize("impl,variant", CASES)
@prop
@given(shapes)
def test_scoring_a_prefix_subset_gives_the_same_logits(impl, variant, shape):
    b, s, c, seed = shape
    r = ranker_for(impl, variant, s)
    batch = batch_for(r, b, c, seed)
    k = 1 + seed % c
    torch.testing.assert_close(logits(r, candidates(r, batch, slice(0, k))), logits(r, batch)[:, :k], atol=ATOL, rtol=0)


@pytest.mark.parametrize("impl,variant", CASES)
@prop
@given(shapes)
def test_hash0_candidate_padding_changes_nothing(impl, variant, shape):
    b, s, c, seed = shape
    r = ranker_for(impl, variant, s)
    batch = batch_for(r, b, c, seed)
    pad = 1 + seed % 5
    padded = {k: torch.cat([batch.get(k), torch.zeros((b, pad) + tuple(batch.get(k).shape[2:]),
                                                      dtype=batch.get(k).dtype)], dim=1) for k in candidate_fields(r)}
    torch.testing.assert_close(logits(r, batch._replace(**padded))[:, :c], logits(r, batch), atol=ATOL, rtol=0)


@pytest.mark.parametrize("impl,variant", CASES)
@prop
@given(shapes)
def test_users_in_a_batch_do_not_affect_each_other(impl, variant, shape):
    b, s, c, seed = shape
    r = ranker_for(impl, variant, s)
    batch = batch_for(r, b + 1, c, seed)
    together = logits(r, batch)
    for i in range(b + 1):
        alone = logits(r, batch.map(lambda t: t[i:i + 1]))
        torch.testing.assert_close(alone[0], together[i], atol=ATOL, rtol=0)


@pytest.mark.parametrize("impl,variant", CASES)
@prop
@given(shapes)
def test_right_anchored_rope_is_permutation_equivariant_and_independent_of_c(impl, variant, shape):
    b, s, c, seed = shape
    r = ranker_for(impl, variant, s, right_anchored_rope=True)
    batch = batch_for(r, b, c, seed)
    perm = torch.randperm(c, generator=torch.Generator().manual_seed(seed)).tolist()
    full = logits(r, batch)
    torch.testing.assert_close(logits(r, candidates(r, batch, perm)), full[:, perm], atol=ATOL, rtol=0)
    subset = sorted(set(perm[: 1 + seed % c]))[::-1]           # any subset, any order, smaller C
    torch.testing.assert_close(logits(r, candidates(r, batch, subset)), full[:, subset], atol=ATOL, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_without_right_anchored_rope_candidate_order_matters(impl):
    """Documents upstream's January behaviour: slot positions go through RoPE, so a candidate's
    score depends on its slot (permuting candidates changes their scores)."""
    r = ranker_for(impl, "january", 6)
    batch = batch_for(r, 2, 5, seed=3)
    perm = [4, 3, 2, 1, 0]
    diff = (logits(r, candidates(r, batch, perm)) - logits(r, batch)[:, perm]).abs().max()
    assert diff > 1e-3


@pytest.mark.parametrize("impl", IMPLS)
def test_one_pass_beyond_candidate_seq_len_equals_upstreams_chunks(impl):
    """Slot j of a long candidate list gets the position of slot j mod candidate_seq_len, so one pass over
    13 candidates equals scoring them in chunks of candidate_seq_len (5), the last chunk padded with hash 0."""
    r = ranker_for(impl, "may", 6)
    batch = batch_for(r, 2, 13, seed=8)
    one_pass = logits(r, batch)
    chunks = []
    for start in range(0, 13, 5):
        chunk = candidates(r, batch, slice(start, start + 5))
        n = chunk.candidate_post_hashes.shape[1]
        if n < 5:  # upstream zero-pads the last chunk
            chunk = chunk._replace(**{k: torch.cat([chunk.get(k), torch.zeros((2, 5 - n) + tuple(chunk.get(k).shape[2:]),
                                                                               dtype=chunk.get(k).dtype)], dim=1)
                                      for k in candidate_fields(r)})
        chunks.append(logits(r, chunk)[:, :n])
    torch.testing.assert_close(one_pass, torch.cat(chunks, dim=1), atol=ATOL, rtol=0)


def test_dense_and_isolated_agree_at_1000_candidates():
    dense, iso = ranker_for("dense", "may+extras", 16), ranker_for("isolated", "may+extras", 16)
    for c in (1, 7, 64, 1000):
        batch = batch_for(dense, 2, c, seed=c)
        torch.testing.assert_close(logits(iso, batch), logits(dense, batch), atol=1e-5, rtol=0)


def test_dense_and_isolated_agree_in_bf16():
    dense = ranker_for("dense", "may", 8, fprop_dtype="bfloat16")
    iso = ranker_for("isolated", "may", 8, fprop_dtype="bfloat16")
    batch = batch_for(dense, 2, 33, seed=1)
    assert (logits(iso, batch) - logits(dense, batch)).abs().max() < 0.1
