"""InfoNCE with in-batch (and hard) negatives gathered across every device of the mesh.

Inside ``jax.shard_map`` each device all-gathers the passages (and hard
negatives) of every device and scores its local queries against that global
pool. The gather's transpose (a reduce-scatter) returns each device's share of
the gradient. Score memory is O(local_batch x global_batch) per device, which at
a fixed device count is still quadratic in the batch; ``query_block`` scores the
local queries in rematerialised blocks, O(query_block x global_batch): linear.
"""
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from bitembed_jax.parallel.sharding import logical_spec


def batch_axis_names() -> tuple:
    """Mesh axes the rules table splits the batch over, as a tuple (for collectives)."""
    axes = logical_spec(("batch",))[0]
    return tuple(axes) if isinstance(axes, tuple) else (() if axes is None else (axes,))


def shard_over_batch(mesh, fn, batch_args, replicated_args=()):
    """``fn(*batch_args, *replicated_args, axis_names=...)`` per device, batch args split on dim 0.

    ``None`` arguments pass through as ``None``; every output leaf must be
    identical on all devices (a global mean) and comes back replicated.
    """
    axes = batch_axis_names()
    args = tuple(batch_args) + tuple(replicated_args)
    present = [i for i, a in enumerate(args) if a is not None]
    specs = tuple(logical_spec(("batch",)) if i < len(batch_args) else PartitionSpec() for i in present)

    def local(*xs):
        full = [None] * len(args)
        for i, x in zip(present, xs):
            full[i] = x
        return fn(*full, axis_names=axes)

    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=PartitionSpec())(
        *(args[i] for i in present))


def _normalize(x):
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _gather(x, axis_names):
    return jax.lax.all_gather(x, axis_names, axis=0, tiled=True) if axis_names else x


def candidate_pool(p, negatives=None, axis_names=None):
    """Unit-norm global pool [all positives; all hard negatives] (pool, d), in all_gather's device order."""
    pool = [_gather(_normalize(p), axis_names)]
    if negatives is not None:
        pool.append(_gather(_normalize(negatives).reshape(-1, p.shape[-1]), axis_names))
    return jnp.concatenate(pool, axis=0)


def _labels(b, axis_names):
    """Column of each local query's positive: the device's linear index over axis_names times b, plus row."""
    offset = jax.lax.axis_index(axis_names) * b if axis_names else 0
    return offset + jnp.arange(b)


def candidate_scores(q, p, negatives=None, temperature=1.0, axis_names=None):
    """Local queries vs the global pool -> (scores (b, pool), labels (b,)).

    q, p: (b, d); negatives: (b, k, d) or None. Row i's positive sits at column
    ``labels[i]``; hard negatives follow all positives.
    """
    pool = candidate_pool(p, negatives, axis_names)
    return _normalize(q) @ pool.T / temperature, _labels(q.shape[0], axis_names)


def _nce_sums(q, pool, labels, temperature):
    """(sum of -log p(positive), number of top-1 hits) for unit-norm queries q against pool."""
    scores = q @ pool.T / temperature
    logp = jax.nn.log_softmax(scores, axis=-1)
    loss = -jnp.sum(jnp.take_along_axis(logp, labels[:, None], axis=-1))
    return loss, jnp.sum((jnp.argmax(scores, axis=-1) == labels).astype(jnp.float32))


def _nce(q, pool, labels, temperature, block):
    """Mean InfoNCE and accuracy of the local queries; with ``block``, scored block by block.

    Blocks are rematerialised (jax.checkpoint inside lax.map), so neither pass
    keeps more than one (block, pool) score matrix: memory O(block x global pool)
    instead of O(local batch x global pool), i.e. linear in the global batch.
    """
    b, d = q.shape
    q = _normalize(q)
    if not block or block >= b:
        loss, hits = _nce_sums(q, pool, labels, temperature)
    else:
        if b % block:
            raise ValueError(f"InfoNCE: local batch {b} is not divisible by query_block={block}")
        rows = (q.reshape(b // block, block, d), labels.reshape(b // block, block))
        per_block = jax.checkpoint(lambda x: _nce_sums(x[0], pool, x[1], temperature))
        loss, hits = jax.tree.map(jnp.sum, jax.lax.map(per_block, rows))
    return loss / b, hits / b


def info_nce(q, p, *, temperature, negatives=None, symmetric=False, axis_names=None, query_block=None):
    """(mean InfoNCE over the global batch, {"accuracy": in-batch top-1}), identical on every device.

    ``temperature`` may be a traced scalar (learnable). ``axis_names``: the mesh
    axes the batch is split over when called inside ``jax.shard_map``.
    ``query_block``: score the local queries this many at a time (see _nce).
    """
    labels = _labels(q.shape[0], axis_names)
    loss, acc = _nce(q, candidate_pool(p, negatives, axis_names), labels, temperature, query_block)
    if symmetric:  # passage -> query: local passages against all queries of the global batch
        loss_pq, _ = _nce(p, candidate_pool(q, None, axis_names), labels, temperature, query_block)
        loss = 0.5 * (loss + loss_pq)
    if axis_names:  # equal local batches: the mean of local means is the global mean
        loss, acc = jax.lax.pmean((loss, acc), axis_names)
    return loss, {"accuracy": acc}


def sharded_info_nce(mesh, q, p, negatives=None, *, temperature, symmetric=False, query_block=None):
    """info_nce with the batch split over the rules table's batch axes; works under jit and grad."""
    def local(q, p, n, t, *, axis_names):
        return info_nce(q, p, temperature=t, negatives=n, symmetric=symmetric, axis_names=axis_names,
                        query_block=query_block)

    return shard_over_batch(mesh, local, (q, p, negatives), (jnp.asarray(temperature, jnp.float32),))
