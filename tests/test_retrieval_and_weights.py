"""Retrieval outputs, upstream weight loading errors, save/load round trip, presets."""
import numpy as np
import pytest
import torch

from phoenix_torch import (PRESETS, PhoenixModel, PhoenixRetrievalModel, export_upstream_params, get_preset,
                           init_seeded, load_tables, load_upstream_params, load_weights, random_batch, save_tables,
                           save_weights)

from model_fixtures import SMALL_VOCAB, batch_for, logits, small_config, small_ranker, small_tables


@pytest.fixture(scope="module", params=[True, False], ids=["mlp_tower", "meanpool_tower"])
def retrieval(request):
    cfg = get_preset("demo", retrieval=True, history_seq_len=6, transformer=small_config().transformer,
                     enable_linear_proj=request.param)
    model = init_seeded(PhoenixRetrievalModel(cfg), 3).eval()
    return model, small_tables(cfg, 4)


def lookup(tables, model, batch):
    return tables.lookup(batch, model.config.features)


def test_retrieval_unit_norm_sorted_top_k_in_range(retrieval):
    model, tables = retrieval
    batch = random_batch(model.config, 4, 50, SMALL_VOCAB, seed=5)
    emb = lookup(tables, model, batch)
    with torch.no_grad():
        corpus = model.candidate_representation(emb).reshape(-1, model.config.emb_size)   # 200 posts
        user, idx, scores = model(batch, emb, corpus, top_k=10)
    torch.testing.assert_close(user.norm(dim=-1), torch.ones(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(corpus.norm(dim=-1), torch.ones(200), atol=1e-5, rtol=0)
    assert idx.shape == scores.shape == (4, 10)
    assert ((idx >= 0) & (idx < 200)).all()
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    brute = user @ corpus.T
    torch.testing.assert_close(scores, brute.gather(1, idx))
    assert torch.equal(idx[:, 0], brute.argmax(1))


def test_retrieval_rejects_bad_top_k_and_corpus(retrieval):
    model, tables = retrieval
    batch = random_batch(model.config, 1, 1, SMALL_VOCAB)
    emb = lookup(tables, model, batch)
    with pytest.raises(ValueError, match="top_k"):
        model(batch, emb, torch.randn(5, model.config.emb_size), top_k=6)
    with pytest.raises(ValueError, match="corpus"):
        model(batch, emb, torch.randn(5, 3), top_k=2)
    with pytest.raises(ValueError, match="corpus_mask"):
        model(batch, emb, torch.randn(5, model.config.emb_size), top_k=2, corpus_mask=torch.ones(4, dtype=torch.bool))


def test_corpus_mask_keeps_masked_rows_out_of_the_top_k(retrieval):
    model, tables = retrieval
    batch = random_batch(model.config, 3, 1, SMALL_VOCAB, seed=2)
    emb = lookup(tables, model, batch)
    corpus = torch.nn.functional.normalize(torch.randn(40, model.config.emb_size, generator=torch.Generator().manual_seed(0)), dim=-1)
    with torch.no_grad():
        _, idx, _ = model(batch, emb, corpus, top_k=5)
        mask = torch.ones(40, dtype=torch.bool)
        mask[idx[0]] = False                                         # hide user 0's best five
        _, masked_idx, scores = model(batch, emb, corpus, top_k=5, corpus_mask=mask)
    assert not set(masked_idx[0].tolist()) & set(idx[0].tolist())
    assert mask[masked_idx].all() and (scores > -2).all()


def test_upstream_params_round_trip_and_clear_errors():
    r = small_ranker(seed=1)
    params = export_upstream_params(r.model)
    assert "transformer/decoder_layer_1/multi_head_attention/query/w" in params
    assert "phoenix_model/rms_norm/scale" in params
    fresh = load_upstream_params(PhoenixModel(r.model.config), {f"param/{k}": v for k, v in params.items()})
    for (n, a), (_, b) in zip(r.model.named_parameters(), fresh.named_parameters()):
        assert torch.equal(a, b), n

    broken = dict(params)
    del broken["phoenix_model/proj_mat_2"]
    broken["phoenix_model/extra_thing"] = np.zeros(3, np.float32)
    broken["transformer/decoder_layer_0/linear/w"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError) as e:
        load_upstream_params(PhoenixModel(r.model.config), broken)
    msg = str(e.value)
    assert "missing key: phoenix_model/proj_mat_2" in msg
    assert "unexpected key: phoenix_model/extra_thing" in msg
    assert "mis-shaped key: transformer/decoder_layer_0/linear/w" in msg


def test_save_and_load_weights_and_tables(tmp_path):
    r = small_ranker(seed=2)
    save_weights(r, tmp_path / "w.pt")
    other = small_ranker(seed=9)
    batch = batch_for(r, 2, 4)
    assert not torch.allclose(logits(other, batch), logits(r, batch))
    load_weights(other, tmp_path / "w.pt")
    torch.testing.assert_close(logits(other, batch), logits(r, batch), atol=0, rtol=0)

    save_tables(r.tables, tmp_path / "t.npz")
    t = load_tables(tmp_path / "t.npz")
    assert t.vocab_sizes == {"user": SMALL_VOCAB, "item": SMALL_VOCAB, "author": SMALL_VOCAB}
    for e in t.vocab_sizes:
        assert torch.equal(t.tables[e], r.tables.tables[e])
    np.savez(tmp_path / "bad.npz", user_embeddings=np.zeros((4, 8), np.float32))
    with pytest.raises(ValueError, match="item_embeddings"):
        load_tables(tmp_path / "bad.npz", ("user", "item"))


def test_release_tables_get_a_zero_padding_row(tmp_path):
    np.savez(tmp_path / "t.npz", user_embeddings=np.ones((5, 4), np.float32))
    assert load_tables(tmp_path / "t.npz").tables["user"][0].abs().sum() == 0


@pytest.mark.parametrize("name", PRESETS)
def test_presets_match_the_published_sizes(name):
    sizes = {"demo": (128, 2, 2, 2, 64, 32, 8, 176), "mini": (128, 4, 4, 4, 32, 127, 64, 176),
             "nano": (512, 4, 4, 2, 128, 1022, 64, 688), "prod": (2560, 8, 20, 4, 128, 1022, 64, 3416)}[name]
    c = get_preset(name)
    t = c.transformer
    assert (t.emb_size, t.num_layers, t.num_q_heads, t.num_kv_heads, t.key_size, c.history_seq_len,
            c.candidate_seq_len, t.ffn_size) == sizes
    assert c.attention_impl == "isolated" and c.history_attention == "causal"


def test_bad_config_values_are_rejected():
    with pytest.raises(ValueError, match="attention_impl"):
        get_preset("demo", attention_impl="flash")
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")
