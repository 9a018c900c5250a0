"""Multi-precision output embeddings at serving time (numpy): compact storage, packing and scoring, on the
grids of ``quant.grid``. No jax: an index server reads and scores stored vectors with numpy alone.
"""
import dataclasses
import math

import numpy as np

from bitembed_jax.quant.calibration import Calibration, model_calibration
from bitembed_jax.quant.grid import DIVISOR, EPS, INT_BITS, check_precision, codes as grid_codes

_CAL_KEYS = ("calibration_method", "calibration_center", "calibration_width")  # in a saved archive


@dataclasses.dataclass(frozen=True)
class StoredEmbeddings:
    """Storage-ready vectors.

    codes: fp32 float32 (n, dim); int8 int8 (n, dim); int4 uint8 (n, ceil(dim/2)),
      element j in the low (j even) / high (j odd) nibble as code + 8; int2 uint8
      (n, ceil(dim/4)), element j in bits 2*(j%4) as (code + 3) / 2; binary
      ``np.packbits`` of (e >= 0) (n, ceil(dim/8)). Padding bits are zero.
    scale: int formats only: float32 (n,) per vector, or float32 () global.
    calibration: the per-dimension statistics the vectors were coded with (``quant.calibration``), if any:
      float vectors scored against these are coded with the same.
    """
    codes: np.ndarray
    scale: np.ndarray | None
    precision: str
    dim: int
    calibration: Calibration | None = None

    @property
    def per_vector_scale(self) -> bool:
        return self.scale is not None and self.scale.ndim == 1

    @property
    def nbytes_per_vector(self) -> int:
        return self.codes.shape[1] * self.codes.itemsize + (4 if self.per_vector_scale else 0)

    def __len__(self) -> int:
        return self.codes.shape[0]

    def save(self, path: str) -> None:
        """A numpy .npz (codes, scale, precision, dim, and the calibration if any), as ``bitembed-jax encode``
        writes; no pickled objects."""
        cal = self.calibration
        extra = {} if cal is None else dict(zip(_CAL_KEYS, (cal.method, cal.center, cal.width)),
                                            calibration_n=cal.n, calibration_source=cal.source)
        with open(path, "wb") as f:  # a file object: numpy leaves the name as given
            np.savez(f, codes=self.codes, scale=np.asarray([] if self.scale is None else self.scale, np.float32),
                     precision=self.precision, dim=self.dim, **extra)

    @classmethod
    def load(cls, path: str) -> "StoredEmbeddings":
        """What ``save`` (or ``bitembed-jax encode --precision ...``) wrote, checked against the format."""
        with np.load(path, allow_pickle=False) as z:
            missing = sorted({"codes", "scale", "precision", "dim"} - set(z.files))
            if missing:
                raise ValueError(f"{path}: not a stored-embeddings archive (missing {missing})")
            precision, dim, codes, scale = str(z["precision"]), int(z["dim"]), z["codes"], z["scale"]
            cal = _load_calibration(z, path)
        check_precision(precision)
        dtype = np.dtype({"fp32": np.float32, "int8": np.int8}.get(precision, np.uint8))
        width = bytes_per_vector(precision, dim, per_vector_scale=False) // dtype.itemsize
        if codes.dtype != dtype or codes.ndim != 2 or codes.shape[1] != width:
            raise ValueError(f"{path}: codes {codes.dtype} {codes.shape} do not hold {precision} vectors of dim {dim} "
                             f"({dtype} (n, {width}))")
        if precision in ("fp32", "binary"):
            scale = None
        elif scale.shape not in ((), (len(codes),)):
            raise ValueError(f"{path}: scale of shape {scale.shape} for {len(codes)} {precision} vectors")
        if cal is not None and cal.dim < dim:
            raise ValueError(f"{path}: calibration of {cal.dim} dims for vectors of dim {dim}")
        return cls(codes, scale, precision, dim, cal)


def _load_calibration(z, path: str) -> Calibration | None:
    """The calibration saved with an archive; archives written before calibration existed have none."""
    if _CAL_KEYS[0] not in z.files:
        return None
    meta = {"method": str(z["calibration_method"]), "center": z["calibration_center"].tolist(),
            "width": z["calibration_width"].tolist(),
            "n": int(z["calibration_n"]) if "calibration_n" in z.files else 0,
            "source": str(z["calibration_source"]) if "calibration_source" in z.files else ""}
    return Calibration.from_meta(meta, path)


def bytes_per_vector(precision: str, dim: int, per_vector_scale: bool = True) -> int:
    """Stored bytes for one ``dim``-dim vector: fp32 4*dim, int8 dim, int4 ceil(dim/2),
    int2 ceil(dim/4), binary ceil(dim/8); int formats add 4 bytes (a float32 scale)
    when the scale is per vector (``encode_storage``'s default), none with a global scale."""
    check_precision(precision)
    if precision == "fp32":
        return 4 * dim
    if precision == "binary":
        return -(-dim // 8)
    per_byte = 8 // INT_BITS[precision]
    return -(-dim // per_byte) + (4 if per_vector_scale else 0)


def _truncate(e: np.ndarray, dim: int | None) -> np.ndarray:
    """float32 (n, d); with ``dim``, the numpy twin of ``matryoshka``."""
    e = np.asarray(e, np.float32)
    if e.ndim != 2:
        raise ValueError(f"expected (n, d) vectors, got shape {e.shape}")
    if dim is None:
        return e
    if not 1 <= dim <= e.shape[1]:
        raise ValueError(f"dim must be in 1..{e.shape[1]}, got {dim}")
    x = e[:, :dim]
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(EPS))


def calibrate_scale(e: np.ndarray, precision: str, dim: int | None = None,
                    quantile: float = 1.0) -> float:
    """A global int scale from calibration vectors: the ``quantile`` of |e| (1.0 = absmax)
    mapped to the top of the grid. Pass it as ``scale=`` to quantize_ste / encode_storage."""
    if precision not in INT_BITS:
        raise ValueError(f"only int formats take a scale, got {precision!r}")
    a = np.abs(_truncate(e, dim))
    return float(max(np.quantile(a, quantile), EPS) / DIVISOR[precision])


def _pack_uint(u: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned values < 2**bits, 8//bits per byte, element j at bit bits*(j % per)."""
    per = 8 // bits
    n, d = u.shape
    padded = np.zeros((n, -(-d // per) * per), np.uint8)
    padded[:, :d] = u
    groups = padded.reshape(n, -1, per)
    out = np.zeros(groups.shape[:2], np.uint8)
    for i in range(per):
        out |= groups[:, :, i] << np.uint8(bits * i)
    return out


def _unpack_uint(packed: np.ndarray, bits: int, dim: int) -> np.ndarray:
    per = 8 // bits
    mask = np.uint8(2 ** bits - 1)
    parts = [(packed >> np.uint8(bits * i)) & mask for i in range(per)]
    return np.stack(parts, axis=-1).reshape(packed.shape[0], -1)[:, :dim]


def encode_storage(e: np.ndarray, precision: str, dim: int | None = None, scale: float | None = None,
                   calibration: Calibration | None = None) -> StoredEmbeddings:
    """Quantize and pack (n, d) float vectors; ``dim`` truncates Matryoshka-style first.

    Int formats store a float32 scale per vector unless a global ``scale`` is given. With a ``calibration``
    (int and binary formats; fp32 ignores it) each dimension is calibrated first and the method sets the scale.
    """
    check_precision(precision)
    if calibration is not None and precision != "fp32":
        if scale is not None:
            raise ValueError("a calibration sets its own scale: give scale or calibration, not both")
        x, scale = calibration.apply(e, dim), calibration.scale(precision)
    else:
        x, calibration = _truncate(e, dim), None
    d = x.shape[1]
    if precision in ("fp32", "binary"):
        if scale is not None:
            raise ValueError(f"{precision} takes no scale")
        codes = x.copy() if precision == "fp32" else np.packbits(x >= 0, axis=1)
        return StoredEmbeddings(codes, None, precision, d, calibration)
    if scale is None:
        s = (np.maximum(np.abs(x).max(axis=1), np.float32(EPS)) / np.float32(DIVISOR[precision]))
    else:
        s = np.asarray(scale, np.float32)
        if s.ndim != 0:
            raise ValueError("scale must be a scalar (global); per-vector scales are computed")
    c = grid_codes(x / (s[:, None] if s.ndim else s), precision, np).astype(np.int8)
    if precision == "int8":
        codes = c
    elif precision == "int4":
        codes = _pack_uint((c + 8).astype(np.uint8), 4)
    else:
        codes = _pack_uint(((c + 3) // 2).astype(np.uint8), 2)
    return StoredEmbeddings(codes, s.astype(np.float32), precision, d, calibration)


def model_storage(e: np.ndarray, precision: str, meta: dict, dim: int | None = None) -> StoredEmbeddings:
    """``encode_storage`` with what a model folder's metadata (bitembed_config.json) holds for ``precision``:
    its per-dimension calibration, else a global scale, else neither (per-vector absmax): the stored form of that
    model's vectors wherever they are made."""
    calibration = model_calibration(meta)
    if calibration is not None:
        return encode_storage(e, precision, dim=dim, calibration=calibration)
    return encode_storage(e, precision, dim=dim, scale=meta.get("embedding_scales", {}).get(precision))


def int_codes(st: StoredEmbeddings) -> np.ndarray:
    """Signed integer codes (n, dim) int8 of an int-format StoredEmbeddings."""
    if st.precision == "int8":
        return st.codes
    if st.precision == "int4":
        return _unpack_uint(st.codes, 4, st.dim).astype(np.int8) - 8
    return 2 * _unpack_uint(st.codes, 2, st.dim).astype(np.int8) - 3


def decode_storage(st: StoredEmbeddings) -> np.ndarray:
    """Dequantised float32 (n, dim) vectors, equal to ``quantize``'s forward value."""
    if st.precision == "fp32":
        return st.codes.astype(np.float32)
    if st.precision == "binary":
        bits = np.unpackbits(st.codes, axis=1, count=st.dim)
        return (2.0 * bits.astype(np.float32) - 1.0) / np.float32(math.sqrt(st.dim))
    s = st.scale[:, None] if st.per_vector_scale else st.scale
    return int_codes(st).astype(np.float32) * s


def hamming(a: np.ndarray, b: np.ndarray, block: int = 256) -> np.ndarray:
    """(n_a, n_b) int32 Hamming distances between packed-bit rows (uint8 (n, nbytes)).

    Blocks over rows of ``a`` to bound the (block, n_b, nbytes) XOR temporary.
    """
    out = np.empty((a.shape[0], b.shape[0]), np.int32)
    for i in range(0, a.shape[0], block):
        x = np.bitwise_xor(a[i:i + block, None, :], b[None, :, :])
        out[i:i + block] = np.bitwise_count(x).sum(axis=-1, dtype=np.int32)
    return out


def _as_stored(x, precision: str | None, other) -> StoredEmbeddings:
    """``x`` stored; float vectors are coded like ``other`` if it is stored (its calibration too)."""
    if isinstance(x, StoredEmbeddings):
        if precision is not None and precision != x.precision:
            raise ValueError(f"stored as {x.precision}, asked to score as {precision}")
        return x
    if isinstance(other, StoredEmbeddings):
        if precision is not None and precision != other.precision:
            raise ValueError(f"stored as {other.precision}, asked to score as {precision}")
        cal = other.calibration
        return encode_storage(np.asarray(x), other.precision, dim=None if cal is None else other.dim,
                              calibration=cal)
    return encode_storage(np.asarray(x), precision or "fp32")


def similarity(a, b, precision: str | None = None) -> np.ndarray:
    """(n_a, n_b) float32 scores between two sets of vectors.

    ``a`` and ``b`` are StoredEmbeddings or float (n, d) arrays: float vectors scored against stored ones are
    coded like them (precision and calibration); two float arrays are coded at ``precision``, default fp32, int
    formats with per-vector scales. Two stored sets must share their calibration (or both have none).
    fp32: dot product. int*: exact integer dot product of the codes (float64
    BLAS, exact below 2**53) times both scales: equals the dot product of the
    dequantised vectors. binary: negative Hamming distance on the packed bytes,
    = (d * cos - d) / 2 of the dequantised vectors, so it ranks the same.
    """
    sa, sb = _as_stored(a, precision, b), _as_stored(b, precision, a)
    if (sa.precision, sa.dim) != (sb.precision, sb.dim):
        raise ValueError(f"cannot score {sa.precision}/{sa.dim} against {sb.precision}/{sb.dim}")
    if sa.calibration is not None or sb.calibration is not None:
        if sa.calibration is None or not sa.calibration.same_as(sb.calibration):
            raise ValueError("cannot score vectors coded with different calibrations (or one without); code both "
                             "with the same one")
    if sa.precision == "fp32":
        return sa.codes @ sb.codes.T
    if sa.precision == "binary":
        return -hamming(sa.codes, sb.codes).astype(np.float32)
    dots = int_codes(sa).astype(np.float64) @ int_codes(sb).astype(np.float64).T
    scale_a = sa.scale[:, None] if sa.per_vector_scale else sa.scale
    scale_b = sb.scale[None, :] if sb.per_vector_scale else sb.scale
    return (dots * scale_a.astype(np.float64) * scale_b.astype(np.float64)).astype(np.float32)
