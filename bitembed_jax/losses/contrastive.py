"""InfoNCE with in-batch (and hard) negatives gathered across every device of the mesh.

Inside ``jax.shard_map`` each device all-gathers the passages (and hard
negatives) of every device and scores its local queries against that global
pool: memory O(local_batch x global_batch). The gather's transpose returns each
device's share of the gradient.
"""
import jax
import jax.numpy as jnp

from bitembed_jax.parallel.sharding import logical_spec

BATCH_AXES = logical_spec(("batch",))[0]


def _normalize(x):
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _gather(x, axis_names):
    return x if not axis_names else jax.lax.all_gather(x, axis_names, axis=0, tiled=True)


def _offset(b, axis_names):
    return 0 if not axis_names else jax.lax.axis_index(axis_names) * b


def candidate_scores(q, p, negatives, temperature, axis_names=None):
    """Local queries vs the global pool [all positives; all hard negatives] -> (scores (b, pool), labels (b,))."""
    q, p = _normalize(q), _normalize(p)
    pool = [_gather(p, axis_names)]
    if negatives is not None:
        pool.append(_gather(_normalize(negatives).reshape(-1, q.shape[-1]), axis_names))
    scores = q @ jnp.concatenate(pool, axis=0).T / temperature
    labels = _offset(q.shape[0], axis_names) + jnp.arange(q.shape[0])
    return scores, labels


def _nce(scores, labels):
    logp = jax.nn.log_softmax(scores, axis=-1)
    loss = -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))
    acc = jnp.mean((jnp.argmax(scores, axis=-1) == labels).astype(jnp.float32))
    return loss, acc


def info_nce(q, p, *, temperature, negatives=None, symmetric=False, axis_names=None):
    """Mean InfoNCE over the global batch (identical on every device) and in-batch top-1 accuracy."""
    scores, labels = candidate_scores(q, p, negatives, temperature, axis_names)
    loss, acc = _nce(scores, labels)
    if symmetric:  # passage -> query: local passages against all queries of the global batch
        s_pq, _ = candidate_scores(p, q, None, temperature, axis_names)
        loss = 0.5 * (loss + _nce(s_pq, labels)[0])
    if axis_names:
        loss, acc = jax.lax.pmean(loss, axis_names), jax.lax.pmean(acc, axis_names)
    return loss, {"accuracy": acc}


def sharded_info_nce(mesh, q, p, negatives=None, *, temperature, symmetric=False):
    """info_nce with the batch split over the rules table's batch axes; jit- and grad-compatible."""
    batch = jax.sharding.PartitionSpec(BATCH_AXES)
    axes = tuple(a for a in (BATCH_AXES if isinstance(BATCH_AXES, tuple) else (BATCH_AXES,)) if a)

    scalar = jax.sharding.PartitionSpec()
    args = (q, p, jnp.asarray(temperature, jnp.float32)) + (() if negatives is None else (negatives,))

    def local(q, p, t, *n):
        return info_nce(q, p, temperature=t, negatives=n[0] if n else None, symmetric=symmetric, axis_names=axes)

    fn = jax.shard_map(local, mesh=mesh, in_specs=(batch, batch, scalar) + (batch,) * (len(args) - 3),
                       out_specs=(scalar, {"accuracy": scalar}))
    return fn(*args)
