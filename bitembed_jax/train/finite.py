"""Whether a parameter tree is finite: the train step's check before a checkpoint and the restore's check of
one, the same reduction."""
import jax
import jax.numpy as jnp


def all_finite(tree) -> jax.Array:
    """A scalar bool: every element of every leaf is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))
