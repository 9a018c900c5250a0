"""Dotted-path access to NNX state (``layers.3.mlp.up_proj.kernel``)."""
from flax import nnx


def path_str(path) -> str:
    return ".".join(str(p) for p in path)


def flat_params(state) -> dict:
    """{dotted path: array} for every leaf of an NNX state."""
    return {path_str(p): v.get_value() for p, v in nnx.to_flat_state(state)}


def fill_state(abstract_state, values: dict):
    """A concrete state from an abstract one and {dotted path: array}; every leaf must be given."""
    flat = nnx.to_flat_state(abstract_state)
    missing = [path_str(p) for p, _ in flat if path_str(p) not in values]
    if missing:
        raise KeyError(f"no value for state leaves {missing}")
    leaves = [(p, v.replace(values[path_str(p)])) for p, v in flat]
    return nnx.from_flat_state(leaves)
