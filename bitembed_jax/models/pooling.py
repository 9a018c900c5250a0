"""Pooling of encoder states into one L2-normalised vector per sequence."""
import jax.numpy as jnp


def last_token_pool(hidden, mask):
    """State of the last real token; works for left and right padding."""
    t = mask.shape[1]
    idx = t - 1 - jnp.argmax(jnp.flip(mask.astype(jnp.int32), axis=1), axis=1)
    return jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]


def mean_pool(hidden, mask):
    m = mask.astype(jnp.float32)[..., None]
    return jnp.sum(hidden.astype(jnp.float32) * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


def l2_normalize(x, eps: float = 1e-12):
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def pool(hidden, mask, kind: str = "last", normalize: bool = True):
    if kind == "last":
        v = last_token_pool(hidden, mask).astype(jnp.float32)
    elif kind == "mean":
        v = mean_pool(hidden, mask)
    else:
        raise ValueError(f"pooling must be 'last' or 'mean', got {kind!r}")
    return l2_normalize(v) if normalize else v
