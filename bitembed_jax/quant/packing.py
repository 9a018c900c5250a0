"""Exact numpy packing of ternary weights {-1, 0, 1}.

- ``pack_bitnet_2bit``: the transformers BitNet layout (integrations/bitnet.py
  ``pack_weights``): 4 values per uint8, stored as q + 1 in {0, 1, 2}, packed
  along dim 0. With R = ceil(out / 4), packed row r holds original rows r, r+R,
  r+2R, r+3R in bits 0-1, 2-3, 4-5, 6-7; missing rows (out % 4 != 0) leave their
  bits zero, as transformers' loop does.
- ``int8_rows`` / ``int4_rows``: per-row absmax int8 / int4 codes of a float table (not ternary: the token
  embeddings).
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


def pack_base3(q) -> np.ndarray:
    """Ternary tensor -> uint8 (ceil(size / 5),), five trits per byte (row-major)."""
    u = _ternary_digits(q).ravel()
    padded = np.zeros(-(-u.size // 5) * 5, np.uint8)
    padded[:u.size] = u
    # max byte is 2 * 121 = 242, so the uint8 sum cannot overflow
    return (padded.reshape(-1, 5) * _POW3).sum(axis=1, dtype=np.uint8)


def unpack_base3(packed: np.ndarray, shape) -> np.ndarray:
    """Inverse of ``pack_base3``: int8 array of ``shape`` in {-1, 0, 1}."""
    packed = np.asarray(packed, np.uint8).ravel()
    shape = tuple(shape)
    n = int(np.prod(shape, dtype=np.int64))
    if packed.size != -(-n // 5):
        raise ValueError(f"{packed.size} bytes do not hold {n} trits")
    if np.any(packed > 242):
        raise ValueError("invalid base-3 byte (> 242)")
    digits = (packed[:, None] // _POW3) % 3
    return (digits.ravel()[:n].astype(np.int8) - 1).reshape(shape)


def int8_rows(e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row absmax int8 of a float table (token embeddings): (codes int8 (V, H), row_scale float32 (V,));
    value = code * row_scale, within row_scale / 2 of the float value."""
    e = np.asarray(e, np.float32)
    scale = (np.maximum(np.abs(e).max(axis=1), np.float32(1e-12)) / np.float32(127)).astype(np.float32)
    codes = np.clip(np.round(e / scale[:, None]), -127, 127).astype(np.int8)
    return codes, scale


def int4_rows(e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row absmax int4 of a float table (V, H), H even: (uint8 (V, H / 2), row_scale float32 (V,)); byte j of
    a row holds code + 8 of element 2j in bits 0-3 and of element 2j + 1 in bits 4-7, codes in [-7, 7];
    value = code * row_scale, within row_scale / 2 of the float value."""
    e = np.asarray(e, np.float32)
    if e.shape[1] % 2:
        raise ValueError(f"int4 rows pack two values per byte: the row length {e.shape[1]} is odd")
    scale = (np.maximum(np.abs(e).max(axis=1), np.float32(1e-12)) / np.float32(7)).astype(np.float32)
    digits = (np.clip(np.round(e / scale[:, None]), -7, 7) + 8).astype(np.uint8)
    return digits[:, 0::2] | (digits[:, 1::2] << 4), scale
