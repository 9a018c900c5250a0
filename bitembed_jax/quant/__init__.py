"""Quantization math: pure functions."""
from bitembed_jax.quant.ternary import ternary_scale, ternary_quantize, ternary_ste, ternary_int
from bitembed_jax.quant.activation import absmax_quantize, absmax_ste, absmax_int

__all__ = [
    "ternary_scale", "ternary_quantize", "ternary_ste", "ternary_int",
    "absmax_quantize", "absmax_ste", "absmax_int",
]
