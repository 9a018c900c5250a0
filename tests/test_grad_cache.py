import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402

from bitembed_jax.losses.contrastive import info_nce, sharded_info_nce  # noqa: E402
from bitembed_jax.parallel.sharding import MESH_AXES, logical_spec  # noqa: E402
from bitembed_jax.train.grad_cache import _split, grad_cache_step  # noqa: E402

B, K, D_IN, H, D, TAU = 16, 2, 6, 12, 8, 0.05


def init_params(seed=0):
    r = np.random.default_rng(seed)
    return {"w1": jnp.asarray(r.normal(size=(D_IN, H)) / np.sqrt(D_IN), jnp.float32),
            "b1": jnp.asarray(r.normal(size=(H,)) * 0.1, jnp.float32),
            "w2": jnp.asarray(r.normal(size=(H, D)) / np.sqrt(H), jnp.float32)}


def embed_fn(params, inputs):
    """Small MLP with pytree inputs (features, per-row scale), standing in for the encoder."""
    x, scale = inputs
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] * scale[:, None]


def make_inputs(seed=1):
    r = np.random.default_rng(seed)
    rows = lambda n: (r.normal(size=(n, D_IN)).astype(np.float32),  # noqa: E731
                      r.uniform(0.5, 1.5, size=(n,)).astype(np.float32))
    return rows(B), rows(B), rows(B * K)  # negatives flattened (B*K, ...) as the train step does


def reference(params, q_in, p_in, n_in, loss_fn):
    def full(prm):
        n = None if n_in is None else embed_fn(prm, n_in)
        return loss_fn(embed_fn(prm, q_in), embed_fn(prm, p_in), n)
    (loss, aux), grads = jax.value_and_grad(full, has_aux=True)(params)
    return loss, aux, grads


def nce(q, p, n, *, symmetric=True):
    negs = None if n is None else n.reshape(B, K, D)
    return info_nce(q, p, temperature=TAU, negatives=negs, symmetric=symmetric)


def assert_same(got, want):
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1]["accuracy"], want[1]["accuracy"])
    for k in want[2]:
        np.testing.assert_allclose(got[2][k], want[2][k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("num_chunks", [1, 2, 4])
@pytest.mark.parametrize("with_negatives", [False, True])
def test_chunked_equals_unchunked(num_chunks, with_negatives):
    params = init_params()
    q_in, p_in, n_in = make_inputs()
    n_in = n_in if with_negatives else None
    want = jax.jit(reference, static_argnums=4)(params, q_in, p_in, n_in, nce)
    step = jax.jit(lambda prm, q, p, n: grad_cache_step(embed_fn, prm, q, p, n, nce, num_chunks))
    assert_same(step(params, q_in, p_in, n_in), want)


def test_split_is_strided_and_invertible():
    x = jnp.arange(12)
    np.testing.assert_array_equal(_split(x, 3), [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]])


def test_sharded_loss_inside_chunks():
    """Sharded inputs, shard_map loss on the whole batch, chunked re-embedding: same grads as one device."""
    mesh = jax.make_mesh((2, 2, 2), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
    params = init_params(2)
    q_in, p_in, n_in = make_inputs(3)
    want = reference(params, q_in, p_in, n_in, nce)

    def sharded_nce(q, p, n):
        return sharded_info_nce(mesh, q, p, n.reshape(B, K, D), temperature=TAU, symmetric=True)

    put = lambda x: jax.device_put(x, NamedSharding(mesh, logical_spec(("batch",))))  # noqa: E731
    step = jax.jit(lambda prm, q, p, n: grad_cache_step(embed_fn, prm, q, p, n, sharded_nce, 4))
    q_in, p_in, n_in = jax.tree.map(put, (q_in, p_in, n_in))
    assert_same(step(params, q_in, p_in, n_in), want)
    # each chunk keeps rows from every device: the strided split of a batch-sharded array stays batch-sharded
    chunks = jax.jit(lambda x: _split(x, 4))(q_in[0])
    assert chunks.sharding.is_equivalent_to(NamedSharding(mesh, logical_spec((None, "batch", None))), 3)


def test_not_divisible_is_a_clear_error():
    params = init_params()
    q_in, p_in, _ = make_inputs()
    with pytest.raises(ValueError, match="passage batch 16 is not divisible by num_chunks=3"):
        grad_cache_step(embed_fn, params, jax.tree.map(lambda a: a[:15], q_in), p_in, None, nce, 3)  # queries pass
    with pytest.raises(ValueError, match="different leading"):
        grad_cache_step(embed_fn, params, (q_in[0], q_in[1][:8]), p_in, None, nce, 2)
