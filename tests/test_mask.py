"""The candidate-isolation mask, exactly as PHOENIX_SPEC.md states it."""
import torch

from phoenix_torch import isolation_mask


def rows(mask):
    return ["".join(str(int(v)) for v in row) for row in mask.tolist()]


def test_spec_example_6x6_causal():
    # [u, h1, h2, c1, c2, c3]
    assert rows(isolation_mask(3, 3, causal=True)) == ["100000", "110000", "111000", "111100", "111010", "111001"]


def test_bidirectional_history():
    assert rows(isolation_mask(3, 3, causal=False)) == ["111000", "111000", "111000", "111100", "111010", "111001"]


def test_one_candidate():
    assert rows(isolation_mask(3, 1, causal=True)) == ["1000", "1100", "1110", "1111"]


def test_all_candidates_never_see_each_other():
    p, c = 5, 7
    for causal in (True, False):
        m = isolation_mask(p, c, causal)
        cand = m[p:, p:]
        assert torch.equal(cand, torch.eye(c, dtype=torch.bool))
        assert m[p:, :p].all()                      # candidates see user + all history
        assert not m[:p, p:].any()                  # nothing before the candidates sees a candidate
