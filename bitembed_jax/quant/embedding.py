"""Multi-precision output embeddings at training time: fake quantization with a straight-through gradient
(JAX), on the grids of ``quant.grid``. ``quant.storage.decode_storage(encode_storage(e))`` equals the forward
value of ``quantize_ste(e)`` up to float32 rounding.
"""
import math

import jax
import jax.numpy as jnp

from bitembed_jax.quant.grid import DIVISOR, EPS, check_precision, codes


def matryoshka(e: jax.Array, dim: int) -> jax.Array:
    """First ``dim`` dims of the last axis, re-L2-normalised (in float32, cast back)."""
    if not 1 <= dim <= e.shape[-1]:
        raise ValueError(f"dim must be in 1..{e.shape[-1]}, got {dim}")
    x = e[..., :dim].astype(jnp.float32)
    n = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return (x / jnp.maximum(n, EPS)).astype(e.dtype)


def quantize(e: jax.Array, precision: str, scale=None) -> jax.Array:
    """Fake-quantized vectors (dequantised values) in the dtype of ``e``; no gradient rule."""
    check_precision(precision)
    if precision == "fp32":
        return e
    x = e.astype(jnp.float32)
    if precision == "binary":
        if scale is not None:
            raise ValueError("binary takes no scale")
        q = jnp.where(x >= 0, 1.0, -1.0) / math.sqrt(e.shape[-1])
        return q.astype(e.dtype)
    if scale is None:
        amax = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
        s = jnp.maximum(amax, EPS) / DIVISOR[precision]
    else:
        s = jnp.asarray(scale, jnp.float32)
    return (codes(x / s, precision, jnp) * s).astype(e.dtype)


def quantize_ste(e: jax.Array, precision: str, scale=None) -> jax.Array:
    """Forward: ``quantize(e)`` exactly; backward: identity (straight-through).

    Written as q + (e - e) rather than e + (q - e) so the forward value is
    bit-exact in bfloat16; stop_gradient on q also blocks the gradient through
    the per-vector absmax scale.
    """
    q = jax.lax.stop_gradient(quantize(e, precision, scale))
    return q + (e - jax.lax.stop_gradient(e))
