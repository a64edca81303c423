"""Bad input gets a clear error naming the field, never a silently wrong answer; the feature
declaration decides what a batch must hold."""
import numpy as np
import pytest
import torch

from phoenix_torch import (HashedFeature, PhoenixModel, export_upstream_params, init_seeded,
                           load_upstream_params)

from model_fixtures import LANGUAGE, SMALL_VOCAB, batch_for, logits, small_config, small_ranker


@pytest.fixture(scope="module")
def ranker():
    return small_ranker()


@pytest.fixture(scope="module")
def may_ranker():
    return small_ranker(variant="may+extras")


def check(ranker, batch, field, match):
    with pytest.raises((ValueError, TypeError), match=match) as e:
        ranker(batch)
    assert field in str(e.value)


def test_wrong_rank(ranker):
    b = batch_for(ranker, 2, 3)
    check(ranker, b._replace(user_hashes=b.user_hashes[:, :, None]), "user_hashes", "dims")


def test_wrong_hash_count(ranker):
    b = batch_for(ranker, 2, 3)
    check(ranker, b._replace(candidate_post_hashes=b.candidate_post_hashes[..., :1]), "candidate_post_hashes", "must be 2")


def test_wrong_history_length(ranker):
    b = batch_for(ranker, 2, 3)
    fields = {k: v[:, :-1] for k, v in b._asdict().items() if k.startswith("history")}
    check(ranker, b._replace(**fields), "history_post_hashes", "S")


def test_mismatched_batch_size(ranker):
    b = batch_for(ranker, 2, 3)
    check(ranker, b._replace(candidate_product_surface=b.candidate_product_surface[:1]), "candidate_product_surface", "B")


def test_mismatched_candidate_count(ranker):
    b = batch_for(ranker, 2, 3)
    check(ranker, b._replace(candidate_author_hashes=b.candidate_author_hashes[:, :2]), "candidate_author_hashes", "C")


def test_float_hashes(ranker):
    b = batch_for(ranker, 2, 3)
    check(ranker, b._replace(history_post_hashes=b.history_post_hashes.float()), "history_post_hashes", "integer")


def test_integer_actions(ranker):
    b = batch_for(ranker, 2, 3)
    check(ranker, b._replace(history_actions=b.history_actions.long()), "history_actions", "floating")


def test_non_binary_actions(ranker):
    b = batch_for(ranker, 2, 3)
    check(ranker, b._replace(history_actions=b.history_actions * 2 + 0.5), "history_actions", "0/1")


@pytest.mark.parametrize("field", ["user_hashes", "history_post_hashes", "history_author_hashes",
                                   "candidate_post_hashes", "candidate_author_hashes"])
def test_hash_outside_table(ranker, field):
    b = batch_for(ranker, 2, 3)
    t = b.get(field).clone()
    t.view(-1)[-1] = SMALL_VOCAB
    check(ranker, b._replace(**{field: t}), field, r"\[0, 97\)")


@pytest.mark.parametrize("field,high", [("history_product_surface", 16), ("candidate_product_surface", 16),
                                        ("candidate_media_category", 8)])
def test_category_outside_table(may_ranker, field, high):
    b = batch_for(may_ranker, 2, 3)
    t = b.get(field).clone()
    t.view(-1)[0] = high
    check(may_ranker, b._replace(**{field: t}), field, rf"\[0, {high}\)")


def test_negative_hash(ranker):
    b = batch_for(ranker, 2, 3)
    t = b.user_hashes.clone()
    t[0, 0] = -5
    check(ranker, b._replace(user_hashes=t), "user_hashes", ">= 0|\\[0, 97\\)")


def test_negative_timestamp_is_named_and_zero_means_unknown(may_ranker):
    b = batch_for(may_ranker, 2, 3)
    t = b.candidate_post_creation_ts.clone()
    t[1, 2] = -1
    check(may_ranker, b._replace(candidate_post_creation_ts=t), "candidate_post_creation_ts", ">= 0")
    # 0 is "unknown" (bucket 0), the same as leaving both timestamps out
    zero = b._replace(candidate_impr_ts=torch.zeros_like(b.candidate_impr_ts))
    absent = b._replace()
    del absent.__dict__["candidate_impr_ts"], absent.__dict__["candidate_post_creation_ts"]
    torch.testing.assert_close(logits(may_ranker, zero), logits(may_ranker, absent), atol=0, rtol=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_dwell_is_named(may_ranker, bad):
    b = batch_for(may_ranker, 2, 3)
    t = b.history_continuous_actions.clone()
    t[0, 0, 1] = bad
    check(may_ranker, b._replace(history_continuous_actions=t), "history_continuous_actions", "NaN or infinite")


def test_missing_declared_feature_is_named(may_ranker):
    b = batch_for(may_ranker, 2, 3)
    del b.__dict__["candidate_media_category"]
    check(may_ranker, b, "candidate_media_category", "missing")


def test_absent_optional_may_fields_equal_their_zero_values(may_ranker):
    b = batch_for(may_ranker, 2, 3)
    zeros = b._replace(history_continuous_actions=torch.zeros_like(b.history_continuous_actions))
    absent = b._replace()
    del absent.__dict__["history_continuous_actions"]
    torch.testing.assert_close(logits(may_ranker, absent), logits(may_ranker, zeros), atol=0, rtol=0)


def test_a_feature_with_zero_hashes_is_the_same_as_no_feature():
    plain = small_ranker(variant="may", seed=3)
    zero = small_ranker(variant="may", seed=3,
                        features=(*small_config("may").features, HashedFeature("user_language_hashes", "user",
                                                                                 entity="language", num_hashes=0)))
    assert [n for n, _ in zero.named_parameters()] == [n for n, _ in plain.named_parameters()]
    b = batch_for(plain, 2, 4, seed=1)
    torch.testing.assert_close(logits(zero, b), logits(plain, b), atol=0, rtol=0)
    assert "user_language_hashes" not in {f.name for f in zero.model.config.batch_fields}


def test_declared_features_shape_the_parameters():
    cfg = small_config("may+extras")
    model = PhoenixModel(cfg)
    d = cfg.emb_size
    assert model.encoder.proj_mat_1.shape == ((2 + LANGUAGE.num_hashes) * d, d)   # user + language
    assert model.encoder.proj_mat_3.shape == ((2 + 2 + 3) * d, d)                  # post, author, action, surface, dwell
    assert model.encoder.proj_mat_2.shape == ((2 + 2 + 2 + 1) * d, d)              # post, author, surface, age, media
    assert model.encoder.candidate_media_category_embedding_table.shape == (8, d)
    assert model.continuous_unembeddings.shape == (d, 8)


def test_parameters_that_do_not_fit_the_declaration_are_named():
    params = export_upstream_params(init_seeded(PhoenixModel(small_config("may"))))
    with pytest.raises(ValueError, match=r"mis-shaped key: phoenix_model/proj_mat_1"):
        load_upstream_params(PhoenixModel(small_config("may+extras")), params)
    del params["phoenix_model/post_age_embedding_table"]
    with pytest.raises(ValueError, match=r"missing key: phoenix_model/post_age_embedding_table"):
        load_upstream_params(PhoenixModel(small_config("may")), params)


def test_embeddings_mismatched_with_batch(ranker):
    b = batch_for(ranker, 2, 3)
    emb = ranker.tables.lookup(b, ranker.model.config.features)
    emb = emb._replace(candidate_post_embeddings=emb.candidate_post_embeddings[:, :2])
    with pytest.raises(ValueError, match="candidate_post_embeddings"):
        ranker.model(b, emb)


def test_ignored_upstream_key_is_dropped_with_a_warning_each_load(recwarn):
    """No hidden state: every load that drops the key says so (Python's default filter shows a user the first
    one only; export.build records it in each manifest it writes)."""
    from phoenix_torch import PhoenixRetrievalModel, get_preset
    model = init_seeded(PhoenixRetrievalModel(get_preset("demo", retrieval=True, history_seq_len=4)))
    params = {**export_upstream_params(model), "~/log_temperature": np.float32(0.07)}
    load_upstream_params(model, params)
    load_upstream_params(model, params)
    assert sum("log_temperature" in str(w.message) for w in recwarn.list) == 2
