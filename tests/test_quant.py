"""Ternary (absmean) and activation (absmax) quantizers against a plain numpy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from bitembed_jax.quant import absmax_quantize, absmax_ste, ternary_int, ternary_quantize, ternary_ste


def np_ternary(w, per_row=False):
    w = w.astype(np.float64)
    g = (np.abs(w).mean(axis=0, keepdims=True) if per_row else np.abs(w).mean()) + 1e-5
    q = np.clip(np.round(w / g), -1, 1)
    return q, g


def np_absmax(x, bits):
    qb = 2 ** (bits - 1) - 1
    x = x.astype(np.float64)
    s = qb / np.maximum(np.abs(x).max(axis=-1, keepdims=True), 1e-5)
    return np.clip(np.round(x * s), -qb - 1, qb) / s


@pytest.mark.parametrize("per_row", [False, True])
def test_ternary_matches_numpy(per_row):
    w = np.random.default_rng(0).normal(size=(48, 24)).astype(np.float32)
    q, g = np_ternary(w, per_row)
    qi, gi = ternary_int(jnp.asarray(w), per_row)
    assert qi.dtype == jnp.int8 and set(np.unique(np.asarray(qi))) <= {-1, 0, 1}
    np.testing.assert_array_equal(np.asarray(qi), q)
    np.testing.assert_allclose(np.asarray(gi), g, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.jit(ternary_quantize, static_argnums=1)(w, per_row)), q * g, rtol=1e-6)


def test_ternary_all_zero():
    w = np.zeros((8, 4), np.float32)
    w_row = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
    w_row[:, 2] = 0.0  # an all-zero output row
    assert np.all(np.asarray(ternary_quantize(jnp.asarray(w))) == 0)
    q, _ = ternary_int(jnp.asarray(w_row), per_row=True)
    assert np.all(np.asarray(q)[:, 2] == 0) and np.isfinite(np.asarray(ternary_quantize(w_row, True))).all()


@pytest.mark.parametrize("bits", [8, 4])
def test_absmax_matches_numpy(bits):
    x = np.random.default_rng(2).normal(size=(3, 5, 32)).astype(np.float32) * 3
    x[0, 1] = 0.0  # an all-zero token
    got = np.asarray(jax.jit(absmax_quantize, static_argnums=1)(x, bits))
    np.testing.assert_allclose(got, np_absmax(x, bits), rtol=1e-6, atol=1e-7)
    assert np.all(got[0, 1] == 0)
    qb = 2 ** (bits - 1) - 1
    levels = np.round(got * (qb / np.abs(x).max(-1, keepdims=True).clip(1e-5)))
    assert levels.min() >= -qb - 1 and levels.max() <= qb


def test_bf16():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 64)), jnp.bfloat16)
    w = jnp.asarray(np.random.default_rng(4).normal(size=(64, 16)), jnp.bfloat16)
    xq, wq = absmax_ste(x), ternary_ste(w)
    assert xq.dtype == jnp.bfloat16 and wq.dtype == jnp.bfloat16
    q, g = np_ternary(np.asarray(w, np.float32))
    np.testing.assert_allclose(np.asarray(wq, np.float32), q * g, rtol=1e-2)
    np.testing.assert_allclose(np.asarray(xq, np.float32), np_absmax(np.asarray(x, np.float32), 8),
                               rtol=1e-2, atol=1e-2)


def test_ste_passes_gradients_through():
    rng = np.random.default_rng(5)
    w = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(4, 16)), jnp.float32)
    c = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
    np.testing.assert_allclose(np.asarray(jax.grad(lambda w: jnp.sum(ternary_ste(w) * c))(w)), np.asarray(c))
    cx = jnp.asarray(rng.normal(size=(4, 16)), jnp.float32)
    np.testing.assert_allclose(np.asarray(jax.grad(lambda x: jnp.sum(absmax_ste(x, 4) * cx))(x)), np.asarray(cx))
    # without the STE the rounding would leave only the gradient through the scale
    plain = np.asarray(jax.grad(lambda w: jnp.sum(ternary_quantize(w) * c))(w))
    assert np.abs(plain - np.asarray(c)).max() > 0.1


def test_sharded_equals_single_device():
    mesh = jax.make_mesh((4, 2), ("fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    w = np.random.default_rng(6).normal(size=(64, 32)).astype(np.float32)
    x = np.random.default_rng(7).normal(size=(8, 64)).astype(np.float32)
    ws = jax.device_put(w, NamedSharding(mesh, P("fsdp", "tensor")))
    xs = jax.device_put(x, NamedSharding(mesh, P("fsdp", None)))
    f = jax.jit(lambda x, w: absmax_ste(x) @ ternary_ste(w))
    np.testing.assert_allclose(np.asarray(f(xs, ws)), np.asarray(f(x, w)), rtol=1e-5, atol=1e-5)
