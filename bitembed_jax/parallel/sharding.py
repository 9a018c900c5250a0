"""The one logical-axis rules table (MaxText style).

Parameters and activations carry logical axis names; this table maps them to
mesh axes. Nothing else in the project writes a PartitionSpec by hand.
"""
import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None = replicated)
RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("length", None),
    # activations keep their feature dim whole: FSDP gathers weights, never activations
    ("activation_embed", None),
    # the token-embedding lookup's output follows the table's FSDP-sharded feature dim, batch over data only,
    # so its gradient scatter-adds into each device's slice of the table (not into a full-size table per device)
    ("lookup_batch", "data"),
    ("candidates", None),
)


def logical_spec(names) -> PartitionSpec:
    """PartitionSpec for a tuple of logical axis names (None = replicated)."""
    table = dict(RULES)
    unknown = [n for n in names if n is not None and n not in table]
    if unknown:
        raise KeyError(f"logical axis names {unknown} are not in the rules table {sorted(table)}")
    return PartitionSpec(*(table[n] if n is not None else None for n in names))


def logical_sharding(mesh, names) -> NamedSharding:
    return NamedSharding(mesh, logical_spec(names))


def constrain(x, names):
    """Pin an activation's layout by logical names when traced under a mesh (the train step sets one).

    Without it XLA's sharding propagation may follow a weight's FSDP sharding instead of the batch's and
    replicate activations over the fsdp axis. A no-op outside a mesh (single-device inference).
    """
    if jax.sharding.get_abstract_mesh().empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_spec(names))


def state_specs(state) -> dict:
    """Pure-dict PartitionSpec tree for an NNX state whose Variables carry ``out_sharding`` logical names."""
    with nnx.logical_axis_rules(RULES):
        return nnx.to_pure_dict(nnx.get_partition_spec(state))


def state_shardings(state, mesh) -> dict:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), state_specs(state),
                        is_leaf=lambda x: isinstance(x, PartitionSpec))
