"""Per-dimension calibration of the stored precisions (numpy, no jax).

An LLM's pooled vectors have a few massive dimensions (on Gemma3-270M's, the largest mean |x| is ten times
the median). With per-vector absmax codes those few take the whole range and every other dimension collapses
onto one or two levels: int2 then ranks below binary. Calibration maps each dimension to a common range before
coding, from statistics of a sample of vectors (training passages, or the user's own corpus at indexing time):

  standardize  z = (x - mean) / std per dimension, scaled to unit length (scores are then cosines of the
               standardised vectors, as the model's own are cosines: without it, vectors far from the mean score
               high against every query), then the usual codes: int formats with a per-vector absmax scale,
               binary sign(z) (= sign(x - mean): neither the std nor the length changes a sign).
  range        sentence-transformers' int8/uint8 recipe: z = (x - mid) / half with mid, half the centre and
               half-width of each dimension's (min, max) over the sample, so the sample's range fills the grid
               exactly; int formats then use the global scale 1 / divisor (no per-vector scale is stored: values
               outside the sample's range clip to the end codes), binary sign(x - mid).

The codes stay integers and ``similarity`` stays an exact integer dot product of them (times the scales):
standardising is done in float before coding. fp32 vectors are never calibrated: they are the model's output.
With a Matryoshka ``dim``, the first ``dim`` coordinates are standardised with the first ``dim`` statistics
(those of the cut vectors over the same sample).
"""
import dataclasses

import numpy as np

from bitembed_jax.choices import CALIBRATION_METHODS as METHODS
from bitembed_jax.quant.grid import DIVISOR, EPS, INT_BITS

META_KEY = "embedding_calibration"  # its place in a model folder's bitembed_config.json
# a dimension (nearly) constant over the sample gets this fraction of the widest dimension's width as its own,
# so a new vector that does vary there is not blown up by a division by ~0
WIDTH_FLOOR = 1e-6


@dataclasses.dataclass(frozen=True, eq=False)  # arrays: compare with same_as
class Calibration:
    """center, width: float32 (d,); a vector is coded as (x - center) / width."""
    method: str
    center: np.ndarray
    width: np.ndarray
    n: int  # vectors it was fitted on
    source: str = ""  # what they were, for the record

    @classmethod
    def fit(cls, vectors, method: str = "standardize", source: str = "") -> "Calibration":
        """Statistics of (n, d) float vectors, n >= 2."""
        if method not in METHODS:
            raise ValueError(f"calibration method must be one of {METHODS}, got {method!r}")
        x = np.asarray(vectors, np.float64)
        if x.ndim != 2 or x.shape[0] < 2 or not np.isfinite(x).all():
            raise ValueError(f"calibration needs (n >= 2, d) finite vectors, got shape {x.shape}")
        if method == "standardize":
            center, width = x.mean(axis=0), x.std(axis=0)
        else:
            lo, hi = x.min(axis=0), x.max(axis=0)
            center, width = (lo + hi) / 2, (hi - lo) / 2
        width = np.maximum(width, max(WIDTH_FLOOR * width.max(), EPS))
        return cls(method, center.astype(np.float32), width.astype(np.float32), int(x.shape[0]), source)

    @property
    def dim(self) -> int:
        return self.center.shape[0]

    def apply(self, e, dim: int | None = None) -> np.ndarray:
        """float32 (n, dim or d): the first ``dim`` coordinates of ``e`` (n, d), calibrated."""
        x = np.asarray(e, np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"calibration of {self.dim}-dim vectors cannot code vectors of shape {x.shape}")
        d = self.dim if dim is None else dim
        if not 1 <= d <= self.dim:
            raise ValueError(f"dim must be in 1..{self.dim}, got {dim}")
        z = (x[:, :d] - self.center[:d]) / self.width[:d]
        if self.method == "standardize":
            z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), np.float32(EPS))
        return z

    def scale(self, precision: str) -> float | None:
        """The global int scale the method codes with (None: per-vector absmax)."""
        if self.method == "range" and precision in INT_BITS:
            return 1.0 / DIVISOR[precision]  # z = +-1 (the sample's min / max) is the top code
        return None

    def same_as(self, other: "Calibration | None") -> bool:
        return (other is not None and self.method == other.method and np.array_equal(self.center, other.center)
                and np.array_equal(self.width, other.width))

    def to_meta(self) -> dict:
        """JSON-ready; float32 values written as the shortest decimals that read back to the same float32."""
        return {"method": self.method, "center": [float(v) for v in self.center],
                "width": [float(v) for v in self.width], "n": self.n, "source": self.source}

    @classmethod
    def from_meta(cls, meta: dict, where: str) -> "Calibration":
        """Read back ``to_meta``'s dict; ``where`` names the file in errors."""
        if not isinstance(meta, dict) or meta.get("method") not in METHODS:
            raise ValueError(f"{where}: {META_KEY}.method must be one of {METHODS}")
        try:
            center = np.asarray(meta["center"], np.float32)
            width = np.asarray(meta["width"], np.float32)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: {META_KEY} needs center and width lists of numbers ({e})") from None
        ok = center.ndim == 1 and center.shape == width.shape and (width > 0).all()
        if not (ok and np.isfinite(center).all() and np.isfinite(width).all()):
            raise ValueError(f"{where}: {META_KEY}: center {center.shape} and width {width.shape} must be equal-length "
                             "lists, widths positive and finite")
        return cls(meta["method"], center, width, int(meta.get("n", 0)), str(meta.get("source", "")))


def model_calibration(meta: dict, where: str = "bitembed_config.json") -> Calibration | None:
    """A model folder's calibration (its bitembed_config.json read as ``meta``), or None if it has none."""
    if META_KEY not in meta:
        return None
    if meta.get("embedding_scales"):
        raise ValueError(f"{where}: has both embedding_scales (global scales of raw vectors) and {META_KEY}; "
                         "keep one")
    return Calibration.from_meta(meta[META_KEY], where)
