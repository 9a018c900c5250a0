"""Quantization math: pure functions.

Names are loaded lazily: ``quant.storage`` (numpy scoring of stored vectors) must not import jax.
"""
_EXPORTS = {
    "ternary_scale": "ternary", "ternary_quantize": "ternary", "ternary_ste": "ternary", "ternary_int": "ternary",
    "absmax_quantize": "activation", "absmax_ste": "activation", "absmax_int": "activation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
