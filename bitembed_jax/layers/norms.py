"""RMSNorm as Hugging Face computes it (float32 statistics).

``offset=True`` is Gemma's x * (1 + w) with w initialised to 0; otherwise x * w
with w initialised to 1. Either way a new norm starts identity-scaled.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from bitembed_jax.io.state_paths import path_str
from bitembed_jax.quant.warmup import blend


def rms_norm(x, weight, eps: float, offset: bool):
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    w = weight.astype(jnp.float32)
    return (y * (1.0 + w) if offset else y * w).astype(x.dtype)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, *, eps: float, offset: bool = False, axis_name: str = "norm",
                 inserted: bool = False):
        init = jnp.zeros if offset else jnp.ones
        self.weight = nnx.Param(init((dim,), jnp.float32), out_sharding=(axis_name,))
        self.eps = eps
        self.offset = offset
        self.inserted = inserted  # added by the BitNet conversion: no HF tensor, starts at 1, warmup blends it in
        self.blends = inserted
        self.quant_mix = nnx.data(None)  # set inside a warmup step only (quant/warmup.py)

    def __call__(self, x):
        y = rms_norm(x, self.weight[...], self.eps, self.offset)
        if self.quant_mix is not None:
            y = blend(x, y, self.quant_mix)
        return y


def inserted_norm_weights(model) -> set[str]:
    """Dotted paths of the weights of the norms the BitNet conversion inserted (``RMSNorm(inserted=True)``):
    no source checkpoint has them; they start at 1 (works on abstract models too)."""
    return {path_str(p) + ".weight" for p, node in nnx.iter_graph(model) if isinstance(node, RMSNorm) and node.inserted}
