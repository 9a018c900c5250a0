"""GradCache: a contrastive step whose global batch exceeds what fits in memory.

1. embed every chunk without keeping activations (lax.map, no autodiff);
2. gradient of the loss with respect to the embeddings (the loss sees the whole batch);
3. re-run each chunk under jax.vjp and back-propagate its embedding gradient
   into the parameters (lax.scan: one chunk's activations alive at a time).
Gradients equal the unchunked ``jax.value_and_grad`` ones up to float summation order.
"""
import jax
import jax.numpy as jnp


def _split(x, c: int):
    """(B, ...) -> (c, B/c, ...) with row i in chunk i % c.

    Strided, not contiguous: the batch is sharded over devices in contiguous
    blocks, so a contiguous split would put whole chunks on a few devices (and
    force XLA to reshard). Taking every c-th row keeps each chunk's rows spread
    evenly over all devices: (B, ...) -> (B/c, c, ...) leaves the sharded dim
    leading, and the scan walks the unsharded one.
    """
    return jnp.swapaxes(x.reshape(x.shape[0] // c, c, *x.shape[1:]), 0, 1)


def _merge(x):
    """Inverse of _split: (c, B/c, ...) -> (B, ...)."""
    c, m = x.shape[:2]
    return jnp.swapaxes(x, 0, 1).reshape(c * m, *x.shape[2:])


def _check(inputs, c: int, name: str):
    sizes = {a.shape[0] for a in jax.tree.leaves(inputs)}
    if len(sizes) != 1:
        raise ValueError(f"GradCache: {name} inputs have different leading (batch) sizes {sorted(sizes)}")
    (b,) = sizes
    if b % c:
        raise ValueError(f"GradCache: {name} batch {b} is not divisible by num_chunks={c}")


def _embed_all(embed_fn, params, inputs, c: int):
    frozen = jax.lax.stop_gradient(params)
    chunks = jax.tree.map(lambda a: _split(a, c), inputs)
    return jax.tree.map(_merge, jax.lax.map(lambda x: embed_fn(frozen, x), chunks))


def _constrain(tree, shardings):
    return tree if shardings is None else jax.lax.with_sharding_constraint(tree, shardings)


def _backprop(embed_fn, params, inputs, cotangent, c: int, acc, shardings=None):
    def body(acc, xs):
        x, g = xs
        _, vjp = jax.vjp(lambda prm: embed_fn(prm, x), params)
        # keep the carried gradient sharded like the parameters: XLA would otherwise replicate the loop carry
        return _constrain(jax.tree.map(lambda a, d: a + d.astype(a.dtype), acc, vjp(g)[0]), shardings), None

    xs = jax.tree.map(lambda a: _split(a, c), (inputs, cotangent))
    return jax.lax.scan(body, acc, xs)[0]


def grad_cache_step(embed_fn, params, query_inputs, passage_inputs, negative_inputs, loss_fn, num_chunks: int,
                    param_shardings=None):
    """(loss, aux, grads wrt params) of ``loss_fn(embed(q), embed(p), embed(n) or None)``, chunked.

    embed_fn(params, inputs) -> embeddings: inputs and embeddings are pytrees of
    arrays with a leading batch dim. loss_fn(q_emb, p_emb, n_emb_or_None) ->
    (loss, aux) sees the whole batch at once and may itself use shard_map.
    Every input set's batch must be divisible by ``num_chunks``. ``param_shardings`` (a tree like
    ``params``) keeps the gradient accumulator sharded as the parameters are.
    """
    c = int(num_chunks)
    if c < 1:
        raise ValueError(f"GradCache: num_chunks must be >= 1, got {num_chunks}")
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

    # accumulate in float32 so bf16 parameters do not lose the small per-chunk terms
    grads = jax.tree.map(lambda w: jnp.zeros(w.shape, jnp.promote_types(w.dtype, jnp.float32)), params)
    grads = _constrain(grads, param_shardings)
    for (_, inputs), ct in zip(sets, cts):
        grads = _backprop(embed_fn, params, inputs, ct, c, grads, param_shardings)
    return loss, aux, jax.tree.map(lambda g, w: g.astype(w.dtype), grads, params)
