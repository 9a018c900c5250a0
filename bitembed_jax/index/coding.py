"""How an index codes vectors: the precision the engine stores, the per-dimension calibration, and what each
engine is given (numpy only). Corpus and queries go through the same ``Coding``, so a query is coded the way
the stored vectors were.

  fp32             the model's vectors as they are, float32, inner product.
  fp32-calibrated  the calibrated float vectors (``Calibration.apply``: standardised, unit length), float32,
                   inner product: the exact search every calibrated code approximates.
  int8             int8 codes (per-vector scale), in the engine as signed bytes.
  int4, int2       no engine here stores 4- or 2-bit vectors: their codes go in as signed bytes, like int8 (one
                   byte per dimension in the engine; the packed codes are 1/2 and 1/4 byte, only in our .npz).
  binary           sign bits, packed 8 per byte, Hamming distance.

int codes are ranked by the cosine of the codes (usearch ``cos``, pgvector ``<=>``), which equals the cosine
of the dequantised vectors since a vector's scale cancels; faiss's direct int8 quantizer only has the inner
product of the codes, which leaves each stored vector's scale out of the first-stage ranking (rescoring
restores it).

Rescoring (sentence-transformers' ``rescore``): the first stage fetches k x multiplier candidates by the codes;
they are re-ranked by the dot product of the (calibrated) float query with their stored int8 codes times their
scales. The int8 codes are kept on disk for that whatever the index precision.
"""
import dataclasses

import numpy as np

from bitembed_jax.choices import INDEX_PRECISIONS as PRECISIONS
from bitembed_jax.quant.calibration import Calibration
from bitembed_jax.quant.storage import StoredEmbeddings, encode_storage, int_codes

KIND = {"fp32": "f32", "fp32-calibrated": "f32", "int8": "i8", "int4": "i8", "int2": "i8", "binary": "b1"}


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: must be one of {', '.join(PRECISIONS)}")


@dataclasses.dataclass(frozen=True)
class Coding:
    precision: str
    dim: int
    calibration: Calibration | None  # None: raw vectors (fp32, or codes without per-dimension statistics)

    @property
    def kind(self) -> str:
        """What the engine stores: f32, i8 (signed bytes) or b1 (packed bits)."""
        return KIND[self.precision]

    @property
    def rescorable(self) -> bool:
        return self.kind != "f32"

    def check(self, floats: np.ndarray, what: str) -> np.ndarray:
        x = np.asarray(floats, np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{what}: vectors of shape {x.shape}; this index holds {self.dim}-dim vectors")
        if not np.isfinite(x).all():
            raise ValueError(f"{what}: non-finite values in the vectors")
        return x

    def float_view(self, floats: np.ndarray) -> np.ndarray:
        """The float vectors the codes approximate: calibrated if there is a calibration."""
        return floats if self.calibration is None else self.calibration.apply(floats)

    def engine_vectors(self, floats: np.ndarray) -> np.ndarray:
        """float32 (n, dim), int8 (n, dim) or packed uint8 (n, ceil(dim/8)): what the engine stores/searches."""
        if self.precision == "fp32":
            return floats
        if self.precision == "fp32-calibrated":
            return self.float_view(floats)
        return engine_codes(self.stored(floats))

    def stored(self, floats: np.ndarray) -> StoredEmbeddings:
        return encode_storage(floats, self.precision, calibration=self.calibration)

    def rescore_store(self, floats: np.ndarray) -> StoredEmbeddings:
        """The int8 codes (with their scales) that rescoring reads."""
        return encode_storage(floats, "int8", calibration=self.calibration)


def engine_codes(st: StoredEmbeddings) -> np.ndarray:
    """Our stored codes in an engine's own type: int8 codes unpacked to signed bytes, binary packed bits."""
    if st.precision == "binary":
        return st.codes
    if st.precision == "fp32":
        return st.codes
    return np.ascontiguousarray(int_codes(st))


def fit_calibration(floats: np.ndarray, source: str) -> Calibration:
    """The indexing-time calibration: per-dimension statistics of the corpus being indexed (standardize)."""
    return Calibration.fit(floats, "standardize", source=source)


def describe(cal: Calibration | None) -> str:
    return "none" if cal is None else f"{cal.method} on {cal.source or f'{cal.n} vectors'}"
