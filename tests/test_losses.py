"""Contrastive and distillation losses against plain numpy; sharded == single device; GradCache == full."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from bitembed_jax.losses.contrastive import info_nce, sharded_info_nce
from bitembed_jax.losses.distill import (attention_relation_distill, sharded_similarity_distill,
                                         similarity_distill)
from bitembed_jax.train.grad_cache import grad_cache_step

B, K, D = 16, 2, 12


def vecs(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def np_norm(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_info_nce(q, p, n, tau, symmetric):
    q, p = np_norm(q.astype(np.float64)), np_norm(p.astype(np.float64))
    pool = p if n is None else np.concatenate([p, np_norm(n.astype(np.float64)).reshape(-1, q.shape[1])])
    s = q @ pool.T / tau
    loss = -np.mean(np_log_softmax(s)[np.arange(len(q)), np.arange(len(q))])
    if symmetric:
        s2 = p @ q.T / tau
        loss = 0.5 * (loss + -np.mean(np_log_softmax(s2)[np.arange(len(q)), np.arange(len(q))]))
    return loss


def mesh_of(shape):
    return jax.make_mesh(shape, ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)


@pytest.mark.parametrize("negs,symmetric", [(False, False), (True, False), (False, True), (True, True)])
def test_info_nce_matches_numpy(negs, symmetric):
    q, p, n = vecs(B, D, seed=1), vecs(B, D, seed=2), vecs(B, K, D, seed=3)
    loss, m = info_nce(q, p, temperature=0.05, negatives=n if negs else None, symmetric=symmetric)
    np.testing.assert_allclose(float(loss), np_info_nce(q, p, n if negs else None, 0.05, symmetric), rtol=1e-5)
    assert 0.0 <= float(m["accuracy"]) <= 1.0


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2)])
@pytest.mark.parametrize("negs", [False, True])
def test_sharded_loss_and_grads_equal_single_device(shape, negs):
    mesh = mesh_of(shape)
    q, p, n = vecs(B, D, seed=4), vecs(B, D, seed=5), vecs(B, K, D, seed=6)

    def single(q, p, n, t):
        return info_nce(q, p, temperature=t, negatives=n if negs else None, symmetric=True)[0]

    def sharded(q, p, n, t):
        return sharded_info_nce(mesh, q, p, n if negs else None, temperature=t, symmetric=True)[0]

    args = (q, p, n, jnp.float32(0.05))
    want = jax.value_and_grad(single, argnums=(0, 1, 2, 3))(*args)
    put = lambda x: jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))
    got = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2, 3)))(put(q), put(p), put(n), args[3])
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
    for g, w in zip(got[1], want[1]):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)


def _mlp_embed(params, inputs):
    (x,) = inputs
    return jnp.tanh(x @ params["w1"]) @ params["w2"]


@pytest.mark.parametrize("sharded", [False, True])
def test_grad_cache_equals_full_gradient(sharded):
    mesh = mesh_of((8, 1, 1))
    params = {"w1": jnp.asarray(vecs(D, 20, seed=7)) * 0.3, "w2": jnp.asarray(vecs(20, 8, seed=8)) * 0.3}
    xq, xp, xn = vecs(B, D, seed=9), vecs(B, D, seed=10), vecs(B * K, D, seed=11)

    def loss_fn(q, p, n):
        negs = n.reshape(B, K, -1)
        if sharded:
            return sharded_info_nce(mesh, q, p, negs, temperature=0.1)
        return info_nce(q, p, temperature=0.1, negatives=negs)

    def full(prm):
        return loss_fn(_mlp_embed(prm, (xq,)), _mlp_embed(prm, (xp,)), _mlp_embed(prm, (xn,)))[0]

    want_loss, want = jax.value_and_grad(full)(params)
    loss, _, got = jax.jit(lambda prm: grad_cache_step(_mlp_embed, prm, (xq,), (xp,), (xn,), loss_fn, 4))(params)
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-6)
    for k in params:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), atol=1e-6)


def test_grad_cache_rejects_uneven_chunks():
    params = {"w1": jnp.ones((D, 4)), "w2": jnp.ones((4, 4))}
    x = (vecs(B, D),)
    with pytest.raises(ValueError, match="not divisible by num_chunks=3"):
        grad_cache_step(_mlp_embed, params, x, x, None, lambda q, p, n: info_nce(q, p, temperature=0.1), 3)


def np_kl_rows(t, s):
    lt, ls = np_log_softmax(t), np_log_softmax(s)
    return (np.exp(lt) * (lt - ls)).sum(-1)


def test_similarity_distill_matches_numpy_and_zero_when_equal():
    s, t = vecs(B, 40, seed=12), vecs(B, 40, seed=13)
    got = similarity_distill(s, t, tau_student=0.05, tau_teacher=0.1)
    np.testing.assert_allclose(float(got), np.mean(np_kl_rows(t / 0.1, s / 0.05)), rtol=1e-5)
    assert abs(float(similarity_distill(s, s, tau_student=0.07, tau_teacher=0.07))) < 1e-6


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2)])
def test_sharded_similarity_distill_equals_single(shape):
    mesh = mesh_of(shape)
    e = [vecs(B, D, seed=s) for s in range(20, 24)] + [vecs(B, K, D, seed=24), vecs(B, K, D, seed=25)]
    sq, sp, tq, tp, sn, tn = e
    from bitembed_jax.losses.contrastive import candidate_scores

    def single(sq, sp, sn, tq, tp, tn):
        ss, _ = candidate_scores(sq, sp, sn, 1.0)
        ts, _ = candidate_scores(tq, tp, tn, 1.0)
        return similarity_distill(ss, ts, tau_student=0.05, tau_teacher=0.05)

    def sharded(sq, sp, sn, tq, tp, tn):
        return sharded_similarity_distill(mesh, sq, sp, sn, tq, tp, tn, tau_student=0.05, tau_teacher=0.05)

    args = (sq, sp, sn, tq, tp, tn)
    want = jax.value_and_grad(single, argnums=(0, 1, 2, 3, 4, 5))(*args)
    got = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2, 3, 4, 5)))(*args)
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-5)
    for i, (g, w) in enumerate(zip(got[1], want[1])):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5)
        if i >= 3:  # the teacher receives no gradient
            assert not np.any(np.asarray(g))


def np_relation_kl(s_qkv, t_qkv, mask, r):
    total = 0.0
    for s, t in zip(s_qkv, t_qkv):
        per = []
        for b in range(s.shape[0]):
            n = int(mask[b].sum())
            fs, ft = s[b, :n].reshape(n, -1).astype(np.float64), t[b, :n].reshape(n, -1).astype(np.float64)
            ds, dt = fs.shape[1] // r, ft.shape[1] // r
            for h in range(r):
                a_s, a_t = fs[:, h * ds:(h + 1) * ds], ft[:, h * dt:(h + 1) * dt]
                per.append(np_kl_rows(a_t @ a_t.T / np.sqrt(dt), a_s @ a_s.T / np.sqrt(ds)))
        total += np.concatenate(per).mean()
    return total / 3


def test_attention_relation_matches_numpy_gqa_and_padding():
    bsz, t, r = 3, 7, 4
    mask = np.ones((bsz, t), np.int32)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    student = tuple(vecs(bsz, t, 4, 8, seed=30 + i) for i in range(3))  # width 32
    teacher = tuple(vecs(bsz, t, 8, 8, seed=40 + i) for i in range(3))  # width 64: different H*D
    got = attention_relation_distill(student, teacher, mask, num_relation_heads=r)
    np.testing.assert_allclose(float(got), np_relation_kl(student, teacher, mask, r), rtol=1e-5)
    assert abs(float(attention_relation_distill(student, student, mask, num_relation_heads=r))) < 1e-6
    # garbage in padding positions (and extra padding) changes nothing
    pad = lambda x: np.concatenate([x, 100 * vecs(bsz, 3, *x.shape[2:], seed=99)], axis=1)
    mask2 = np.concatenate([mask, np.zeros((bsz, 3), np.int32)], axis=1)
    s2 = tuple(pad(np.where(mask[:, :, None, None] > 0, x, 50.0)) for x in student)
    t2 = tuple(pad(np.where(mask[:, :, None, None] > 0, x, -50.0)) for x in teacher)
    got2 = attention_relation_distill(s2, t2, mask2, num_relation_heads=r)
    np.testing.assert_allclose(float(got2), float(got), rtol=1e-5)
    grads = jax.grad(lambda tq: attention_relation_distill(student, (tq,) + teacher[1:], mask,
                                                           num_relation_heads=r))(teacher[0])
    assert not np.any(np.asarray(grads))
