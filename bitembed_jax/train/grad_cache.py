"""GradCache: a contrastive step whose global batch exceeds what fits in memory.

1. embed every chunk without keeping activations; 2. gradient of the loss with
respect to the embeddings (the loss sees the whole batch); 3. re-run each chunk
and back-propagate its embedding gradient into the parameters (lax.scan, one
chunk's activations alive at a time). Gradients equal the unchunked ones.
"""
import jax
import jax.numpy as jnp


def _split(x, c: int):
    """(B, ...) -> (c, B/c, ...), row i into chunk i % c.

    Strided, not contiguous: with the batch sharded in contiguous blocks over
    devices, every chunk then takes the same number of rows from every device.
    """
    b = x.shape[0]
    return jnp.swapaxes(x.reshape(b // c, c, *x.shape[1:]), 0, 1)


def _merge(x):
    c, m = x.shape[:2]
    return jnp.swapaxes(x, 0, 1).reshape(c * m, *x.shape[2:])


def _check(inputs, c, name):
    b = jax.tree.leaves(inputs)[0].shape[0]
    if b % c:
        raise ValueError(f"GradCache: {name} batch {b} is not divisible by num_chunks={c}")


def _embed_all(embed_fn, params, inputs, c):
    frozen = jax.lax.stop_gradient(params)
    out = jax.lax.map(lambda x: embed_fn(frozen, x), jax.tree.map(lambda a: _split(a, c), inputs))
    return jax.tree.map(_merge, out)


def _backprop(embed_fn, params, inputs, cotangent, c, acc):
    def body(acc, xs):
        x, g = xs
        _, vjp = jax.vjp(lambda prm: embed_fn(prm, x), params)
        return jax.tree.map(jnp.add, acc, vjp(g)[0]), None

    xs = (jax.tree.map(lambda a: _split(a, c), inputs), jax.tree.map(lambda a: _split(a, c), cotangent))
    acc, _ = jax.lax.scan(body, acc, xs)
    return acc


def grad_cache_step(embed_fn, params, query_inputs, passage_inputs, negative_inputs, loss_fn, num_chunks: int):
    """(loss, aux, grads wrt params). ``embed_fn(params, inputs) -> embeddings``; ``loss_fn(q, p, n) -> (loss, aux)``."""
    c = int(num_chunks)
    sets = [("query", query_inputs), ("passage", passage_inputs)]
    if negative_inputs is not None:
        sets.append(("negative", negative_inputs))
    for name, inputs in sets:
        _check(inputs, c, name)
    embs = [_embed_all(embed_fn, params, inputs, c) for _, inputs in sets]
    if negative_inputs is None:
        (loss, aux), cts = jax.value_and_grad(lambda q, p: loss_fn(q, p, None), argnums=(0, 1), has_aux=True)(*embs)
    else:
        (loss, aux), cts = jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True)(*embs)
    grads = jax.tree.map(jnp.zeros_like, params)
    for (_, inputs), ct in zip(sets, cts):
        grads = _backprop(embed_fn, params, inputs, ct, c, grads)
    return loss, aux, grads
