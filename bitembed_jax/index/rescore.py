"""Rescoring (sentence-transformers' ``rescore`` / ``rescore_multiplier``): re-rank the candidates a first stage
fetched by the dot product of the float query with their stored int8 codes times their scales (numpy)."""
import numpy as np


def rescore(query_floats: np.ndarray, keys: np.ndarray, codes: np.ndarray, scale: np.ndarray | None, k: int):
    """query_floats (nq, d) float32 (coded like the corpus: calibrated if it is); keys (nq, c) int64 candidates,
    -1 for none; codes (n, d) int8 (a memory map is fine: only the candidates' rows are read); scale (n,) per
    vector, () global, or None. Returns the best ``k`` (keys, scores), -1 / -inf where fewer were found."""
    nq, c = keys.shape
    valid = keys >= 0
    rows = np.where(valid, keys, 0)
    cand = np.asarray(codes[rows.ravel()], np.float32).reshape(nq, c, -1)
    scores = np.einsum("qd,qcd->qc", query_floats.astype(np.float32), cand)
    if scale is not None:
        s = np.asarray(scale, np.float32)
        scores = scores * (s[rows] if s.ndim else s)
    scores = np.where(valid, scores, -np.inf).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    out_keys = np.take_along_axis(np.where(valid, keys, -1), order, axis=1)
    out_scores = np.take_along_axis(scores, order, axis=1)
    if out_keys.shape[1] < k:
        pad = k - out_keys.shape[1]
        out_keys = np.pad(out_keys, ((0, 0), (0, pad)), constant_values=-1)
        out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return out_keys, out_scores
