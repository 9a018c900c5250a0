"""The output-embedding code grids, shared by training (JAX, ``quant.embedding``) and storage (numpy,
``quant.storage``) so both make the same codes.

Precisions and their grids (value = code * s):
  fp32    the vector as is.
  int8    codes in [-127, 127], s = absmax / 127 (symmetric, mid-tread).
  int4    codes in [-7, 7],     s = absmax / 7.
  int2    codes in {-3, -1, 1, 3}, s = absmax / 4: a mid-rise grid (levels
          +-s, +-3s, thresholds 0 and +-2s). The mid-tread rule at 2 bits would
          be ternary with threshold absmax/2, zeroing ~90% of a Gaussian
          vector's entries and wasting the fourth code; mid-rise uses all four.
  binary  sign(e) with 0 -> +1, scaled by 1/sqrt(d) so the vector has unit norm
          and its dot product with another is cosine = 1 - 2 * hamming / d.
          Scored by negative Hamming distance on the packed bits.
The int scale s is per vector (absmax over the last axis) unless a calibrated
global scale is given (see ``quant.storage.calibrate_scale``).
"""
from bitembed_jax.choices import PRECISIONS

INT_BITS = {"int8": 8, "int4": 4, "int2": 2}
# s = absmax / divisor: the largest magnitude maps to the top code (int2: mid-rise, see above)
DIVISOR = {"int8": 127.0, "int4": 7.0, "int2": 4.0}
EPS = 1e-12  # floor for absmax and norms, so all-zero vectors stay finite


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def codes(y, precision: str, xp):
    """Integer codes (as floats) of y = x / s; xp is jnp or np so both paths agree."""
    if precision == "int2":
        return xp.clip(2.0 * xp.floor(y / 2.0) + 1.0, -3.0, 3.0)
    q = 2 ** (INT_BITS[precision] - 1) - 1
    return xp.clip(xp.round(y), -q, q)
