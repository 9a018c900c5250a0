"""The W1.58 A8/A4 matmul on integer codes, with straight-through gradients.

y = (Qx @ Qw) * gamma / s, where Qx are the per-token absmax codes of x (scale s) and Qw the ternary codes
of the kernel (scale gamma). The codes are small integers, exact in bfloat16, and every partial sum of their
products is an integer below 2**24, so a bfloat16 matmul with float32 accumulation computes Qx @ Qw exactly
with no rounding of the scaled operands. ``code_matmul="int8"`` multiplies the same codes as int8 x int8 ->
int32, exact too and the same numbers: TPU v5e/v6e and recent GPUs run int8 at twice their bf16 rate, while
CPUs have no fast int8 dot in XLA, so the choice follows the devices (``train.build.for_platform``). A loaded
export (its stored scale as ``frozen_scale``) goes through the same function with the same codes and scales, so
it reproduces the checkpoint's forward bit for bit.

The backward pass is the straight-through estimator of ``absmax_ste(x) @ ternary_ste(w)``: with
xq = Qx / s and wq = Qw * gamma, dx = dy @ wq^T and dw = xq^T @ dy, in the compute dtype. Its residuals
are the int8 codes and the scales, a quarter of the float32 activations (XLA may still choose to recompute
the codes from the layer input instead of storing them).
"""
from functools import partial

import jax
import jax.numpy as jnp

from bitembed_jax.quant.activation import absmax_int
from bitembed_jax.quant.ternary import ternary_int

# |code| <= 128 and in_features * 128 < 2**24 keep every code product sum exact in float32
MAX_EXACT_FEATURES = 2 ** 24 // 128


def code_matmul(qx, s, qw, gamma, dtype, operands: str = "bfloat16"):
    """(Qx @ Qw) * gamma / s: codes of x (..., in) with per-token scale s (..., 1), ternary codes (in, out);
    ``operands``: "bfloat16" (float32 accumulation) or "int8" (int32 accumulation), the same exact sums."""
    if qx.shape[-1] > MAX_EXACT_FEATURES:
        raise ValueError(f"integer-code matmul is exact up to {MAX_EXACT_FEATURES} input features, "
                         f"got {qx.shape[-1]}")
    if operands == "int8":
        acc = jnp.dot(qx.astype(jnp.int8), qw.astype(jnp.int8), preferred_element_type=jnp.int32)
        acc = acc.astype(jnp.float32)
    else:
        acc = jnp.dot(qx.astype(jnp.bfloat16), qw.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
    return ((acc / s) * gamma).astype(dtype)


def _forward(x, w, frozen_scale, bits, per_row, dtype, operands):
    qx, s = absmax_int(x, bits)
    if frozen_scale is None:
        qw, gamma = ternary_int(w, per_row)
    else:
        gamma = frozen_scale.astype(jnp.float32)
        qw = jnp.clip(jnp.round(w.astype(jnp.float32) / gamma), -1, 1).astype(jnp.int8)
    # pin the codes as one materialized int8 tensor: otherwise XLA fuses the norm-and-quantize chain into its
    # consumers differently in each graph, and float-order differences flip a code now and then, so encoding
    # would depend on the batch size and a loaded export would no longer match its checkpoint bit for bit
    # (tests/test_encode_cli.py, tests/test_export.py)
    qx, s = jax.lax.optimization_barrier((qx.astype(jnp.int8), s))
    return code_matmul(qx, s, qw, gamma, dtype, operands), (qx, s, qw, gamma)


# the static arguments: bits, per_row, the compute dtype, the dtypes of x and w (for their cotangents) and the
# code matmul's operand type
@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
def _bit_matmul(x, w, frozen_scale, bits, per_row, dtype, x_dtype, w_dtype, operands):
    return _forward(x, w, frozen_scale, bits, per_row, dtype, operands)[0]


def _bit_matmul_fwd(x, w, frozen_scale, bits, per_row, dtype, x_dtype, w_dtype, operands):
    y, codes = _forward(x, w, frozen_scale, bits, per_row, dtype, operands)
    return y, (codes, frozen_scale)


def _bit_matmul_bwd(bits, per_row, dtype, x_dtype, w_dtype, operands, res, dy):
    (qx, s, qw, gamma), frozen_scale = res
    dy = dy.astype(dtype)
    wq = (qw.astype(jnp.float32) * gamma).astype(dtype)
    xq = (qx.astype(jnp.float32) / s).astype(dtype)
    dx = jnp.dot(dy, wq.T, preferred_element_type=jnp.float32)
    lead = tuple(range(dy.ndim - 1))
    dw = jax.lax.dot_general(xq, dy, ((lead, lead), ((), ())), preferred_element_type=jnp.float32)
    d_scale = None if frozen_scale is None else jnp.zeros_like(frozen_scale)
    return dx.astype(x_dtype), dw.astype(w_dtype), d_scale


_bit_matmul.defvjp(_bit_matmul_fwd, _bit_matmul_bwd)


def bit_matmul(x, w, *, bits: int = 8, per_row: bool = False, frozen_scale=None, dtype=jnp.float32,
               code_matmul: str = "bfloat16"):
    """Forward: absmax_quantize(x, bits) @ ternary_quantize(w) computed exactly on the codes; straight-through
    gradients to x and to the latent w. ``frozen_scale`` (an export's stored gamma) replaces the absmean scale
    and gets no gradient. ``code_matmul``: the codes' operand type, "bfloat16" or "int8" (same result)."""
    return _bit_matmul(x, w, frozen_scale, bits, per_row, jnp.dtype(dtype), x.dtype, w.dtype, code_matmul)
