"""Per-token absmax activation quantization to b bits (symmetric).

Qb = 2^(b-1) - 1; s = Qb / max(|x|) over the last (hidden) axis, clamped away
from zero; xq = clip(round(x * s), -Qb - 1, Qb) / s, straight-through backward.
"""
import jax
import jax.numpy as jnp

EPS = 1e-5


def qmax(bits: int) -> int:
    if bits not in (2, 3, 4, 5, 6, 7, 8):
        raise ValueError(f"activation bits must be in 2..8, got {bits}")
    return 2 ** (bits - 1) - 1


def absmax_int(x: jax.Array, bits: int = 8, eps: float = EPS):
    """Integer codes (float32 holding integers) and the per-token float32 scale s."""
    qb = qmax(bits)
    xf = x.astype(jnp.float32)
    amax = jnp.max(jnp.abs(xf), axis=-1, keepdims=True)
    s = qb / jnp.maximum(amax, eps)
    q = jnp.clip(jnp.round(xf * s), -qb - 1, qb)
    return q, s


def absmax_quantize(x: jax.Array, bits: int = 8, eps: float = EPS) -> jax.Array:
    """Fake-quantized activations in the dtype of ``x`` (no gradient rule)."""
    q, s = absmax_int(x, bits, eps)
    return (q / s).astype(x.dtype)


def absmax_ste(x: jax.Array, bits: int = 8, eps: float = EPS) -> jax.Array:
    """Forward: absmax_quantize(x); backward: identity (straight-through)."""
    return x + jax.lax.stop_gradient(absmax_quantize(x, bits, eps) - x)
