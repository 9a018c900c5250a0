"""The integer-code W1.58 matmul: forward against numpy in float64, gradients against the STE autodiff."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from bitembed_jax.quant import absmax_ste, ternary_ste
from bitembed_jax.quant.bitmatmul import bit_matmul


def np_codes(x, w, bits, per_row):
    """Integer codes and scales of the reference quantizers, in float64."""
    qb = 2 ** (bits - 1) - 1
    x, w = x.astype(np.float64), w.astype(np.float64)
    s = qb / np.maximum(np.abs(x).max(axis=-1, keepdims=True), 1e-5)
    g = (np.abs(w).mean(axis=0, keepdims=True) if per_row else np.abs(w).mean()) + 1e-5
    return np.clip(np.round(x * s), -qb - 1, qb), s, np.clip(np.round(w / g), -1, 1), g


def data(seed=0, shape=(3, 7, 96), out=40):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * 2).astype(np.float32)
    x[0, 2] = 0.0  # an all-zero token
    return x, (rng.normal(size=(shape[-1], out)) * 0.05).astype(np.float32)


@pytest.mark.parametrize("bits,per_row", [(8, False), (4, False), (8, True)])
def test_forward_is_the_exact_code_product(bits, per_row):
    x, w = data()
    qx, s, qw, g = np_codes(x, w, bits, per_row)
    want = (qx @ qw) * g / s  # integer products: exact in float64
    got = np.asarray(jax.jit(lambda x, w: bit_matmul(x, w, bits=bits, per_row=per_row))(x, w))
    np.testing.assert_allclose(got, want, rtol=5e-7, atol=1e-7)  # float32 scales: a few ulps
    # the fake-quantized float matmul (the straight-through form) computes the same up to float rounding
    ste = np.asarray(absmax_ste(jnp.asarray(x), bits) @ ternary_ste(jnp.asarray(w), per_row))
    np.testing.assert_allclose(got, ste, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("per_row", [False, True])
def test_gradients_equal_the_straight_through_estimator(per_row):
    x, w = data(1)
    c = np.random.default_rng(2).normal(size=x.shape[:-1] + (w.shape[1],)).astype(np.float32)

    def ours(x, w):
        return jnp.sum(bit_matmul(x, w, per_row=per_row) * c)

    def ste(x, w):
        return jnp.sum((absmax_ste(x) @ ternary_ste(w, per_row)) * c)

    gx, gw = jax.jit(jax.grad(ours, argnums=(0, 1)))(x, w)
    rx, rw = jax.grad(ste, argnums=(0, 1))(x, w)
    np.testing.assert_allclose(np.asarray(gx), np.asarray(rx), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gw), np.asarray(rw), rtol=1e-5, atol=1e-5)
    # and against numpy: dx = dy @ (Qw g)^T, dw = (Qx / s)^T @ dy
    qx, s, qw, g = np_codes(x, w, 8, per_row)
    np.testing.assert_allclose(np.asarray(gx), c @ (qw * g).T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gw), np.einsum("bti,bto->io", qx / s, c), rtol=1e-5, atol=1e-4)


def test_frozen_scale_keeps_the_stored_scale():
    x, w = data(3)
    gamma = np.float32(0.031)
    frozen = np.clip(np.round(w / gamma), -1, 1) * gamma  # an export's kernel: q * gamma
    qx, s, _, _ = np_codes(x, w, 8, False)
    got = np.asarray(bit_matmul(x, jnp.asarray(frozen), frozen_scale=jnp.asarray(gamma)))
    np.testing.assert_allclose(got, (qx @ np.round(frozen / gamma)) * np.float64(gamma) / s, rtol=5e-7, atol=1e-7)
    # no gradient reaches the stored scale
    g = jax.grad(lambda sc: jnp.sum(bit_matmul(x, jnp.asarray(frozen), frozen_scale=sc)))(jnp.asarray(gamma))
    assert float(g) == 0.0


def test_dtypes():
    x, w = data(4)
    y = bit_matmul(jnp.asarray(x, jnp.bfloat16), jnp.asarray(w), dtype=jnp.bfloat16)
    assert y.dtype == jnp.bfloat16
    gx, gw = jax.grad(lambda x, w: jnp.sum(bit_matmul(x, w, dtype=jnp.bfloat16).astype(jnp.float32)),
                      argnums=(0, 1))(jnp.asarray(x, jnp.bfloat16), jnp.asarray(w))
    assert gx.dtype == jnp.bfloat16 and gw.dtype == jnp.float32  # cotangents in the primals' dtypes
    # bf16 compute keeps the exact code product: only the final cast rounds
    qx, s, qw, g = np_codes(np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32), w, 8, False)
    np.testing.assert_allclose(np.asarray(y, np.float32), (qx @ qw) * g / s, rtol=8e-3, atol=1e-3)


def test_sharded_equals_single_device():
    mesh = jax.make_mesh((4, 2), ("fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    x, w = data(5, shape=(8, 4, 64), out=32)
    xs = jax.device_put(x, NamedSharding(mesh, P("fsdp", None, None)))
    ws = jax.device_put(w, NamedSharding(mesh, P("fsdp", "tensor")))
    f = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(bit_matmul(x, w) ** 2), argnums=(0, 1)))
    (v1, (gx1, gw1)), (v2, (gx2, gw2)) = f(xs, ws), f(x, w)
    np.testing.assert_allclose(float(v1), float(v2), rtol=1e-5)  # gamma: a sharded mean
    np.testing.assert_allclose(np.asarray(gx1), np.asarray(gx2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gw1), np.asarray(gw2), rtol=1e-5, atol=1e-5)


def test_too_many_features_for_exact_sums():
    with pytest.raises(ValueError, match="exact up to"):
        bit_matmul(jnp.ones((1, 2 ** 17 + 1)), jnp.ones((2 ** 17 + 1, 1)))


@pytest.mark.parametrize("bits", [8, 4])
def test_int8_operands_give_the_bf16_results_exactly(bits):
    """code_matmul="int8" (TPU/GPU) multiplies the same codes as int8 x int8 -> int32: the same numbers."""
    x = jax.random.normal(jax.random.key(3), (4, 16, 96), jnp.float32) * 3
    w = jax.random.normal(jax.random.key(4), (96, 40), jnp.float32) * 0.05

    def f(operands):
        return lambda x, w: bit_matmul(x, w, bits=bits, code_matmul=operands)

    np.testing.assert_array_equal(f("int8")(x, w), f("bfloat16")(x, w))
    g8 = jax.grad(lambda x, w: f("int8")(x, w).sum(), argnums=(0, 1))(x, w)
    g16 = jax.grad(lambda x, w: f("bfloat16")(x, w).sum(), argnums=(0, 1))(x, w)
    for a, b in zip(g8, g16):
        np.testing.assert_array_equal(a, b)
    hlo = jax.jit(f("int8")).lower(x, w).as_text()
    assert "xi8>" in hlo and "-> tensor<4x16x40xi32>" in hlo  # the dot itself takes int8 and accumulates int32
