"""BitLinear: a dense layer that is either full precision or ternary (W1.58 A8/A4).

Kernels are stored (in_features, out_features). In ``ternary`` mode the latent
float kernel is quantized on the fly (absmean ternary) and the input per token
(absmax, ``act_bits``), both with straight-through gradients; ``fp`` is a plain
dense layer (the full-precision teacher). ``pre_norm`` inserts the per-linear
RMSNorm of norm refinement in front of the quantizer.
"""
import jax.numpy as jnp
from flax import nnx

from bitembed_jax.io.state_paths import path_str
from bitembed_jax.layers.norms import RMSNorm
from bitembed_jax.quant.bitmatmul import bit_matmul
from bitembed_jax.quant.ternary import ternary_int
from bitembed_jax.quant.warmup import blended_matmul

MODES = ("fp", "ternary")


class FrozenScale(nnx.Variable):
    """The stored absmean scale of an exported ternary layer (not trained)."""


class BitLinear(nnx.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        axes: tuple[str, str],
        mode: str = "fp",
        act_bits: int = 8,
        per_row_scale: bool = False,
        pre_norm: bool = False,
        norm_eps: float = 1e-6,
        use_bias: bool = False,
        dtype=jnp.float32,
        code_matmul: str = "bfloat16",
        rngs: nnx.Rngs,
    ):
        if mode not in MODES:
            raise ValueError(f"BitLinear mode must be one of {MODES}, got {mode!r}")
        init = nnx.initializers.normal(0.02)
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features), jnp.float32), out_sharding=axes)
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32), out_sharding=(axes[1],)) if use_bias else None
        self.norm = RMSNorm(in_features, eps=norm_eps, inserted=True) if pre_norm else None
        self.mode = mode
        self.act_bits = act_bits
        self.per_row_scale = per_row_scale
        self.dtype = dtype
        self.code_matmul = code_matmul
        # set when loading an export: the kernel then holds q * scale and keeps exactly that scale
        self.frozen_scale = nnx.data(None)
        self.quant_mix = nnx.data(None)  # set inside a gradual-quantization warmup step only (quant/warmup.py)

    @property
    def blends(self) -> bool:
        """Gradual quantization blends this layer in (quant/warmup.py): only ternary layers are converted."""
        return self.mode == "ternary"

    def __call__(self, x):
        if self.norm is not None:
            x = self.norm(x)
        w = self.kernel[...]
        if self.mode == "ternary" and self.quant_mix is not None:
            if self.frozen_scale is not None:
                raise ValueError("gradual quantization trains latent kernels; this layer holds a loaded export")
            y = blended_matmul(x, w, self.quant_mix, bits=self.act_bits, per_row=self.per_row_scale,
                               dtype=self.dtype)
        elif self.mode == "ternary":
            scale = None if self.frozen_scale is None else self.frozen_scale[...]
            y = bit_matmul(x, w, bits=self.act_bits, per_row=self.per_row_scale, frozen_scale=scale,
                           dtype=self.dtype, code_matmul=self.code_matmul)
        else:
            y = jnp.dot(x.astype(self.dtype), w.astype(self.dtype), preferred_element_type=jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...]
        return y.astype(self.dtype)

    def frozen(self):
        """(int8 ternary weights shaped (out, in) as PyTorch stores them, float32 scale)."""
        q, gamma = ternary_int(self.kernel[...], self.per_row_scale)
        return q.T, (gamma.T if self.per_row_scale else gamma)


def linears(model) -> dict:
    """{dotted path of the kernel: BitLinear} of a model (works on abstract models too)."""
    return {path_str(p) + ".kernel": node for p, node in nnx.iter_graph(model) if isinstance(node, BitLinear)}
