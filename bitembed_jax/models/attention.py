"""Rotary embeddings, encoder attention masks and grouped-query attention (pure functions)."""
import jax
import jax.numpy as jnp


def rope_inv_freq(head_dim: int, theta: float, factor: float = 1.0):
    """The (head_dim / 2,) float32 frequencies of the rotary angles (the ONNX export reuses them)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    return inv_freq / factor


def rope_cos_sin(positions, head_dim: int, theta: float, factor: float = 1.0):
    """cos/sin of shape positions.shape + (head_dim,), HF's rotate-half layout."""
    freqs = positions.astype(jnp.float32)[..., None] * rope_inv_freq(head_dim, theta, factor)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin):
    """x: (B, T, H, D); cos/sin: (B, T, D)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return (x.astype(jnp.float32) * c + rotated.astype(jnp.float32) * s).astype(x.dtype)


def attention_mask(valid, *, causal: bool, window=None):
    """Boolean (B, 1, T, T) mask: key is real, causal or not, within the sliding window.

    Causal windows allow q - window < k <= q; bidirectional ones |q - k| < window, as HF does.
    """
    t = valid.shape[1]
    q = jnp.arange(t)[:, None]
    k = jnp.arange(t)[None, :]
    allowed = jnp.ones((t, t), bool)
    if causal:
        allowed = k <= q
        if window is not None:
            allowed &= k > q - window
    elif window is not None:
        allowed = jnp.abs(q - k) < window
    return allowed[None, None] & valid[:, None, None, :].astype(bool)


def gqa_attention(q, k, v, mask, scale: float):
    """q: (B, T, H, D); k, v: (B, T, Hkv, D); mask (B, 1, T, T). Returns (B, T, H, D)."""
    rep = q.shape[2] // k.shape[2]
    k = jnp.repeat(k, rep, axis=2)
    v = jnp.repeat(v, rep, axis=2)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)
