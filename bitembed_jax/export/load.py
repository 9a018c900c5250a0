"""Read a ``base3`` export back into our model: the same ternary weights and scales, bit for bit."""
import json
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open

from bitembed_jax.export.packing import unpack_base3
from bitembed_jax.io.model_dir import abstract_model, read_config
from bitembed_jax.io.state_paths import fill_state
from bitembed_jax.layers.bitlinear import BitLinear, FrozenScale


def load_export(path: str):
    """(model, cfg) from a base3 export folder."""
    cfg, meta = read_config(path)
    fmt = meta.get("export", {}).get("format")
    if fmt != "base3":
        raise ValueError(f"{path}: load_export reads base3 exports, this one is {fmt!r} "
                         "(bitnet-2bit exports load with transformers' AutoModel)")
    weights = os.path.join(path, "model.safetensors")
    with safe_open(weights, framework="np") as f:
        shapes = json.loads(f.metadata()["shapes"])
        raw = {k: f.get_tensor(k) for k in f.keys()}
    values, scales = {}, {}
    for k, v in raw.items():
        if k.endswith(".base3"):
            base = k[: -len(".base3")]
            q = unpack_base3(v, tuple(shapes[base])).astype(np.float32)
            scale = raw[base + ".scale"].reshape(()) if raw[base + ".scale"].size == 1 else raw[base + ".scale"]
            values[base] = jnp.asarray(q * scale)
            scales[base] = scale
        elif not k.endswith(".scale"):
            values[k] = jnp.asarray(v)
    graphdef, abs_state = nnx.split(abstract_model(cfg))
    model = nnx.merge(graphdef, fill_state(abs_state, values))
    for p, node in nnx.iter_graph(model):
        if isinstance(node, BitLinear):
            node.frozen_scale = FrozenScale(jnp.asarray(scales[".".join(map(str, p)) + ".kernel"]))
    return model, cfg
