"""Pooling of encoder states into one L2-normalised vector per sequence."""
import jax.numpy as jnp


def last_token_pool(hidden, mask):
    """State of the last real token; works for left and right padding.

    A one-hot contraction rather than a gather: exact (one term is non-zero), and it stays local to each
    device of a batch-sharded mesh, where a gather's transpose becomes a full-size scatter + all-reduce.
    """
    t = mask.shape[1]
    idx = t - 1 - jnp.argmax(jnp.flip(mask.astype(jnp.int32), axis=1), axis=1)
    onehot = (jnp.arange(t)[None, :] == idx[:, None]).astype(hidden.dtype)
    return jnp.einsum("bt,bth->bh", onehot, hidden)


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
