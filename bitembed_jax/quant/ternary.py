"""BitNet b1.58 absmean ternary weights.

gamma = mean(|W|) + eps (per tensor, or per output column with ``per_row``);
Wq = clip(round(W / gamma), -1, 1); the forward pass uses Wq * gamma and the
backward pass is the straight-through estimator (identity to the latent weight).

Kernels are stored (in_features, out_features), so an output "row" of the
PyTorch (out, in) weight is a column here: the per-row reduction is over axis 0.
"""
import jax
import jax.numpy as jnp

EPS = 1e-5


def ternary_scale(w: jax.Array, per_row: bool = False, eps: float = EPS) -> jax.Array:
    """Absmean scale in float32: shape () per tensor, (1, out) per output row."""
    a = jnp.abs(w.astype(jnp.float32))
    if per_row:
        return jnp.mean(a, axis=0, keepdims=True) + eps
    return jnp.mean(a) + eps


def ternary_int(w: jax.Array, per_row: bool = False, eps: float = EPS):
    """Integer ternary weights (int8 in {-1, 0, 1}) and their float32 scale."""
    gamma = ternary_scale(w, per_row, eps)
    q = jnp.clip(jnp.round(w.astype(jnp.float32) / gamma), -1, 1)
    return q.astype(jnp.int8), gamma


def ternary_quantize(w: jax.Array, per_row: bool = False, eps: float = EPS) -> jax.Array:
    """Fake-quantized weights Wq * gamma, in the dtype of ``w`` (no gradient rule)."""
    q, gamma = ternary_int(w, per_row, eps)
    return (q.astype(jnp.float32) * gamma).astype(w.dtype)


def ternary_ste(w: jax.Array, per_row: bool = False, eps: float = EPS) -> jax.Array:
    """Forward: exactly ternary_quantize(w); backward: identity (straight-through).

    Written as q + (w - w) rather than w + (q - w): the latter rounds twice and misses q * gamma by an ulp
    for weights far from gamma, so a packed export (which keeps only q and gamma) could not reproduce the
    checkpoint's forward bit for bit.
    """
    q = jax.lax.stop_gradient(ternary_quantize(w, per_row, eps))
    return q + (w - jax.lax.stop_gradient(w))
