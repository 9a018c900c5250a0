import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import AxisType  # noqa: E402

from bitembed_jax.losses.contrastive import candidate_scores  # noqa: E402
from bitembed_jax.losses.distill import (attention_relation_distill, cosine_distill,  # noqa: E402
                                         hidden_state_distill, layer_map, sharded_similarity_distill,
                                         similarity_distill, standardized_mse)
from bitembed_jax.parallel.sharding import MESH_AXES  # noqa: E402

B, K, D_S, D_T, TS, TT = 16, 2, 8, 12, 0.05, 0.02


def np_kl(t_logits, s_logits):
    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    pt, ps = softmax(t_logits), softmax(s_logits)
    return np.sum(pt * (np.log(pt) - np.log(ps)), axis=-1)


# ---- similarity-distribution distillation

def test_similarity_matches_numpy_and_valid_mask():
    r = np.random.default_rng(0)
    s, t = r.uniform(-1, 1, size=(2, 6, 10))
    valid = np.array([1, 1, 0, 1, 0, 1], bool)
    kl = np_kl(t / TT, s / TS)
    got = similarity_distill(jnp.float32(s), jnp.float32(t), tau_student=TS, tau_teacher=TT)
    np.testing.assert_allclose(got, kl.mean(), rtol=1e-5)
    got = similarity_distill(jnp.float32(s), jnp.float32(t), tau_student=TS, tau_teacher=TT, valid=valid)
    np.testing.assert_allclose(got, kl[valid].mean(), rtol=1e-5)


def test_similarity_zero_when_equal_and_no_teacher_grad():
    s = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, size=(6, 10)), jnp.float32)
    assert abs(float(similarity_distill(s, s, tau_student=TS, tau_teacher=TS))) < 1e-6
    gs, gt = jax.grad(lambda a, b: similarity_distill(a, b, tau_student=TS, tau_teacher=TT), argnums=(0, 1))(s, s * 0.5)
    assert np.abs(gs).max() > 0 and np.all(gt == 0)


def embeddings(seed):
    r = np.random.default_rng(seed)
    f = lambda *s: r.normal(size=s).astype(np.float32)  # noqa: E731
    return f(B, D_S), f(B, D_S), f(B, K, D_S), f(B, D_T), f(B, D_T), f(B, K, D_T)


def single_similarity(sq, sp, sn, tq, tp, tn, valid=None):
    s, _ = candidate_scores(sq, sp, sn)
    t, _ = candidate_scores(tq, tp, tn)
    return similarity_distill(s, t, tau_student=TS, tau_teacher=TT, valid=valid)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2)])
def test_sharded_similarity_equals_single_device(shape):
    mesh = jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
    args = embeddings(2)
    valid = np.arange(B) % 5 != 0  # uneven valid counts per device: the mean must still be global

    def sharded(*a):
        return sharded_similarity_distill(mesh, *a, tau_student=TS, tau_teacher=TT, valid=valid)

    argnums = tuple(range(6))
    want, want_g = jax.jit(jax.value_and_grad(lambda *a: single_similarity(*a, valid=valid), argnums))(*args)
    got, got_g = jax.jit(jax.value_and_grad(sharded, argnums))(*args)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_g[:3], want_g[:3]):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    assert all(np.all(g == 0) for g in got_g[3:])  # teacher: no gradient

    no_negs = lambda sq, sp, tq, tp: sharded_similarity_distill(  # noqa: E731
        mesh, sq, sp, None, tq, tp, None, tau_student=TS, tau_teacher=TT)
    sq, sp, _, tq, tp, _ = args
    np.testing.assert_allclose(jax.jit(no_negs)(sq, sp, tq, tp),
                               single_similarity(sq, sp, None, tq, tp, None), rtol=1e-5, atol=1e-5)


# ---- attention-relation distillation

def np_relation(qkv_s, qkv_t, lengths, heads):
    """Reference: loop over sequences, relations and heads on the real tokens only, float64."""
    total, tokens = 0.0, 0
    for b, n in enumerate(lengths):
        tokens += n
        for xs, xt in zip(qkv_s, qkv_t):
            for h in range(heads):
                def rel_logits(x):
                    a = x[b, :n].astype(np.float64).reshape(n, -1)
                    d_r = a.shape[1] // heads
                    a = a[:, h * d_r:(h + 1) * d_r]
                    return a @ a.T / np.sqrt(d_r)
                total += np_kl(rel_logits(xt), rel_logits(xs)).sum() / 3.0
    return total / (tokens * heads)


def qkv(r, b, t, h, d):
    return tuple(r.normal(size=(b, t, h, d)).astype(np.float32) for _ in range(3))


# GQA-shaped: student 4 heads x 8 (K/V repeated from fewer kv heads), teacher 6 heads x 16
SHAPES = dict(student=(4, 8), teacher=(6, 16))


def relation_inputs(seed=3, t=7):
    r = np.random.default_rng(seed)
    s, te = qkv(r, 3, t, *SHAPES["student"]), qkv(r, 3, t, *SHAPES["teacher"])
    lengths = [7, 4, 1]
    mask = np.arange(t)[None, :] < np.array(lengths)[:, None]
    return s, te, mask, lengths


def test_relation_matches_numpy_gqa_shapes():
    s, t, mask, lengths = relation_inputs()
    got = attention_relation_distill(s, t, mask, num_relation_heads=4)
    np.testing.assert_allclose(got, np_relation(s, t, lengths, 4), rtol=1e-5)


def test_relation_zero_when_equal_and_no_teacher_grad():
    s, _, mask, _ = relation_inputs()
    assert abs(float(attention_relation_distill(s, s, mask, num_relation_heads=2))) < 1e-6
    _, t, _, _ = relation_inputs(seed=4)
    gs, gt = jax.grad(lambda a, b: attention_relation_distill(a, b, mask, num_relation_heads=4), argnums=(0, 1))(s, t)
    assert all(np.abs(g).max() > 0 for g in gs) and all(np.all(g == 0) for g in gt)


def test_relation_padding_invariance():
    """Extra padding positions holding garbage (huge values, nan, inf) change neither loss nor gradients."""
    s, t, mask, _ = relation_inputs()
    loss_and_grad = jax.jit(jax.value_and_grad(
        lambda a, b, m: attention_relation_distill(a, b, m, num_relation_heads=4)))
    want, want_g = loss_and_grad(s, t, mask)

    def pad(xs, fill):
        return tuple(np.concatenate([x, np.full((x.shape[0], 5) + x.shape[2:], fill, np.float32)], 1) for x in xs)

    mask_p = np.concatenate([mask, np.zeros((mask.shape[0], 5), bool)], 1)
    garbage = np.float32(1e30)
    s_p, t_p = pad(s, garbage), pad(t, np.nan)
    s_p[0][1, 5, 0, 0] = np.inf  # garbage inside an existing padding position too
    got, got_g = loss_and_grad(s_p, t_p, mask_p)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for g, w in zip(got_g, want_g):
        np.testing.assert_allclose(g[:, :7], w, rtol=1e-5, atol=1e-7)
        assert np.all(np.asarray(g)[~mask_p] == 0)


def test_relation_heads_must_divide():
    s, t, mask, _ = relation_inputs()
    with pytest.raises(ValueError, match="not divisible by num_relation_heads=5"):
        attention_relation_distill(s, t, mask, num_relation_heads=5)


# ---- pooled-vector and hidden-state alignment

def np_cos_distance(s, t):
    return 1.0 - np.sum(s * t, -1) / (np.linalg.norm(s, axis=-1) * np.linalg.norm(t, axis=-1))


def test_cosine_distill_matches_numpy_pooled_and_masked_tokens():
    r = np.random.default_rng(5)
    s, t = r.normal(size=(2, 6, 10)) * np.array([1.0, 300.0])[:, None, None]  # scale-free: teacher 300x larger
    np.testing.assert_allclose(cosine_distill(jnp.float32(s), jnp.float32(t)), np_cos_distance(s, t).mean(),
                               rtol=1e-5)
    hs, ht = r.normal(size=(2, 3, 5, 10))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
    hs_bad = np.where(mask[..., None], hs, np.nan)  # padded tokens may hold garbage: it must not leak
    ht_bad = np.where(mask[..., None], ht, np.nan)
    got = cosine_distill(jnp.float32(np.nan_to_num(hs_bad)), jnp.float32(np.nan_to_num(ht_bad)), jnp.asarray(mask))
    np.testing.assert_allclose(got, np_cos_distance(hs, ht)[mask].mean(), rtol=1e-5)


def test_cosine_distill_zero_when_parallel_and_no_teacher_grad():
    s = jnp.asarray(np.random.default_rng(6).normal(size=(4, 8)), jnp.float32)
    assert abs(float(cosine_distill(s, 3.0 * s))) < 1e-6
    gs, gt = jax.grad(cosine_distill, argnums=(0, 1))(s, s[::-1])
    assert np.abs(gs).max() > 0 and np.all(gt == 0)
    with pytest.raises(ValueError, match="student width 8 != teacher width 6"):
        cosine_distill(s, s[:, :6])


def test_layer_map_and_hidden_state_distill_match_numpy():
    assert layer_map(4, 4) == [0, 1, 2, 3]
    assert layer_map(3, 6) == [1, 3, 5]  # evenly spaced, last onto last
    assert layer_map(4, 2) == [0, 0, 1, 1]
    r = np.random.default_rng(7)
    scale = np.array([1, 1, 1, 1, 1, 1, 1, 500.0])  # one massive feature, as in an LLM residual stream
    student, teacher = r.normal(size=(3, 2, 4, 8)) * scale, r.normal(size=(6, 2, 4, 8)) * scale
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)

    def np_std_mse(s, t):
        sd = t[mask].std(axis=0)
        var = sd ** 2
        return np.mean(((s - t)[mask] / np.sqrt(var + 1e-4 * np.median(var))) ** 2)

    want = np.mean([np_std_mse(student[i], teacher[j]) for i, j in enumerate([1, 3, 5])])
    got = hidden_state_distill(tuple(jnp.float32(x) for x in student), tuple(jnp.float32(x) for x in teacher),
                               jnp.asarray(mask))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_standardized_mse_weighs_every_feature_and_ignores_padding():
    r = np.random.default_rng(8)
    t = r.normal(size=(2, 5, 6)) * np.array([1, 1, 1, 1, 1, 300.0])
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    s = t.copy()
    s[..., 0] += t[mask][:, 0].std()  # one sd off in a small feature ...
    s[~mask] = 1e6  # ... and garbage on padding
    got = float(standardized_mse(jnp.float32(s), jnp.float32(t), jnp.asarray(mask)))
    np.testing.assert_allclose(got, 1.0 / 6.0, rtol=1e-3)  # (1 sd)^2 in 1 of 6 features
    assert float(standardized_mse(jnp.float32(t), jnp.float32(t), jnp.asarray(mask))) == 0.0
