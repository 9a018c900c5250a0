"""RMSNorm as Hugging Face computes it (float32 statistics).

``offset=True`` is Gemma's x * (1 + w) with w initialised to 0; otherwise x * w
with w initialised to 1. Either way a new norm starts identity-scaled.
"""
import jax
import jax.numpy as jnp
from flax import nnx

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
        self.blends = inserted  # added by the BitNet conversion: gradual quantization blends it in
        self.quant_mix = nnx.data(None)  # set inside a warmup step only (quant/warmup.py)

    def __call__(self, x):
        y = rms_norm(x, self.weight[...], self.eps, self.offset)
        if self.quant_mix is not None:
            y = blend(x, y, self.quant_mix)
        return y
