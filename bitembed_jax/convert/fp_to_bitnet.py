"""Full-precision encoder -> BitNet encoder, from our own model folders (no HF round trip).

Lets a student start from a full-precision *embedder* (e.g. the contrastively trained teacher) instead of
the raw LLM: the latent kernels are copied as they are (the ternary quantizer runs on them in the forward
pass), the norm-refinement RMSNorms that the fp model lacks start at weight 1, as at HF import.
"""
import jax.numpy as jnp
from flax import nnx

from bitembed_jax.io.model_dir import abstract_model
from bitembed_jax.io.state_paths import fill_state, flat_params
from bitembed_jax.layers.norms import inserted_norm_weights
from bitembed_jax.models.config import ModelConfig


def converts(cfg: ModelConfig, init) -> bool:
    """True when a folder holding ``cfg`` is to become a bitnet student under ``config.init``."""
    return cfg.mode == "fp" and init.mode == "bitnet"


def bitnet_config(cfg: ModelConfig, init) -> ModelConfig:
    """The student's config after ``fp_to_bitnet``: norm refinement and activation bits from ``config.init``."""
    return cfg.replace(mode="bitnet", norm=init.norm, act_bits=init.act_bits)


def fp_to_bitnet(model, cfg: ModelConfig, init):
    """(bitnet model, its config) holding ``model``'s weights; ``model`` must be an fp encoder."""
    if cfg.mode != "fp":
        raise ValueError(f"fp_to_bitnet: the source model is {cfg.mode!r}, not 'fp'")
    bcfg = bitnet_config(cfg, init)
    abstract = abstract_model(bcfg)
    inserted = inserted_norm_weights(abstract)
    graphdef, abs_state = nnx.split(abstract)
    src = flat_params(nnx.state(model, nnx.Param))
    values = {}
    for path, leaf in flat_params(abs_state).items():
        if path in src:
            if src[path].shape != leaf.shape:
                raise ValueError(f"fp_to_bitnet: {path} is {src[path].shape} in the fp model, {leaf.shape} in bitnet")
            values[path] = jnp.asarray(src[path], leaf.dtype)
        elif path in inserted:
            values[path] = jnp.ones(leaf.shape, leaf.dtype)
        else:
            raise ValueError(f"fp_to_bitnet: the fp model has no tensor for {path}")
    return nnx.merge(graphdef, fill_state(abs_state, values)), bcfg
