import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402

from bitembed_jax.losses.contrastive import candidate_scores, info_nce, sharded_info_nce  # noqa: E402
from bitembed_jax.parallel.sharding import MESH_AXES, logical_spec  # noqa: E402

B, K, D, TAU = 16, 3, 8, 0.05
MESHES = [(8, 1, 1), (2, 2, 2)]


def make_mesh(shape):
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def data(seed=0):
    r = np.random.default_rng(seed)
    q = r.normal(size=(B, D)).astype(np.float32)
    p = (q + 0.7 * r.normal(size=(B, D))).astype(np.float32)  # correlated so the loss is not trivial
    n = r.normal(size=(B, K, D)).astype(np.float32)
    return q, p, n


def np_info_nce(q, p, n, tau, symmetric):
    """Reference written independently: explicit loops over queries, float64."""
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    q, p = unit(q.astype(np.float64)), unit(p.astype(np.float64))
    cands = p if n is None else np.concatenate([p, unit(n.astype(np.float64)).reshape(-1, q.shape[1])])

    def direction(a, pool):
        losses, hits = [], []
        for i in range(a.shape[0]):
            s = pool @ a[i] / tau
            losses.append(np.log(np.sum(np.exp(s - s.max()))) + s.max() - s[i])
            hits.append(np.argmax(s) == i)
        return np.mean(losses), np.mean(hits)

    loss, acc = direction(q, cands)
    if symmetric:
        loss = 0.5 * (loss + direction(p, q)[0])
    return loss, acc


@pytest.mark.parametrize("with_negatives", [False, True])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("query_block", [None, 4])
def test_matches_numpy(with_negatives, symmetric, query_block):
    q, p, n = data()
    n = n if with_negatives else None
    loss, m = jax.jit(lambda q, p, n: info_nce(q, p, temperature=TAU, negatives=n, symmetric=symmetric,
                                               query_block=query_block))(q, p, n)
    want_loss, want_acc = np_info_nce(q, p, n, TAU, symmetric)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(m["accuracy"], want_acc)


def test_candidate_scores_layout():
    q, p, n = data()
    scores, labels = candidate_scores(q, p, n, 1.0)
    assert scores.shape == (B, B + B * K)
    np.testing.assert_array_equal(labels, np.arange(B))
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(scores[3, 5], unit(q[3]) @ unit(p[5]), rtol=1e-5)
    np.testing.assert_allclose(scores[3, B + 2 * K + 1], unit(q[3]) @ unit(n[2, 1]), rtol=1e-5)


@pytest.mark.parametrize("shape", MESHES)
@pytest.mark.parametrize("with_negatives,symmetric,query_block",
                         [(True, False, None), (False, True, None), (True, True, None), (True, True, 1)])
def test_sharded_equals_single_device(shape, with_negatives, symmetric, query_block):
    mesh = make_mesh(shape)
    q, p, n = data(1)
    n = n if with_negatives else None
    argnums = (0, 1, 2, 3) if with_negatives else (0, 1, 3)

    def single(q, p, n, t):
        return info_nce(q, p, temperature=t, negatives=n, symmetric=symmetric)

    def sharded(q, p, n, t):
        return sharded_info_nce(mesh, q, p, n, temperature=t, symmetric=symmetric, query_block=query_block)

    def value_and_grads(fn):
        return jax.jit(jax.value_and_grad(fn, argnums=argnums, has_aux=True))(q, p, n, jnp.float32(TAU))

    (want, want_m), want_g = value_and_grads(single)
    (got, got_m), got_g = value_and_grads(sharded)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_m["accuracy"], want_m["accuracy"])
    for g, w in zip(got_g, want_g):  # q, p, (negatives,) temperature
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_sharded_inputs_stay_sharded():
    """Batch-sharded inputs (as the train step passes them): same gradients, which keep the batch sharding."""
    mesh = make_mesh((2, 2, 2))
    q, p, n = data(2)
    put = lambda x: jax.device_put(x, NamedSharding(mesh, logical_spec(("batch",))))  # noqa: E731
    grad = jax.jit(jax.grad(lambda q, p, n: sharded_info_nce(mesh, q, p, n, temperature=TAU)[0], argnums=(0, 1, 2)))
    gq, gp, gn = grad(put(q), put(p), put(n))
    want = jax.grad(lambda q, p, n: info_nce(q, p, temperature=TAU, negatives=n)[0], argnums=(0, 1, 2))(q, p, n)
    for g, w in zip((gq, gp, gn), want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    assert gp.sharding.is_equivalent_to(NamedSharding(mesh, logical_spec(("batch", None))), 2)


def test_query_block_must_divide_local_batch():
    q, p, _ = data()
    with pytest.raises(ValueError, match="local batch 16 is not divisible by query_block=5"):
        info_nce(q, p, temperature=TAU, query_block=5)
