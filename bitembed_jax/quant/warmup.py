"""Gradual quantization: blend the BitNet conversion in over the first training steps.

At mix m in [0, 1], every norm that the conversion inserted gives x + m (norm(x) - x), and every ternary
linear multiplies x + m sg(q(x) - x) by w + m sg(q(w) - w): the straight-through estimators of the BitNet
recipe, scaled (the lambda warmup of Hugging Face's 1.58-bit fine-tuning recipe, extended to the inserted
norms). m = 0 is the full-precision model the student was converted from, m = 1 the BitNet forward. A
student converted from a trained embedder therefore starts where the teacher is, and its weights move
towards their ternary form while the quantization error grows, instead of all at once.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from bitembed_jax.quant.activation import absmax_quantize
from bitembed_jax.quant.ternary import ternary_quantize


def mix_at(step, warmup_steps: int):
    """m for a step counter (0 = the first step): linear from 0, reaching 1 at ``warmup_steps``."""
    return jnp.minimum(jnp.asarray(step, jnp.float32) / warmup_steps, 1.0)


def blend(x, y, mix):
    """x + mix (y - x), differentiable in both (the inserted norms)."""
    return x + mix.astype(x.dtype) * (y - x)


def blend_ste(x, q, mix):
    """x + mix sg(q - x): forward moves towards the quantized q, gradient is the identity."""
    return x + mix.astype(x.dtype) * jax.lax.stop_gradient(q - x)


def blended_matmul(x, w, mix, *, bits: int, per_row: bool, dtype):
    """(x + mix sg(q(x) - x)) @ (w + mix sg(q(w) - w)): the gradual-quantization forward, straight-through."""
    xm = blend_ste(x, absmax_quantize(x, bits), mix)
    wm = blend_ste(w, ternary_quantize(w, per_row), mix)
    return jnp.dot(xm.astype(dtype), wm.astype(dtype), preferred_element_type=jnp.float32)


def set_quant_mix(model, mix):
    """Set the mix on every module of a merged model that the conversion changed (ternary linears, inserted
    norms); ``None`` restores the plain BitNet forward. Call on a model merged inside the traced step."""
    for _, module in nnx.iter_modules(model):
        if getattr(module, "blends", False):
            module.quant_mix = mix
