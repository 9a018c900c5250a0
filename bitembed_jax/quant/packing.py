"""Exact numpy packing of ternary weights {-1, 0, 1}.

- ``pack_bitnet_2bit``: the transformers BitNet layout (integrations/bitnet.py
  ``pack_weights``): 4 values per uint8, stored as q + 1 in {0, 1, 2}, packed
  along dim 0. With R = ceil(out / 4), packed row r holds original rows r, r+R,
  r+2R, r+3R in bits 0-1, 2-3, 4-5, 6-7; missing rows (out % 4 != 0) leave their
  bits zero, as transformers' loop does.
- ``int8_blocks`` / ``int4_blocks`` (``int8_rows`` / ``int4_rows``: one block per row): absmax int8 / int4
  codes per block of a float table's rows (not ternary: the token embeddings).
- ``pack_int2``: ONNX's INT2 tensor layout (2-bit two's complement, 4 per byte, row-major, first value in
  the low bits): what the ONNX export stores.
- ``pack_base3``: 5 trits per byte, byte = sum_i (t_i + 1) * 3**i over the
  row-major flattened tensor (1.6 bits per weight); the tail is padded with
  digit 0.
"""
import numpy as np

_POW3 = np.array([1, 3, 9, 27, 81], np.uint8)


def _ternary_digits(q) -> np.ndarray:
    """q + 1 as uint8, after checking every value is in {-1, 0, 1}."""
    q = np.asarray(q)
    if q.size and (q.min() < -1 or q.max() > 1 or not np.array_equal(q, np.round(q))):
        raise ValueError("weights must be ternary: values in {-1, 0, 1}")
    return (q.astype(np.int16) + 1).astype(np.uint8)


def pack_bitnet_2bit(q) -> np.ndarray:
    """(out, ...) ternary -> uint8 (ceil(out / 4), ...), byte-identical to transformers."""
    u = _ternary_digits(q)
    if u.ndim == 0:
        raise ValueError("need at least one dimension")
    out = u.shape[0]
    rows = -(-out // 4)
    padded = np.zeros((4 * rows, *u.shape[1:]), np.uint8)
    padded[:out] = u
    groups = padded.reshape(4, rows, *u.shape[1:])
    return groups[0] | (groups[1] << 2) | (groups[2] << 4) | (groups[3] << 6)


def unpack_bitnet_2bit(packed: np.ndarray, out_features: int) -> np.ndarray:
    """Inverse of ``pack_bitnet_2bit``: int8 (out_features, ...) in {-1, 0, 1}."""
    packed = np.asarray(packed, np.uint8)
    rows = packed.shape[0]
    if not 4 * rows - 3 <= out_features <= 4 * rows:
        raise ValueError(f"{rows} packed rows cannot hold {out_features} output rows")
    parts = [(packed >> (2 * i)) & 3 for i in range(4)]
    u = np.concatenate(parts, axis=0)[:out_features]
    if np.any(u == 3):
        raise ValueError("invalid 2-bit code 3 in packed weights")
    return u.astype(np.int8) - 1


def _groups(u: np.ndarray, k: int) -> np.ndarray:
    """The flat values ``u`` as rows of ``k`` (ceil(size / k), k), the tail padded with 0."""
    padded = np.zeros(-(-u.size // k) * k, np.uint8)
    padded[:u.size] = u
    return padded.reshape(-1, k)


def _packed_count(packed: np.ndarray, shape, per_byte: int, what: str) -> tuple[np.ndarray, int]:
    """(flat uint8 bytes, number of values of ``shape``), after checking the bytes hold exactly that many."""
    packed = np.asarray(packed, np.uint8).ravel()
    n = int(np.prod(tuple(shape), dtype=np.int64))
    if packed.size != -(-n // per_byte):
        raise ValueError(f"{packed.size} bytes do not hold {n} {what}")
    return packed, n


def pack_int2(q) -> np.ndarray:
    """Ternary tensor -> ONNX's INT2 layout: uint8 (ceil(size / 4),), the row-major values as 2-bit two's
    complement (-1 -> 0b11), four per byte, the first in bits 0-1; the tail is padded with 0."""
    g = _groups(((_ternary_digits(q).ravel().astype(np.int16) - 1) & 3).astype(np.uint8), 4)
    return g[:, 0] | (g[:, 1] << 2) | (g[:, 2] << 4) | (g[:, 3] << 6)


def unpack_int2(packed: np.ndarray, shape) -> np.ndarray:
    """Inverse of ``pack_int2``: int8 array of ``shape`` in {-1, 0, 1}."""
    packed, n = _packed_count(packed, shape, 4, "2-bit values")
    fields = np.stack([(packed >> (2 * i)) & 3 for i in range(4)], axis=1).ravel()[:n]
    if np.any(fields == 2):
        raise ValueError("invalid ternary INT2 value -2 in packed weights")
    return np.where(fields == 3, -1, fields).astype(np.int8).reshape(tuple(shape))


def pack_base3(q) -> np.ndarray:
    """Ternary tensor -> uint8 (ceil(size / 5),), five trits per byte (row-major)."""
    # max byte is 2 * 121 = 242, so the uint8 sum cannot overflow
    return (_groups(_ternary_digits(q).ravel(), 5) * _POW3).sum(axis=1, dtype=np.uint8)


def unpack_base3(packed: np.ndarray, shape) -> np.ndarray:
    """Inverse of ``pack_base3``: int8 array of ``shape`` in {-1, 0, 1}."""
    packed, n = _packed_count(packed, shape, 5, "trits")
    if np.any(packed > 242):
        raise ValueError("invalid base-3 byte (> 242)")
    digits = (packed[:, None] // _POW3) % 3
    return (digits.ravel()[:n].astype(np.int8) - 1).reshape(shape)


def _block_scale(e: np.ndarray, block: int, qmax: int, dtype) -> np.ndarray:
    """absmax / qmax per block of ``block`` consecutive values of each row: (V, H / block) of ``dtype``,
    float16 rounded up (so no code passes qmax and every value stays within half a step)."""
    if block < 1 or e.shape[1] % block:
        raise ValueError(f"the row length {e.shape[1]} is not a multiple of the block size {block}")
    amax = np.abs(e.reshape(e.shape[0], -1, block)).max(axis=2)
    scale = (np.maximum(amax, np.float32(1e-12)) / np.float32(qmax)).astype(np.float32)
    if np.dtype(dtype) == np.float16:
        low = scale.astype(np.float16)
        return np.where(low.astype(np.float32) < scale, np.nextafter(low, np.float16(np.inf)), low)
    return scale.astype(dtype)


def _codes(e: np.ndarray, scale: np.ndarray, qmax: int) -> np.ndarray:
    block = e.shape[1] // scale.shape[1]
    q = np.round(e.reshape(e.shape[0], -1, block) / scale.astype(np.float32)[:, :, None])
    return np.clip(q, -qmax, qmax).reshape(e.shape).astype(np.int8)


def int8_blocks(e: np.ndarray, block: int, scale_dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Absmax int8 per block of ``block`` values of each row of a float table (token embeddings), as GGUF's
    Q8_0 does (block 32, float16 scales: a Q8_0 table comes back exactly): (codes int8 (V, H), scale
    (V, H / block) of ``scale_dtype``); value = code * its block's scale, within scale / 2 of the float value."""
    e = np.asarray(e, np.float32)
    scale = _block_scale(e, block, 127, scale_dtype)
    return _codes(e, scale, 127), scale


def int4_blocks(e: np.ndarray, block: int, scale_dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """The same with int4 codes in [-7, 7], two per byte: (uint8 (V, H / 2), scale (V, H / block));
    byte j of a row holds code + 8 of element 2j in bits 0-3 and of element 2j + 1 in bits 4-7."""
    e = np.asarray(e, np.float32)
    if e.shape[1] % 2:
        raise ValueError(f"int4 rows pack two values per byte: the row length {e.shape[1]} is odd")
    scale = _block_scale(e, block, 7, scale_dtype)
    digits = (_codes(e, scale, 7).astype(np.int16) + 8).astype(np.uint8)
    return digits[:, 0::2] | (digits[:, 1::2] << 4), scale


def int8_rows(e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``int8_blocks`` with one block per row: (codes int8 (V, H), row_scale float32 (V,))."""
    codes, scale = int8_blocks(e, np.shape(e)[1])
    return codes, scale[:, 0]


def int4_rows(e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``int4_blocks`` with one block per row: (uint8 (V, H / 2), row_scale float32 (V,))."""
    packed, scale = int4_blocks(e, np.shape(e)[1])
    return packed, scale[:, 0]
