"""bitembed-jax: BitNet-style text embedders in JAX / Flax NNX."""
__version__ = "0.1.0"


def __getattr__(name):
    # lazy: importing the package must not pull in transformers
    if name == "Encoder":
        from bitembed_jax.encode import Encoder
        return Encoder
    if name == "similarity":
        from bitembed_jax.quant.storage import similarity
        return similarity
    raise AttributeError(name)
